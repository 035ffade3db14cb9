//! What a validated file hands the store: its parts.

/// One part of a validated file: a byte range and the requests in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub start: i64,
    pub end: i64,
    pub requests: i64,
}

/// What validating a file found.
#[derive(Debug, Clone)]
pub struct Validated<'a> {
    pub sha256: &'a str,
    pub requests: i64,
    pub endpoint: &'a str,
    pub model: &'a str,
    /// The parts, each submitted as a batch of its own.
    pub parts: &'a [Part],
    /// The job's event when it is queued.
    pub queued: &'a str,
    /// The job's event when a cancel was asked for while the file was checked.
    pub cancelling: &'a str,
}
