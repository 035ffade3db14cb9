//! The PostgreSQL store: the same port as the SQLite store ([`batchwatch_store`]), the same
//! tables, columns and views (`migrations/postgres/`, which reaches in one step what
//! `migrations/sqlite/` reaches in several), for a database several daemons share.
//!
//! Its query modules mirror the SQLite store's, one for one, each query checked at compile time
//! against `migrations/postgres/` (`.sqlx/`, written by `.ci/sqlx-prepare`). Times are RFC 3339
//! text in UTC, as in SQLite, so both stores give the same rows.
//!
//! Writes go through one connection, as in SQLite: the operations of one daemon are serialised
//! there, so an operation that reads and then writes sees no other operation of its own
//! daemon in between. Reads use a pool of their own.
//!
//! The URL's password never leaves the connection options: errors and `Debug` name the
//! database by its URL with the password taken out (`without_password`).

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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
#[cfg(feature = "fixtures")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres};

use batchwatch_core::config::without_password;
use batchwatch_store::schema::{Applied, Objects, embedded, migration_problems, object_problems};
pub use batchwatch_store::{Access, Lease, StoreError};

/// The migrations, embedded in the binary and applied when the daemon starts.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// The schema version this build knows: its newest migration.
pub fn known_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The connection the query functions run on.
pub type Conn = PgConnection;

/// A write transaction on the writer connection; it dereferences to the connection, so the
/// query functions take `&mut tx`. One dropped without a successful [`Tx::commit`] (a statement
/// failed, the commit failed, a task was aborted) closes its connection instead of handing it
/// back, which makes the server roll back whatever it holds; the pool opens a fresh one for the
/// next transaction.
pub struct Tx {
    conn: PoolConnection<Postgres>,
    done: bool,
}

impl Tx {
    /// Commits; on failure nothing of the transaction is kept.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// An open database.
#[derive(Clone)]
pub struct Store {
    /// The URL without its password, for messages.
    shown: String,
    /// Shared by the clones: a connection of its own is made from it (the probe, the commit
    /// watch, the sole-writer hold).
    options: Arc<PgConnectOptions>,
    read: PgPool,
    write: Option<PgPool>,
    /// How long a connection is waited for (the `connect_timeout` it was opened with); also
    /// how long closing waits for a server that stopped answering.
    wait: Duration,
    /// Set by a test: the next operation is dropped before its commit.
    #[cfg(feature = "fixtures")]
    kill_before_commit: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.shown)
            .field("read_only", &self.write.is_none())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the database at `url` (`postgres://…`) for `access`, waiting up to
    /// `connect_timeout` for a connection. The password is `password` when given, else what
    /// `PGPASSWORD` or `~/.pgpass` hold, as for any PostgreSQL client.
    pub async fn open(
        url: &str,
        password: Option<&str>,
        connect_timeout: Duration,
        access: Access,
    ) -> Result<Store, StoreError> {
        let shown = without_password(url);
        let at = PathBuf::from(&shown);
        let open_err = |source: sqlx::Error| StoreError::Open {
            path: at.clone(),
            source: source.into(),
        };
        // A transaction left open by a process that stopped (SIGSTOP, a pause of its host)
        // holds its instance's row for share, which keeps the others from reaping it: the
        // server ends such a session after a while. Ours take milliseconds.
        let mut options = PgConnectOptions::from_str(url)
            .map_err(open_err)?
            .application_name("batchwatch")
            .options([("idle_in_transaction_session_timeout", "10s")]);
        if let Some(password) = password {
            options = options.password(password);
        }
        let pool = |size: u32| {
            PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(connect_timeout)
                .connect_with(options.clone())
        };
        let write = match access {
            Access::ReadOnly => None,
            Access::Migrate | Access::Write => Some(pool(1).await.map_err(open_err)?),
        };
        let read = pool(4).await.map_err(open_err)?;
        let store = Store {
            shown,
            options: Arc::new(options),
            read,
            write,
            wait: connect_timeout,
            #[cfg(feature = "fixtures")]
            kill_before_commit: Arc::new(AtomicBool::new(false)),
        };

        let as_open_err = |e| match e {
            StoreError::Backend(source) => StoreError::Open {
                path: at.clone(),
                source,
            },
            other => other,
        };
        let found = store.schema_version().await.map_err(as_open_err)?;
        access.may_open(found, known_schema_version(), &at)?;
        let mut problems = match found {
            Some(_) => store.check_migrations().await.map_err(as_open_err)?,
            None => Vec::new(),
        };
        if access == Access::Migrate && problems.is_empty() {
            MIGRATOR
                .run(store.writer()?)
                .await
                .map_err(|source| StoreError::Migrate {
                    path: at.clone(),
                    source: source.into(),
                })?;
        }
        if problems.is_empty() {
            problems = store.check_objects(access).await.map_err(as_open_err)?;
        }
        if !problems.is_empty() {
            return Err(StoreError::Damaged { path: at, problems });
        }
        Ok(store)
    }

