//! `cargo xtask ci`: what `.ci/run` calls. The same checks as `cargo xtask test` (all of
//! them, no extra test arguments), with a timing line per step so slow steps show in CI
//! logs, and the real-kernel tests required to run rather than skip when the eBPF programs
//! are missing.

use crate::test::{self, Checks};

pub fn run() -> anyhow::Result<()> {
    test::run_checks(&Checks {
        quick: false,
        cargo_test_args: &[],
        timings: true,
        require_ebpf: true,
    })
}
