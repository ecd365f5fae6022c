//! What the privileged tests must leave behind: nothing. Checked after the
//! e2e stage, so a test that leaks fails the run instead of the next one.

use std::path::Path;

/// Where bpffs is mounted by convention (the agent mounts it when missing).
const BPFFS: &str = "/sys/fs/bpf";
/// Entries the kernel itself creates in every new bpffs (bpf_preload's
/// iterators), not ours.
const KERNEL_BPFFS_ENTRIES: [&str; 2] = ["maps.debug", "progs.debug"];
/// Prefix of the namespaces the test world creates.
const TEST_NETNS_PREFIX: &str = "sluice-t-";

/// Whether `path` is a bpffs mount.
pub fn is_bpffs(path: &str) -> bool {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe4a11;
    let Ok(c_path) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated; buf is valid for writes.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    rc == 0 && buf.f_type as libc::c_long == BPF_FS_MAGIC
}

fn entries(dir: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .collect();
    names.sort();
    names
}

fn our_processes() -> Vec<String> {
    let mut found = Vec::new();
    for pid in entries("/proc", |n| n.bytes().all(|b| b.is_ascii_digit())) {
        let Ok(cmdline) = std::fs::read(Path::new("/proc").join(&pid).join("cmdline")) else {
            continue;
        };
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(argv0);
        if name.ends_with("/sluice-agent") || name == "sluice-agent" {
            found.push(format!("{pid} {name}"));
        }
    }
    found
}

/// Lists what the tests left: pins, test namespaces, agents.
pub fn find() -> Vec<String> {
    let mut leaks = Vec::new();
    if is_bpffs(BPFFS) {
        for name in entries(BPFFS, |n| !KERNEL_BPFFS_ENTRIES.contains(&n)) {
            leaks.push(format!("bpffs pin {BPFFS}/{name}"));
        }
    }
    for name in entries("/run/netns", |n| n.starts_with(TEST_NETNS_PREFIX)) {
        leaks.push(format!("network namespace {name}"));
    }
    for process in our_processes() {
        leaks.push(format!("process {process}"));
    }
    leaks
}

/// Unmounts bpffs if the run mounted it and nothing but the kernel's own
/// entries is left, so the machine is as the run found it.
pub fn restore_bpffs(was_mounted: bool) {
    if was_mounted || !is_bpffs(BPFFS) {
        return;
    }
    if !entries(BPFFS, |n| !KERNEL_BPFFS_ENTRIES.contains(&n)).is_empty() {
        return;
    }
    let Ok(c_path) = std::ffi::CString::new(BPFFS) else {
        return;
    };
    // SAFETY: c_path is NUL-terminated.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } != 0 {
        eprintln!(
            "[test] could not unmount {BPFFS}: {}",
            std::io::Error::last_os_error()
        );
    }
}
