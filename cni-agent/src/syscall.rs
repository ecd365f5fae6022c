//! The few `bpf(2)` commands aya 0.14 does not expose: link queries and
//! detach, and batched map updates and deletes.

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

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "not supported" (`ENOTSUPP`), which `bpf(2)`
/// returns as is for a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr` for the `BPF_MAP_*_BATCH` commands (its `batch` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: elements in `keys`/`values`; out: elements processed.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch operation that stopped before the end.
#[derive(Debug)]
pub struct BatchError {
    /// Elements processed (the first `done` of the input), all of them
    /// successfully.
    pub done: usize,
    /// Why element `done` was not: the error a single-element call would
    /// have returned for it.
    pub error: std::io::Error,
}

impl BatchError {
    /// Whether the kernel has no batch operation for this map (nothing
    /// was processed; single-element calls work).
    pub fn unsupported(&self) -> bool {
        self.done == 0
            && matches!(
                self.error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
            )
    }
}

/// One `BPF_MAP_*_BATCH` call over `count` elements from `keys` (and
/// `values`).
fn map_batch(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<(), BatchError> {
    let Ok(n) = u32::try_from(count) else {
        return Err(BatchError {
            done: 0,
            error: std::io::Error::from_raw_os_error(libc::E2BIG),
        });
    };
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: n,
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: attr lives across the call; keys (and values) point to
    // `count` elements of the map's key (value) size, which the caller's
    // typed slices guarantee; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        let error = std::io::Error::last_os_error();
        // The generic batch loop writes back how many elements it
        // processed; an error before the loop (no batch operation for the
        // map type, bad attributes) leaves `count` as given: nothing done.
        let done = if attr.count < n {
            attr.count as usize
        } else {
            0
        };
        return Err(BatchError { done, error });
    }
    Ok(())
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6): writes `keys[i] → values[i]` with
/// `BPF_ANY`, in order, in one system call. The kernel applies the
/// elements one after another exactly as single updates would (a reader
/// sees each element change atomically, and the earlier ones in place
/// before the later ones); the batch saves the system call per element.
///
/// `K` and `V` must be the map's key and value types (their sizes are the
/// map's: aya's typed maps check that on open). Not for per-CPU maps.
pub fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    map_batch(
        BPF_MAP_UPDATE_BATCH,
        map,
        keys.as_ptr().cast(),
        values.as_ptr().cast(),
        keys.len(),
    )
}

/// `BPF_MAP_DELETE_BATCH` (Linux 5.6): deletes `keys`, in order, in one
/// system call. A missing key stops the batch with `ENOENT` at that key
/// (the caller decides whether that matters and resumes after it).
pub fn map_delete_batch<K: aya::Pod>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    if keys.is_empty() {
        return Ok(());
    }
    map_batch(
        BPF_MAP_DELETE_BATCH,
        map,
        keys.as_ptr().cast(),
        std::ptr::null(),
        keys.len(),
    )
}
