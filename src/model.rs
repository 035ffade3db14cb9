//! The words batchwatch's parts share: job ids, job states, submission states and remote
//! batch statuses. The store keeps each as TEXT under the names given here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's id: `job_` then 26 Crockford base32 characters (48 bits of milliseconds, then 80
/// random bits), so ids sort by creation and never repeat across databases. It is also the
/// `batchwatch_job_id` metadata value that reconciliation matches on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl JobId {
    pub const PREFIX: &'static str = "job_";

    /// A new id for a job created at `unix_ms`.
    pub fn generate(unix_ms: u64) -> JobId {
        let value: u128 = (u128::from(unix_ms & 0xFFFF_FFFF_FFFF) << 80)
            | (fastrand::u128(..) & ((1u128 << 80) - 1));
        let mut out = String::with_capacity(Self::PREFIX.len() + 26);
        out.push_str(Self::PREFIX);
        for i in (0..26).rev() {
            out.push(CROCKFORD[((value >> (i * 5)) & 0x1F) as usize] as char);
        }
        JobId(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was generated (the file claimed), in milliseconds since the epoch.
    pub fn unix_ms(&self) -> u64 {
        let body = &self.0.as_bytes()[Self::PREFIX.len()..];
        let value = body.iter().fold(0u128, |acc, b| {
            let digit = CROCKFORD.iter().position(|c| c == b).unwrap_or(0);
            (acc << 5) | digit as u128
        });
        u64::try_from(value >> 80).unwrap_or(u64::MAX)
    }

    /// Parses an id, refusing anything that is not of the generated form.
    pub fn parse(s: &str) -> Option<JobId> {
        let body = s.strip_prefix(Self::PREFIX)?;
        (body.len() == 26 && body.bytes().all(|b| CROCKFORD.contains(&b)))
            .then(|| JobId(s.to_owned()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Declares a TEXT-backed enum with a fixed set of names.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}; expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum! {
    /// Where a job is in its life. See README.md for each state's meaning.
    JobState {
        /// Claimed into processing/; being checked.
        Validating = "validating",
        /// The file broke a rule; it is in failed/ with its reason. Terminal.
        Rejected = "rejected",
        /// Valid; waiting to be submitted (or to be submitted again after a back-off).
        Queued = "queued",
        /// An upload or create is under way.
        Submitting = "submitting",
        /// Its remote batch is running.
        Running = "running",
        /// A cancel was asked for (deadline or operator); following the batch to its end.
        Cancelling = "cancelling",
        /// The batch ended; results are being downloaded.
        Collecting = "collecting",
        /// Finished; the file is in done/. Terminal.
        Completed = "completed",
        /// The remote batch failed, or vanished; the file is in failed/. Terminal.
        Failed = "failed",
        /// The batch expired before it finished; partial results kept. Terminal.
        Expired = "expired",
        /// Cancelled at its deadline or by an operator; partial results kept. Terminal.
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// The final states: the job's file is in done/ or failed/ and nothing changes any more.
    /// (The schema's `jobs.terminal` column is tested to agree.)
    pub const TERMINAL: [JobState; 5] = [
        JobState::Rejected,
        JobState::Completed,
        JobState::Failed,
        JobState::Expired,
        JobState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }
}

text_enum! {
    /// batchwatch's own step for one submission (a row of `batches`).
    SubmissionState {
        /// Intent recorded; not yet uploaded (may wait for `not_before`).
        Queued = "queued",
        /// The upload is under way, or its outcome is being reconciled.
        Uploading = "uploading",
        /// The create is under way, or its outcome is being reconciled.
        Creating = "creating",
        /// The remote batch exists and is polled.
        Active = "active",
        /// The remote batch ended; its files are being downloaded.
        Collecting = "collecting",
        /// Done with; results (if any) are downloaded. Terminal.
        Finished = "finished",
        /// Never created remotely (cancelled first, or refused). Terminal.
        Abandoned = "abandoned",
        /// The remote batch vanished (404). Terminal.
        Lost = "lost",
    }
}

impl SubmissionState {
    /// The final states: done with, whatever became of its batch. (The schema's
    /// `batches.terminal` column is tested to agree.)
    pub const TERMINAL: [SubmissionState; 3] = [
        SubmissionState::Finished,
        SubmissionState::Abandoned,
        SubmissionState::Lost,
    ];

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }
}

/// A remote batch's status. Known statuses are matched without regard to case (Azure sends
/// `Completed`); anything else is kept exactly as it came.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
    Other(String),
}

impl BatchStatus {
    /// The known statuses.
    pub const KNOWN: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    /// Parses a remote status; never fails.
    pub fn parse(s: &str) -> BatchStatus {
        let normal = s.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        match normal.as_str() {
            "validating" => BatchStatus::Validating,
            "failed" => BatchStatus::Failed,
            "in_progress" | "inprogress" => BatchStatus::InProgress,
            "finalizing" => BatchStatus::Finalizing,
            "completed" => BatchStatus::Completed,
            "expired" => BatchStatus::Expired,
            "cancelling" => BatchStatus::Cancelling,
            "cancelled" | "canceled" => BatchStatus::Cancelled,
            _ => BatchStatus::Other(s.to_owned()),
        }
    }

    /// The stored form: lower case for a known status, verbatim otherwise.
    pub fn as_str(&self) -> &str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
            BatchStatus::Other(s) => s,
        }
    }

    /// Completed, failed, expired and cancelled are final; `cancelling` is not.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            BatchStatus::Completed
                | BatchStatus::Failed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BatchStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BatchStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(BatchStatus::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_sort_by_time_and_parse_back() {
        let a = JobId::generate(1_700_000_000_000);
        let b = JobId::generate(1_700_000_000_001);
        assert!(a < b);
        assert_eq!(a.as_str().len(), 30);
        assert_eq!(JobId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        assert_eq!(JobId::parse("job_short"), None);
        assert_eq!(JobId::parse(&a.as_str().replace("job_", "jab_")), None);
    }

    #[test]
    fn statuses_are_matched_without_case_and_unknown_ones_are_kept() {
        assert_eq!(BatchStatus::parse("Completed"), BatchStatus::Completed);
        assert_eq!(BatchStatus::parse("InProgress"), BatchStatus::InProgress);
        assert_eq!(BatchStatus::parse("in_progress"), BatchStatus::InProgress);
        let odd = BatchStatus::parse("Paused_By_Admin");
        assert_eq!(odd, BatchStatus::Other("Paused_By_Admin".into()));
        assert_eq!(odd.as_str(), "Paused_By_Admin");
        assert!(!odd.is_terminal());
        assert!(!BatchStatus::Cancelling.is_terminal());
        for s in BatchStatus::KNOWN {
            assert_eq!(BatchStatus::parse(s.as_str()), s);
        }
    }

    #[test]
    fn text_enums_round_trip_and_name_the_choices_on_error() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        let err = "bogus".parse::<JobState>().unwrap_err();
        assert!(err.contains("validating, rejected"), "{err}");
    }
}
