//! Running the real `batchwatch` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_batchwatch")
}

/// `batchwatch run` with the configuration `config` and the key, as the user `nobody`
/// (setpriv; the tests run as root), its log at the default level.
pub fn run_as_nobody(config: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("OPENAI_API_KEY", super::KEY)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A `batchwatch` command with a clean environment: no inherited BATCHWATCH_* settings, no key.
pub fn command(config: Option<&Path>) -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("BATCHWATCH_") || key == "OPENAI_API_KEY" || key == "RUST_LOG" {
            cmd.env_remove(key.as_ref());
        }
    }
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd
}

/// Runs `batchwatch [--config C] ARGS...` to completion; panics if it has not exited within two
/// minutes (a command that hangs fails its test instead of holding the whole run).
pub fn run(config: Option<&Path>, args: &[&str]) -> Output {
    output_within(command(config).args(args), Duration::from_secs(120))
}

/// Runs `cmd` with its stdout and stderr captured, as `Command::output` does, but kills it and
/// panics if it has not exited within `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Stdout of a run that must succeed.
pub fn stdout_ok(config: Option<&Path>, args: &[&str]) -> String {
    let out = run(config, args);
    assert!(
        out.status.success(),
        "batchwatch {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// A running `batchwatch` process whose stderr lines are collected as they come.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn batchwatch");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a stderr line contains `needle`; panics with what was seen after `timeout`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }

    /// Waits for the exit, up to `timeout`; returns the status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.drain();
                return (status, start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                self.drain();
                panic!(
                    "batchwatch did not exit within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Collects the stderr lines that have arrived so far: until the stream pauses for 50 ms,
    /// and for two seconds at most, so a process that logs without pause cannot hold a test.
    pub fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
