//! The Debian package, built by `.ci/deb` as README says, in the Debian system the other
//! systemd tests boot (systemd as PID 1): installed with `apt-get install ./batchwatch_*.deb`,
//! given a key, run against the simulator, upgraded to a rebuilt package with a higher
//! revision, removed and purged.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::{STATE_DIR, SystemdContainer, UNIT, copy_in, repo_path};
use crate::support::docker::cannot_run;
use crate::support::static_bin::without_cargo_test_env;

/// The two packages: the one README's command builds, and the same rebuilt with revision 2.
pub struct Packages {
    pub first: PathBuf,
    pub upgrade: PathBuf,
    _dir: tempfile::TempDir,
}

/// Builds both packages with `.ci/deb` (a release build, which cargo makes a no-op when
/// nothing changed). None, after printing why, when cargo-deb is not installed (a failure under
/// BATCHWATCH_REQUIRE_DOCKER=1, as for Docker itself).
pub fn build() -> Option<Packages> {
    let found = Command::new("cargo-deb")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        cannot_run("cargo-deb is not installed (cargo install --locked cargo-deb)");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("UTF-8 temp dir");
    // lintian is .ci/run's business (it runs .ci/deb as README does); here it would only
    // repeat itself.
    let first = run_ci_deb(&["--no-lintian", "--output", out]);
    // The same program, a higher version.
    let upgrade = run_ci_deb(&[
        "--no-build",
        "--no-lintian",
        "--revision",
        "2",
        "--output",
        out,
    ]);
    Some(Packages {
        first,
        upgrade,
        _dir: dir,
    })
}

/// Runs `.ci/deb ARGS` and returns the package it built.
fn run_ci_deb(args: &[&str]) -> PathBuf {
    let started = Instant::now();
    let mut command = Command::new(repo_path(".ci/deb"));
    without_cargo_test_env(&mut command);
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run .ci/deb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), ".ci/deb {args:?} failed:\n{stderr}");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        ".ci/deb printed no package: {path:?}\n{stderr}"
    );
    println!(
        ".ci/deb {args:?}: {} in {:?}",
        path.display(),
        started.elapsed()
    );
    path
}

/// Where the packages are copied in the container.
const PACKAGES_DIR: &str = "/root/packages";
const CONFIG: &str = "/etc/batchwatch/batchwatch.toml";
const CREDENTIAL: &str = "/etc/credstore/batchwatch.openai-api-key";

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("a package file name")
        .to_owned()
}

