//! The real daemon binary against an in-process simulator, with a queue, database and
//! configuration of its own, fast intervals, and an API key that must never show up anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use batchwatch::model::JobState;
use batchwatch::sim::SimConfig;
use batchwatch::store::jobs::Job;
use batchwatch::store::prelude::*;
use batchwatch::store::{Access, Store, batches};

use super::process::{Running, command};
use super::sim::{TestSim, spawn_sim};
use super::{KEY, Sandbox, poll_until, read_json, wait_until};

/// Settings that make a whole lifecycle take well under a second.
const FAST: &str = r#"
[queue]
scan_interval = "50ms"
settle_time = "20ms"

[api]
connect_timeout = "2s"
request_timeout = "5s"
retry_attempts = 3
retry_initial_delay = "20ms"
retry_max_delay = "200ms"

[poll]
min_interval = "20ms"
max_interval = "200ms"

[limits]
requests_per_second = 1000.0
concurrency = 8

[backoff]
token_limit_initial = "200ms"
token_limit_max = "1s"
auth_retry = "200ms"
failed_request = "40ms"
failed_task_initial = "20ms"
failed_task_max = "1s"

[reconcile]
duplicate_check_interval = "2s"

[daemon]
shutdown_timeout = "3s"

# Tests run side by side: none takes the default port. Those about the endpoint set a port.
[metrics]
listen = ""
"#;

/// A simulator whose batches run through their whole life in a fraction of a second.
pub fn quick_sim() -> SimConfig {
    SimConfig {
        time_scale: 300.0,
        seed: Some(7),
        validating_secs: 6.0,
        in_progress_secs: 90.0,
        request_secs: 0.5,
        finalizing_secs: 6.0,
        cancelling_secs: 6.0,
        ..SimConfig::default()
    }
}

/// A simulator whose batches stay in progress for about `real_secs` seconds.
pub fn slow_sim(real_secs: f64) -> SimConfig {
    SimConfig {
        in_progress_secs: real_secs * 300.0,
        request_secs: 0.0,
        ..quick_sim()
    }
}

/// Deep-merges `extra` over `base` (TOML tables).
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Capabilities a test may take from a daemon started by root (linux/capability.h).
pub const CAP_DAC_OVERRIDE: libc::c_ulong = 1;
pub const CAP_DAC_READ_SEARCH: libc::c_ulong = 2;
pub const CAP_LEASE: libc::c_ulong = 28;

/// A daemon's surroundings: sandbox, configuration file, queue and database.
pub struct Env {
    pub sandbox: Sandbox,
    pub config: PathBuf,
    /// queue.dir: the sandbox's `queue/` unless placed elsewhere.
    pub queue: PathBuf,
    /// database.path: the sandbox's `state.db` unless placed elsewhere.
    pub db: PathBuf,
    /// database.url, when the database is a PostgreSQL one ([`Env::on`]).
    pub postgres: Option<String>,
}

/// Whether a job is done with: a final state, and its file moved on out of processing/. The
/// final state is committed before the file's last move, so a job only in a final state may
/// still be recorded in processing/ a moment longer.
pub fn settled(job: &Job) -> bool {
    job.state.is_terminal() && !job.path.starts_with("processing/")
}

/// The store a daemon test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Env {
    /// As [`Env::new`], on `backend`: a fresh PostgreSQL database of the test server for
    /// `Backend::Postgres` (None, after saying why, when there is no server).
    pub async fn on(backend: Backend, base_url: &str, extra: &str) -> Option<Env> {
        Some(match backend {
            Backend::Sqlite => Env::new(base_url, extra),
            Backend::Postgres => {
                let url = crate::support::postgres::database().await?;
                let env = Env::new(base_url, extra);
                env.configure(&format!("[database]\nurl = {url:?}\n"));
                Env {
                    postgres: Some(url),
                    ..env
                }
            }
        })
    }
}

impl Env {
    /// Configuration for the API at `base_url`, with `extra` TOML over the fast defaults.
    pub fn new(base_url: &str, extra: &str) -> Env {
        Env::placed(base_url, extra, None, None)
    }

    /// As [`Env::new`], with the queue tree and the database where given (another file
    /// system, say).
    pub fn placed(base_url: &str, extra: &str, queue: Option<&Path>, db: Option<&Path>) -> Env {
        let sandbox = Sandbox::new();
        let queue = queue.map_or_else(|| sandbox.queue_dir(), Path::to_path_buf);
        let db = db.map_or_else(|| sandbox.db_path(), Path::to_path_buf);
        let mut table: toml::Table = FAST.parse().expect("FAST is TOML");
        let paths = format!(
            "[queue]\ndir = {:?}\n[database]\npath = {:?}\n[api]\nbase_url = {:?}\n",
            queue.display().to_string(),
            db.display().to_string(),
            base_url
        );
        merge(&mut table, paths.parse().expect("paths are TOML"));
        merge(&mut table, extra.parse().expect("extra is TOML"));
        let config = sandbox.path().join("batchwatch.toml");
        std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
        Env {
            sandbox,
            config,
            queue,
            db,
            postgres: None,
        }
    }

