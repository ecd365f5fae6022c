//! Rebuild the eBPF object when bpf-linker changes (a new LLVM means new code).
fn main() {
    // `which` also makes a missing bpf-linker a clear build error here rather
    // than a confusing linker failure later.
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
