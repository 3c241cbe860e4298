//! `cargo xtask ci`: what `.ci/run` calls. The same checks as `cargo xtask test` (all of
//! them, no extra test arguments), with a timing line per step so slow steps show in CI logs.

use crate::test::{self, Checks};

pub fn run() -> anyhow::Result<()> {
    test::run_checks(&Checks {
        quick: false,
        cargo_test_args: &[],
        timings: true,
    })
}
