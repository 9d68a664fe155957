//! Persistence behind one struct: SQLite (embedded default: a file, WAL, foreign keys on) or
//! PostgreSQL (several replicas may share it), chosen by the database URL. Numbered migrations
//! under `migrations/<dialect>/` run at start-up. Queries are built at run time with binds; the
//! store holds no business rules: it reads and writes rows exactly as it is told.
//!
//! Writes go through a [`WriteTx`]: writers take turns on one group transaction whose first
//! statement updates the single `write_lock` row, so writers are serialised on both databases and
//! across replicas (the audit hash chain needs exactly one writer at a time); everything a change
//! touches (rows, audit event, idempotency record) commits or rolls back together, and
//! consecutive writers share one durable commit (`group_commit.rs`).
//!
//! One file per table: each holds the table's row types (read with `sqlx::FromRow`, by column
//! name) and its queries, as methods on [`Store`] (reads outside a transaction) and [`WriteTx`].
//! Every stored time is a [`Timestamp`] (whole seconds, fixed-width RFC 3339 UTC, so text
//! order is time order) taken from the store's [`Clock`].

/// A statement assembled from the column-list constants of the table files (never from input).
macro_rules! sql {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

/// A state column's vocabulary: an enum stored as its text, read back with `FromRow`.
macro_rules! stored_enum {
    ($name:ident, $column:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> $crate::store::Result<Self> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err($crate::store::StoreError::BadStoredValue {
                        column: $column,
                        value: other.to_string(),
                    }),
                }
            }
        }
        impl sqlx::Type<sqlx::Any> for $name {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <String as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }
        impl<'r> sqlx::Decode<'r, sqlx::Any> for $name {
            fn decode(
                value: sqlx::any::AnyValueRef<'r>,
            ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(Self::parse(text)?)
            }
        }
    };
}

mod audit_checkpoints;
mod audit_events;
mod certificate_attestations;
mod certificates;
mod clock;
mod crl_state;
mod enrollment_certificates;
mod enrollments;
mod group_commit;
pub use group_commit::{GroupCommitStats, MAX_GROUP, MAX_GROUP_AGE};
mod idempotency;
mod notifications;
mod ocsp_responses;
mod people;
mod puk_releases;
mod puk_rotations;
mod renewal_supersedes;
mod sync_state;
mod temporary_tokens;
mod timestamp;
mod token_credentials;
mod tokens;

