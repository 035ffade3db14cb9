//! What the benches share: `batchwatch sim` as a child process, and the figures a process
//! shows in `/proc` (peak resident memory, CPU time, children).

#![allow(dead_code)] // Each bench uses its own part.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A simulator child process, killed when dropped. Its files live in the `--data-dir` the
/// caller gave it (under the bench's temporary directory), so nothing is left behind.
pub struct Simulator {
    child: Child,
    /// `http://ADDR/v1`.
    pub base_url: String,
}

impl Simulator {
    /// `batchwatch sim` of `bin` on a port of its choosing, logging warnings only.
    pub fn command(bin: &str) -> Command {
        let mut command = Command::new(bin);
        command
            .args(["sim", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn");
        command
    }

    /// Starts `command` (from [`Simulator::command`]) and reads the base URL it prints.
    pub fn start(command: &mut Command) -> anyhow::Result<Simulator> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting `batchwatch sim`")?;
        let stdout = child.stdout.take().context("the simulator's stdout")?;
        let mut sim = Simulator {
            child,
            base_url: String::new(),
        };
        for line in BufReader::new(stdout).lines() {
            if let Some(url) = line?.strip_prefix("listening on ") {
                sim.base_url = url.trim().to_owned();
                return Ok(sim);
            }
        }
        bail!(
            "`batchwatch sim` exited without saying where it listens: {:?}",
            sim.child.wait()?
        )
    }

    /// `http://ADDR/admin`.
    pub fn admin_url(&self) -> String {
        format!("{}/admin", self.base_url.trim_end_matches("/v1"))
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` line of `/proc/PID/status` (`/proc/self/status` without a pid), in KiB:
/// `VmHWM` is the peak resident set, `VmRSS` the current one.
pub fn status_kib(pid: Option<u32>, key: &str) -> anyhow::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} line in {path}"))
}

/// CPU time a process has used so far, user and system, in seconds (`utime + stime` of
/// `/proc/PID/stat`; every thread's, the ones that ended included).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    stat_secs(pid, [14, 15])
}

/// Bytes a process caused to be written to storage so far (`write_bytes` of `/proc/PID/io`,
/// counted when a page is dirtied, less `cancelled_write_bytes`, the pages dirtied and then
/// truncated away before they were written): every thread's, and the children it waited for
/// (the kernel adds a reaped child's counters to its parent's).
pub fn write_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/io");
    let io = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key: &str| -> anyhow::Result<u64> {
        io.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {key} line in {path}"))
    };
    Ok(field("write_bytes")?.saturating_sub(field("cancelled_write_bytes")?))
}

/// CPU time of the children a process waited for, user and system, in seconds (`cutime +
/// cstime` of `/proc/PID/stat`): what its children that ended used.
pub fn reaped_children_cpu_secs(pid: u32) -> anyhow::Result<f64> {
    stat_secs(pid, [16, 17])
}

/// The sum of two clock-tick fields of `/proc/PID/stat`, numbered as in proc(5), in seconds.
fn stat_secs(pid: u32, fields: [usize; 2]) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no command name"))?;
    let values: Vec<&str> = rest.split_whitespace().collect();
    // The first field after the name is field 3.
    let ticks = |n: usize| -> anyhow::Result<u64> {
        values
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {n} is not a number"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_sec > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((ticks(fields[0])? + ticks(fields[1])?) as f64 / per_sec as f64)
}

/// The pids of the processes whose parent is `pid` now (the `PPid` of `/proc/*/status`).
pub fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(child) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process that ended since the listing has no status left: not a child any more.
        let Ok(status) = std::fs::read_to_string(format!("/proc/{child}/status")) else {
            continue;
        };
        let parent = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if parent == Some(pid) {
            found.push(child);
        }
    }
    Ok(found)
}
