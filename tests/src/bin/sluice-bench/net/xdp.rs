//! The attach-point guard: a minimal native XDP program (`return XDP_PASS`)
//! on the host-side veths of the sluice-routed pods. It does nothing with
//! the packets, so whatever it costs is the cost of XDP on veth itself
//! (the veth switches to NAPI mode and every frame takes the XDP receive
//! path): the number that keeps pod programs on TCX.
//!
//! Loaded with the raw bpf syscall (no object file needed), attached over
//! netlink (`IFLA_XDP` with `XDP_FLAGS_DRV_MODE`: native mode, never the
//! generic fallback) and detached when the guard drops.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{ensure, Context as _};
use rtnetlink::{
    packet_route::link::{LinkAttribute, LinkXdp, XdpAttached},
    LinkUnspec,
};
use tests::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `XDP_PASS` in `enum xdp_action`.
const XDP_PASS: u8 = 2;
/// `XDP_FLAGS_DRV_MODE` (include/uapi/linux/if_link.h).
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD, zero-padded.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    pad: [u64; 12],
}

/// `r0 = XDP_PASS; exit`, loaded.
struct PassProg(OwnedFd);

impl PassProg {
    fn load() -> anyhow::Result<Self> {
        // BPF_ALU64 | BPF_MOV | BPF_K (0xb7), dst r0, imm XDP_PASS; BPF_EXIT.
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, XDP_PASS, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = b"GPL\0";
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..10].copy_from_slice(b"bench_pass");
        // SAFETY: a bpf_attr of the kernel's layout, zero-padded, pointing at
        // live buffers for the duration of the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &mut attr as *mut _,
                std::mem::size_of::<ProgLoadAttr>() as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("BPF_PROG_LOAD of XDP_PASS");
        }
        // SAFETY: a new fd the kernel just returned to us.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// Sets (`fd` >= 0) or clears (`fd` = -1) the native XDP program of `ifname`.
fn set_xdp(ns: &Netns, ifname: &str, fd: i32) -> anyhow::Result<()> {
    let index = tests::link::ifindex(ns, ifname)?;
    ns.netlink(|handle| async move {
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::Xdp(vec![
                LinkXdp::Fd(fd),
                LinkXdp::Flags(XDP_FLAGS_DRV_MODE),
            ]))
            .build();
        handle
            .link()
            .set(message)
            .execute()
            .await
            .with_context(|| format!("setting the XDP program of {ifname} (fd {fd})"))
    })
}

/// XDP_PASS attached natively to some interfaces of a namespace until drop.
pub struct XdpGuard<'a> {
    ns: &'a Netns,
    attached: Vec<String>,
}

impl<'a> XdpGuard<'a> {
    /// Attaches XDP_PASS in driver mode to every interface in `ifnames` and
    /// checks that the kernel reports it attached in driver mode.
    pub fn attach(ns: &'a Netns, ifnames: &[String]) -> anyhow::Result<Self> {
        ensure!(!ifnames.is_empty(), "no host-side veth to attach XDP to");
        let prog = PassProg::load()?;
        let mut guard = Self {
            ns,
            attached: Vec::new(),
        };
        for ifname in ifnames {
            set_xdp(ns, ifname, prog.0.as_raw_fd())?;
            guard.attached.push(ifname.clone());
            let state = tests::link::xdp_attached(ns, ifname)?;
            ensure!(
                state == Some(XdpAttached::Driver),
                "XDP on {ifname} is attached as {state:?}, not in driver mode"
            );
        }
        // The links hold the program; our fd goes when `prog` drops.
        Ok(guard)
    }
}

impl Drop for XdpGuard<'_> {
    fn drop(&mut self) {
        for ifname in &self.attached {
            if let Err(e) = set_xdp(self.ns, ifname, -1) {
                eprintln!("[net] warning: detaching XDP from {ifname}: {e:#}");
            }
        }
    }
}