pub use audit_checkpoints::CheckpointRow;
pub use audit_events::AuditRow;
pub use certificate_attestations::FleetCertificateRow;
pub use certificates::{
    CertificateOwner, CertificateRow, CertificateStatus, CertificatesQuery, ExpiringQuery,
    NewCertificate,
};
pub use clock::{Clock, ManualClock};
pub use crl_state::{CRL_PART_BYTES, CrlEntryRow, CrlStateRow, NewCrl};
pub use enrollment_certificates::{CertificateEnrollmentRow, EnrollmentCertificateRow};
pub use enrollments::{EnrollmentKind, EnrollmentRow, EnrollmentState, NewEnrollment, TokenPrior};
pub use idempotency::IdempotencyRow;
pub use notifications::{NewNotification, NotificationRow};
pub use ocsp_responses::{
    DueOcspRow, NewOcspResponse, OCSP_DUE_NEVER, OCSP_DUE_NOW, OcspResponseRow, OcspSubjectRow,
};
pub use people::{NewPerson, PeopleQuery, PersonRow, PersonState};
pub use puk_releases::{NewPukRelease, PukReleaseRow, PukReleaseState};
pub use puk_rotations::PukRotationRow;
pub use renewal_supersedes::RenewableCertificateRow;
pub use timestamp::{BadTimestamp, Timestamp};
pub use token_credentials::{TokenCredentialsRow, WrappedCredentials};
pub use tokens::{NewToken, TokenRow, TokenState, TokensQuery};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {0:?} is not supported: use sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot open database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a {kind} with key {key:?} already exists")]
    Duplicate { kind: &'static str, key: String },
    #[error("stored {column} value {value:?} is not valid")]
    BadStoredValue { column: &'static str, value: String },
    #[error(transparent)]
    BadTime(#[from] BadTimestamp),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The commit this write shared with others (group commit) failed; nothing of it is stored.
    #[error("database error: the group commit failed: {message}")]
    GroupCommitFailed { unavailable: bool, message: String },
}

impl From<sqlx::Error> for StoreError {
    /// A column our own types refused to decode (a state or a time) is named as such, not as a
    /// generic decoding failure.
    fn from(e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::ColumnDecode { index, source } => match source.downcast::<StoreError>() {
                Ok(ours) => *ours,
                Err(source) => match source.downcast::<BadTimestamp>() {
                    Ok(bad) => StoreError::BadTime(*bad),
                    Err(source) => {
                        StoreError::Database(sqlx::Error::ColumnDecode { index, source })
                    }
                },
            },
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached (no connection within the pool's timeout, the
    /// connection broke, or the server refused connections for now): a retry may succeed, and
    /// the failed call changed nothing.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => is_unreachable(e),
            StoreError::GroupCommitFailed { unavailable, .. } => *unavailable,
            _ => false,
        }
    }
}

fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (class 08), the server shutting down or starting
        // (57P01..57P03), too many connections (53300).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database. Cheap to clone (a pool handle and the clock).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    clock: Clock,
    writers: std::sync::Arc<group_commit::GroupCommitter>,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How long a query waits for a pooled connection unless configured otherwise
/// (`[database] acquire_timeout_seconds`).
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`:
    /// `sqlite:PATH` / `sqlite://PATH`, or `postgres://…` / `postgresql://…`. Its times come
    /// from the system clock.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_with_clock(url, Clock::system()).await
    }

    /// [`Store::open`] with the clock every time it stamps, and every time its users compare
    /// with, comes from (the composition root's; a [`ManualClock`] in tests).
    pub async fn open_with_clock(url: &str, clock: Clock) -> Result<Store> {
        Store::open_with(url, clock, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`Store::open_with_clock`] with how long a query waits for a pooled connection before
    /// it fails (an error for which [`StoreError::is_unavailable`] holds, while the database is down).
    pub async fn open_with(url: &str, clock: Clock, acquire_timeout: Duration) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, connect_url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains('?') {
                return Err(StoreError::UnsupportedUrl(url.to_string()));
            }
            create_private_sqlite_file(path);
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        // One direct attempt first: a wrong URL fails at once instead of after the pool's
        // acquire timeout of retries.
        let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(&connect_url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_url(url),
                source,
            })?;
        let _ = sqlx::Connection::close(probe).await;
        let mut options = AnyPoolOptions::new().acquire_timeout(acquire_timeout);
        if backend == Backend::Sqlite {
            options = options.max_connections(4).after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(10);
        }
        let pool = options
            .connect(&connect_url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_url(url),
                source,
            })?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
        } else {
            POSTGRES_MIGRATIONS.run(&pool).await?;
        }
        Ok(Store {
            writers: group_commit::GroupCommitter::new(pool.clone(), MAX_GROUP_AGE),
            pool,
            backend,
            clock,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The current time by this store's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a writing transaction; it waits for the writer before it to finish its part
    /// (see [`WriteTx`]).
    pub async fn begin_write(&self) -> Result<WriteTx> {
        Ok(WriteTx {
            tx: self.writers.join().await?,
            clock: self.clock.clone(),
        })
    }

    /// A raw SQL statement, for tests that tamper with rows and for operators' repair tools.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Row counts for metrics: (table, state or status, count).
    pub async fn state_counts(&self) -> Result<Vec<(&'static str, String, i64)>> {
        let mut out = Vec::new();
        for (table, column) in [
            ("people", "state"),
            ("tokens", "state"),
            ("certificates", "status"),
        ] {
            let rows: Vec<(String, i64)> = sqlx::query_as(sql!(
                "SELECT {column}, CAST(COUNT(*) AS BIGINT) FROM {table} GROUP BY {column} ORDER BY {column}"
            ))
            .fetch_all(&self.pool)
            .await?;
            out.extend(rows.into_iter().map(|(value, count)| (table, value, count)));
        }
        Ok(out)
    }
    /// What this process's writers did since the store was opened: durable group commits, the
    /// write transactions they carried, ….
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.writers.stats()
    }

    /// This store with another bound on how long a group of writers may grow before it commits
    /// (default [`MAX_GROUP_AGE`], 20 ms): a longer one lets tests line writers up at will.
    pub fn with_group_commit_age(mut self, max_age: Duration) -> Store {
        self.writers = group_commit::GroupCommitter::new(self.pool.clone(), max_age);
        self
    }

    /// How many writers are waiting for their turn now.
    pub fn queued_writers(&self) -> usize {
        self.writers.queued()
    }

    /// (open connections, idle connections) of the pool.
    pub fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }
    /// A trivial query: is the database reachable?
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// One writing transaction. Writers take turns (one at a time, in order); consecutive writers
/// share one durable commit (group commit, `group_commit.rs`), but each is all or nothing on its
/// own: dropped without [`WriteTx::commit`], its changes roll back and nobody else's do.
pub struct WriteTx {
    tx: group_commit::Writer,
    clock: Clock,
}

