//! Host-side stub: the real code is the `cni-ebpf` binary, built for bpfel by
//! aya-build. This library target exists so `cni-agent` can depend on the
//! crate and be rebuilt when it changes.
#![no_std]
