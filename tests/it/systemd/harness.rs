//! A container with systemd as PID 1 in which batchwatch.service is installed the way the
//! README says and run for real: sysusers, tmpfiles, the unit, a config in /etc/batchwatch and
//! the API key in /etc/credstore. The image comes from `.ci/debian-image systemd`.
//!
//! What runs as `/usr/local/bin/batchwatch` is a [`Payload`]: the static `batchwatch` binary,
//! with its configuration and credential.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testcontainers::core::{CgroupnsMode, ExecCommand, Mount};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::support::docker::{self, cannot_run};
use crate::support::{poll_until, wait_until};

/// The image `.ci/debian-image systemd` builds (its default tag).
const IMAGE: (&str, &str) = ("batchwatch-systemd", "test");
pub const UNIT: &str = "batchwatch.service";
pub const STATE_DIR: &str = "/var/lib/batchwatch";
/// The unit's ExecStart program.
const PROGRAM_PATH: &str = "/usr/local/bin/batchwatch";
/// The unit's LoadCredential= source.
const CREDENTIAL_PATH: &str = "/etc/credstore/batchwatch.openai-api-key";
/// A member of the service's group, and a user who is not one.
pub const MEMBER: &str = "alice";
pub const OUTSIDER: &str = "mallory";

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The value of `Key=` in systemd/batchwatch.service (the last one, as systemd reads it).
pub fn unit_setting(key: &str) -> Option<String> {
    let unit = std::fs::read_to_string(repo_path("systemd/batchwatch.service"))
        .expect("read systemd/batchwatch.service");
    unit.lines()
        .rev()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// A systemd time span written in whole seconds ("20s" or "20").
pub fn seconds(span: &str) -> Duration {
    let digits = span.strip_suffix('s').unwrap_or(span);
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("{span:?}: the tests read whole seconds only (\"20s\")"));
    Duration::from_secs(n)
}

/// What the unit runs, and the files it is installed with.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Copied to /usr/local/bin/batchwatch, the unit's ExecStart program.
    pub program: PathBuf,
    /// /etc/batchwatch/batchwatch.toml.
    pub config: String,
    /// The API key, stored root-only at /etc/credstore/batchwatch.openai-api-key.
    pub credential: String,
    /// Shell commands run before the unit starts (for example, starting the simulator).
    pub before_start: Vec<String>,
    /// A command a member of the service's group runs to query the state while the service
    /// runs and after it stopped; it must succeed.
    pub status_probe: String,
}

/// A configuration that the daemon accepts.
pub fn valid_config(base_url: &str) -> String {
    format!(
        "# Written by the systemd test harness.\n\
         [api]\n\
         base_url = \"{base_url}\"\n\
         key_credential = \"openai-api-key\"\n"
    )
}

/// A configuration that stops the daemon at start with exit code 78.
pub fn invalid_config() -> String {
    "[queue]\nno_such_key = true\n".to_owned()
}

/// The unit's state, as `systemctl show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub main_pid: u32,
    pub active_state: String,
    pub sub_state: String,
    pub n_restarts: u32,
    pub result: String,
    /// 1 when the main process exited, 2 when a signal killed it (CLD_* of waitid(2)).
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    pub status_text: String,
}

impl UnitState {
    pub fn is_running(&self) -> bool {
        self.active_state == "active" && self.sub_state == "running" && self.main_pid > 0
    }

    fn parse(text: &str) -> UnitState {
        let mut state = UnitState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let number = || value.parse().unwrap_or(-1);
            match key {
                "MainPID" => state.main_pid = value.parse().unwrap_or(0),
                "ActiveState" => state.active_state = value.to_owned(),
                "SubState" => state.sub_state = value.to_owned(),
                "NRestarts" => state.n_restarts = value.parse().unwrap_or(0),
                "Result" => state.result = value.to_owned(),
                "ExecMainCode" => state.exec_main_code = number(),
                "ExecMainStatus" => state.exec_main_status = number(),
                "StatusText" => state.status_text = value.to_owned(),
                _ => {}
            }
        }
        state
    }
}

