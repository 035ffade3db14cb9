//! What can go wrong opening or using a store, in the port's words: the backend's own error
//! (a driver's, a file system's) travels as the source of [`StoreError::Backend`],
//! [`StoreError::Open`] or [`StoreError::Migrate`], so the daemon names no backend's types.

use std::path::PathBuf;

use batchwatch_core::model::JobState;

/// A backend's error, carried as a source.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong opening or using the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {} does not exist; the daemon creates it when it first starts (database.path)", .0.display())]
    Missing(PathBuf),
    #[error(
        "database {} was migrated by a newer batchwatch (schema version {found}; this version knows up to {known}): \
         run the newer version, or restore a backup taken before the upgrade",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "database {} has schema version {found}, older than this batchwatch's {known}: \
         start the daemon or run `batchwatch migrate` to upgrade it",
        path.display()
    )]
    OlderSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database {} is not a batchwatch database (it has no migration table)", .0.display())]
    NotOurs(PathBuf),
    #[error(
        "database {} does not have the schema its migrations make: {}; restore a backup \
         (README: Back up), or move the file away to start afresh",
        path.display(),
        problems.join("; ")
    )]
    Damaged {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("cannot open database {}", path.display())]
    Open { path: PathBuf, source: BackendError },
    #[error("cannot migrate database {}", path.display())]
    Migrate { path: PathBuf, source: BackendError },
    #[error("{what} is finished or unknown; it cannot move to {to}")]
    Finished { what: String, to: String },
    #[error("submission {id} cannot {edge}: it is not {from}")]
    Illegal {
        id: i64,
        edge: &'static str,
        from: &'static str,
    },
    #[error("job {id} cannot move from {from} to {to}")]
    IllegalJob {
        id: String,
        from: JobState,
        to: JobState,
    },
    /// A test's crash point: the operation was dropped before its commit, as SIGKILL leaves it.
    #[cfg(feature = "fixtures")]
    #[error("killed before its commit (a test's crash point)")]
    Killed,
    #[error("this store was opened read-only")]
    ReadOnly,
    /// The writer does not hold what it tried to move (its lease ran out or was reaped, or
    /// another instance holds the job): nothing was written.
    #[error("not held under this lease: {0}")]
    NotHeld(String),
    /// The instance's lease was reaped: it must register again to go on.
    #[error("the lease of epoch {epoch} was lost (it ran out and another instance reaped it)")]
    LeaseLost { epoch: i64 },
    /// The backend could not do what was asked (a query failed, the disk is full).
    #[error(transparent)]
    Backend(BackendError),
}

impl StoreError {
    /// Ok when a guarded update of submission `id` along `edge` matched its row (`updated`
    /// rows); else the error that names the edge and the state it leaves.
    pub fn guarded(
        updated: u64,
        id: i64,
        edge: &'static str,
        from: &'static str,
    ) -> Result<(), StoreError> {
        if updated == 1 {
            Ok(())
        } else {
            Err(StoreError::Illegal { id, edge, from })
        }
    }

    /// Why job `id`, found in state `found` (`None`: no such job), could not move to `to`.
    pub fn job_move_refused(id: &str, found: Option<JobState>, to: JobState) -> StoreError {
        match found {
            Some(from) if !from.is_terminal() => StoreError::IllegalJob {
                id: id.to_owned(),
                from,
                to,
            },
            _ => StoreError::Finished {
                what: format!("job {id}"),
                to: to.to_string(),
            },
        }
    }
}

/// The SQLSTATE a shared store's fence raises for a write by a writer that does not hold the
/// job (migrations/postgres/0002_leases.sql).
pub const NOT_HELD_SQLSTATE: &str = "BW001";

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        if let Some(db) = e.as_database_error()
            && db.code().as_deref() == Some(NOT_HELD_SQLSTATE)
        {
            return StoreError::NotHeld(db.message().to_owned());
        }
        StoreError::Backend(Box::new(e))
    }
}
