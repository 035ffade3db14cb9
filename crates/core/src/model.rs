//! The words batchwatch's parts share: job ids, job states, submission states and remote
//! batch statuses. The store keeps each as TEXT under the names given here.

use std::fmt;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A job's id: `job_` then a ULID (26 Crockford base32 characters: 48 bits of milliseconds,
/// then 80 random bits), so ids sort by creation and never repeat across databases. It is also
/// what the job's batches on the service are tagged with (a claim reconciliation reads), and a
/// directory name in the queue: only the canonical (upper-case) spelling parses, so one id is
/// one name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub const PREFIX: &'static str = "job_";

    /// A new id for a job created at `unix_ms`.
    pub fn generate(unix_ms: u64) -> JobId {
        JobId::from_ulid(Ulid::from_parts(unix_ms, fastrand::u128(..)))
    }

    fn from_ulid(ulid: Ulid) -> JobId {
        JobId(format!("{}{ulid}", Self::PREFIX))
    }

    fn ulid(&self) -> Ulid {
        Ulid::from_string(&self.0[Self::PREFIX.len()..]).expect("a JobId holds a valid ULID")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was generated (the file claimed), in milliseconds since the epoch.
    pub fn unix_ms(&self) -> u64 {
        self.ulid().timestamp_ms()
    }

    /// Parses an id, refusing anything that is not of the generated form.
    pub fn parse(s: &str) -> Option<JobId> {
        let ulid = Ulid::from_string(s.strip_prefix(Self::PREFIX)?).ok()?;
        let id = JobId::from_ulid(ulid);
        (id.0 == s).then_some(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is in its life. See README.md for each state's meaning.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum JobState {
    /// Claimed into processing/; being checked.
    Validating,
    /// The file broke a rule; it is in failed/ with its reason. Terminal.
    Rejected,
    /// Valid; waiting to be submitted (or to be submitted again after a back-off).
    Queued,
    /// An upload or create is under way.
    Submitting,
    /// Its remote batch is running.
    Running,
    /// A cancel was asked for (deadline or operator); following the batch to its end.
    Cancelling,
    /// The batch ended; results are being downloaded.
    Collecting,
    /// Finished; the file is in done/. Terminal.
    Completed,
    /// The remote batch failed, or vanished; the file is in failed/. Terminal.
    Failed,
    /// The batch expired before it finished; partial results, if any, kept. Terminal.
    Expired,
    /// Cancelled at its deadline or by an operator; partial results, if any, kept. Terminal.
    Cancelled,
}

impl JobState {
    /// Every value, in declaration order.
    pub const ALL: &'static [JobState] = <JobState as strum::VariantArray>::VARIANTS;

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

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

    /// The states following a batch: a job in one of them takes the state its submissions
    /// derive, in any order (a refused attempt sends a running job back to queued, a cancel
    /// moves any of them to cancelling), and ends from any of them.
    pub const LIVE: [JobState; 5] = [
        JobState::Queued,
        JobState::Submitting,
        JobState::Running,
        JobState::Cancelling,
        JobState::Collecting,
    ];

    /// The states a job may move to `self` from: the edges of the job state machine.
    ///
    /// ```text
    /// (claim) -> validating -> rejected
    ///            validating -> queued | cancelling (a cancel asked for while it was checked)
    ///            validating | queued | submitting -> validating (its file changed before
    ///                                                    anything was sent)
    ///            live -> live (derived from the submissions) | completed | failed | expired | cancelled
    /// ```
    ///
    /// Nothing leaves a terminal state.
    pub fn sources(self) -> &'static [JobState] {
        use JobState as J;
        const FROM_VALIDATION: [JobState; 6] = [
            J::Validating,
            J::Queued,
            J::Submitting,
            J::Running,
            J::Cancelling,
            J::Collecting,
        ];
        match self {
            J::Validating => &[J::Validating, J::Queued, J::Submitting],
            J::Rejected => &[J::Validating],
            J::Queued | J::Cancelling => &FROM_VALIDATION,
            J::Submitting
            | J::Running
            | J::Collecting
            | J::Completed
            | J::Failed
            | J::Expired
            | J::Cancelled => &Self::LIVE,
        }
    }
}

/// batchwatch's own step for one submission (a row of `batches`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SubmissionState {
    /// Intent recorded; not yet uploaded (may wait for `not_before`).
    Queued,
    /// The upload is under way, or its outcome is being reconciled.
    Uploading,
    /// The create is under way, or its outcome is being reconciled.
    Creating,
    /// The remote batch exists and is polled.
    Active,
    /// The remote batch ended; its files are being downloaded.
    Collecting,
    /// Done with; results (if any) are downloaded. Terminal.
    Finished,
    /// Never created remotely (cancelled first, or refused). Terminal.
    Abandoned,
    /// The remote batch vanished (404). Terminal.
    Lost,
}

