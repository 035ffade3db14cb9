//! The SQLite store: jobs, their submissions (`batches`), every observed status change
//! (`status_history`) and job events. The schema is in `migrations/sqlite/` and documented in README.md;
//! it is a contract for users' own queries.
//!
//! It implements the store port ([`batchwatch_store`]): its rows and the inputs of its
//! operations are the port's, re-exported from the modules that always had them. What the
//! daemon, its housekeeping and the commands write, they write through the port's operations
//! (here in [`ops`]), each one transaction that moves a job or a submission along a guarded
//! edge ([`transitions`] for submissions, [`batchwatch_core::model::JobState::sources`] for
//! jobs) under the writer's [`Lease`]; what they read, through the port's reads (answered by
//! the query modules, which are also the operations' parts).
//!
//! One writer connection (SQLite allows one writer at a time; one connection makes that explicit
//! and keeps write transactions short and ordered) and a separate read pool. WAL lets readers,
//! including `batchwatch status` in another process, read while the daemon writes;
//! `synchronous=FULL` makes every commit durable before the daemon acts on it, which the
//! intent-before-side-effect rule depends on. The WAL is checkpointed every
//! [`WAL_CHECKPOINT_PAGES`] pages (1 MiB) rather than SQLite's 4 MiB, and truncated back to that
//! size: on a nearly full disk a WAL that waits for 4 MiB can eat the last free space before
//! it is ever checkpointed, and then no write, not even the checkpoint, can succeed.

pub mod batches;
pub mod chain;
pub mod deletions;
pub mod figures;
pub mod history;
pub mod jobs;
mod leases;
pub mod notifications;
pub mod ops;
#[path = "../../store/shared/progress.rs"]
pub mod progress;
#[path = "../../store/shared/reads.rs"]
mod reads;
pub mod retention;
pub mod transitions;
pub mod usage;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use ops::Lease;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection};

use batchwatch_store::schema::{Applied, Objects, embedded, migration_problems, object_problems};
pub use batchwatch_store::{Access, StoreError, json_text, json_text_or_null};

/// `items` as a JSON array, which the queries read with `json_each`: SQLite's way of taking a
/// list as one parameter.
pub(crate) fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("a list of strings or numbers is JSON")
}

/// The connection the query functions run on.
pub type Conn = SqliteConnection;

/// The WAL is checkpointed once it holds this many pages (of 4 KiB): 1 MiB.
pub const WAL_CHECKPOINT_PAGES: u32 = 256;

/// The migrations, embedded in the binary and applied when the daemon starts.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The schema version this build knows: its newest migration.
pub fn known_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// An open database.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
    read: SqlitePool,
    write: Option<SqlitePool>,
    /// Set when a write transaction failed; the next one checkpoints the WAL first.
    write_failed: Arc<AtomicBool>,
    /// Set by a test: the next operation is dropped before its commit.
    #[cfg(feature = "fixtures")]
    kill_before_commit: Arc<AtomicBool>,
}

fn options(path: &Path, busy_timeout: Duration) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .foreign_keys(true)
        .busy_timeout(busy_timeout)
}

