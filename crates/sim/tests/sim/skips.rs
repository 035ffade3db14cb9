//! The Python SDKs' tests skip with a printed reason without python3, and fail instead when
//! CI requires it. Shown by running this very test binary on them with python3 taken away.

use crate::support::skips::{assert_failed, assert_skipped, run_tests};

const SDK_TESTS: [&str; 2] = [
    "sdk::the_official_python_sdk_works_against_the_simulator_unchanged",
    "sdk::the_official_anthropic_sdk_works_against_the_simulator_unchanged",
];

#[test]
fn the_sdk_test_skips_without_python_and_fails_when_the_sdk_is_required() {
    let empty = tempfile::tempdir().unwrap();
    let tests = SDK_TESTS;
    let out = run_tests(&tests, |cmd| {
        cmd.env("PATH", empty.path());
    });
    assert_skipped(&out, &tests, "SDK test: python3 cannot run");
    let out = run_tests(&tests, |cmd| {
        cmd.env("PATH", empty.path())
            .env("BATCHWATCH_REQUIRE_SDK", "1");
    });
    assert_failed(
        &out,
        &tests,
        "BATCHWATCH_REQUIRE_SDK=1 but the Python SDK is unavailable",
    );
}
