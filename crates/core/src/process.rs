//! What every command of the process shares: the async runtime it runs on, its standard
//! output, its limits and disks, and the temporary files it writes for people to read.

use std::io::Write;

use anyhow::Context;

/// Exit code when the database was migrated by a newer batchwatch, or its schema is not the one
/// its migrations make (EX_DATAERR): restarting cannot help, so the systemd unit does not
/// restart on it either.
pub const EXIT_NEWER_DATABASE: u8 = 65;

/// Exit code for a configuration error (EX_CONFIG from sysexits.h); systemd is told not to
/// restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// Builds the multi-threaded runtime the async commands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Writes `text` to standard output. A reader that went away (`batchwatch status | head -1`)
/// is not an error: the rest is dropped quietly. Any other write error is one.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to standard output"))
        }
        _ => Ok(()),
    }
}

/// The process's limit of open files (RLIMIT_NOFILE): soft and hard.
pub fn open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft limit of open files to the hard limit, as a daemon that holds sockets and
/// files does (systemd starts services with a soft limit of 1,024 unless `LimitNOFILE=` says
/// otherwise); returns the soft limit before and after when it changed.
pub fn raise_open_file_limit() -> std::io::Result<Option<(u64, u64)>> {
    let (soft, hard) = open_file_limit()?;
    if soft >= hard {
        return Ok(None);
    }
    let raised = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit(2) reads the rlimit it is given and changes nothing in our memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((soft, hard)))
}

/// How many more files the process may open now: its soft limit less the descriptors it has
/// open (counted in /proc/self/fd). `None` when that cannot be told; `Some(0)` when not even
/// the count could open its directory.
pub fn free_descriptors() -> Option<u64> {
    let (soft, _) = open_file_limit().ok()?;
    match std::fs::read_dir("/proc/self/fd") {
        // The listing holds the descriptor it is read through.
        Ok(entries) => Some(soft.saturating_sub(entries.count().saturating_sub(1) as u64)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => Some(0),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_descriptors_shrink_by_the_files_opened() {
        // Other tests open files on other threads: compare around a large difference.
        let before = free_descriptors().expect("/proc/self/fd is readable");
        let held: Vec<std::fs::File> = (0..256)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let during = free_descriptors().unwrap();
        drop(held);
        assert!(
            during + 192 <= before && during + 320 >= before,
            "{before} free, then {during} with 256 more open"
        );
        let (soft, hard) = open_file_limit().unwrap();
        assert!(soft <= hard && before < soft);
    }
}

/// Space on a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Free for a user that is not root (root's reserve left out): what the daemon may fill.
    pub available: u64,
    pub size: u64,
}

/// Space on the filesystem that holds `path`.
pub fn disk_space(path: &std::path::Path) -> std::io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain data; all-zero is a valid value for it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs that lives here, which the call fills.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = stat.f_frsize;
    Ok(DiskSpace {
        available: stat.f_bavail.saturating_mul(unit),
        size: stat.f_blocks.saturating_mul(unit),
    })
}

/// A temporary file in `dir` for something people read (results, manifests, reasons), to be
/// renamed into place: created 0666 under the process's umask, as the queue's directories are
/// (tempfile's own default, 0600, would hide it from the service's group).
pub fn shared_temp_file(
    dir: &std::path::Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// The signals a process of ours stops on (SIGTERM, SIGINT) and, for the daemon, reloads on
/// (SIGHUP), caught from the moment they are installed: a signal that comes during start-up is
/// not fatal.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Catches SIGTERM and SIGINT, and SIGHUP too when `hangup`.
    pub fn install(hangup: bool) -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: match hangup {
                true => {
                    Some(signal(SignalKind::hangup()).context("installing the SIGHUP handler")?)
                }
                false => None,
            },
        })
    }

    /// Waits for the next signal and says which it was.
    pub async fn recv(&mut self) -> &'static str {
        let hup = async {
            match &mut self.hup {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = hup => "SIGHUP",
        }
    }
}