/// Puts the database in WAL mode, which is persistent: it is in rollback-journal mode after a
/// daemon's stop ([`Store::close_for_readers`]). Processes that open it for writing at once
/// (a daemon starting beside `batchwatch cancel`, two operators' commands) race to switch it,
/// and SQLite refuses the switch to the losers with SQLITE_BUSY at once rather than after
/// `busy_timeout` (waiting for the lock it needs could deadlock), or answers with the mode it
/// kept. So the switch is tried again, with a growing pause, until `busy_timeout` has passed.
async fn use_wal(pool: &SqlitePool, busy_timeout: Duration) -> Result<(), sqlx::Error> {
    let deadline = std::time::Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let refused = match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(pool)
            .await
        {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(kept) => sqlx::Error::Io(std::io::Error::other(format!(
                "it stayed in {kept} journal mode: another process held it for longer than \
                 database.busy_timeout"
            ))),
            Err(sqlx::Error::Database(e))
                if e.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| code & 0xff == SQLITE_BUSY) =>
            {
                sqlx::Error::Database(e)
            }
            Err(e) => return Err(e),
        };
        if std::time::Instant::now() + pause > deadline {
            return Err(refused);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// SQLite's primary result code for a lock another connection holds (the extended codes keep
/// it in their low byte).
const SQLITE_BUSY: i32 = 5;

impl Store {
    /// Opens the database at `path` for `access`.
    pub async fn open(
        path: &Path,
        busy_timeout: Duration,
        access: Access,
    ) -> Result<Store, StoreError> {
        let open_err = |source: sqlx::Error| StoreError::Open {
            path: path.to_owned(),
            source: source.into(),
        };
        if access != Access::Migrate {
            match std::fs::metadata(path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Missing(path.to_owned()));
                }
                Err(e) => return Err(open_err(sqlx::Error::Io(e))),
            }
        } else if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_err(sqlx::Error::Io(e)))?;
        }

        let write = if access == Access::ReadOnly {
            None
        } else {
            // Incremental auto-vacuum, so that retention can give space back without
            // rewriting the file; it takes effect on a database created now (an older one
            // is switched by its first prune, see give_space_back).
            let opts = options(path, busy_timeout)
                .create_if_missing(access == Access::Migrate)
                .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
                .synchronous(SqliteSynchronous::Full)
                .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string())
                .pragma(
                    "journal_size_limit",
                    (WAL_CHECKPOINT_PAGES * 4096).to_string(),
                );
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                // A local file: a ping before every query doubles the hand-offs to
                // SQLite's thread and finds nothing a failed query would not.
                .test_before_acquire(false)
                .connect_with(opts)
                .await
                .map_err(open_err)?;
            use_wal(&pool, busy_timeout).await.map_err(open_err)?;
            Some(pool)
        };
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options(path, busy_timeout).read_only(true))
            .await
            .map_err(open_err)?;
        let store = Store {
            path: path.to_owned(),
            read,
            write,
            write_failed: Arc::new(AtomicBool::new(false)),
            #[cfg(feature = "fixtures")]
            kill_before_commit: Arc::new(AtomicBool::new(false)),
        };

        let as_open_err = |e| match e {
            StoreError::Backend(source) => StoreError::Open {
                path: path.to_owned(),
                source,
            },
            other => other,
        };
        let found = store.schema_version().await.map_err(as_open_err)?;
        let known = known_schema_version();
        access.may_open(found, known, path)?;
        let mut problems = match found {
            Some(_) => store.check_migrations().await.map_err(as_open_err)?,
            None => Vec::new(),
        };
        if access == Access::Migrate && problems.is_empty() {
            MIGRATOR
                .run(store.writer()?)
                .await
                .map_err(|source| StoreError::Migrate {
                    path: path.to_owned(),
                    source: source.into(),
                })?;
            // An integer of ours: nothing from outside goes into this statement.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {known}"
            )))
            .execute(store.writer()?)
            .await?;
        }
        if problems.is_empty() {
            problems = store.check_objects().await.map_err(as_open_err)?;
        }
        if !problems.is_empty() {
            return Err(StoreError::Damaged {
                path: path.to_owned(),
                problems,
            });
        }
        Ok(store)
    }

    /// What is wrong with the applied migrations: one that did not complete, or one applied
    /// from other text than this build's (a checksum that differs).
    async fn check_migrations(&self) -> Result<Vec<String>, StoreError> {
        let applied: Vec<Applied> = sqlx::query_as(
            "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(migration_problems(&applied, &embedded(&MIGRATOR)))
    }

    /// What is missing or different among the tables, views, indexes and triggers, compared
    /// with what the embedded migrations make of an empty database: so a new migration needs
    /// no list kept up to date. Objects a user added (an index of their own) are allowed.
    async fn check_objects(&self) -> Result<Vec<String>, StoreError> {
        let expected = expected_objects().await?;
        let found = schema_objects(&self.read).await?;
        Ok(object_problems(&expected, &found))
    }

    /// The schema version: the newest migration recorded, or the database's `user_version` when
    /// that is from the future (batchwatch sets it after migrating, so a newer version's mark
    /// shows either way); `None` when the database has no migration table.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let has_table: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.read)
        .await?;
        if has_table == 0 {
            return Ok(None);
        }
        let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
            .fetch_one(&self.read)
            .await?;
        let user_version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.read)
            .await?;
        let version = version.unwrap_or(0);
        Ok(Some(if user_version > known_schema_version() {
            user_version.max(version)
        } else {
            version
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The read pool.
    pub fn reader(&self) -> &SqlitePool {
        &self.read
    }

    /// The single writer connection.
    pub fn writer(&self) -> Result<&SqlitePool, StoreError> {
        self.write.as_ref().ok_or(StoreError::ReadOnly)
    }

    /// Takes the database's write lock on a connection of its own, waiting up to `wait` for
    /// it, and lets it go at once: whether a write could start now (the readiness probe; the
    /// writer connection is left to the daemon's work).
    pub async fn probe_write(&self, wait: Duration) -> Result<(), StoreError> {
        use sqlx::Connection;
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .busy_timeout(wait);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        let taken = sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await;
        let result = match taken {
            Ok(_) => sqlx::query("ROLLBACK").execute(&mut conn).await.map(drop),
            Err(e) => Err(e),
        };
        let _ = conn.close().await;
        Ok(result?)
    }

    /// Starts a write transaction that takes the write lock at once (`BEGIN IMMEDIATE`), so it
    /// never fails half-way because another process wrote first. See [`Tx`] for what happens
    /// when it fails.
    ///
    /// After a failed write, the WAL is checkpointed and truncated first: on a full disk the
    /// WAL may never reach its automatic checkpoint (SQLite's is at about 4 MB), so without
    /// this every later write would fail even once some space is back.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let mut conn = self.writer()?.acquire().await?;
        if self.write_failed.swap(false, Ordering::SeqCst)
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut *conn)
                .await
        {
            tracing::debug!(error = %e, "the WAL could not be checkpointed after a failed write");
        }
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            conn.close_on_drop();
            self.write_failed.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        Ok(Tx {
            conn,
            done: false,
            failed: self.write_failed.clone(),
        })
    }

    /// Gives the space of deleted rows back to the file system: `PRAGMA incremental_vacuum`
    /// on a database in incremental auto-vacuum mode (every database created from schema
    /// version 7 on); an older one is switched to that mode with one `VACUUM` (which rewrites
    /// the file once). Then the WAL is checkpointed and truncated. Returns the file's size
    /// before and after, in bytes.
    pub async fn give_space_back(&self) -> Result<(u64, u64), StoreError> {
        let size = || std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let w = self.writer()?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(w)
            .await?;
        let before = size();
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(w)
            .await?;
        if mode == 2 {
            sqlx::query("PRAGMA incremental_vacuum").execute(w).await?;
        } else {
            sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
                .execute(w)
                .await?;
            sqlx::query("VACUUM").execute(w).await?;
        }
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(w)
            .await?;
        Ok((before, size()))
    }

    /// Closes the store for good at the daemon's stop: checkpoints the WAL and leaves the file in
    /// rollback-journal mode, so that readers without write access to its directory (members
    /// of the service's group) can open it while the daemon is stopped. The next start
    /// switches back to WAL. When a reader holds the file just then, it stays in WAL mode,
    /// which readers can also open as long as its -wal and -shm files exist.
    pub async fn close_for_readers(&self) {
        self.read.close().await;
        if let Some(w) = &self.write {
            if let Err(e) = sqlx::query("PRAGMA journal_mode = DELETE").execute(w).await {
                tracing::debug!(error = %e, "the database stays in WAL mode");
            }
            w.close().await;
        }
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.read.close().await;
        if let Some(w) = &self.write {
            w.close().await;
        }
    }
}