    /// Points the configuration at another API address, as an operator would edit it.
    pub fn set_base_url(&self, base_url: &str) {
        self.configure(&format!("[api]\nbase_url = {base_url:?}\n"));
    }

    /// Merges `extra` TOML into the configuration file, as an operator would edit it.
    pub fn configure(&self, extra: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut table: toml::Table = text.parse().expect("the configuration is TOML");
        merge(&mut table, extra.parse().expect("extra is TOML"));
        std::fs::write(&self.config, toml::to_string(&table).unwrap()).unwrap();
    }

    pub fn dir(&self, sub: &str) -> PathBuf {
        self.queue.join(sub)
    }

    /// `batchwatch run` with this configuration and the key, `vars` added to its environment.
    fn run_command(&self, vars: &[(&str, &str)]) -> std::process::Command {
        let mut cmd = command(Some(&self.config));
        cmd.arg("run")
            .env("OPENAI_API_KEY", KEY)
            .env("RUST_LOG", "info,batchwatch=debug");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd
    }

    fn start(cmd: std::process::Command) -> Running {
        let mut daemon = Running::spawn(cmd);
        daemon.wait_for_line("batchwatch started", Duration::from_secs(30));
        daemon
    }

    /// Starts `batchwatch run` without waiting for it to start: for one that should not.
    pub fn spawn_refused(&self) -> Running {
        Running::spawn(self.run_command(&[]))
    }

    /// Starts `batchwatch run`, with `vars` added to its environment.
    pub fn spawn_with(&self, vars: &[(&str, &str)]) -> Running {
        Self::start(self.run_command(vars))
    }

