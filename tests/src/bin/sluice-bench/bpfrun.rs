//! Raw `bpf(2)` for the benchmarks that time programs in the kernel: an
//! empty program of a given type and return value (the baseline every
//! per-program cost is measured against), BPF_PROG_TEST_RUN of any program
//! fd on a frame, the XDP live-frames mode of BPF_PROG_TEST_RUN (frames
//! really dropped, or handed to the stack as skbs on an ingress device), and
//! BPF_OBJ_GET of a pinned program.
//!
//! Everything goes through the same syscall with the same attributes, so a
//! Sluice program and its empty baseline differ only in the program.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// `XDP_DROP` from `linux/bpf.h`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS` from `linux/bpf.h`.
pub const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC` (-1), TCX_NEXT: what a tc program returns to pass on.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT` (a program that forwards with `bpf_redirect*`).
pub const TC_ACT_REDIRECT: u32 = 7;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Frames of an XDP test run are real: XDP_DROP frees them, XDP_PASS builds
/// skbs and hands them to the stack on the ingress device, XDP_TX and
/// XDP_REDIRECT transmit them.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

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

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: [u32; 9],
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: [u32; 11],
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// `bpf(cmd, attr)`; the error names `what`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T, what: &str) -> anyhow::Result<libc::c_long> {
    // SAFETY: `attr` is a bpf_attr variant of the kernel's layout, zero
    // padded, whose pointers refer to buffers the caller keeps alive for
    // the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_owned());
    }
    Ok(rc)
}

/// A program that does nothing but return a constant: `r0 = retval; exit`.
pub struct EmptyProg {
    fd: OwnedFd,
}

impl EmptyProg {
    /// Loads it as `prog_type` (`BPF_PROG_TYPE_*`) returning `retval`.
    pub fn load(prog_type: u32, retval: u32) -> anyhow::Result<Self> {
        // BPF_ALU64 | BPF_MOV | BPF_K with the immediate sign-extended, so
        // u32::MAX is -1; then BPF_JMP | BPF_EXIT.
        let imm = retval.to_le_bytes();
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, imm[0], imm[1], imm[2], imm[3]]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = b"GPL\0";
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..11].copy_from_slice(b"bench_empty");
        let fd = bpf(
            BPF_PROG_LOAD,
            &mut attr,
            "BPF_PROG_LOAD of an empty program",
        )?;
        // SAFETY: a new fd the kernel just returned to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.fd.as_fd()
    }
}

/// The program pinned at `path` (BPF_OBJ_GET).
pub fn pinned_prog(path: &Path) -> anyhow::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(
        BPF_OBJ_GET,
        &mut attr,
        &format!("BPF_OBJ_GET {}", path.display()),
    )?;
    // SAFETY: a new fd the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF_PROG_TEST_RUN.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// The kernel's mean time per repetition (it rounds to whole ns).
    pub per_run: Duration,
    /// The program's return value (of the last repetition).
    pub retval: u32,
    /// Wall time of the whole syscall, as seen from user space.
    pub wall: Duration,
}

/// Runs `prog` on `frame` `repeat` times in one BPF_PROG_TEST_RUN.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> anyhow::Result<Run> {
    // Room for programs that grow the packet (encapsulation, headroom).
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    let started = Instant::now();
    bpf(BPF_PROG_TEST_RUN, &mut attr, "BPF_PROG_TEST_RUN")?;
    let wall = started.elapsed();
    Ok(Run {
        per_run: Duration::from_nanos(u64::from(attr.duration)),
        retval: attr.retval,
        wall,
    })
}

impl Run {
    /// Nanoseconds per repetition, by the kernel's clock.
    pub fn ns(&self) -> f64 {
        self.per_run.as_nanos() as f64
    }
}

/// XDP live frames: `frames` copies of `frame` run through XDP program
/// `prog` as if received on interface `ifindex` (of the calling thread's
/// network namespace), in batches of `batch` (0: the kernel's default, 64).
/// Their fate is real: dropped, or passed to that interface's stack. The
/// kernel reports no return value in this mode; callers verify verdicts
/// with counters.
pub fn live_frames(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    frames: u32,
    ifindex: u32,
    batch: u32,
) -> anyhow::Result<Run> {
    let ctx = XdpMd {
        // The frame starts at data 0 and ends at its length; no metadata.
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..Default::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: frames,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..Default::default()
    };
    let started = Instant::now();
    bpf(
        BPF_PROG_TEST_RUN,
        &mut attr,
        "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES",
    )?;
    let wall = started.elapsed();
    Ok(Run {
        per_run: Duration::from_nanos(u64::from(attr.duration)),
        retval: attr.retval,
        wall,
    })
}

/// Median of `v` (the upper one of an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Pins the calling thread to `cpu`, so a measurement is not migrated
/// half-way (best effort: a failure leaves it unpinned).
pub fn pin_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
