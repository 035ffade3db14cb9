//! Secrets read from files (the API key, the status pages' token): the checks of the file and
//! of what a secret may hold, written once for both. Nothing here quotes a secret.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::ConfigError;

/// Why a secret's text is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Nothing is left once trimmed.
    Empty,
    /// Spaces, control characters or non-ASCII characters: it cannot travel in an HTTP header,
    /// and a space inside means the file holds something other than one secret.
    NotVisibleAscii,
}

/// `text` trimmed of surrounding whitespace (a file's trailing newline), when what is left is
/// a secret: not empty, visible ASCII only.
pub fn checked(text: &str) -> Result<&str, Unfit> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Unfit::Empty);
    }
    if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Unfit::NotVisibleAscii);
    }
    Ok(trimmed)
}

/// Reads the file at `path` holding a secret (`what`: "key", "token"), as the setting `key`
/// names it. It must be a regular file: it is opened without blocking (a FIFO would otherwise
/// wait for a writer forever, and `check-config` with it) and refused after a look at what was
/// opened when it is anything else; with `check_mode`, one readable by group or others is
/// refused. The caller checks the text ([`checked`]) and wipes it.
pub fn read_file(
    key: &str,
    what: &str,
    path: &Path,
    check_mode: bool,
) -> Result<String, ConfigError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| ConfigError::key(key, format!("cannot open {shown}: {e}")))?;
    // The type and mode of the open file, not of the path: nothing can swap the file in between.
    let meta = file
        .metadata()
        .map_err(|e| ConfigError::key(key, format!("cannot inspect {shown}: {e}")))?;
    if !meta.is_file() {
        let ft = meta.file_type();
        let kind = if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(ConfigError::key(
            key,
            format!("{shown} is {kind}; the {what} must be in a regular file"),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if check_mode && mode & 0o077 != 0 {
        return Err(ConfigError::key(
            key,
            format!(
                "the {what} file {shown} can be read by group or others (mode {mode:04o}); \
                 make it private to its owner with `chmod 600 {shown}`"
            ),
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| ConfigError::key(key, format!("cannot read {shown}: {e}")))?;
    Ok(text)
}
