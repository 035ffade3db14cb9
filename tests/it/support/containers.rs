//! The project's own static binary in an image built `FROM scratch` at test time, and the
//! simulator and the daemon run from it in containers.
//!
//! Containers run as the owner of the directories mounted into them, so that what they write
//! there belongs to the test (and its temporary directories can be removed).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use batchwatch::sim::{ScriptedFault, Stats};
use batchwatch::store::jobs::Job;
use testcontainers::core::{BuildImageOptions, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::{AsyncBuilder, AsyncRunner};
use testcontainers::{ContainerAsync, GenericBuildableImage, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use super::KEY;
use super::daemon::Env;
use super::daemon::{assert_each_completed_once, requests, settled};
use super::docker;
use super::sim::http_client;
use super::static_bin::static_bin;
use super::{poll_until, wait_until};

/// The image's name; its tag is a hash of its content (see [`image`]).
const IMAGE: &str = "batchwatch-e2e";

/// No `# syntax=` line: that would make the builder pull a front end from a registry.
/// Nothing else goes in: no shell, no /tmp, no CA certificates, no name service.
/// The label lets old images be found and pruned.
const DOCKERFILE: &str = "FROM scratch
LABEL org.batchwatch.e2e=1
COPY batchwatch /batchwatch
ENTRYPOINT [\"/batchwatch\"]
";

/// The port the simulator listens on inside its container.
pub const SIM_PORT: u16 = 8089;

/// The image, built once per test process; None, after saying why, when Docker tests cannot
/// run here. The tag is a hash of what goes in, so a rerun with the same binary reuses the
/// image (testcontainers skips the build when the tag exists) and a new binary gets a new one.
pub async fn image() -> Option<GenericImage> {
    if !docker::available().await {
        return None;
    }
    static BUILT: OnceCell<GenericImage> = OnceCell::const_new();
    let image = BUILT
        .get_or_init(|| async {
            // Minutes on a cold cache: not on a runtime worker.
            let bin = tokio::task::spawn_blocking(static_bin)
                .await
                .expect("building the static binary");
            let tag = content_tag(&bin);
            let started = Instant::now();
            let image = GenericBuildableImage::new(IMAGE, &tag)
                .with_dockerfile_string(DOCKERFILE)
                .with_file(&bin, "batchwatch")
                .build_image_with(BuildImageOptions::new().with_skip_if_exists(true))
                .await
                .unwrap_or_else(|e| panic!("building the image {IMAGE}:{tag}: {e}"));
            println!("image {IMAGE}:{tag} ready in {:?}", started.elapsed());
            prune_old_images().await;
            image
        })
        .await;
    Some(image.clone())
}

/// The first 16 hex digits of the sha256 of the Dockerfile and the binary.
fn content_tag(bin: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    Sha256::new()
        .chain_update(DOCKERFILE)
        .chain_update(&bytes)
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Removes the images earlier binaries left a day ago or more, so they do not pile up. Not
/// newer ones: a test run in another worktree may have built one and not started it yet (and
/// Docker keeps any image a container uses).
async fn prune_old_images() {
    let _ = docker::cli(&[
        "image",
        "prune",
        "--all",
        "--force",
        "--filter",
        "label=org.batchwatch.e2e",
        "--filter",
        "until=24h",
    ])
    .await;
}

/// `UID:GID` of the owner of `dir`, for a container that writes there.
pub fn owner_of(dir: &Path) -> String {
    let meta = std::fs::metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    format!("{}:{}", meta.uid(), meta.gid())
}

/// Whether Docker refused a port mapping because the port was taken.
fn port_taken(error: &str) -> bool {
    error.contains("already allocated") || error.contains("address already in use")
}

/// `batchwatch sim` in a container, its data dir on a host directory, reachable from the host
/// at a fixed port.
pub struct SimContainer {
    container: ContainerAsync<GenericImage>,
    port: u16,
    http: reqwest::Client,
}

impl SimContainer {
    /// Starts `batchwatch sim --data-dir DIR ARGS...` with `data_dir` as its data dir.
    ///
    /// The host port is pinned rather than left to Docker: Docker picks a new port each time a
    /// container with a dynamic mapping starts, and the daemon has one base URL for its whole
    /// life (as it would for a real API), so a restarted simulator must answer where the old
    /// one did. A port taken between our probe and Docker's bind is retried with another.
    pub async fn start(image: GenericImage, data_dir: &Path, args: &[&str]) -> SimContainer {
        // Named, not Docker's "default", so that testcontainers can find the address on it
        // (see `base_url_for_containers`).
        SimContainer::start_on(image, data_dir, args, "bridge").await
    }

    /// As [`SimContainer::start`], on the Docker network `network`.
    pub async fn start_on(
        image: GenericImage,
        data_dir: &Path,
        args: &[&str],
        network: &str,
    ) -> SimContainer {
        let mut cmd = vec![
            "sim".to_owned(),
            "--listen".to_owned(),
            format!("0.0.0.0:{SIM_PORT}"),
            "--data-dir".to_owned(),
            "/data".to_owned(),
        ];
        cmd.extend(args.iter().map(|a| (*a).to_owned()));
        let mut attempts = 0;
        loop {
            let port = super::unused_port();
            let started = image
                .clone()
                .with_wait_for(WaitFor::message_on_stdout("listening on"))
                .with_cmd(cmd.clone())
                .with_mount(Mount::bind_mount(
                    data_dir.to_str().expect("a UTF-8 path"),
                    "/data",
                ))
                .with_user(owner_of(data_dir))
                .with_mapped_port(port, SIM_PORT.tcp())
                .with_network(network)
                .with_startup_timeout(Duration::from_secs(30))
                .start()
                .await;
            match started {
                Ok(container) => {
                    return SimContainer {
                        container,
                        port,
                        http: http_client(),
                    };
                }
                Err(e) if attempts < 3 && port_taken(&e.to_string()) => {
                    attempts += 1;
                }
                Err(e) => panic!("the simulator container did not start: {e}"),
            }
        }
    }

    /// Where the simulator is reached from the host.
    pub fn host_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The API's base URL from the host.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.host_addr())
    }

    /// The API's base URL from another container: the simulator's address on its network (a
    /// static binary in a scratch image cannot resolve names).
    pub async fn base_url_for_containers(&self) -> String {
        let ip = self
            .container
            .get_bridge_ip_address()
            .await
            .expect("the simulator's bridge address");
        format!("http://{ip}:{SIM_PORT}/v1")
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}/admin{path}", self.host_addr())
    }

    /// Whether the admin API answers within `within`.
    pub async fn answers_within(&self, within: Duration) -> bool {
        self.http
            .get(self.admin("/clock"))
            .timeout(within)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The simulator's statistics: batches per job, every batch's history.
    pub async fn stats(&self) -> Stats {
        let response = self
            .http
            .get(self.admin("/stats"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("GET /admin/stats");
        assert!(response.status().is_success(), "{response:?}");
        response.json().await.expect("stats as JSON")
    }

    /// Appends a fault to the simulator's script (its admin API).
    pub async fn push_fault(&self, fault: &ScriptedFault) {
        let response = self
            .http
            .post(self.admin("/faults/script"))
            .json(fault)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("POST /admin/faults/script");
        assert!(response.status().is_success(), "{response:?}");
    }

    /// Changes the simulated clock's speed (0 stops it) through the admin API.
    pub async fn set_time_scale(&self, scale: f64) {
        let response = self
            .http
            .post(self.admin("/clock"))
            .json(&serde_json::json!({ "time_scale": scale }))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("POST /admin/clock");
        assert!(response.status().is_success(), "{response:?}");
    }

    /// Waits until the simulator has created `n` batches (or more).
    pub async fn wait_batches(&self, n: usize, timeout: Duration) -> Stats {
        wait_until(
            &format!("{n} batches in the simulator"),
            timeout,
            async || {
                let stats = self.stats().await;
                (stats.batches.len() >= n, stats)
            },
        )
        .await
    }

    /// Freezes every process of the container: connections are still accepted by the kernel,
    /// but nothing answers.
    pub async fn pause(&self) {
        self.container.pause().await.expect("docker pause");
    }

    pub async fn unpause(&self) {
        self.container.unpause().await.expect("docker unpause");
    }

    /// `docker stop`: SIGTERM, on which the simulator saves its state and exits 0.
    pub async fn stop(&self) {
        self.container
            .stop_with_timeout(Some(10))
            .await
            .expect("docker stop");
        let code = self.container.exit_code().await.expect("exit code");
        assert_eq!(
            code,
            Some(0),
            "the simulator's exit on SIGTERM; log:\n{}",
            self.logs().await
        );
    }

    /// `docker start` of the stopped container, then waits until it answers.
    pub async fn start_again(&self) {
        self.container.start().await.expect("docker start");
        wait_until(
            "the restarted simulator to answer",
            Duration::from_secs(30),
            async || (self.answers_within(Duration::from_secs(1)).await, ()),
        )
        .await;
    }

    /// Everything the simulator printed.
    pub async fn logs(&self) -> String {
        logs(&self.container).await
    }
}

async fn logs(container: &ContainerAsync<GenericImage>) -> String {
    let out = container.stdout_to_vec().await.unwrap_or_default();
    let err = container.stderr_to_vec().await.unwrap_or_default();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    )
}

/// `batchwatch run` in a container, on the [`Env`]'s sandbox, mounted at the same path so its
/// configuration's paths hold inside, and the test reads the queue and database as they are.
pub struct DaemonContainer {
    container: ContainerAsync<GenericImage>,
}

impl DaemonContainer {
    /// Starts the daemon with the key in its environment; returns once it logged its start.
    pub async fn start(image: GenericImage, env: &Env) -> DaemonContainer {
        let root = env.sandbox.path().to_str().expect("a UTF-8 path");
        let config = env.config.to_str().expect("a UTF-8 path");
        let container = image
            .with_wait_for(WaitFor::message_on_stderr("batchwatch started"))
            .with_cmd(["--config", config, "run"])
            .with_mount(Mount::bind_mount(root, root))
            .with_user(owner_of(env.sandbox.path()))
            .with_env_var("OPENAI_API_KEY", KEY)
            .with_env_var("RUST_LOG", "info,batchwatch=debug")
            .with_startup_timeout(Duration::from_secs(30))
            .start()
            .await
            .unwrap_or_else(|e| panic!("the daemon container did not start: {e}"));
        DaemonContainer { container }
    }

    /// `docker kill`: SIGKILL to the daemon (PID 1), so the container dies at once. Returns
    /// its log.
    pub async fn kill(self) -> String {
        docker::must(&["kill", "--signal", "KILL", self.container.id()]).await;
        let code = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(code, 137, "killed by SIGKILL (128 + 9)");
        self.logs().await
    }

    /// `docker stop`: SIGTERM to the daemon as PID 1, which ignores signals it has no handler
    /// for; returns the exit code and how long the stop took (Docker kills after 10 s).
    pub async fn stop(&self) -> (i64, Duration) {
        let started = Instant::now();
        self.container
            .stop_with_timeout(Some(10))
            .await
            .expect("docker stop");
        let took = started.elapsed();
        (self.wait_exit(Duration::from_secs(5)).await, took)
    }

    async fn wait_exit(&self, timeout: Duration) -> i64 {
        wait_until("the daemon container to exit", timeout, async || {
            let code = self.container.exit_code().await.expect("exit code");
            (code.is_some(), code)
        })
        .await
        .expect("an exit code")
    }

    /// Waits until there are `n` jobs, all finished and their files moved on; panics with
    /// their states and the log tail after `timeout`, and at once if the daemon exits.
    pub async fn wait_finished(&self, env: &Env, n: usize, timeout: Duration) -> Vec<Job> {
        let waited = poll_until(timeout, async || {
            let jobs = env.jobs().await;
            let running = self.container.is_running().await.expect("container state");
            let finished = jobs.len() == n && jobs.iter().all(settled);
            // A daemon that exited ends the wait at once, as a failure.
            (finished || !running, (finished, running, jobs))
        })
        .await;
        let (finished, running, jobs) = waited.unwrap_or_else(|last| last);
        if finished {
            return jobs;
        }
        let states: Vec<String> = jobs
            .iter()
            .map(|j| format!("{} {} {:?} at {}", j.file_name, j.state, j.reason, j.path))
            .collect();
        let log = self.logs().await;
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{} with {} jobs:\n{}\nlog tail:\n{}",
            if running {
                "timed out"
            } else {
                "the daemon exited"
            },
            jobs.len(),
            states.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Everything the daemon logged.
    pub async fn logs(&self) -> String {
        logs(&self.container).await
    }
}

/// Simulator flags that take a batch through its life in about a second of real time.
pub const QUICK_SIM: &[&str] = &[
    "--time-scale",
    "300",
    "--seed",
    "7",
    "--validating-secs",
    "6",
    "--in-progress-secs",
    "90",
    "--request-secs",
    "0.5",
    "--finalizing-secs",
    "6",
];

/// The set-up every end-to-end test starts from: the image, a quick simulator in a container
/// on a data directory of its own, a daemon's [`Env`] pointed at it, and the files the test
/// dropped so far.
pub struct Scenario {
    pub image: GenericImage,
    /// The simulator's data directory; a simulator started again on it keeps its batches.
    pub data: tempfile::TempDir,
    pub sim: SimContainer,
    pub env: Env,
    /// What was dropped: (name, content) pairs.
    pub files: Vec<(String, String)>,
}

impl Scenario {
    /// The set-up for a daemon run on the host, with `extra` configuration; None, after saying
    /// why, when Docker tests cannot run here.
    pub async fn start(extra: &str) -> Option<Scenario> {
        Scenario::build(extra, false).await
    }

    /// As [`Scenario::start`], for a daemon that runs in a container of its own
    /// ([`DaemonContainer`]) and so reaches the simulator at its bridge address.
    pub async fn for_daemon_containers(extra: &str) -> Option<Scenario> {
        Scenario::build(extra, true).await
    }

    async fn build(extra: &str, from_containers: bool) -> Option<Scenario> {
        let image = image().await?;
        let data = tempfile::tempdir().expect("temp dir");
        let started = Instant::now();
        let sim = SimContainer::start(image.clone(), data.path(), QUICK_SIM).await;
        println!("simulator container up in {:?}", started.elapsed());
        let base_url = if from_containers {
            sim.base_url_for_containers().await
        } else {
            sim.base_url()
        };
        let env = Env::new(&base_url, extra);
        Some(Scenario {
            image,
            data,
            sim,
            env,
            files: Vec::new(),
        })
    }

    /// Drops `count` files named `TAG-N.jsonl` of a few requests each.
    pub fn drop_files(&mut self, tag: &str, count: usize) {
        for i in 0..count {
            let name = format!("{tag}-{i}.jsonl");
            let content = requests(&format!("{tag}{i}"), 2 + i % 4, "gpt-4o-mini");
            self.env.drop_file(&name, content.as_bytes());
            self.files.push((name, content));
        }
    }

    /// What must hold when every dropped file went through
    /// ([`assert_each_completed_once`]), by `stats` from the simulator that ran them.
    pub fn assert_each_completed_once(&self, jobs: &[Job], stats: &Stats, what: &str) {
        assert_each_completed_once(&self.env, jobs, stats, &self.files, what);
    }
}
