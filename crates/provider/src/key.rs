//! The API key: loaded from the configured source, kept as a secret, sent only in a header
//! marked sensitive.
//!
//! Secrets stay secret (invariant 6): `Debug` and `Display` print `ApiKey(***)`, the value is
//! zeroed when dropped, and [`ApiKey::redact`] removes it from anything a server sends back
//! before that text can reach an error message or a log line.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};

use batchwatch_core::config::{
    CREDENTIALS_DIRECTORY, ConfigError, Flavor, KeySource, credential_path,
};
use batchwatch_core::secret::{self, Unfit};

/// Whether `source` is a systemd credential asked for outside the service, where it does not
/// exist: it cannot be read, or checked, in this process.
pub fn outside_its_service(source: &KeySource) -> bool {
    matches!(source, KeySource::Credential(_)) && std::env::var_os(CREDENTIALS_DIRECTORY).is_none()
}

/// An API key. Never printed: `Debug` and `Display` show `ApiKey(***)`.
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl ApiKey {
    /// A key from its text, trimmed of surrounding whitespace (a file's trailing newline).
    /// Refused when nothing is left or the key holds characters that cannot travel in an
    /// HTTP header; the reason never quotes the key.
    pub fn new(text: &str) -> Result<ApiKey, &'static str> {
        match secret::checked(text) {
            Ok(key) => Ok(ApiKey(SecretString::from(key))),
            Err(Unfit::Empty) => Err("the key is empty"),
            Err(Unfit::NotVisibleAscii) => {
                Err("the key contains spaces, control characters or non-ASCII characters")
            }
        }
    }

    /// Reads the key from `source`, from the process environment.
    pub fn load(source: &KeySource) -> Result<ApiKey, ConfigError> {
        Self::load_with(source, |name| std::env::var_os(name))
    }

    /// As [`ApiKey::load`], with the environment given (tests must not change the real one).
    pub fn load_with(
        source: &KeySource,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<ApiKey, ConfigError> {
        match source {
            KeySource::Env(name) => {
                let key = "api.key_env";
                let value = env(name).ok_or_else(|| {
                    ConfigError::key(key, format!("environment variable {name} is not set"))
                })?;
                let mut text = value.into_string().map_err(|_| {
                    ConfigError::key(
                        key,
                        format!("environment variable {name} is not valid UTF-8"),
                    )
                })?;
                let loaded = ApiKey::new(&text).map_err(|problem| {
                    ConfigError::key(key, format!("environment variable {name}: {problem}"))
                });
                text.zeroize();
                loaded
            }
            KeySource::File(path) => read_key_file("api.key_file", path, true),
            KeySource::Credential(name) => {
                let key = "api.key_credential";
                // systemd owns the credential directory and its modes; no check of ours
                // would add anything.
                read_key_file(key, &credential_path(key, name, env)?, false)
            }
        }
    }

    /// Whether two keys are the same key (compared without printing either).
    pub fn same_as(&self, other: &ApiKey) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }

    /// The number of characters in the key, for `check-config`.
    pub fn char_count(&self) -> usize {
        self.0.expose_secret().chars().count()
    }

    /// `text` with every occurrence of the key replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        text.replace(self.0.expose_secret(), "***")
    }

    /// The authentication header for `flavor`, marked sensitive so that no HTTP layer logs it.
    pub(crate) fn header(&self, flavor: Flavor) -> (HeaderName, HeaderValue) {
        let secret = self.0.expose_secret();
        let (name, mut text) = match flavor {
            Flavor::Openai => (AUTHORIZATION, format!("Bearer {secret}")),
            Flavor::Azure => (HeaderName::from_static("api-key"), secret.to_owned()),
            Flavor::Anthropic => (HeaderName::from_static("x-api-key"), secret.to_owned()),
        };
        // ApiKey::new admits visible ASCII only, which is always a valid header value.
        let mut value =
            HeaderValue::from_str(&text).expect("a key of visible ASCII is a valid header value");
        text.zeroize();
        value.set_sensitive(true);
        (name, value)
    }
}

