//! Memory measured in a fresh process: a test re-runs itself as a child (the test binary with
//! `--exact NAME`), whose peak resident set size counts only what the measured call took, not
//! the simulator, other tests or the input's generation.

/// This process's peak resident set size, in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line in /proc/self/status")
}

/// What the child printed after `MARKER: `, as `name=value` pairs.
pub struct Report(String);

impl Report {
    /// The value of `name`.
    pub fn field(&self, name: &str) -> u64 {
        self.0
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.0))
    }
}

/// Prints the child's report line: `MARKER: vmhwm_kib=PEAK` and the `fields` given.
pub fn report(marker: &str, fields: &[(&str, u64)]) {
    let mut line = format!("{marker}: vmhwm_kib={}", peak_rss_kib());
    for (name, value) in fields {
        line.push_str(&format!(" {name}={value}"));
    }
    println!("{line}");
}

/// Runs the test `test` (its full path in the binary) alone in a child process with `env` set
/// to `value`, and returns the line it printed with [`report`] under `marker`.
pub async fn in_child(test: &str, env: &str, value: String, marker: &str) -> Report {
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, value)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let prefix = format!("{marker}: ");
    stdout
        .lines()
        // The harness may print "test NAME ... " on the same line first.
        .find_map(|l| {
            l.split_once(prefix.as_str())
                .map(|(_, r)| Report(r.to_owned()))
        })
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"))
}
