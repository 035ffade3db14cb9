//! The tests that need a Docker engine, Prometheus or Chromium skip with a printed reason when it is
//! missing, and fail instead when CI requires it. Shown by running this very test binary on
//! those tests with the thing taken away (the simulator's tests show the same of the Python
//! SDK's test).

use std::process::Command;

use crate::support::skips::{assert_failed, assert_skipped, run_tests};

const DOCKER_TESTS: [&str; 4] = [
    "e2e_containers::daemon_takes_files_to_done_against_the_simulator_in_a_container_with_one_batch_each",
    "fleet_containers::three_daemon_containers_killed_paused_and_cut_off_lose_nothing_and_pay_nothing_twice",
    "systemd::real_daemon::daemon_reaches_ready_and_owns_its_paths",
    "systemd::debian_package::package_installs_runs_a_file_upgrades_keeping_the_config_removes_and_purges",
];
const PROMETHEUS_TEST: &str = "metrics::a_real_prometheus_scrapes_the_daemon_and_every_dashboard_and_alert_expression_evaluates";

fn no_docker_engine(cmd: &mut Command) {
    cmd.env(
        "DOCKER_HOST",
        "unix:///nonexistent/batchwatch-test/docker.sock",
    );
}

#[test]
fn docker_tests_skip_without_an_engine_and_fail_when_docker_is_required() {
    let out = run_tests(&DOCKER_TESTS, no_docker_engine);
    assert_skipped(&out, &DOCKER_TESTS, "skipped: no Docker engine answers");
    let out = run_tests(&DOCKER_TESTS, |cmd| {
        no_docker_engine(cmd);
        cmd.env("BATCHWATCH_REQUIRE_DOCKER", "1");
    });
    assert_failed(
        &out,
        &DOCKER_TESTS,
        "BATCHWATCH_REQUIRE_DOCKER=1, but no Docker engine answers",
    );
}

#[test]
fn the_prometheus_test_skips_without_prometheus_and_fails_when_it_is_required() {
    let empty = tempfile::tempdir().unwrap();
    let tests = [PROMETHEUS_TEST];
    let out = run_tests(&tests, |cmd| {
        cmd.env("PATH", empty.path());
    });
    assert_skipped(
        &out,
        &tests,
        "skipped: prometheus and promtool are not installed",
    );
    let out = run_tests(&tests, |cmd| {
        cmd.env("PATH", empty.path())
            .env("BATCHWATCH_REQUIRE_PROMETHEUS", "1");
    });
    assert_failed(
        &out,
        &tests,
        "BATCHWATCH_REQUIRE_PROMETHEUS is set, but prometheus or promtool is not installed",
    );
}

const BROWSER_TEST: &str = "browser::the_pages_in_chromium_load_cleanly_draw_the_history_escape_a_hostile_name_and_refresh_live";

#[test]
fn the_browser_test_skips_without_chromium_and_fails_when_a_browser_is_required() {
    let tests = [BROWSER_TEST];
    let missing = "/nonexistent/batchwatch-test/chromium";
    let out = run_tests(&tests, |cmd| {
        cmd.env("BATCHWATCH_CHROMIUM", missing);
    });
    assert_skipped(
        &out,
        &tests,
        &format!("skipped: Chromium is not installed at {missing}"),
    );
    let out = run_tests(&tests, |cmd| {
        cmd.env("BATCHWATCH_CHROMIUM", missing)
            .env("BATCHWATCH_REQUIRE_BROWSER", "1");
    });
    assert_failed(
        &out,
        &tests,
        &format!("BATCHWATCH_REQUIRE_BROWSER is set, but Chromium is not installed at {missing}"),
    );
}