/// The whole life of the package on a host: install (user, directories, unit enabled but not
/// started, the post-installation message), a key and a configuration edit, a file through the
/// queue, an upgrade that keeps the edit and restarts the service, remove (state kept), purge
/// (state gone).
pub async fn install_run_upgrade_remove_purge(packages: &Packages) {
    let (first, upgrade) = (file_name(&packages.first), file_name(&packages.upgrade));
    let files = vec![
        copy_in(
            &format!("{PACKAGES_DIR}/{first}"),
            0o644,
            packages.first.as_path(),
        ),
        copy_in(
            &format!("{PACKAGES_DIR}/{upgrade}"),
            0o644,
            packages.upgrade.as_path(),
        ),
    ];
    // No tmpfs at /var/lib/batchwatch: purge must be able to remove it.
    let Some(sys) = SystemdContainer::boot(files, None).await else {
        return;
    };

    // 1. Install: the user and the directories exist, the unit is enabled and not started,
    //    and the message says how to add the key.
    let installed = sys
        .check(&format!(
            "cd {PACKAGES_DIR} && DEBIAN_FRONTEND=noninteractive apt-get install -y ./{first} 2>&1"
        ))
        .await;
    for expected in [
        "needs an API key first",
        CREDENTIAL,
        "sudo systemctl start batchwatch",
    ] {
        assert!(
            installed.contains(expected),
            "the post-installation message lacks {expected:?}:\n{installed}"
        );
    }
    assert_eq!(package_status(&sys).await, "install ok installed 0.1.0-1");
    assert_eq!(
        sys.check("command -v batchwatch").await.trim(),
        "/usr/bin/batchwatch"
    );
    assert_eq!(
        sys.sh(&format!("systemctl is-enabled {UNIT}"))
            .await
            .stdout
            .trim(),
        "enabled"
    );
    assert_eq!(
        sys.sh(&format!("systemctl is-active {UNIT}"))
            .await
            .stdout
            .trim(),
        "inactive",
        "started before it has a key"
    );
    sys.check("getent passwd batchwatch && getent group batchwatch")
        .await;
    assert_queue_tree_is_the_services(&sys).await;
    let conffiles = sys
        .check("dpkg-query -W -f='${Conffiles}' batchwatch")
        .await;
    assert!(conffiles.contains(CONFIG), "not a conffile: {conffiles}");
    let fragment = sys
        .check(&format!("systemctl show -p FragmentPath,ExecStart {UNIT}"))
        .await;
    assert!(
        // /lib is /usr/lib on Debian; systemd may name either.
        fragment.contains("lib/systemd/system/batchwatch.service\n")
            && fragment.contains("path=/usr/bin/batchwatch"),
        "the installed unit: {fragment}"
    );
    sys.check(
        "test -s /usr/lib/sysusers.d/batchwatch.conf && \
         test -s /usr/lib/tmpfiles.d/batchwatch.conf && \
         test -s /usr/share/man/man1/batchwatch.1.gz && \
         test -s /usr/share/man/man1/batchwatch-status.1.gz && \
         test -s /usr/share/bash-completion/completions/batchwatch && \
         test -s /usr/share/zsh/vendor-completions/_batchwatch && \
         test -s /usr/share/fish/vendor_completions.d/batchwatch.fish && \
         test -s /usr/share/man/man5/batchwatch.toml.5.gz && \
         test -s /usr/share/batchwatch/prometheus/batchwatch-rules.yml && \
         test -s /usr/share/batchwatch/grafana/batchwatch-dashboard.json",
    )
    .await;
    // The installed unit, checked where it is: verify finds nothing, and the exposure is
    // what .ci/systemd-check requires of the shipped one.
    let verify = sys
        .sh("systemd-analyze verify /usr/lib/systemd/system/batchwatch.service")
        .await;
    assert!(
        verify.success() && verify.stdout.trim().is_empty() && verify.stderr.trim().is_empty(),
        "systemd-analyze verify of the installed unit: {verify}"
    );
    let exposure = exposure(&sys).await;
    println!("exposure of the installed unit: {exposure}");
    assert!(
        exposure <= 1.5,
        "exposure of the installed unit: {exposure}"
    );

    // 2. The operator's part: the key, and the configuration pointed at the simulator.
    let key = crate::support::KEY.to_owned();
    sys.check(&format!(
        "install -d -m 0700 /etc/credstore && (umask 077; printf '%s\\n' '{key}' > {CREDENTIAL}) && \
         sed -i -e 's|^base_url = .*|base_url = \"http://127.0.0.1:8089/v1\"|' \
                -e 's|^min_interval = .*|min_interval = \"1s\"|' {CONFIG} && \
         printf '# edited by the operator\\n' >> {CONFIG}"
    ))
    .await;
    let effective = sys.check("batchwatch check-config").await;
    assert!(
        effective.contains("http://127.0.0.1:8089/v1") && effective.contains("credential"),
        "the edited configuration: {effective}"
    );
    let edited = sys.check(&format!("sha256sum {CONFIG}")).await;
    sys.check(
        "systemd-run --unit=batchwatch-sim --property=DynamicUser=yes \
         /usr/bin/batchwatch sim --time-scale 60",
    )
    .await;
    if let Err(out) = sys.start_unit().await {
        panic!("{UNIT} did not start: {out}\n{}", sys.diagnostics().await);
    }
    drop_and_wait_until_done(&sys, "first.jsonl").await;

    // 3. Upgrade: the edited configuration stays as it is, the service is restarted.
    let before = sys.state().await;
    assert!(before.is_running(), "{before:?}");
    sys.check(&format!(
        "cd {PACKAGES_DIR} && DEBIAN_FRONTEND=noninteractive apt-get install -y ./{upgrade} 2>&1"
    ))
    .await;
    assert_eq!(package_status(&sys).await, "install ok installed 0.1.0-2");
    assert_eq!(
        sys.check(&format!("sha256sum {CONFIG}")).await,
        edited,
        "the upgrade changed the edited configuration"
    );
    let stray = sys
        .sh("ls /etc/batchwatch/*.dpkg-* 2>/dev/null")
        .await
        .stdout;
    assert!(stray.trim().is_empty(), "dpkg left: {stray}");
    let after = sys
        .wait_for("the restarted service", Duration::from_secs(30), |s| {
            s.is_running()
        })
        .await;
    assert_ne!(
        after.main_pid,
        before.main_pid,
        "the service was not restarted by the upgrade\n{}",
        sys.diagnostics().await
    );
    // The restarted daemon has the first job and takes new ones.
    let jobs = sys.check("batchwatch status --json").await;
    assert!(jobs.contains("first.jsonl"), "{jobs}");
    drop_and_wait_until_done(&sys, "second.jsonl").await;

    // 4. Remove: the service stops, the program goes, the state and configuration stay.
    sys.check("DEBIAN_FRONTEND=noninteractive apt-get remove -y batchwatch 2>&1")
        .await;
    assert_eq!(
        package_status(&sys).await,
        "deinstall ok config-files 0.1.0-2"
    );
    let state = sys.state().await;
    assert_eq!(state.active_state, "inactive", "{state:?}");
    sys.check(&format!(
        "test ! -e /usr/bin/batchwatch && test ! -e /usr/lib/systemd/system/batchwatch.service && \
         test -s {STATE_DIR}/state.db && \
         test -f {STATE_DIR}/queue/done/first.jsonl && test -f {STATE_DIR}/queue/done/second.jsonl && \
         test -f {CONFIG} && getent passwd batchwatch"
    ))
    .await;

    // 5. Purge: the state and the configuration are gone; nothing of the unit is left.
    sys.check("DEBIAN_FRONTEND=noninteractive apt-get purge -y batchwatch 2>&1")
        .await;
    let gone = sys.sh("dpkg-query -W -f='${Status}' batchwatch 2>&1").await;
    assert!(
        !gone.success() || gone.stdout.contains("not-installed"),
        "still known to dpkg after purge: {gone}"
    );
    sys.check(&format!(
        "test ! -e {STATE_DIR} && test ! -e /etc/batchwatch && \
         test ! -L /etc/systemd/system/batchwatch.service && \
         test ! -L /etc/systemd/system/multi-user.target.wants/batchwatch.service"
    ))
    .await;
}

