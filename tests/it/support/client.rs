//! batchwatch's own API client, pointed at a test simulator.

use std::time::Duration;

use batchwatch::api::{ApiKey, Client};
use batchwatch::config::{Dur, Settings};

use super::KEY;

/// The built-in defaults with `base_url`, quick retries (1 ms to 2 s, 3 attempts) and limits
/// loose enough not to slow a test down.
pub fn client_settings(base_url: &str) -> Settings {
    let mut s = Settings::load_from(None, []).expect("the built-in defaults are valid");
    s.api.base_url = base_url.to_owned();
    s.api.retry_attempts = 3;
    s.api.retry_initial_delay = Dur(Duration::from_millis(1));
    s.api.retry_max_delay = Dur(Duration::from_secs(2));
    s.limits.requests_per_second = 1_000.0;
    s.limits.concurrency = 16;
    s
}

/// A client for `base_url` with the test key and [`client_settings`], adjusted by `adjust`.
pub fn api_client_with(base_url: &str, adjust: impl FnOnce(&mut Settings)) -> Client {
    let mut s = client_settings(base_url);
    adjust(&mut s);
    Client::new(&s.api, &s.limits, ApiKey::new(KEY).unwrap()).expect("building the client")
}

/// A client for `base_url` with the test key and [`client_settings`].
pub fn api_client(base_url: &str) -> Client {
    api_client_with(base_url, |_| {})
}