/// Tells whether anything was committed to the database since it last asked, by this process or
/// another (`batchwatch cancel`, say): `PRAGMA data_version` on a read-only connection of its
/// own, which no query of the pools touches. The loop asks before a round's queries, and skips
/// them when nothing changed and nothing came due.
#[derive(Debug)]
pub struct Changes {
    conn: SqliteConnection,
    last: Option<i64>,
}

impl Changes {
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<Changes, StoreError> {
        use sqlx::Connection;
        let conn = SqliteConnection::connect_with(&options(path, busy_timeout).read_only(true))
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source: source.into(),
            })?;
        Ok(Changes { conn, last: None })
    }

    /// Whether a commit happened since the last call; true at the first call, and when the
    /// question cannot be answered.
    pub async fn any(&mut self) -> bool {
        let version = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut self.conn)
            .await
            .ok();
        let changed = version.is_none() || version != self.last;
        self.last = version;
        changed
    }

    pub async fn close(self) {
        use sqlx::Connection;
        let _ = self.conn.close().await;
    }
}

/// A write transaction on the writer connection; it dereferences to the connection, so the
/// query functions take `&mut tx`.
///
/// Whatever goes wrong, the writer stays usable: a transaction that is dropped without a
/// successful [`Tx::commit`] (a statement failed, the disk is full, the commit itself failed, a
/// task was aborted) closes its connection instead of handing it back, which rolls back
/// whatever SQLite still holds, and the pool opens a fresh one for the next transaction. (A
/// connection handed back after SQLite rolled back by itself, as it does on a full disk, would
/// otherwise refuse every later BEGIN.)
pub struct Tx {
    conn: PoolConnection<Sqlite>,
    done: bool,
    failed: Arc<AtomicBool>,
}

impl Tx {
    /// Commits; on failure nothing of the transaction is kept.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.done = true;
        Ok(())
    }

    /// Rolls back; on failure the connection is closed, which rolls back too.
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        sqlx::query("ROLLBACK").execute(&mut *self.conn).await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
            self.failed.store(true, Ordering::SeqCst);
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// Tables, views, indexes and triggers by (type, name), with their SQL (its runs of whitespace
/// made one space, so layout alone is no difference); SQLite's own objects and the migration
/// table left out.
async fn schema_objects(db: impl sqlx::SqliteExecutor<'_>) -> Result<Objects, StoreError> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT type, name, sql FROM sqlite_master
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> '_sqlx_migrations'",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, name, sql)| ((kind, name), normalise(&sql.unwrap_or_default())))
        .collect())
}

/// The objects the embedded migrations make of an empty in-memory database.
async fn expected_objects() -> Result<Objects, StoreError> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect_with(
        &SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true),
    )
    .await?;
    MIGRATOR
        .run(&mut conn)
        .await
        .map_err(|source| StoreError::Migrate {
            path: PathBuf::from(":memory:"),
            source: source.into(),
        })?;
    let objects = schema_objects(&mut conn).await?;
    conn.close().await?;
    Ok(objects)
}

/// SQL text with its runs of whitespace made one space, so layout alone is no difference.
fn normalise(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
