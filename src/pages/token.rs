//! The token the status pages ask for when `metrics.pages_token_file` is set: read once at
//! start, compared in constant time, never printed (`Debug` shows `PagesToken(***)`).

use std::fmt;
use std::path::Path;

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, MetricsSettings};

/// The setting the token is read from, for errors.
const KEY: &str = "metrics.pages_token_file";

/// The pages' token.
#[derive(Clone)]
pub struct PagesToken(SecretString);

impl fmt::Debug for PagesToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PagesToken(***)")
    }
}

impl PagesToken {
    /// The token `settings` ask for: read from `metrics.pages_token_file` (a regular file only
    /// its owner can read, holding one token of visible ASCII), or `None` when none is set or
    /// no pages are served.
    pub fn configured(settings: &MetricsSettings) -> Result<Option<PagesToken>, ConfigError> {
        match &settings.pages_token_file {
            Some(path) if settings.pages != Some(false) => PagesToken::read(path).map(Some),
            _ => Ok(None),
        }
    }

    fn read(path: &Path) -> Result<PagesToken, ConfigError> {
        let mut text = crate::secret::read_file(KEY, "token", path, true)?;
        let token = match crate::secret::checked(&text) {
            Ok(token) => Ok(PagesToken(SecretString::from(token))),
            Err(unfit) => Err(ConfigError::key(
                KEY,
                format!(
                    "{}: the token {}",
                    path.display(),
                    match unfit {
                        crate::secret::Unfit::Empty => "is empty",
                        crate::secret::Unfit::NotVisibleAscii =>
                            "contains spaces, control characters or non-ASCII characters",
                    }
                ),
            )),
        };
        text.zeroize();
        token
    }

    /// Whether `given` is the token. The time it takes does not depend on where the two
    /// differ: both are hashed, and the digests compared in full.
    pub fn matches(&self, given: &str) -> bool {
        let ours = Sha256::digest(self.0.expose_secret().as_bytes());
        let theirs = Sha256::digest(given.as_bytes());
        ours.iter()
            .zip(theirs.iter())
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(path: &Path) -> MetricsSettings {
        MetricsSettings {
            listen: "0.0.0.0:9464".into(),
            max_models: 20,
            pages: Some(true),
            pages_token_file: Some(path.to_owned()),
        }
    }

    #[test]
    fn the_token_is_read_trimmed_matched_whole_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-Token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = PagesToken::configured(&settings(&path)).unwrap().unwrap();
        assert!(token.matches("s3cret-Token"));
        assert!(!token.matches("s3cret-Toke"));
        assert!(!token.matches("s3cret-Token "));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "PagesToken(***)");
    }

    #[test]
    fn a_token_file_others_can_read_or_an_empty_one_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PagesToken::configured(&settings(&path)).unwrap_err();
        assert_eq!(e.key.as_deref(), Some(KEY));
        assert!(e.problem.contains("chmod 600"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        std::fs::write(&path, " \n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = PagesToken::configured(&settings(&path)).unwrap_err();
        assert!(e.problem.contains("the token is empty"), "{e}");
    }

    #[test]
    fn no_token_is_read_when_no_pages_are_served() {
        let mut s = settings(Path::new("/nonexistent/token"));
        s.pages = Some(false);
        assert!(PagesToken::configured(&s).unwrap().is_none());
    }
}
