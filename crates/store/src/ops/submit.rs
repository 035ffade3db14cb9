//! What arming a create found.

/// What arming a create found (the store's `start_create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateIntent {
    /// The create is armed: the batch may be created now.
    Armed,
    /// A cancel was asked for during the upload: the submission was abandoned instead.
    Cancelled,
}
