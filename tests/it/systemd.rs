//! The systemd unit (systemd/): checked with systemd's own tools through `.ci/systemd-check`,
//! kept consistent with the configuration, and run for real under systemd as PID 1 in a
//! container (`harness`), where `scenarios` say what must hold. The Debian package (`.ci/deb`)
//! carries the same unit with its own ExecStart: checked the same way, and installed,
//! upgraded, removed and purged in that container (`package`).

mod harness;
mod package;
mod scenarios;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use batchwatch::config::{KeySource, Settings};

use harness::{repo_path, seconds, unit_setting};

/// Loads the configuration from `text` alone (no system file, no environment).
fn load_config(text: &str) -> Result<Settings, batchwatch::config::ConfigError> {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write config");
    Settings::load_from(Some(file.path()), std::iter::empty())
}

fn systemd_analyze_missing() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "skipped: systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)"
        );
    }
    !found
}

/// Runs `.ci/systemd-check` over a copy of the repository's files, changed by `edit`, and
/// returns whether it passed and what it printed.
fn run_check_on_copy(edit: impl FnOnce(&Path)) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (from, to) in [
        (".ci/systemd-check", ".ci/systemd-check"),
        ("systemd/batchwatch.service", "systemd/batchwatch.service"),
        ("systemd/batchwatch.sysusers", "systemd/batchwatch.sysusers"),
        ("systemd/batchwatch.tmpfiles", "systemd/batchwatch.tmpfiles"),
    ] {
        let target = dir.path().join(to);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(repo_path(from), &target).unwrap();
    }
    edit(dir.path());
    let out = Command::new(dir.path().join(".ci/systemd-check"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run .ci/systemd-check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn edit_unit(root: &Path, edit: impl FnOnce(String) -> String) {
    let path = root.join("systemd/batchwatch.service");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
}

#[test]
fn unit_passes_verify_and_has_exposure_of_at_most_1_5() {
    if systemd_analyze_missing() {
        return;
    }
    let (passed, output) = run_check_on_copy(|_| {});
    // The exposure figure and the remaining findings, for whoever reads the test log.
    println!("{output}");
    assert!(passed, ".ci/systemd-check failed:\n{output}");
    assert!(output.contains("verify: no findings"), "{output}");
    assert!(output.contains("exposure: "), "{output}");
}

/// The files `.ci/deb` puts into the package (unit, sysusers, tmpfiles, configuration),
/// written into a temporary directory.
fn staged_package_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(repo_path(".ci/deb"))
        .arg("--stage")
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run .ci/deb --stage");
    assert!(
        out.status.success(),
        ".ci/deb --stage failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn packaged_unit_passes_verify_and_has_exposure_of_at_most_1_5() {
    if systemd_analyze_missing() {
        return;
    }
    let staged = staged_package_files();
    let unit = staged.path().join("units/batchwatch.service");
    let out = Command::new(repo_path(".ci/systemd-check"))
        .arg("--unit")
        .arg(&unit)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run .ci/systemd-check --unit");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{output}");
    assert!(
        out.status.success(),
        ".ci/systemd-check --unit failed:\n{output}"
    );
    assert!(
        output.contains(&format!("checking {}", unit.display())),
        "{output}"
    );
    assert!(output.contains("verify: no findings"), "{output}");
    assert!(output.contains("exposure: "), "{output}");
}

#[test]
fn packaged_unit_differs_from_the_shipped_one_only_in_its_program_path() {
    let staged = staged_package_files();
    let packaged = std::fs::read_to_string(staged.path().join("units/batchwatch.service")).unwrap();
    let shipped = std::fs::read_to_string(repo_path("systemd/batchwatch.service")).unwrap();
    let differing: Vec<(&str, &str)> = shipped
        .lines()
        .zip(packaged.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(shipped.lines().count(), packaged.lines().count());
    assert_eq!(
        differing,
        [(
            "ExecStart=/usr/local/bin/batchwatch run",
            "ExecStart=/usr/bin/batchwatch run"
        )]
    );
    for (name, source) in [
        ("batchwatch.sysusers", "systemd/batchwatch.sysusers"),
        ("batchwatch.tmpfile", "systemd/batchwatch.tmpfiles"),
    ] {
        assert_eq!(
            std::fs::read(staged.path().join("units").join(name)).unwrap(),
            std::fs::read(repo_path(source)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn packaged_config_is_the_defaults_reading_the_key_from_the_units_credential() {
    let staged = staged_package_files();
    let text = std::fs::read_to_string(staged.path().join("batchwatch.toml")).unwrap();
    let packaged = load_config(&text).expect("the packaged configuration is valid");
    let credential = unit_setting("LoadCredential").expect("LoadCredential= in the unit");
    assert_eq!(
        packaged.api.key_source(),
        KeySource::Credential(credential.split(':').next().unwrap().to_owned())
    );
    // Everything else is the built-in default.
    let (packaged, defaults) = (
        packaged.to_toml(),
        load_config("").expect("defaults").to_toml(),
    );
    let lines = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines().map(str::to_owned).collect()
    };
    let differing: Vec<String> = lines(&packaged)
        .symmetric_difference(&lines(&defaults))
        .cloned()
        .collect();
    assert!(
        differing.iter().all(|line| line.contains("key_")),
        "the packaged configuration differs from the defaults beyond the key: {differing:#?}"
    );
}

#[test]
fn check_fails_when_the_sandbox_is_removed() {
    if systemd_analyze_missing() {
        return;
    }
    let (passed, output) = run_check_on_copy(|root| {
        edit_unit(root, |unit| {
            unit.lines()
                .filter(|l| {
                    !l.starts_with("ProtectSystem=")
                        && !l.starts_with("PrivateUsers=")
                        && !l.starts_with("SystemCallFilter=")
                        && !l.starts_with("CapabilityBoundingSet=")
                })
                .map(|l| format!("{l}\n"))
                .collect()
        })
    });
    assert!(
        !passed,
        "the check passed a unit without its sandbox:\n{output}"
    );
    assert!(output.contains("overall exposure"), "{output}");
}

#[test]
fn check_fails_on_anything_verify_reports() {
    if systemd_analyze_missing() {
        return;
    }
    // systemd-analyze verify itself exits 0 on this; the check must not.
    let (passed, output) = run_check_on_copy(|root| {
        edit_unit(root, |unit| {
            unit.replace("UMask=0027", "UMask=0027\nProtectSystem=sometimes")
        })
    });
    assert!(!passed, "the check ignored a verify finding:\n{output}");
    assert!(output.contains("systemd-analyze verify"), "{output}");
}

#[test]
fn check_fails_when_a_secret_goes_through_the_environment() {
    if systemd_analyze_missing() {
        return;
    }
    let (passed, output) = run_check_on_copy(|root| {
        edit_unit(root, |unit| {
            unit.replace(
                "UMask=0027",
                &format!(
                    "UMask=0027\nEnvironment=OPENAI_API_KEY={}",
                    crate::support::KEY
                ),
            )
        })
    });
    assert!(
        !passed,
        "the check let the key through Environment=:\n{output}"
    );
}

#[test]
fn check_fails_without_an_open_file_limit() {
    if systemd_analyze_missing() {
        return;
    }
    let (passed, output) = run_check_on_copy(|root| {
        edit_unit(root, |unit| {
            unit.lines()
                .filter(|l| !l.starts_with("LimitNOFILE="))
                .map(|l| format!("{l}\n"))
                .collect()
        })
    });
    assert!(
        !passed,
        "the check passed a unit without LimitNOFILE=:\n{output}"
    );
    assert!(output.contains("has no LimitNOFILE="), "{output}");
}

#[test]
fn stop_timeout_leaves_room_for_the_default_shutdown_timeout() {
    let stop = seconds(&unit_setting("TimeoutStopSec").expect("TimeoutStopSec= in the unit"));
    let shutdown = load_config("")
        .expect("defaults")
        .daemon
        .shutdown_timeout
        .get();
    assert!(
        stop >= shutdown + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} leaves less than 5s beyond daemon.shutdown_timeout={shutdown:?}"
    );
}

#[test]
fn unit_credential_is_the_one_the_harness_config_names() {
    let settings =
        load_config(&harness::valid_config("http://127.0.0.1:8089/v1")).expect("valid config");
    assert_eq!(
        settings.api.key_source(),
        KeySource::Credential("openai-api-key".to_owned())
    );
    let load = unit_setting("LoadCredential").expect("LoadCredential= in the unit");
    assert!(
        load.starts_with("openai-api-key:"),
        "the unit loads {load:?}, the configuration reads openai-api-key"
    );
}

#[test]
fn harness_invalid_config_is_a_config_error_naming_the_key() {
    // The exit-78 scenario relies on the daemon refusing this configuration.
    let err = load_config(&harness::invalid_config()).expect_err("must be refused");
    assert!(err.to_string().contains("no_such_key"), "{err}");
}

/// The scenarios with the real daemon (the static binary, see `support::static_bin`), with
/// the simulator, run as a unit of its own, as the API.
mod real_daemon {
    use super::harness::{self, Payload};
    use super::scenarios;

    /// What to install, or None (after printing why) when there is no Docker engine: asked
    /// first, so that no static build runs for a test that is going to skip.
    async fn payload() -> Option<Payload> {
        if !crate::support::docker::available().await {
            return None;
        }
        Some(Payload {
            program: crate::support::static_bin::static_bin(),
            config: harness::valid_config("http://127.0.0.1:8089/v1"),
            credential: crate::support::KEY.to_owned(),
            // The simulator, as a unit of its own, on the address the configuration names.
            before_start: vec![
                "systemd-run --unit=batchwatch-sim --property=DynamicUser=yes \
                 /usr/local/bin/batchwatch sim"
                    .to_owned(),
            ],
            status_probe: "batchwatch status".to_owned(),
        })
    }

    #[tokio::test]
    async fn daemon_reaches_ready_and_owns_its_paths() {
        if let Some(payload) = payload().await {
            scenarios::reaches_ready_and_owns_its_paths(&payload).await;
        }
    }

    #[tokio::test]
    async fn daemon_hung_is_restarted_by_the_watchdog() {
        if let Some(payload) = payload().await {
            scenarios::watchdog_restarts_a_hung_daemon(&payload).await;
        }
    }

    #[tokio::test]
    async fn daemon_stops_cleanly_on_sigterm() {
        if let Some(payload) = payload().await {
            scenarios::sigterm_stops_it_cleanly(&payload).await;
        }
    }

    #[tokio::test]
    async fn daemon_reloads_on_systemctl_reload() {
        if let Some(payload) = payload().await {
            scenarios::reload_rereads_the_configuration(&payload).await;
        }
    }

    #[tokio::test]
    async fn daemon_config_error_is_not_restarted() {
        if let Some(payload) = payload().await {
            scenarios::config_error_is_not_restarted(&payload).await;
        }
    }

    #[tokio::test]
    async fn daemon_reads_an_encrypted_credential() {
        if let Some(payload) = payload().await {
            scenarios::encrypted_credential_reaches_the_daemon(&payload).await;
        }
    }
}

/// The Debian package, built by `.ci/deb`, installed in the systemd container.
mod debian_package {
    use super::package;

    /// Its whole life on a host run by systemd; then installed where systemd does not run (a
    /// container, a chroot).
    #[tokio::test]
    async fn package_installs_runs_a_file_upgrades_keeping_the_config_removes_and_purges() {
        // Docker first: no release build for a test that is going to skip.
        if !crate::support::docker::available().await {
            return;
        }
        let Some(packages) = tokio::task::spawn_blocking(package::build)
            .await
            .expect("build the packages")
        else {
            return;
        };
        package::install_run_upgrade_remove_purge(&packages).await;
        package::installs_where_systemd_does_not_run(&packages).await;
    }
}