/// Reads a key file ([`secret::read_file`]: a regular file, with `check_mode` its owner's
/// alone) and wipes what was read once the key holds it.
fn read_key_file(key: &str, path: &Path, check_mode: bool) -> Result<ApiKey, ConfigError> {
    let mut text = secret::read_file(key, "key", path, check_mode)?;
    let loaded = ApiKey::new(&text)
        .map_err(|problem| ConfigError::key(key, format!("{}: {problem}", path.display())));
    text.zeroize();
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    const SECRET: &str = "sk-test-0123456789abcdefSECRET";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn write_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn exposed(key: &ApiKey) -> &str {
        key.0.expose_secret()
    }

    #[test]
    fn key_from_environment_is_trimmed_of_its_trailing_newline() {
        let key = ApiKey::load_with(
            &KeySource::Env("MY_KEY".into()),
            env_of(&[("MY_KEY", &format!("{SECRET}\n"))]),
        )
        .unwrap();
        assert_eq!(exposed(&key), SECRET);
        assert_eq!(key.char_count(), SECRET.len());
    }

    #[test]
    fn missing_environment_variable_names_the_variable_and_the_config_key() {
        let err =
            ApiKey::load_with(&KeySource::Env("OPENAI_API_KEY".into()), env_of(&[])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("api.key_env"));
        assert_eq!(
            err.problem,
            "environment variable OPENAI_API_KEY is not set"
        );
    }

    #[test]
    fn empty_or_blank_key_is_refused() {
        for blank in ["", "\n", "  \r\n"] {
            let err = ApiKey::load_with(&KeySource::Env("K".into()), env_of(&[("K", blank)]))
                .unwrap_err();
            assert!(err.problem.contains("empty"), "{blank:?}: {err}");
        }
    }

    #[test]
    fn key_with_inner_whitespace_is_refused_without_being_echoed() {
        let err = ApiKey::load_with(
            &KeySource::Env("K".into()),
            env_of(&[("K", "sk-abc def-SECRETPART")]),
        )
        .unwrap_err();
        assert!(err.problem.contains("spaces"), "{err}");
        assert!(!err.to_string().contains("SECRETPART"), "{err}");
    }

    #[test]
    fn key_file_private_to_its_owner_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "key", &format!("{SECRET}\r\n"), 0o600);
        let key = ApiKey::load_with(&KeySource::File(path), env_of(&[])).unwrap();
        assert_eq!(exposed(&key), SECRET);
    }

    #[test]
    fn key_file_readable_by_group_or_others_is_refused_with_mode_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let path = write_file(dir.path(), "key", SECRET, mode);
            let err = ApiKey::load_with(&KeySource::File(path.clone()), env_of(&[])).unwrap_err();
            assert_eq!(err.key.as_deref(), Some("api.key_file"));
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(&format!("mode {mode:04o}")), "{text}");
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(!text.contains(SECRET), "{text}");
        }
    }

    #[test]
    fn a_key_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path and mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = ApiKey::load_with(&KeySource::File(path.clone()), env_of(&[])).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("api.key_file"));
        assert!(err.problem.contains("a FIFO"), "{err}");
        assert!(err.problem.contains("regular file"), "{err}");
        let dir_err =
            ApiKey::load_with(&KeySource::File(dir.path().to_owned()), env_of(&[])).unwrap_err();
        assert!(dir_err.problem.contains("is a directory"), "{dir_err}");
    }

    #[test]
    fn missing_key_file_is_reported_with_its_path() {
        let err = ApiKey::load_with(
            &KeySource::File("/nonexistent/batchwatch/key".into()),
            env_of(&[]),
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("api.key_file"));
        assert!(err.problem.contains("/nonexistent/batchwatch/key"), "{err}");
    }

    #[test]
    fn credential_is_read_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        // systemd decides a credential's mode; a group-readable one is still accepted.
        write_file(dir.path(), "openai-api-key", &format!("{SECRET}\n"), 0o440);
        let key = ApiKey::load_with(
            &KeySource::Credential("openai-api-key".into()),
            env_of(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(exposed(&key), SECRET);
    }

    #[test]
    fn credential_without_credentials_directory_explains_where_it_is_set() {
        let err = ApiKey::load_with(&KeySource::Credential("openai-api-key".into()), env_of(&[]))
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("api.key_credential"));
        assert!(
            err.problem.starts_with(
                "$CREDENTIALS_DIRECTORY is not set (it is set only inside the systemd service"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_credential_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ApiKey::load_with(
            &KeySource::Credential("absent".into()),
            env_of(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]),
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("api.key_credential"));
        assert!(err.problem.contains("absent"), "{err}");
    }

    #[test]
    fn debug_and_display_never_show_the_key() {
        let key = ApiKey::new(SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert_eq!(format!("{key}"), "ApiKey(***)");
        assert_eq!(format!("{key:#?}"), "ApiKey(***)");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: ApiKey,
        }
        assert!(!format!("{:?}", Holder { key }).contains(SECRET));
    }

    #[test]
    fn openai_flavour_sends_a_sensitive_bearer_header() {
        let key = ApiKey::new(SECRET).unwrap();
        let (name, value) = key.header(Flavor::Openai);
        assert_eq!(name, AUTHORIZATION);
        assert_eq!(value.to_str().unwrap(), format!("Bearer {SECRET}"));
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains(SECRET));
    }

    #[test]
    fn azure_flavour_sends_a_sensitive_api_key_header() {
        let key = ApiKey::new(SECRET).unwrap();
        let (name, value) = key.header(Flavor::Azure);
        assert_eq!(name.as_str(), "api-key");
        assert_eq!(value.to_str().unwrap(), SECRET);
        assert!(value.is_sensitive());
    }

    #[test]
    fn redact_removes_every_occurrence_of_the_key() {
        let key = ApiKey::new(SECRET).unwrap();
        let text = format!("Incorrect API key provided: {SECRET}. Again: {SECRET}");
        let redacted = key.redact(&text);
        assert!(!redacted.contains(SECRET));
        assert_eq!(redacted, "Incorrect API key provided: ***. Again: ***");
    }
}
