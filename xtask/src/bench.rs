//! `cargo xtask bench`: nothing to measure yet.

pub fn run() {
    println!(
        "no benchmarks yet: the CNI ADD/DEL and datapath benchmarks arrive with \
         the plugin and host-routing issues"
    );
}
