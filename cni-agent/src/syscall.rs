//! The few `bpf(2)` queries aya 0.14 does not expose.

use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `struct bpf_link_info` up to the XDP member of its union; the kernel
/// copies at most `info_len` bytes, so a prefix of the struct is fine. The
/// TCX member (`tcx.ifindex`, `tcx.attach_type`) starts with the ifindex at
/// the same offset, so TCX links read the same way.
#[repr(C)]
#[derive(Default)]
struct BpfLinkInfoXdp {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// `xdp.ifindex`; the union is 8-byte aligned after the three u32s.
    ifindex: u32,
    _rest: [u32; 7],
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What the kernel says about an XDP or TCX link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpLinkState {
    /// The link's id.
    pub link_id: u32,
    /// The program it runs.
    pub prog_id: u32,
    /// The device it is attached to; 0 once the device is gone (the link is
    /// then defunct).
    pub ifindex: u32,
}

/// Reads the state of an XDP link from its fd.
pub fn xdp_link_state(link: BorrowedFd<'_>) -> std::io::Result<XdpLinkState> {
    let mut info = BpfLinkInfoXdp::default();
    let mut attr = InfoByFdAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<BpfLinkInfoXdp>() as u32,
        info: &mut info as *mut BpfLinkInfoXdp as u64,
    };
    // SAFETY: attr and info outlive the call; the kernel writes at most
    // info_len bytes into info.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoByFdAttr,
            size_of::<InfoByFdAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(XdpLinkState {
        link_id: info.id,
        prog_id: info.prog_id,
        ifindex: info.ifindex,
    })
}

const BPF_OBJ_GET: libc::c_long = 7;

/// `union bpf_attr` for BPF_OBJ_GET.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned object (aya's link types do not hand out their fd).
pub fn obj_get(path: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: attr and c_path outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut ObjGetAttr,
            size_of::<ObjGetAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(ret as i32) })
}

/// Reads the state of the XDP (or TCX) link pinned at `path`.
pub fn pinned_xdp_link_state(path: &std::path::Path) -> std::io::Result<XdpLinkState> {
    let fd = obj_get(path)?;
    xdp_link_state(std::os::fd::AsFd::as_fd(&fd))
}

const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the link pinned at `path` now (BPF_LINK_DETACH), so the program
/// stops running before the pin is removed. Unpinning alone detaches only
/// once the kernel releases the last reference, a moment later.
pub fn detach_pinned_link(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = obj_get(path)?;
    // `union bpf_attr` for BPF_LINK_DETACH: just the link fd.
    let mut attr = [0u32; 4];
    attr[0] = fd.as_raw_fd() as u32;
    // SAFETY: attr outlives the call; the kernel reads the first u32.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
