//! `batchwatch sim` as a real process: it prints its address, serves, streams large files
//! through disk, and exits 0 on SIGTERM and SIGINT.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::KEY;
use crate::support::sim::http_client;

/// A `batchwatch sim` child process and the base URL it printed.
struct SimProcess {
    child: Child,
    base_url: String,
    data_dir: PathBuf,
}

async fn spawn_process(extra: &[&str]) -> SimProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchwatch"))
        .args(["sim", "--listen", "127.0.0.1:0", "--time-scale", "1000"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting batchwatch sim");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the simulator prints its address promptly")
            .expect("reading stdout")
            .expect("another line")
    };
    let first = next_line().await;
    let base_url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the first line is {first:?}"))
        .to_owned();
    let data_dir = loop {
        if let Some(dir) = next_line().await.strip_prefix("data dir: ") {
            break PathBuf::from(dir);
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    SimProcess {
        child,
        base_url,
        data_dir,
    }
}

/// A test that fails half-way still stops its simulator, with SIGTERM so that it removes its
/// data directory (SIGKILL would leave a 150 MB upload behind).
impl Drop for SimProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we own; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
}

impl SimProcess {
    fn pid(&self) -> i32 {
        self.child.id().expect("the child is running") as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// The process's peak resident set size (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Waits for the exit, at most one second; returns the exit code.
    async fn exit_code_within_a_second(&mut self) -> Option<i32> {
        let started = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(1), self.child.wait())
            .await
            .expect("the simulator exits within a second")
            .expect("waiting for the simulator");
        eprintln!("the simulator exited in {:?}", started.elapsed());
        status.code()
    }
}

async fn exits_cleanly_on(signal: i32) {
    let mut sim = spawn_process(&[]).await;
    assert!(sim.base_url.starts_with("http://127.0.0.1:") && sim.base_url.ends_with("/v1"));
    let response = http_client()
        .get(format!("{}/batches", sim.base_url))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(sim.data_dir.is_dir());
    sim.signal(signal);
    assert_eq!(sim.exit_code_within_a_second().await, Some(0));
    assert!(
        !sim.data_dir.exists(),
        "the temporary data dir {} is removed at exit",
        sim.data_dir.display()
    );
}

#[tokio::test]
async fn sim_runs_standalone_prints_its_address_and_exits_0_on_sigterm() {
    exits_cleanly_on(libc::SIGTERM).await;
}

#[tokio::test]
async fn sim_exits_0_on_sigint() {
    exits_cleanly_on(libc::SIGINT).await;
}

/// A script that sends SIGTERM as soon as it has read the banner gets a clean stop every time:
/// the handlers are in place before the banner is written (they were not, and a signal in that
/// window killed the simulator without saving or cleaning up).
#[tokio::test]
async fn sigterm_right_after_the_banner_is_a_clean_stop() {
    for _ in 0..10 {
        let mut sim = spawn_process(&[]).await;
        sim.signal(libc::SIGTERM);
        assert_eq!(sim.exit_code_within_a_second().await, Some(0));
        assert!(!sim.data_dir.exists(), "{}", sim.data_dir.display());
    }
}

/// A caller that reads the address and closes the pipe (or never opens one) must not bring
/// the simulator down: its stdout is closed before it writes a byte, and it serves anyway.
#[tokio::test]
async fn sim_serves_on_when_nobody_reads_its_stdout() {
    let port = crate::support::unused_port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchwatch"))
        .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .spawn()
        .unwrap();
    let stats = format!("http://127.0.0.1:{port}/admin/stats");
    let http = http_client();
    crate::support::wait_until(
        "the simulator to answer",
        Duration::from_secs(10),
        async || {
            if let Ok(response) = http.get(&stats).send().await {
                assert_eq!(response.status(), StatusCode::OK);
                return (true, ());
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the simulator exited ({status}) with its stdout closed");
            }
            (false, ())
        },
    )
    .await;
    // Still there a moment later, and it stops cleanly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(child.try_wait().unwrap().is_none(), "the simulator died");
    // SAFETY: kill(2) with a pid we own; no memory is involved.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sim_refuses_bad_flags_with_a_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_batchwatch"))
        .args(["sim", "--rate-limit", "1.5"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--rate-limit"), "{stderr}");
}

/// Writes a batch input file of about `bytes` bytes; returns its SHA-256.
fn write_big_input(path: &std::path::Path, bytes: usize) -> Vec<u8> {
    let file = std::fs::File::create(path).unwrap();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let filler = "x".repeat(900);
    let mut written = 0;
    let mut i = 0u64;
    while written < bytes {
        let line = format!(
            "{{\"custom_id\":\"r{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{filler}\"}}]}}}}\n"
        );
        out.write_all(line.as_bytes()).unwrap();
        hasher.update(line.as_bytes());
        written += line.len();
        i += 1;
    }
    out.flush().unwrap();
    hasher.finalize().to_vec()
}

#[tokio::test]
async fn a_150_mb_upload_streams_through_disk_without_the_simulator_growing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let digest = write_big_input(&path, 150_000_000);
    let size = std::fs::metadata(&path).unwrap().len();

    let mut sim = spawn_process(&[]).await;
    let before = sim.peak_rss_kib();
    let client = http_client();
    let file = tokio::fs::File::open(&path).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let part = reqwest::multipart::Part::stream_with_length(body, size).file_name("big.jsonl");
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", part);
    let started = Instant::now();
    let response = client
        .post(format!("{}/files", sim.base_url))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let uploaded: serde_json::Value = response.json().await.unwrap();
    let upload_time = started.elapsed();
    assert_eq!(uploaded["bytes"].as_u64(), Some(size));

    let started = Instant::now();
    let mut download = client
        .get(format!(
            "{}/files/{}/content",
            sim.base_url,
            uploaded["id"].as_str().unwrap()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(download.content_length(), Some(size));
    let mut hasher = Sha256::new();
    while let Some(chunk) = download.chunk().await.unwrap() {
        hasher.update(&chunk);
    }
    assert_eq!(
        hasher.finalize().to_vec(),
        digest,
        "the file comes back byte for byte"
    );
    let download_time = started.elapsed();

    let peak = sim.peak_rss_kib();
    sim.signal(libc::SIGTERM);
    assert_eq!(sim.exit_code_within_a_second().await, Some(0));
    assert!(
        !sim.data_dir.exists(),
        "the uploaded file is removed at exit"
    );
    eprintln!(
        "150 MB file ({size} bytes): upload {upload_time:?}, download {download_time:?}; \
         simulator peak RSS {before} KiB before, {peak} KiB after"
    );
    assert!(
        peak < before + 64 * 1024,
        "the simulator's peak RSS grew from {before} KiB to {peak} KiB for a {size}-byte file"
    );
}

/// The simulator logs, from its start, in the format `--log-format` names.
#[test]
fn sim_logs_json_lines_when_asked() {
    let mut cmd = crate::support::process::command(None);
    cmd.args(["sim", "--listen", "127.0.0.1:0", "--log-format", "json"]);
    let mut sim = crate::support::process::Running::spawn(cmd);
    let line = sim.wait_for_line("simulator listening", Duration::from_secs(10));
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON object per line");
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["message"], "simulator listening");
}