    /// What is wrong with the applied migrations: one that did not complete, or one applied
    /// from other text than this build's.
    async fn check_migrations(&self) -> Result<Vec<String>, StoreError> {
        let applied: Vec<Applied> = sqlx::query_as(
            "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(migration_problems(&applied, &embedded(&MIGRATOR)))
    }

    /// What is missing or different among the tables' columns, the views, indexes and
    /// triggers, compared with what the embedded migrations make of an empty schema: so a new
    /// migration needs no list kept up to date. Objects a user added (an index of their own)
    /// are allowed.
    async fn check_objects(&self, access: Access) -> Result<Vec<String>, StoreError> {
        let mut conn = self.read.acquire().await?;
        let ours = current_schema(&mut conn).await?;
        let found = schema_objects(&mut conn, &ours).await?;
        let expected = match expected_objects(&mut conn).await {
            Ok(expected) => expected,
            // A role that may only read cannot make the scratch schema; the migrations'
            // checksums were checked, and the daemon checks the objects at its start.
            Err(e) if access == Access::ReadOnly => {
                tracing::debug!(error = %e, "the schema's objects are not checked");
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        Ok(object_problems(&expected, &found))
    }

    /// The schema version: the newest migration recorded; `None` when the database has no
    /// migration table.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.read)
                .await?;
        if !has_table {
            return Ok(None);
        }
        let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
            .fetch_one(&self.read)
            .await?;
        Ok(Some(version.unwrap_or(0)))
    }

    /// The database's URL, without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The single writer connection.
    pub fn writer(&self) -> Result<&PgPool, StoreError> {
        self.write.as_ref().ok_or(StoreError::ReadOnly)
    }

    /// Whether a write could start now, within `wait`: a connection of its own to a server that
    /// is not a read-only standby.
    pub async fn probe_write(&self, wait: Duration) -> Result<(), StoreError> {
        let probe = async {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(standby)
        };
        match tokio::time::timeout(wait, probe).await.ok() {
            Some(Ok(false)) => Ok(()),
            Some(Ok(true)) => Err(StoreError::ReadOnly),
            Some(Err(e)) => Err(e.into()),
            None => Err(StoreError::Backend(
                format!("no connection to {} within {wait:?}", self.shown).into(),
            )),
        }
    }

    /// Starts a write transaction on the writer connection.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let mut conn = self.writer()?.acquire().await?;
        if let Err(e) = sqlx::query("BEGIN").execute(&mut *conn).await {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(Tx { conn, done: false })
    }

    /// Gives the space of deleted rows back for reuse (`VACUUM` of batchwatch's tables); the
    /// database's size before and after, in bytes.
    pub async fn give_space_back(&self) -> Result<(u64, u64), StoreError> {
        let w = self.writer()?;
        let size = async || -> Result<u64, StoreError> {
            let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(w)
                .await?;
            Ok(u64::try_from(bytes).unwrap_or(0))
        };
        let before = size().await?;
        sqlx::query(
            "VACUUM jobs, job_events, batches, status_history, batch_usage, remote_deletions, resubmissions",
        )
        .execute(w)
        .await?;
        Ok((before, size().await?))
    }

    /// Closes both pools.
    /// Closes the pools, waiting for the connections in use to come back for as long as a
    /// connection is waited for: one that hangs on a server cut off from this host is left to
    /// the process's end.
    pub async fn close(&self) {
        let closing = async {
            self.read.close().await;
            if let Some(w) = &self.write {
                w.close().await;
            }
        };
        let _ = tokio::time::timeout(self.wait, closing).await;
    }
}

/// Tells whether anything was committed since it last asked, by this process or another: the
/// server's write-ahead log position, which every commit moves (so does some maintenance, which
/// only costs a round of queries that find nothing new).
#[derive(Debug)]
pub struct Changes {
    /// `None` after a question that failed or was not answered in time: the next one
    /// connects again (a query cut short leaves its connection waiting for the answer).
    conn: Option<PgConnection>,
    options: Arc<PgConnectOptions>,
    shown: String,
    /// How long a connection and an answer are waited for.
    wait: Duration,
    last: Option<String>,
}

impl Changes {
    pub async fn open(store: &Store) -> Result<Changes, StoreError> {
        let mut changes = Changes {
            conn: None,
            options: store.options.clone(),
            shown: store.shown.clone(),
            wait: store.wait,
            last: None,
        };
        changes.conn = Some(changes.connect().await?);
        Ok(changes)
    }

    async fn connect(&self) -> Result<PgConnection, StoreError> {
        let open_err = |source: batchwatch_store::BackendError| StoreError::Open {
            path: PathBuf::from(&self.shown),
            source,
        };
        match tokio::time::timeout(self.wait, PgConnection::connect_with(&self.options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(open_err(e.into())),
            Err(_) => Err(open_err(
                format!("no connection within {:?}", self.wait).into(),
            )),
        }
    }

    /// Whether a commit happened since the last call; true at the first call, and when the
    /// question cannot be answered (within the connection's wait).
    pub async fn any(&mut self) -> bool {
        let conn = match self.conn.take() {
            Some(conn) => Some(conn),
            None => self.connect().await.ok(),
        };
        let position = match conn {
            Some(mut conn) => {
                let asked = sqlx::query_scalar::<_, String>("SELECT pg_current_wal_lsn()::text")
                    .fetch_one(&mut conn);
                match tokio::time::timeout(self.wait, asked).await {
                    Ok(Ok(position)) => {
                        self.conn = Some(conn);
                        Some(position)
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let changed = position.is_none() || position != self.last;
        self.last = position;
        changed
    }

    pub async fn close(self) {
        if let Some(conn) = self.conn {
            let _ = tokio::time::timeout(self.wait, conn.close()).await;
        }
    }
}

/// What the embedded migrations make of an empty schema, as [`schema_objects`] describes it:
/// they are applied in a scratch schema inside a transaction that is rolled back. Worked out
/// once per server version and process (the server's version shapes how a definition reads).
async fn expected_objects(conn: &mut PgConnection) -> Result<Arc<Objects>, StoreError> {
    static EXPECTED: std::sync::Mutex<BTreeMap<i64, Arc<Objects>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let version: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(&mut *conn)
        .await?;
    let version: i64 = version.parse().unwrap_or(0);
    if let Some(known) = EXPECTED.lock().expect("not poisoned").get(&version) {
        return Ok(known.clone());
    }
    let mut tx = conn.begin().await?;
    sqlx::query("CREATE SCHEMA batchwatch_expected")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL search_path = batchwatch_expected")
        .execute(&mut *tx)
        .await?;
    for migration in MIGRATOR.iter() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(migration.sql.as_str().to_owned()))
            .execute(&mut *tx)
            .await?;
    }
    let expected = Arc::new(schema_objects(&mut tx, "batchwatch_expected").await?);
    tx.rollback().await?;
    EXPECTED
        .lock()
        .expect("not poisoned")
        .insert(version, expected.clone());
    Ok(expected)
}

/// The schema batchwatch's tables are in: the first of the connection's search path.
async fn current_schema(conn: &mut PgConnection) -> Result<String, StoreError> {
    Ok(sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(conn)
        .await?)
}

/// Columns, views, indexes and triggers of `schema` by (kind, name), with what defines them;
/// the migration table left out.
async fn schema_objects(conn: &mut PgConnection, schema: &str) -> Result<Objects, StoreError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT 'column', table_name || '.' || column_name,
                data_type || ' ' || is_nullable || ' ' || coalesce(generation_expression, '')
         FROM information_schema.columns
         WHERE table_schema = $1 AND table_name <> '_sqlx_migrations'
           AND table_name IN (SELECT table_name FROM information_schema.tables
                              WHERE table_schema = $1 AND table_type = 'BASE TABLE')
         UNION ALL
         SELECT 'view', viewname, definition FROM pg_views WHERE schemaname = $1
         UNION ALL
         SELECT 'index', indexname, replace(indexdef, ' ' || quote_ident($1) || '.', ' ')
         FROM pg_indexes WHERE schemaname = $1 AND tablename <> '_sqlx_migrations'
         UNION ALL
         SELECT 'trigger', t.tgname, c.relname || ' ' || p.proname
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE n.nspname = $1 AND NOT t.tgisinternal",
    )
    .bind(schema)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, name, definition)| ((kind, name), definition))
        .collect())
}

#[cfg(feature = "fixtures")]
impl Store {
    /// A test's crash point: the next operation that would commit is dropped before its
    /// commit instead, as SIGKILL at any of its writes leaves it. Returns whether it was armed
    /// already.
    pub fn kill_before_next_commit(&self, armed: bool) -> bool {
        self.kill_before_commit.swap(armed, Ordering::SeqCst)
    }
}