impl WriteTx {
    /// Returns once this transaction's changes are durable (or failed, with nothing of them
    /// stored).
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await
    }

    /// Makes durable what earlier writers of this transaction's group wrote (and this one so
    /// far): call before answering a caller from what another request wrote (group commit).
    pub async fn make_earlier_writes_durable(&mut self) -> Result<()> {
        self.tx.make_earlier_writes_durable().await
    }

    /// The current time by the store's clock (what this transaction stamps).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// Rows per multi-row statement of the bulk writes (HR sync, offboarding): few enough binds
/// for either database, many enough that the round trips stop mattering.
pub(crate) const BULK_ROWS: usize = 1000;

/// `INSERT INTO table (columns) VALUES ($1, …), (…), …` for `rows` rows of `width` values.
fn multi_row_insert(table: &str, columns: &str, width: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..width {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * width + col + 1));
        }
        sql.push(')');
    }
    sql
}

/// `$first, $first+1, …` for an `IN (…)` list of `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The row a write just made or changed, read back in the same transaction: it is there unless
/// the database lost it.
fn written<T>(row: Option<T>) -> Result<T> {
    row.ok_or(StoreError::Database(sqlx::Error::RowNotFound))
}

fn map_unique(
    result: std::result::Result<sqlx::any::AnyQueryResult, sqlx::Error>,
    kind: &'static str,
    key: &str,
) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Duplicate {
            kind,
            key: key.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Creates a new SQLite database file readable and writable by its owner only (0600), whatever
/// the umask: it holds the directory, the audit log and the wrapped secrets. SQLite gives the
/// `-wal` and `-shm` files it creates next to it the database file's mode. An existing file is
/// left as it is (its mode is the operator's choice), with a warning when others can read it.
/// When the file cannot be made (no such directory, no permission), opening it fails next and
/// names the database as before.
fn create_private_sqlite_file(path: &str) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let Ok(meta) = std::fs::metadata(path) else {
                return;
            };
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path,
                    mode = format!("{:o}", mode & 0o777),
                    "the SQLite database file is readable by others than its owner; chmod 600 it"
                );
            }
        }
        Err(e) => {
            tracing::debug!(path, error = %e, "cannot create the SQLite database file");
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:[redacted]@host/db`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:[redacted]{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_statements() {
        assert_eq!(
            multi_row_insert("t", "a, b", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
    }

    #[test]
    fn redacts_password_in_url() {
        assert_eq!(
            redact_url("postgres://tessera:s3cret@127.0.0.1:5432/db"),
            "postgres://tessera:[redacted]@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres@127.0.0.1/db"
        );
    }
}