    /// Starts `batchwatch run` in a pid namespace of its own (`unshare --pid --fork`, which
    /// needs root), as a container on this host runs; None, after saying why, where that is
    /// not allowed, unless `BATCHWATCH_REQUIRE_NAMESPACES=1` (which `.ci/run` sets): then the
    /// test fails. Its process is `unshare`'s child, killed with it.
    pub fn spawn_in_own_pid_namespace(&self) -> Option<Running> {
        let unshare = ["--pid", "--fork", "--kill-child", "--"];
        let reason = match std::process::Command::new("unshare")
            .args(unshare)
            .arg("true")
            .output()
        {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "cannot make a pid namespace ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run unshare: {e}")),
        };
        if let Some(reason) = reason {
            if std::env::var("BATCHWATCH_REQUIRE_NAMESPACES").as_deref() == Ok("1") {
                panic!("BATCHWATCH_REQUIRE_NAMESPACES=1, but {reason}");
            }
            eprintln!("skipped: {reason}");
            return None;
        }
        let inner = self.run_command(&[]);
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(unshare)
            .arg(inner.get_program())
            .args(inner.get_args());
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        if let Some(dir) = inner.get_current_dir() {
            cmd.current_dir(dir);
        }
        Some(Self::start(cmd))
    }

    /// Starts `batchwatch run` under the file-creation mask `umask`, as systemd's `UMask=` does.
    pub fn spawn_with_umask(&self, umask: u32) -> Running {
        // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's own mask.
        self.spawn_prepared(move || {
            unsafe { libc::umask(umask as libc::mode_t) };
            Ok(())
        })
    }

    /// Starts `batchwatch run` with `soft` and `hard` limits of open files, as systemd's
    /// `LimitNOFILE=SOFT:HARD` does.
    pub fn spawn_with_open_files(&self, soft: u64, hard: u64) -> Running {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        self.spawn_prepared(move || {
            // SAFETY: setrlimit(2) is async-signal-safe and reads only the struct it is given.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }

    /// Starts `batchwatch run` after `prepare` ran in the child, just before the program.
    fn spawn_prepared(
        &self,
        prepare: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Running {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.run_command(&[]);
        // SAFETY: every `prepare` given above makes only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(prepare);
        }
        Self::start(cmd)
    }

    /// Starts `batchwatch run` without CAP_LEASE (dropped from its bounding set, so that a
    /// daemon started by root no longer has it): it can take read leases on its own files
    /// only, as the service can under the unit's `PrivateUsers=yes`. Needs root.
    pub fn spawn_without_cap_lease(&self) -> Running {
        self.spawn_without_caps(&[CAP_LEASE])
    }

    /// Starts `batchwatch run` without the capabilities `caps` (numbers from
    /// linux/capability.h), dropped from its bounding set so that a daemon started by root no
    /// longer has them. Needs root.
    pub fn spawn_without_caps(&self, caps: &'static [libc::c_ulong]) -> Running {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.run_command(&[]);
        // SAFETY: prctl(2) is async-signal-safe and changes nothing but the child's own set.
        unsafe {
            cmd.pre_exec(move || {
                for &cap in caps {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Self::start(cmd)
    }

    pub fn spawn(&self) -> Running {
        self.spawn_with(&[])
    }

    /// Drops a file into incoming/ the way a careful writer does: write a `.part`, then rename.
    pub fn drop_file(&self, name: &str, content: &[u8]) {
        let incoming = self.dir("incoming");
        std::fs::create_dir_all(&incoming).unwrap();
        // A short temporary name: `.NAME.part` could be longer than a name may be.
        static DROPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = DROPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let part = incoming.join(format!(".drop-{n}.part"));
        std::fs::write(&part, content).unwrap();
        std::fs::rename(&part, incoming.join(name)).unwrap();
    }

    /// Opens the database read-only, once it exists.
    pub async fn store(&self) -> Store {
        let Some(url) = &self.postgres else {
            return Store::Sqlite(self.sqlite().await);
        };
        let location = batchwatch::config::DatabaseLocation::Postgres(url.clone());
        let opened =
            wait_until(
                "the database",
                Duration::from_secs(30),
                async || match Store::open_at(
                    &location,
                    None,
                    Duration::from_secs(5),
                    Access::ReadOnly,
                )
                .await
                {
                    Ok(store) => (true, Ok(store)),
                    Err(e) => (false, Err(e.to_string())),
                },
            )
            .await;
        opened.expect("opened")
    }

    /// Opens the database read-only as the SQLite store, once it exists: for the tests that
    /// query its schema as users do.
    pub async fn sqlite(&self) -> batchwatch_store_sqlite::Store {
        let opened = wait_until("the database", Duration::from_secs(30), async || {
            match batchwatch_store_sqlite::Store::open(
                &self.db,
                Duration::from_secs(5),
                Access::ReadOnly,
            )
            .await
            {
                Ok(store) => (true, Ok(store)),
                Err(e) => (false, Err(e.to_string())),
            }
        })
        .await;
        opened.expect("opened")
    }

    /// Every job, oldest first.
    pub async fn jobs(&self) -> Vec<Job> {
        let store = self.store().await;
        let all = store.jobs_in_states(JobState::ALL).await.unwrap();
        store.close().await;
        all
    }

    /// The submissions of job `job_id`, in order (none for an unknown job).
    pub async fn submissions(&self, job_id: &str) -> Vec<batches::Submission> {
        let store = self.store().await;
        let all = store.submissions_of(job_id).await.unwrap();
        store.close().await;
        all
    }

    /// Waits until there are `n` jobs, all finished and their files moved on; panics with their
    /// states after `timeout`, and at once if `daemon` exits.
    pub async fn wait_finished(
        &self,
        n: usize,
        timeout: Duration,
        daemon: &mut Running,
    ) -> Vec<Job> {
        self.wait_finished_by(n, timeout, &mut [daemon]).await
    }

    /// As [`Env::wait_finished`], with several daemons at work: panics at once if any exits,
    /// and with each one's log tail after `timeout`.
    pub async fn wait_finished_by(
        &self,
        n: usize,
        timeout: Duration,
        daemons: &mut [&mut Running],
    ) -> Vec<Job> {
        let waited = poll_until(timeout, async || {
            let jobs = self.jobs().await;
            for daemon in daemons.iter_mut() {
                if let Some(status) = daemon.child.try_wait().unwrap() {
                    daemon.drain();
                    panic!(
                        "a daemon exited ({status}) before the jobs finished; saw:\n{}",
                        daemon.seen.join("\n")
                    );
                }
            }
            (jobs.len() == n && jobs.iter().all(settled), jobs)
        })
        .await;
        waited.unwrap_or_else(|jobs| {
            let states: Vec<String> = jobs
                .iter()
                .map(|j| format!("{} {} {:?} at {}", j.file_name, j.state, j.reason, j.path))
                .collect();
            let mut tails = Vec::new();
            for daemon in daemons.iter_mut() {
                daemon.drain();
                let tail = daemon.seen.len().saturating_sub(40);
                tails.push(daemon.seen[tail..].join("\n"));
            }
            panic!(
                "after {timeout:?}: {} jobs, states:\n{}\nlog tail:\n{}",
                jobs.len(),
                states.join("\n"),
                tails.join("\n---\n")
            );
        })
    }

    /// How many result lines the job's output.jsonl holds (0 when there is none).
    pub fn output_lines(&self, job: &Job) -> usize {
        let dir = self
            .queue
            .join(job.results_dir.as_deref().expect("a results dir"));
        std::fs::read_to_string(dir.join("output.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Names in a queue subdirectory, sorted.
    pub fn names(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir(sub))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Stops the daemon with SIGTERM and checks that it exits 0 in time, and that its log
    /// never showed the key.
    pub fn stop(&self, mut daemon: Running) -> Vec<String> {
        daemon.signal(libc::SIGTERM);
        let (status, took) = daemon.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.code(),
            Some(0),
            "exit after SIGTERM; log:\n{}",
            daemon.seen.join("\n")
        );
        assert!(took < Duration::from_secs(5), "stopping took {took:?}");
        assert_key_absent(&daemon.seen);
        std::mem::take(&mut daemon.seen)
    }

    /// Checks that nothing the daemon wrote (database, queue tree, results) holds the key.
    pub fn assert_key_nowhere_on_disk(&self) {
        for path in walk(self.sandbox.path()) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                "the API key is in {}",
                path.display()
            );
        }
    }
}

/// Checks the world once every file went through: one job per file, each completed once (one
/// batch on the service, one attempt counted), its file unchanged in done/ where the database
/// says it is, every result downloaded and each request answered once; no batch without a job; nothing left in incoming/,
/// processing/ or failed/. `what` names the case in the messages.
pub fn assert_each_completed_once(
    env: &Env,
    jobs: &[Job],
    stats: &batchwatch::sim::Stats,
    files: &[(String, String)],
    what: &str,
) {
    assert_eq!(jobs.len(), files.len(), "{what}: one job per file");
    for job in jobs {
        let name = &job.file_name;
        assert_eq!(
            job.state,
            JobState::Completed,
            "{what}: {name}: {:?}",
            job.reason
        );
        assert_eq!(
            stats.batches_by_job.get(&job.id),
            Some(&1),
            "{what}: {name} has one batch on the service"
        );
        assert_eq!(job.attempts, 1, "{what}: {name}: one attempt counted");
        assert!(
            env.queue.join(&job.path).is_file(),
            "{what}: {name}: the database says the file is at {}, and it is not",
            job.path
        );
        let results = env
            .queue
            .join(job.results_dir.as_deref().expect("a results dir"));
        let output = std::fs::read_to_string(results.join("output.jsonl")).unwrap_or_default();
        let answered: std::collections::BTreeSet<String> = output
            .lines()
            .map(|l| {
                let line: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                line["custom_id"].as_str().expect("a custom_id").to_owned()
            })
            .collect();
        assert_eq!(
            (Some(output.lines().count() as i64), answered.len() as i64),
            (job.request_count, job.request_count.unwrap_or(-1)),
            "{what}: {name}: every result downloaded, each request answered once"
        );
    }
    assert_eq!(
        stats.batches_by_job.len(),
        jobs.len(),
        "{what}: no batch without a job"
    );
    for (name, content) in files {
        assert_eq!(
            &std::fs::read_to_string(env.dir("done").join(name)).unwrap(),
            content,
            "{what}: {name} is in done/, unchanged"
        );
    }
    for sub in ["incoming", "processing", "failed"] {
        assert!(
            env.names(sub).is_empty(),
            "{what}: {sub}/ holds {:?}",
            env.names(sub)
        );
    }
}

/// Panics if any line holds the key.
pub fn assert_key_absent(lines: &[String]) {
    if let Some(line) = lines.iter().find(|l| l.contains(KEY)) {
        panic!("the API key appeared in a log line: {line}");
    }
}

/// Every regular file under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&path)),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

/// Waits for a process to exit by itself (a crash point) and returns how it ended.
pub fn wait_crash(daemon: &mut Running, timeout: Duration) -> ExitStatus {
    daemon.wait_exit(timeout).0
}

/// The custom_ids of a JSONL file (requests or results), in order.
pub fn custom_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A JSONL file of `n` chat requests for `model`, ids prefixed with `tag`.
pub fn requests(tag: &str, n: usize, model: &str) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"custom_id\":\"{tag}-{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"question {i} of {tag}\"}}]}}}}\n"
            )
        })
        .collect()
}

/// A simulator that completes batches quickly but answers 500 on every result download.
pub async fn sim_that_never_serves_results() -> TestSim {
    use batchwatch::sim::{ErrorStatus, FaultKind, ScriptedFault};
    let sim = spawn_sim(quick_sim()).await;
    sim.handle
        .push_fault(
            ScriptedFault::new(FaultKind::Status {
                status: ErrorStatus::try_from(500).unwrap(),
            })
            .times(1_000_000)
            .on("GET", "/v1/files/{file_id}/content"),
        )
        .await;
    sim
}

/// Checks a job that gave up on its results: failed, results_unavailable naming the file and
/// `after`, its file in failed/ with that reason.
pub async fn assert_gave_up_on_results(env: &Env, job: &Job, name: &str, after: &str) {
    assert_eq!(job.state, JobState::Failed, "{:?}", job.reason);
    assert_eq!(job.reason_code.as_deref(), Some("results_unavailable"));
    let store = env.store().await;
    let sub = &store.submissions_of(&job.id).await.unwrap()[0];
    let events = store.job_events(&job.id).await.unwrap();
    store.close().await;
    let output = sub.output_id.clone().expect("an output file");
    let reason = job.reason.as_deref().unwrap();
    assert!(
        reason.contains(&format!("the output file {output} could not be downloaded")),
        "{reason}"
    );
    let unavailable = sub.results_unavailable.as_deref().unwrap();
    assert!(unavailable.contains("500"), "the last error: {unavailable}");
    assert!(
        events.iter().any(|e| e.message.contains(after)),
        "the events say why it gave up ({after}): {events:#?}"
    );
    assert_eq!(
        read_json(&env.dir("failed").join(format!("{name}.reason.json")))["code"],
        "results_unavailable"
    );
}

/// Checks from the simulator's own record that no job ever had two batches alive at once;
/// returns the number of batches per job.
pub async fn assert_never_two_live_batches(sim: &TestSim) -> BTreeMap<String, u64> {
    const TERMINAL: [&str; 4] = ["completed", "failed", "expired", "cancelled"];
    let stats = sim.handle.stats().await;
    let mut by_job: BTreeMap<String, Vec<&batchwatch::sim::BatchStats>> = BTreeMap::new();
    for b in &stats.batches {
        by_job
            .entry(b.job_id.clone().expect("every batch carries its job id"))
            .or_default()
            .push(b);
    }
    for (job, mut list) in by_job {
        list.sort_by_key(|b| b.history.first().map(|t| t.real_at_ms));
        for pair in list.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            let end = earlier.history.last().unwrap();
            assert!(
                TERMINAL.contains(&end.status.as_str()),
                "job {job}: {} still {} when {} was made",
                earlier.id,
                end.status,
                later.id
            );
            assert!(
                end.real_at_ms <= later.history[0].real_at_ms,
                "job {job}: {} and {} overlapped",
                earlier.id,
                later.id
            );
        }
    }
    stats.batches_by_job
}

/// Waits until job `job_id` has two batches on the service, one of them cancelled (a late
/// duplicate, found and cancelled): that one.
pub async fn wait_duplicate_cancelled(
    sim: &TestSim,
    job_id: &str,
    timeout: Duration,
) -> batchwatch::sim::BatchStats {
    wait_until(
        "the late batch cancelled as a duplicate",
        timeout,
        async || {
            let stats = sim.handle.stats().await;
            let mine: Vec<_> = stats
                .batches
                .into_iter()
                .filter(|b| b.job_id.as_deref() == Some(job_id))
                .collect();
            let cancelled = mine.iter().find(|b| b.status == "cancelled").cloned();
            let seen: Vec<(String, String)> = mine
                .iter()
                .map(|b| (b.id.clone(), b.status.clone()))
                .collect();
            (mine.len() == 2 && cancelled.is_some(), (cancelled, seen))
        },
    )
    .await
    .0
    .expect("a cancelled batch")
}

/// Checks that the late duplicate `duplicate` of job `job_id` was reported in the daemon's
/// `log` and in the job's events, and that the job's one submission is its own batch, created
/// again after reconciliation found none.
pub async fn assert_duplicate_reported(
    log: &[String],
    store: &Store,
    job_id: &str,
    duplicate: &str,
) {
    assert!(
        log.iter().any(|l| l.contains("duplicated batch")),
        "the duplicate is reported"
    );
    let events = store.job_events(job_id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains(&format!("batch {duplicate} duplicated"))),
        "{events:?}"
    );
    let subs = store.submissions_of(job_id).await.unwrap();
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_ne!(subs[0].remote_id.as_deref(), Some(duplicate));
    assert!(
        subs[0].resent_at.is_some(),
        "the job's own create was a re-send"
    );
}
