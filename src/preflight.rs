//! The checks `batchwatch run` makes before it opens anything: the configuration (every key,
//! as [`Settings::load`] checks them) and the API key, read from its source as the daemon
//! reads it (a key file must exist, be a regular file, not a FIFO, and be readable by its
//! owner only; see [`ApiKey::load`]), the status pages' token file when one is set, and the
//! `[[notify]]` entries' signing secrets.
//!
//! `check-config` runs this very function, and `doctor` its two parts, so a deployment gate
//! built on it refuses what the daemon would refuse, with the same message and exit code (78).
//! The one thing it cannot check is a systemd credential outside the service, where the
//! credential does not exist: that is reported to the caller, which says so.

use std::path::Path;

use crate::api::{ApiKey, outside_its_service};
use crate::config::{ConfigError, Settings};

/// A configuration that passed, with its key.
#[derive(Debug)]
pub struct Checked {
    pub settings: Settings,
    /// The configuration in effect as TOML, each duration as it was written (`check-config`
    /// prints it).
    pub as_written: String,
    /// The key; or, for a systemd credential asked for outside its service, why it cannot be
    /// read here.
    pub key: Result<ApiKey, ConfigError>,
}

/// Loads and checks the configuration (`file`, the `--config` given) and reads the API key.
/// Any fault is an error naming its key, but for a credential outside its service.
pub fn check(file: Option<&Path>) -> Result<Checked, ConfigError> {
    let (settings, as_written) = Settings::load_as_written(file)?;
    // The pages' token file, read as the daemon reads it at start.
    crate::pages::PagesToken::configured(&settings.metrics)?;
    // The [[notify]] entries' signing secrets, as the daemon reads them at start.
    crate::daemon::notifiers::Notifiers::check_secrets(&settings)?;
    let key = read_key(&settings)?;
    Ok(Checked {
        settings,
        as_written,
        key,
    })
}

/// Reads the API key from its source as `run` does: an error names its key, but for a systemd
/// credential asked for outside its service, which is the inner error (why it cannot be read
/// here).
pub fn read_key(settings: &Settings) -> Result<Result<ApiKey, ConfigError>, ConfigError> {
    let source = settings.api.key_source();
    match ApiKey::load(&source) {
        Err(e) if !outside_its_service(&source) => Err(e),
        key => Ok(key),
    }
}
