//! Empty library target: node-agent build-depends on it so that cargo rebuilds the agent
//! (and so the embedded eBPF object) whenever this crate or `ebpf-common` changes. The
//! programs are the `ebpf` binary (`src/main.rs`), built for bpfel by `node-agent/build.rs`.

#![no_std]
