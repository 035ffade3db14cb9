//! What the client tells about its requests, for whoever counts them (the daemon's metrics).

use std::time::Duration;

use crate::error::{ApiError, Operation};

/// Told of every request the client makes. Every method does nothing unless implemented, so a
/// client that nobody watches ([`Client::new`](crate::Client::new)) pays nothing for it.
pub trait Observer: Send + Sync {
    /// A request ended: answered with HTTP `status`, or not answered (`None`), after
    /// `latency`; `err` is how it was classified when it failed.
    fn request(
        &self,
        _op: Operation,
        _status: Option<u16>,
        _latency: Duration,
        _err: Option<&ApiError>,
    ) {
    }

    /// The client repeats a request that failed transiently.
    fn retry(&self, _op: Operation) {}

    /// An upload of `bytes` succeeded.
    fn uploaded(&self, _bytes: u64) {}

    /// A download of `bytes` succeeded.
    fn downloaded(&self, _bytes: u64) {}
}

/// Watches nothing.
pub(crate) struct Unobserved;

impl Observer for Unobserved {}
