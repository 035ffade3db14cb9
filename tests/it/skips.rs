//! The tests that need something this machine may lack (a Docker engine, the Python SDK,
//! Prometheus) skip with a printed reason when it is missing, and fail instead when CI requires
//! it. Shown by running this very test binary on those tests with the thing taken away.

use std::process::{Command, Output};

const DOCKER_TESTS: [&str; 3] = [
    "e2e_containers::daemon_takes_files_to_done_against_the_simulator_in_a_container_with_one_batch_each",
    "systemd::real_daemon::daemon_reaches_ready_and_owns_its_paths",
    "systemd::debian_package::package_installs_runs_a_file_upgrades_keeping_the_config_removes_and_purges",
];
const SDK_TEST: &str = "sim_sdk::the_official_python_sdk_works_against_the_simulator_unchanged";
const PROMETHEUS_TEST: &str = "metrics::a_real_prometheus_scrapes_the_daemon_and_every_dashboard_and_alert_expression_evaluates";

/// Runs the named tests of this binary with `BATCHWATCH_REQUIRE_*` set to `require` (or unset).
fn run_tests(tests: &[&str], require: Option<&str>, tweak: impl Fn(&mut Command)) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(tests)
        .args(["--exact", "--nocapture", "--test-threads=1"])
        .env_remove("BATCHWATCH_REQUIRE_DOCKER")
        .env_remove("BATCHWATCH_REQUIRE_SDK")
        // The failing runs panic on purpose: no backtraces to resolve.
        .env("RUST_BACKTRACE", "0");
    if let Some(value) = require {
        cmd.env("BATCHWATCH_REQUIRE_DOCKER", value)
            .env("BATCHWATCH_REQUIRE_SDK", value);
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
fn assert_skipped(out: &Output, tests: &[&str], reason: &str) {
    let log = text(out);
    assert!(out.status.success(), "skipping must not fail:\n{log}");
    assert!(
        log.contains(&format!("test result: ok. {} passed", tests.len())),
        "{log}"
    );
    assert_eq!(log.matches(reason).count(), tests.len(), "{log}");
}

/// Asserts that every test in `tests` failed, naming the variable that required it.
fn assert_failed(out: &Output, tests: &[&str], message: &str) {
    let log = text(out);
    assert!(!out.status.success(), "a required test must fail:\n{log}");
    assert!(
        log.contains(&format!("0 passed; {} failed", tests.len())),
        "{log}"
    );
    assert!(log.contains(message), "{log}");
}

#[test]
fn docker_tests_skip_without_an_engine_and_fail_when_docker_is_required() {
    let no_engine = |cmd: &mut Command| {
        cmd.env(
            "DOCKER_HOST",
            "unix:///nonexistent/batchwatch-test/docker.sock",
        );
    };
    let out = run_tests(&DOCKER_TESTS, None, no_engine);
    assert_skipped(&out, &DOCKER_TESTS, "skipped: no Docker engine answers");
    let out = run_tests(&DOCKER_TESTS, Some("1"), no_engine);
    assert_failed(
        &out,
        &DOCKER_TESTS,
        "BATCHWATCH_REQUIRE_DOCKER=1, but no Docker engine answers",
    );
}

#[test]
fn the_sdk_test_skips_without_python_and_fails_when_the_sdk_is_required() {
    let empty = tempfile::tempdir().unwrap();
    let no_python = |cmd: &mut Command| {
        cmd.env("PATH", empty.path());
    };
    let tests = [SDK_TEST];
    let out = run_tests(&tests, None, no_python);
    assert_skipped(
        &out,
        &tests,
        "skipping the Python SDK test: python3 cannot run",
    );
    let out = run_tests(&tests, Some("1"), no_python);
    assert_failed(
        &out,
        &tests,
        "BATCHWATCH_REQUIRE_SDK=1 but the Python SDK is unavailable",
    );
}

#[test]
fn the_prometheus_test_skips_without_prometheus_and_fails_when_it_is_required() {
    let empty = tempfile::tempdir().unwrap();
    let tests = [PROMETHEUS_TEST];
    let out = run_tests(&tests, None, |cmd| {
        cmd.env("PATH", empty.path())
            .env_remove("BATCHWATCH_REQUIRE_PROMETHEUS");
    });
    assert_skipped(
        &out,
        &tests,
        "skipped: prometheus and promtool are not installed",
    );
    let out = run_tests(&tests, None, |cmd| {
        cmd.env("PATH", empty.path())
            .env("BATCHWATCH_REQUIRE_PROMETHEUS", "1");
    });
    assert_failed(
        &out,
        &tests,
        "BATCHWATCH_REQUIRE_PROMETHEUS is set, but prometheus or promtool is not installed",
    );
}