impl SubmissionState {
    /// Every value, in declaration order.
    pub const ALL: &'static [SubmissionState] = <SubmissionState as strum::VariantArray>::VARIANTS;

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

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

// Stored as text, the way serde spells them; read back the same way. By hand rather than
// derived, once for every backend sqlx has: a status the service sends that batchwatch does
// not know is kept verbatim ([`BatchStatus::parse`]), and a job or submission state that is
// not one of ours is an error naming it.
#[cfg(feature = "sqlx")]
mod sql {
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::{Database, Decode, Encode, Type};

    use super::{BatchStatus, JobState, SubmissionState};

    macro_rules! text_column {
        ($ty:ty, $parse:expr) => {
            impl<DB: Database> Type<DB> for $ty
            where
                str: Type<DB>,
            {
                fn type_info() -> DB::TypeInfo {
                    <str as Type<DB>>::type_info()
                }

                fn compatible(ty: &DB::TypeInfo) -> bool {
                    <str as Type<DB>>::compatible(ty)
                }
            }

            impl<'q, DB: Database> Encode<'q, DB> for $ty
            where
                String: Encode<'q, DB>,
            {
                fn encode_by_ref(
                    &self,
                    buf: &mut <DB as Database>::ArgumentBuffer,
                ) -> Result<IsNull, BoxDynError> {
                    <String as Encode<'q, DB>>::encode(self.as_str().to_owned(), buf)
                }
            }

            impl<'r, DB: Database> Decode<'r, DB> for $ty
            where
                &'r str: Decode<'r, DB>,
            {
                fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                    let text = <&'r str as Decode<'r, DB>>::decode(value)?;
                    $parse(text)
                }
            }
        };
    }

    text_column!(BatchStatus, |text| Ok(BatchStatus::parse(text)));
    text_column!(JobState, |text: &str| text
        .parse::<JobState>()
        .map_err(|_| format!("{text:?} is not a job state").into()));
    text_column!(SubmissionState, |text: &str| text
        .parse::<SubmissionState>()
        .map_err(|_| format!("{text:?} is not a submission state").into()));
}

/// What a file looks like from outside: its size, modification time and inode. When none of
/// them changed, nobody wrote to the file (or replaced it) in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLook {
    pub bytes: u64,
    /// Nanoseconds since 1970.
    pub mtime_ns: i64,
    pub ino: u64,
}

impl FileLook {
    pub fn of(meta: &std::fs::Metadata) -> FileLook {
        use std::os::unix::fs::MetadataExt;
        FileLook {
            bytes: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ino: meta.ino(),
        }
    }

    /// How the file changed from `before` to this look, in words; `None` when it did not. A
    /// look recorded without a modification time or inode is compared on what it has.
    pub fn change_since(
        &self,
        bytes: u64,
        mtime_ns: Option<i64>,
        ino: Option<u64>,
    ) -> Option<String> {
        if ino.is_some_and(|i| i != self.ino) {
            return Some("it was replaced by another file".into());
        }
        if bytes != self.bytes {
            return Some(format!("{bytes} bytes then, {} now", self.bytes));
        }
        if mtime_ns.is_some_and(|m| m != self.mtime_ns) {
            return Some(format!("{bytes} bytes, but written to since"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_sort_by_time_and_parse_back() {
        let a = JobId::generate(1_700_000_000_000);
        assert!(a.as_str().starts_with("job_01HF7YAT00"), "{a}");
        let b = JobId::generate(1_700_000_000_001);
        assert!(a < b);
        assert_eq!(a.as_str().len(), 30);
        assert_eq!(JobId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        assert_eq!(JobId::parse("job_short"), None);
        assert_eq!(JobId::parse(&a.as_str().replace("job_", "jab_")), None);
        assert_eq!(
            JobId::parse(&a.as_str().to_lowercase().replace("JOB_", "job_")),
            None
        );
        // More than 128 bits: the first character carries only three.
        assert_eq!(JobId::parse("job_8ZZZZZZZZZZZZZZZZZZZZZZZZZ"), None);
    }

    /// Ids made by the hand-written generator before the `ulid` crate, as found in databases
    /// and queue directories of earlier versions: they parse, unchanged, with their time.
    #[test]
    fn ids_from_earlier_versions_still_parse_with_their_time() {
        for (old, ms) in [
            ("job_01KF8Q0B8ZX9XNXDB1MGGP6RV9", 1_768_745_348_383),
            ("job_01HF7YAT00HD99FDTGJ8YEPFZX", 1_700_000_000_000),
            ("job_00000000000000000000000000", 0),
            ("job_7ZZZZZZZZZZZZZZZZZZZZZZZZZ", (1 << 48) - 1),
        ] {
            let id = JobId::parse(old).unwrap_or_else(|| panic!("{old} no longer parses"));
            assert_eq!(id.as_str(), old);
            assert_eq!(id.unix_ms(), ms, "{old}");
        }
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
    fn text_enums_round_trip_under_their_stored_names() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
            assert_eq!(s.to_string(), s.as_str());
        }
        for s in SubmissionState::ALL {
            assert_eq!(s.as_str().parse::<SubmissionState>().unwrap(), *s);
        }
        assert_eq!(JobState::Running.as_str(), "running");
        assert_eq!(SubmissionState::Active.as_str(), "active");
        assert!("bogus".parse::<JobState>().is_err());
    }
}