/// The package installed where systemd does not run (a container, a chroot): the
/// post-installation script still makes the user and the queue tree, owned as
/// systemd-tmpfiles makes them at boot; and what it ships for monitoring is in
/// /usr/share/batchwatch/, as README points Prometheus and Grafana at it.
pub async fn installs_where_systemd_does_not_run(packages: &Packages) {
    let first = file_name(&packages.first);
    let files = vec![copy_in(
        &format!("{PACKAGES_DIR}/{first}"),
        0o644,
        packages.first.as_path(),
    )];
    let Some(container) = SystemdContainer::without_systemd(files).await else {
        return;
    };
    container.check("test ! -d /run/systemd/system").await;
    container
        .check(&format!(
            "cd {PACKAGES_DIR} && DEBIAN_FRONTEND=noninteractive apt-get install -y ./{first} 2>&1"
        ))
        .await;
    assert_queue_tree_is_the_services(&container).await;
    let rules = container
        .check("cat /usr/share/batchwatch/prometheus/batchwatch-rules.yml")
        .await;
    assert_eq!(
        rules,
        std::fs::read_to_string(repo_path("config/prometheus/batchwatch-rules.yml")).unwrap()
    );
}

/// The state directory and the shared queue/incoming exist and belong to the service's user.
/// (Owners only: the container's file system may drop the setgid bit, so the modes are the
/// systemd tests' business.)
async fn assert_queue_tree_is_the_services(sys: &SystemdContainer) {
    let owners = sys
        .check(&format!(
            "stat -c '%n %U:%G' {STATE_DIR} {STATE_DIR}/queue {STATE_DIR}/queue/incoming"
        ))
        .await;
    assert_eq!(
        owners,
        format!(
            "{STATE_DIR} batchwatch:batchwatch\n{STATE_DIR}/queue batchwatch:batchwatch\n\
             {STATE_DIR}/queue/incoming batchwatch:batchwatch\n"
        )
    );
}

/// dpkg's status and version of the package, as `want ok state version`.
async fn package_status(sys: &SystemdContainer) -> String {
    sys.check("dpkg-query -W -f='${Status} ${Version}' batchwatch")
        .await
        .trim()
        .to_owned()
}

/// The overall exposure `systemd-analyze security` gives the loaded unit.
async fn exposure(sys: &SystemdContainer) -> f64 {
    let security = sys
        .sh(&format!("systemd-analyze security --no-pager {UNIT}"))
        .await;
    security
        .stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for batchwatch.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure in: {security}"))
}

/// Drops `name` (three chat requests) into the queue the way README says, and waits until
/// its job completed and the file is in done/ with its results.
async fn drop_and_wait_until_done(sys: &SystemdContainer, name: &str) {
    let lines: String = (1..=3)
        .map(|i| {
            format!(
                "{{\"custom_id\":\"r{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
                 \"body\":{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi {i}\"}}]}}}}\n"
            )
        })
        .collect();
    sys.check(&format!(
        "cd {STATE_DIR}/queue/incoming && printf '%s' '{lines}' > {name}.part && mv {name}.part {name}"
    ))
    .await;
    let done = crate::support::poll_until(Duration::from_secs(90), async || {
        let test = sys
            .sh(&format!("test -f {STATE_DIR}/queue/done/{name}"))
            .await;
        (test.code == 0, ())
    })
    .await;
    if done.is_err() {
        panic!(
            "{name} was not done in 90s; status:\n{}\n{}",
            sys.sh("batchwatch status").await,
            sys.diagnostics().await
        );
    }
    let status = sys.check("batchwatch status --json").await;
    let jobs: serde_json::Value = serde_json::from_str(&status).expect("status --json");
    let job = jobs
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["file_name"] == name))
        .unwrap_or_else(|| panic!("no job for {name}: {status}"));
    assert_eq!(job["state"], "completed", "{job}");
    let id = job["id"].as_str().expect("job id");
    let outputs = sys
        .check(&format!(
            "wc -l < {STATE_DIR}/queue/results/{id}/output.jsonl"
        ))
        .await;
    assert_eq!(outputs.trim(), "3", "results of {name}");
}
