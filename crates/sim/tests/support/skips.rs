//! Tests that need something this machine may lack (a Docker engine, the Python SDK,
//! Prometheus, Chromium) skip with a printed reason when it is missing, and fail instead when CI requires
//! it (`BATCHWATCH_REQUIRE_*`). These helpers show both, by running the calling test binary on
//! those tests with the thing taken away.

use std::process::{Command, Output};

/// The variables that turn a skip into a failure.
const REQUIRE: [&str; 4] = [
    "BATCHWATCH_REQUIRE_DOCKER",
    "BATCHWATCH_REQUIRE_SDK",
    "BATCHWATCH_REQUIRE_PROMETHEUS",
    "BATCHWATCH_REQUIRE_BROWSER",
];

/// Runs the named tests of this test binary, one at a time, with no `BATCHWATCH_REQUIRE_*`
/// set, then as `tweak` says (take a tool away, require it).
pub fn run_tests(tests: &[&str], tweak: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(tests)
        .args(["--exact", "--nocapture", "--test-threads=1"])
        // The failing runs panic on purpose: no backtraces to resolve.
        .env("RUST_BACKTRACE", "0");
    for name in REQUIRE {
        cmd.env_remove(name);
    }
    tweak(&mut cmd);
    cmd.output().expect("run the test binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that every test in `tests` ran, passed, and printed `reason` once each.
pub fn assert_skipped(out: &Output, tests: &[&str], reason: &str) {
    let log = text(out);
    assert!(out.status.success(), "skipping must not fail:\n{log}");
    assert!(
        log.contains(&format!("test result: ok. {} passed", tests.len())),
        "{log}"
    );
    assert_eq!(log.matches(reason).count(), tests.len(), "{log}");
}

/// Asserts that every test in `tests` failed, naming the variable that required it.
pub fn assert_failed(out: &Output, tests: &[&str], message: &str) {
    let log = text(out);
    assert!(!out.status.success(), "a required test must fail:\n{log}");
    assert!(
        log.contains(&format!("0 passed; {} failed", tests.len())),
        "{log}"
    );
    assert!(log.contains(message), "{log}");
}
