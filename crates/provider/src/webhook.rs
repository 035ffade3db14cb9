//! Signed webhooks: an event POSTed to a URL as Standard Webhooks specifies (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! keyed with the base64 secret after `whsec_`), so a receiver verifies it with any Standard
//! Webhooks library. The daemon's notifications (`[[notify]]`) send through [`Poster`]; what to
//! send, when, and how often is theirs.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use batchwatch_core::config::{ConfigError, KeySource, credential_path};
use batchwatch_core::secret;

/// A webhook's signing secret: the bytes after `whsec_`, base64-decoded. Never printed:
/// `Debug` shows `WebhookSecret(***)`.
#[derive(Clone)]
pub struct WebhookSecret(SecretSlice<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// A secret from its text, `whsec_` and base64 (Standard Webhooks: 24 to 64 bytes once
    /// decoded). The reason it is refused never quotes it.
    pub fn new(text: &str) -> Result<WebhookSecret, &'static str> {
        let text = secret::checked(text).map_err(
            |_| "the secret is empty, or holds spaces, control characters or non-ASCII characters",
        )?;
        let encoded = text
            .strip_prefix("whsec_")
            .ok_or("the secret must start with whsec_ (Standard Webhooks' form)")?;
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| "what follows whsec_ is not base64")?;
        if !(24..=64).contains(&bytes.len()) {
            return Err("the secret must be 24 to 64 bytes once decoded (Standard Webhooks)");
        }
        Ok(WebhookSecret(SecretSlice::from(bytes)))
    }

    /// Reads a secret from `source` (a file only its owner may read, or a systemd
    /// credential), as the setting `key` names it.
    pub fn load(key: &str, source: &KeySource) -> Result<WebhookSecret, ConfigError> {
        let (path, check_mode) = match source {
            KeySource::File(path) => (path.clone(), true),
            // systemd owns the credential directory and its modes.
            KeySource::Credential(name) => {
                (credential_path(key, name, |v| std::env::var_os(v))?, false)
            }
            KeySource::Env(name) => {
                return Err(ConfigError::key(
                    key,
                    format!("a webhook secret is read from a file, not from ${name}"),
                ));
            }
        };
        let mut text = secret::read_file(key, "secret", &path, check_mode)?;
        let loaded = WebhookSecret::new(&text)
            .map_err(|problem| ConfigError::key(key, format!("{}: {problem}", path.display())));
        secrecy::zeroize::Zeroize::zeroize(&mut text);
        loaded
    }

    /// `webhook-signature` for message `id` sent at `timestamp` (Unix seconds) with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// Why a POST was not taken.
#[derive(Debug, Clone, PartialEq)]
pub struct NotTaken {
    /// What happened, for the record: `HTTP 503`, `no answer within 10s`, `cannot send: …`
    /// (never the URL, which may hold a token).
    pub outcome: String,
    /// The receiver's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
}

/// Sends signed webhooks. Redirects are not followed: one would resend a signed event to
/// another host.
#[derive(Debug, Clone)]
pub struct Poster {
    http: reqwest::Client,
}

impl Poster {
    /// A poster for URLs of which some may be `https` (then the system's certificates are
    /// loaded).
    pub fn new(https: bool) -> Result<Poster, ConfigError> {
        let http = crate::client::http_client_builder(https)
            .build()
            .map_err(|e| {
                ConfigError::key("notify", format!("cannot build the HTTP client: {e}"))
            })?;
        Ok(Poster { http })
    }

    /// POSTs `body` (JSON) to `url` as message `id`, signed with `secret` at `timestamp`;
    /// `Ok` with `HTTP <status>` when a 2xx took it within `timeout`.
    pub async fn post(
        &self,
        url: &str,
        secret: &WebhookSecret,
        id: &str,
        timestamp: i64,
        body: &str,
        timeout: Duration,
    ) -> Result<String, NotTaken> {
        let not_taken = |outcome: String| NotTaken {
            outcome,
            retry_after: None,
        };
        let sent = self
            .http
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                secret.sign(id, timestamp, body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => {
                Ok(format!("HTTP {}", answer.status().as_u16()))
            }
            Ok(answer) => Err(NotTaken {
                outcome: format!("HTTP {}", answer.status().as_u16()),
                retry_after: answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
            }),
            Err(e) if e.is_timeout() => Err(not_taken(format!(
                "no answer within {}",
                batchwatch_core::clock::humanize(timeout)
            ))),
            Err(e) => Err(not_taken(format!(
                "cannot send: {}",
                batchwatch_core::printable::escape(&chain(&e.without_url()))
            ))),
        }
    }
}

/// An error with its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        // The example of the Standard Webhooks specification's reference implementations.
        let secret = WebhookSecret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_is_refused_without_quoting_it() {
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!notbase64",
            "whsec_c2hvcnQ=",
        ] {
            let e = WebhookSecret::new(bad).unwrap_err();
            assert!(bad.len() < 8 || !e.contains(bad), "{e}");
        }
        let s = WebhookSecret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
    }
}
