//! `sluice`, the CNI plugin binary: the protocol lives in `skel`, the work in
//! `cmd`.

use std::process::ExitCode;

fn main() -> ExitCode {
    cni_plugin::skel::run(&cni_plugin::cmd::Handlers)
}
