//! Scarlet's eBPF programs, built for `bpfel-unknown-none` by `node-agent/build.rs` (aya-build)
//! and embedded in the agent. On the host (`cargo test --workspace`, clippy) this binary is
//! an empty stub: the programs exist only for `target_arch = "bpf"`.
//!
//! The programs and maps are in [`programs`]; `docs/ebpf.md` describes them.

#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Inline `lock xadd` for histogram counters (the eBPF build uses nightly).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