/// The outcome of a command run in the container.
#[derive(Debug)]
pub struct Output {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A running container with systemd as PID 1 and batchwatch.service installed, not started.
pub struct SystemdContainer {
    container: ContainerAsync<GenericImage>,
    /// From `docker run` to systemd reporting the system running.
    pub boot_time: Duration,
}

impl SystemdContainer {
    /// Starts a container and installs `payload` with the unit; `dropin` (unit file text),
    /// when given, becomes /etc/systemd/system/batchwatch.service.d/test.conf.
    /// Returns None, after printing why, when there is no Docker engine or image (and
    /// BATCHWATCH_REQUIRE_DOCKER is not 1).
    pub async fn start(payload: &Payload, dropin: Option<&str>) -> Option<SystemdContainer> {
        if let Err(reason) = ensure_image().await {
            cannot_run(&reason);
            return None;
        }
        if !payload.program.is_file() {
            cannot_run(&format!("{} does not exist", payload.program.display()));
            return None;
        }
        let mut files = vec![
            copy_in(PROGRAM_PATH, 0o755, payload.program.as_path()),
            copy_in(
                "/etc/systemd/system/batchwatch.service",
                0o644,
                repo_path("systemd/batchwatch.service").as_path(),
            ),
            copy_in(
                "/etc/sysusers.d/batchwatch.conf",
                0o644,
                repo_path("systemd/batchwatch.sysusers").as_path(),
            ),
            copy_in(
                "/etc/tmpfiles.d/batchwatch.conf",
                0o644,
                repo_path("systemd/batchwatch.tmpfiles").as_path(),
            ),
            copy_in(
                "/etc/batchwatch/batchwatch.toml",
                0o644,
                payload.config.clone().into_bytes(),
            ),
            copy_in(
                CREDENTIAL_PATH,
                0o600,
                payload.credential.clone().into_bytes(),
            ),
        ];
        if let Some(dropin) = dropin {
            files.push(copy_in(
                "/etc/systemd/system/batchwatch.service.d/test.conf",
                0o644,
                dropin.as_bytes().to_vec(),
            ));
        }
        // The state directory on a kernel file system, as on a host: fuse-overlayfs (the
        // container's root here) ignores the setgid bit of queue/incoming.
        let sys = SystemdContainer::boot(files, Some(STATE_DIR)).await?;
        sys.install(payload).await;
        Some(sys)
    }

    /// Starts a container with `files` copied in (and a tmpfs at `tmpfs`, when given), and
    /// waits until systemd finished booting. Nothing is installed. Returns None, after printing
    /// why, when there is no Docker engine or image (and BATCHWATCH_REQUIRE_DOCKER is not 1).
    pub async fn boot(files: Vec<CopyIn>, tmpfs: Option<&str>) -> Option<SystemdContainer> {
        let started = Instant::now();
        let mut sys = SystemdContainer::run(files, tmpfs, None).await?;
        sys.wait_for_boot().await;
        sys.boot_time = started.elapsed();
        Some(sys)
    }

    /// A container of the same system with `files` copied in, in which systemd does not run:
    /// an idle shell is PID 1, as in most containers, or for a chroot. None, after printing
    /// why, as for [`SystemdContainer::boot`].
    pub async fn without_systemd(files: Vec<CopyIn>) -> Option<SystemdContainer> {
        SystemdContainer::run(files, None, Some(&["sleep", "infinity"])).await
    }

    /// Starts the container; `init` replaces the image's command (systemd).
    async fn run(
        files: Vec<CopyIn>,
        tmpfs: Option<&str>,
        init: Option<&[&str]>,
    ) -> Option<SystemdContainer> {
        if let Err(reason) = ensure_image().await {
            cannot_run(&reason);
            return None;
        }
        let mut request = GenericImage::new(IMAGE.0, IMAGE.1)
            // systemd needs most capabilities; --privileged is the usual way, but it also asks
            // for CAP_SYS_RESOURCE, which a Docker engine inside a VM may not hold itself.
            .with_cap_add("ALL")
            .with_cap_drop("SYS_RESOURCE")
            .with_security_opt("seccomp=unconfined")
            .with_security_opt("apparmor=unconfined")
            .with_cgroupns_mode(CgroupnsMode::Host)
            .with_mount(Mount::bind_mount("/sys/fs/cgroup", "/sys/fs/cgroup"))
            .with_mount(Mount::tmpfs_mount("/run"))
            .with_mount(Mount::tmpfs_mount("/run/lock"))
            .with_mount(Mount::tmpfs_mount("/tmp"));
        if let Some(path) = tmpfs {
            request = request.with_mount(Mount::tmpfs_mount(path));
        }
        for CopyIn { target, source } in files {
            request = request.with_copy_to(target, source);
        }
        if let Some(init) = init {
            request = request.with_cmd(init.iter().copied());
        }
        // Docker answers and the image exists: from here on, a problem is a failure.
        let container = request
            .start()
            .await
            .unwrap_or_else(|e| panic!("the container did not start: {e}"));
        Some(SystemdContainer {
            container,
            boot_time: Duration::ZERO,
        })
    }

    async fn wait_for_boot(&self) {
        let booted = poll_until(Duration::from_secs(60), async || {
            let out = self.sh("systemctl is-system-running").await;
            (matches!(out.stdout.trim(), "running" | "degraded"), out)
        })
        .await;
        if let Err(out) = booted {
            panic!(
                "systemd in the container did not finish booting in 60s: {out}\n{}",
                self.diagnostics().await
            )
        }
    }

