//! batchwatch's own API client, pointed at a test simulator.

use std::time::Duration;

use batchwatch::api::{ApiKey, Batch, Client, CreateBatchRequest};
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

/// A chat batch on `input_file_id` without metadata, as another tool (or a person re-running
/// an upload by hand) creates one.
pub async fn create_foreign_batch(client: &Client, input_file_id: &str) -> Batch {
    client
        .create_batch(&CreateBatchRequest {
            input_file_id: input_file_id.to_owned(),
            endpoint: "/v1/chat/completions".into(),
            completion_window: "24h".into(),
            metadata: None,
            output_expires_after: None,
        })
        .await
        .expect("creating another client's batch")
}