    /// The README's installation steps, after the files were copied in.
    async fn install(&self, payload: &Payload) {
        self.check(&format!(
            "chmod 0700 /etc/credstore && \
             systemd-sysusers && \
             systemd-tmpfiles --create batchwatch.conf && \
             useradd --create-home --groups batchwatch {MEMBER} && \
             useradd --create-home {OUTSIDER} && \
             systemctl daemon-reload && \
             systemctl enable {UNIT}"
        ))
        .await;
        for command in &payload.before_start {
            self.check(command).await;
        }
    }

    /// Runs a shell command as root.
    pub async fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script]).await
    }

    /// Runs a shell command as `user`, with that user's groups.
    pub async fn sh_as(&self, user: &str, script: &str) -> Output {
        self.exec(&["runuser", "-u", user, "--", "sh", "-c", script])
            .await
    }

    /// Runs a shell command as root and returns its stdout; panics when it fails.
    pub async fn check(&self, script: &str) -> String {
        let out = self.sh(script).await;
        if !out.success() {
            panic!(
                "in the container, `{script}` failed: {out}\n{}",
                self.diagnostics().await
            );
        }
        out.stdout
    }

    async fn exec(&self, argv: &[&str]) -> Output {
        // Not CmdWaitFor::exit(), which polls every 500 ms: the output streams end when the
        // command exits, and the exit code is there a moment later.
        let mut result = self
            .container
            .exec(ExecCommand::new(argv.iter().copied()))
            .await
            .unwrap_or_else(|e| panic!("docker exec {argv:?}: {e}"));
        let stdout = result.stdout_to_vec().await.unwrap_or_default();
        let stderr = result.stderr_to_vec().await.unwrap_or_default();
        let code = wait_until(
            &format!("the exit code of docker exec {argv:?}"),
            Duration::from_secs(10),
            async || match result.exit_code().await {
                Ok(Some(code)) => (true, Some(code)),
                _ => (false, None),
            },
        )
        .await
        .expect("an exit code");
        Output {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// `systemctl start`, which returns once the service sent READY=1 (or failed).
    /// Returns how long that took, or the failure.
    pub async fn start_unit(&self) -> Result<Duration, Output> {
        let started = Instant::now();
        let out = self.sh(&format!("systemctl start {UNIT}")).await;
        if out.success() {
            Ok(started.elapsed())
        } else {
            Err(out)
        }
    }

    /// `systemctl stop`, which returns once the main process ended. Returns how long it took.
    pub async fn stop_unit(&self) -> Duration {
        let started = Instant::now();
        self.check(&format!("systemctl stop {UNIT}")).await;
        started.elapsed()
    }

    pub async fn state(&self) -> UnitState {
        let out = self
            .check(&format!(
                "systemctl show -p MainPID,ActiveState,SubState,NRestarts,Result,\
                 ExecMainCode,ExecMainStatus,StatusText {UNIT}"
            ))
            .await;
        UnitState::parse(&out)
    }

    /// Polls the unit's state until `done` holds; panics after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&UnitState) -> bool,
    ) -> UnitState {
        let waited = poll_until(timeout, async || {
            let state = self.state().await;
            (done(&state), state)
        })
        .await;
        match waited {
            Ok(state) => state,
            Err(state) => panic!(
                "waited {timeout:?} for {what}; the unit is {state:?}\n{}",
                self.diagnostics().await
            ),
        }
    }

    /// Sends `signal` (SIGSTOP, SIGTERM, ...) to the service's main process only.
    pub async fn signal_main(&self, signal: &str) {
        self.check(&format!(
            "systemctl kill --kill-who=main --signal={signal} {UNIT}"
        ))
        .await;
    }

    /// The unit's journal.
    pub async fn journal(&self) -> String {
        self.sh(&format!("journalctl --no-pager -o short-precise -u {UNIT}"))
            .await
            .stdout
    }

    /// The unit's status and journal, for a failure message.
    pub async fn diagnostics(&self) -> String {
        let status = self
            .sh(&format!("systemctl status --no-pager --full {UNIT}"))
            .await;
        format!(
            "--- systemctl status\n{}\n--- journal\n{}",
            status.stdout.trim_end(),
            self.journal().await.trim_end()
        )
    }
}

/// A file copied into a container before it boots.
pub struct CopyIn {
    target: testcontainers::CopyTargetOptions,
    source: testcontainers::CopyDataSource,
}

/// `source` (a host path, or the bytes themselves) as `path` in the container, with `mode`.
pub fn copy_in(path: &str, mode: u32, source: impl Into<testcontainers::CopyDataSource>) -> CopyIn {
    CopyIn {
        target: testcontainers::CopyTargetOptions::new(path).with_mode(mode),
        source: source.into(),
    }
}

/// Checks that a Docker engine answers and builds the image once per test process
/// (`.ci/debian-image systemd` is idempotent and caches by its recipe). Err says why tests
/// cannot run.
async fn ensure_image() -> Result<(), String> {
    docker::debian_image("systemd").await.map(drop)
}
