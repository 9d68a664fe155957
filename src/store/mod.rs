//! Persistence behind one struct: SQLite (embedded default: a file, WAL, foreign keys on) or
//! PostgreSQL (several replicas may share it), chosen by the database URL. Numbered migrations
//! under `migrations/<dialect>/` run at start-up. Queries are built at run time with binds; the
//! store holds no business rules: it reads and writes rows exactly as it is told.
//!
//! Writes go through a [`WriteTx`]: its first statement updates the single `write_lock` row, so
//! writers are serialised on both databases (the audit hash chain needs exactly one writer at a
//! time) and everything a change touches (rows, audit event, idempotency record) commits or rolls
//! back together.

/// A statement assembled from the column-list constants below (never from input).
macro_rules! sql {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

#[macro_use]
mod rows;
mod enrollments;

pub use enrollments::*;
pub use rows::*;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row};
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
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database. Cheap to clone (a pool handle).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database at `url`:
    /// `sqlite:PATH` / `sqlite://PATH`, or `postgres://…` / `postgresql://…`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, connect_url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains('?') {
                return Err(StoreError::UnsupportedUrl(url.to_string()));
            }
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
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
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
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a writing transaction; it waits for any other writer to commit first.
    pub async fn begin_write(&self) -> Result<WriteTx> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE write_lock SET counter = counter + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        Ok(WriteTx { tx })
    }

    /// A raw SQL statement, for tests that tamper with rows and for operators' repair tools.
    pub async fn execute_raw(&self, sql: &str) -> Result<u64> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn person_by_external_id(&self, external_id: &str) -> Result<Option<PersonRow>> {
        person_by_external_id(&self.pool, external_id).await
    }
    pub async fn list_people(&self, query: &PeopleQuery) -> Result<Vec<PersonRow>> {
        list_people(&self.pool, query).await
    }
    pub async fn token_by_serial(&self, serial: &str) -> Result<Option<TokenRow>> {
        token_by_serial(&self.pool, serial).await
    }
    pub async fn list_tokens(&self, query: &TokensQuery) -> Result<Vec<TokenRow>> {
        list_tokens(&self.pool, query).await
    }
    pub async fn certificate_serials_for_token(&self, token_id: i64) -> Result<Vec<String>> {
        certificate_serials_for_token(&self.pool, token_id).await
    }
    pub async fn certificate_by_serial(&self, serial: &str) -> Result<Option<CertificateRow>> {
        certificate_where(&self.pool, "serial", serial).await
    }
    pub async fn certificate_by_sha256(&self, sha256_hex: &str) -> Result<Option<CertificateRow>> {
        certificate_where(&self.pool, "sha256", sha256_hex).await
    }
    /// Certificates with a serial greater than `after_serial`, ordered by serial, optionally
    /// only one person's or one token's.
    pub async fn list_certificates(&self, q: &CertificatesQuery) -> Result<Vec<CertificateRow>> {
        let rows = sqlx::query(sql!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE serial > $1 \
             AND ($2 = 0 OR person_id = $2) AND ($3 = 0 OR token_id = $3) ORDER BY serial LIMIT $4"
        ))
        .bind(&q.after_serial)
        .bind(q.person_id.unwrap_or(0))
        .bind(q.token_id.unwrap_or(0))
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(CertificateRow::from_row).collect()
    }
    /// The external id of a person and the serial of a token, by row id (for answers).
    pub async fn person_external_id(&self, person_id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT external_id FROM people WHERE id = $1")
            .bind(person_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
    pub async fn token_serial(&self, token_id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT serial FROM tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
    /// Row counts for metrics: (table, state or status, count).
    pub async fn state_counts(&self) -> Result<Vec<(&'static str, String, i64)>> {
        let mut out = Vec::new();
        for (table, column) in [
            ("people", "state"),
            ("tokens", "state"),
            ("certificates", "status"),
        ] {
            let rows = sqlx::query(sql!(
                "SELECT {column}, CAST(COUNT(*) AS BIGINT) FROM {table} GROUP BY {column} ORDER BY {column}"
            ))
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                out.push((table, r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?));
            }
        }
        Ok(out)
    }
    /// Certificates the CA has signed (any status but reserved).
    pub async fn certificates_signed(&self) -> Result<i64> {
        let row =
            sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM certificates WHERE der IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get(0)?)
    }
    /// The highest audit sequence (0 when empty).
    pub async fn audit_head_sequence(&self) -> Result<i64> {
        let row =
            sqlx::query("SELECT CAST(COALESCE(MAX(sequence), 0) AS BIGINT) FROM audit_events")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get(0)?)
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
    pub async fn idempotency_record(&self, request_id: &str) -> Result<Option<IdempotencyRow>> {
        idempotency_record(&self.pool, request_id).await
    }
    /// The CRL state (current CRL and the status-change counter).
    pub async fn crl_state(&self) -> Result<CrlStateRow> {
        crl_state(&self.pool).await
    }
    /// Audit events with `sequence > after`, in order, at most `limit`.
    pub async fn audit_events(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        audit_events(&self.pool, after, limit).await
    }
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        let rows = sqlx::query(
            "SELECT sequence, head_hash, key_id, signature, at FROM audit_checkpoints ORDER BY sequence",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(CheckpointRow::from_row).collect()
    }
}

/// One writing transaction. Dropped without [`WriteTx::commit`], it rolls back.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, Any>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    pub async fn person_by_external_id(&mut self, external_id: &str) -> Result<Option<PersonRow>> {
        person_by_external_id(&mut *self.tx, external_id).await
    }

    pub async fn insert_person(&mut self, p: &NewPerson) -> Result<PersonRow> {
        let now = now_rfc3339();
        let result = sqlx::query(
            "INSERT INTO people (external_id, display_name, upn, email, windows_sid, attributes_json, \
             state, sync_generation, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&p.external_id)
        .bind(&p.display_name)
        .bind(&p.upn)
        .bind(&p.email)
        .bind(p.windows_sid.clone())
        .bind(&p.attributes_json)
        .bind(p.state.as_str())
        .bind(p.sync_generation)
        .bind(&now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "person", &p.external_id)?;
        written(person_by_external_id(&mut *self.tx, &p.external_id).await?)
    }

    /// Writes every field of `p` (found by its id) and stamps `updated_at`.
    pub async fn update_person(&mut self, p: &PersonRow) -> Result<PersonRow> {
        let now = now_rfc3339();
        sqlx::query(
            "UPDATE people SET display_name = $1, upn = $2, email = $3, windows_sid = $4, attributes_json = $5, \
             state = $6, sync_generation = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(&p.display_name)
        .bind(&p.upn)
        .bind(&p.email)
        .bind(p.windows_sid.clone())
        .bind(&p.attributes_json)
        .bind(p.state.as_str())
        .bind(p.sync_generation)
        .bind(&now)
        .bind(p.id)
        .execute(&mut *self.tx)
        .await?;
        written(person_by_external_id(&mut *self.tx, &p.external_id).await?)
    }

    /// People not offboarded whose sync generation differs from `generation`.
    pub async fn people_missing_from_sync(&mut self, generation: i64) -> Result<Vec<PersonRow>> {
        let rows = sqlx::query(sql!(
            "SELECT {PERSON_COLUMNS} FROM people WHERE state <> $1 AND sync_generation <> $2 ORDER BY id"
        ))
        .bind(PersonState::Offboarded.as_str())
        .bind(generation)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(PersonRow::from_row).collect()
    }

    pub async fn last_sync_generation(&mut self) -> Result<i64> {
        let row = sqlx::query("SELECT generation FROM sync_state WHERE id = 1")
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn set_last_sync_generation(&mut self, generation: i64) -> Result<()> {
        sqlx::query("UPDATE sync_state SET generation = $1 WHERE id = 1")
            .bind(generation)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn token_by_serial(&mut self, serial: &str) -> Result<Option<TokenRow>> {
        token_by_serial(&mut *self.tx, serial).await
    }

    pub async fn insert_token(&mut self, t: &NewToken) -> Result<TokenRow> {
        let now = now_rfc3339();
        let result = sqlx::query(
            "INSERT INTO tokens (serial, model, firmware, form_factor, state, person_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&t.serial)
        .bind(&t.model)
        .bind(&t.firmware)
        .bind(&t.form_factor)
        .bind(t.state.as_str())
        .bind(t.person_id)
        .bind(&now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "token", &t.serial)?;
        written(token_by_serial(&mut *self.tx, &t.serial).await?)
    }

    /// Writes the state and holder of the token with `t.id`.
    pub async fn update_token(&mut self, t: &TokenRow) -> Result<TokenRow> {
        sqlx::query("UPDATE tokens SET state = $1, person_id = $2, updated_at = $3 WHERE id = $4")
            .bind(t.state.as_str())
            .bind(t.person_id)
            .bind(now_rfc3339())
            .bind(t.id)
            .execute(&mut *self.tx)
            .await?;
        written(token_by_serial(&mut *self.tx, &t.serial).await?)
    }

    /// Records a certificate before it is signed (status `reserved`). A serial already used
    /// is refused with [`StoreError::Duplicate`].
    pub async fn reserve_certificate(&mut self, c: &NewCertificate) -> Result<CertificateRow> {
        let now = now_rfc3339();
        let result = sqlx::query(
            "INSERT INTO certificates (serial, person_id, token_id, profile, status, tbs, not_before, not_after, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&c.serial)
        .bind(c.person_id)
        .bind(c.token_id)
        .bind(&c.profile)
        .bind(CertificateStatus::Reserved.as_str())
        .bind(c.tbs.clone())
        .bind(&c.not_before)
        .bind(&c.not_after)
        .bind(&now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "certificate serial", &c.serial)?;
        written(certificate_where(&mut *self.tx, "serial", &c.serial).await?)
    }

    /// Stores the signed certificate of a reserved serial and marks it `good`.
    pub async fn record_issued_certificate(
        &mut self,
        serial: &str,
        der: &[u8],
        sha256_hex: &str,
    ) -> Result<CertificateRow> {
        sqlx::query("UPDATE certificates SET der = $1, sha256 = $2, status = $3, updated_at = $4 WHERE serial = $5")
            .bind(der.to_vec())
            .bind(sha256_hex)
            .bind(CertificateStatus::Good.as_str())
            .bind(now_rfc3339())
            .bind(serial)
            .execute(&mut *self.tx)
            .await?;
        written(certificate_where(&mut *self.tx, "serial", serial).await?)
    }

    pub async fn certificate_by_serial(&mut self, serial: &str) -> Result<Option<CertificateRow>> {
        certificate_where(&mut *self.tx, "serial", serial).await
    }

    /// Every certificate of a person (`person_id`) or of a token (`token_id`), by serial.
    pub async fn certificates_of(
        &mut self,
        owner: CertificateOwner,
    ) -> Result<Vec<CertificateRow>> {
        let (column, id) = match owner {
            CertificateOwner::Person(id) => ("person_id", id),
            CertificateOwner::Token(id) => ("token_id", id),
        };
        let rows = sqlx::query(sql!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE {column} = $1 ORDER BY serial"
        ))
        .bind(id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(CertificateRow::from_row).collect()
    }

    /// Unassigns every token of a person; returns their serials.
    pub async fn release_tokens_of_person(&mut self, person_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT serial FROM tokens WHERE person_id = $1 ORDER BY serial")
            .bind(person_id)
            .fetch_all(&mut *self.tx)
            .await?;
        let serials = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        sqlx::query("UPDATE tokens SET person_id = NULL, updated_at = $1 WHERE person_id = $2")
            .bind(now_rfc3339())
            .bind(person_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(serials)
    }

    /// Writes status, revocation reason and time of the certificate `serial`.
    pub async fn update_certificate_status(
        &mut self,
        serial: &str,
        status: CertificateStatus,
        revocation_reason: Option<i64>,
        revoked_at: Option<&str>,
    ) -> Result<CertificateRow> {
        sqlx::query(
            "UPDATE certificates SET status = $1, revocation_reason = $2, revoked_at = $3, updated_at = $4 WHERE serial = $5",
        )
        .bind(status.as_str())
        .bind(revocation_reason)
        .bind(revoked_at.map(str::to_string))
        .bind(now_rfc3339())
        .bind(serial)
        .execute(&mut *self.tx)
        .await?;
        // Every replica's CRL cache sees the change (see `crl_state`).
        sqlx::query("UPDATE crl_state SET status_changes = status_changes + 1 WHERE id = 1")
            .execute(&mut *self.tx)
            .await?;
        written(certificate_where(&mut *self.tx, "serial", serial).await?)
    }

    /// The CRL state, read inside this transaction (writers are serialised, so a CRL number
    /// read here is not taken by another replica before commit).
    pub async fn crl_state(&mut self) -> Result<CrlStateRow> {
        crl_state(&mut *self.tx).await
    }

    /// Records `crl` as the current CRL.
    pub async fn record_crl(&mut self, crl: &NewCrl) -> Result<()> {
        sqlx::query(
            "UPDATE crl_state SET number = $1, built_from = $2, der = $3, this_update = $4, next_update = $5 WHERE id = 1",
        )
        .bind(crl.number)
        .bind(crl.built_from)
        .bind(crl.der.clone())
        .bind(&crl.this_update)
        .bind(&crl.next_update)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Revoked and on-hold certificates, by serial (what a CRL lists).
    pub async fn revoked_certificates(&mut self) -> Result<Vec<CertificateRow>> {
        let rows = sqlx::query(sql!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE status = $1 OR status = $2 ORDER BY serial"
        ))
        .bind(CertificateStatus::Revoked.as_str())
        .bind(CertificateStatus::OnHold.as_str())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(CertificateRow::from_row).collect()
    }

    pub async fn idempotency_record(&mut self, request_id: &str) -> Result<Option<IdempotencyRow>> {
        idempotency_record(&mut *self.tx, request_id).await
    }

    pub async fn insert_idempotency_record(&mut self, r: &IdempotencyRow) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO idempotency (request_id, operation, request_hash, response, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&r.request_id)
        .bind(&r.operation)
        .bind(r.request_hash.clone())
        .bind(r.response.clone())
        .bind(&r.created_at)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "request id", &r.request_id)
    }

    /// Replaces the stored answer of `request_id` (an issuance's answer becomes known only
    /// after the HSM signed, in a later transaction than the one that claimed the id).
    pub async fn complete_idempotency_record(
        &mut self,
        request_id: &str,
        response: &[u8],
    ) -> Result<()> {
        let done = sqlx::query("UPDATE idempotency SET response = $1 WHERE request_id = $2")
            .bind(response.to_vec())
            .bind(request_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        if done == 1 {
            Ok(())
        } else {
            Err(StoreError::Database(sqlx::Error::RowNotFound))
        }
    }

    /// The last audit event (highest sequence), if any.
    pub async fn last_audit_event(&mut self) -> Result<Option<AuditRow>> {
        let row = sqlx::query(sql!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY sequence DESC LIMIT 1"
        ))
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(AuditRow::from_row).transpose()
    }

    pub async fn insert_audit_event(&mut self, e: &AuditRow) -> Result<()> {
        let result = sqlx::query(sql!(
            "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(e.sequence)
        .bind(&e.at)
        .bind(&e.actor)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.subject)
        .bind(&e.before_json)
        .bind(&e.after_json)
        .bind(&e.request_id)
        .bind(e.prev_hash.clone())
        .bind(e.hash.clone())
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "audit event", &e.sequence.to_string())
    }

    pub async fn insert_checkpoint(&mut self, c: &CheckpointRow) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO audit_checkpoints (sequence, head_hash, key_id, signature, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.sequence)
        .bind(c.head_hash.clone())
        .bind(&c.key_id)
        .bind(c.signature.clone())
        .bind(&c.at)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "audit checkpoint", &c.sequence.to_string())
    }
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

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

const PERSON_COLUMNS: &str = "id, external_id, display_name, upn, email, windows_sid, attributes_json, state, \
     sync_generation, created_at, updated_at";
const TOKEN_COLUMNS: &str = "id, serial, model, firmware, form_factor, state, person_id, \
     (SELECT external_id FROM people WHERE people.id = tokens.person_id), created_at, updated_at";
const AUDIT_COLUMNS: &str = "sequence, at, actor, role, action, subject, before_json, after_json, request_id, \
     prev_hash, hash";

async fn person_by_external_id<'e, E: Executor<'e, Database = Any>>(
    e: E,
    external_id: &str,
) -> Result<Option<PersonRow>> {
    let row = sqlx::query(sql!(
        "SELECT {PERSON_COLUMNS} FROM people WHERE external_id = $1"
    ))
    .bind(external_id)
    .fetch_optional(e)
    .await?;
    row.as_ref().map(PersonRow::from_row).transpose()
}

async fn list_people<'e, E: Executor<'e, Database = Any>>(
    e: E,
    q: &PeopleQuery,
) -> Result<Vec<PersonRow>> {
    let rows = match q.state {
        Some(state) => sqlx::query(sql!(
            "SELECT {PERSON_COLUMNS} FROM people WHERE id > $1 AND state = $2 ORDER BY id LIMIT $3"
        ))
        .bind(q.after_id)
        .bind(state.as_str())
        .bind(q.limit)
        .fetch_all(e)
        .await?,
        None => {
            sqlx::query(sql!(
                "SELECT {PERSON_COLUMNS} FROM people WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(q.after_id)
            .bind(q.limit)
            .fetch_all(e)
            .await?
        }
    };
    rows.iter().map(PersonRow::from_row).collect()
}

async fn token_by_serial<'e, E: Executor<'e, Database = Any>>(
    e: E,
    serial: &str,
) -> Result<Option<TokenRow>> {
    let row = sqlx::query(sql!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE serial = $1"))
        .bind(serial)
        .fetch_optional(e)
        .await?;
    row.as_ref().map(TokenRow::from_row).transpose()
}

async fn list_tokens<'e, E: Executor<'e, Database = Any>>(
    e: E,
    q: &TokensQuery,
) -> Result<Vec<TokenRow>> {
    // Absent filters are bound as values that match everything, so one statement serves all.
    let rows = sqlx::query(sql!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id > $1 \
         AND ($2 = 0 OR person_id = $2) AND ($3 = '' OR state = $3) ORDER BY id LIMIT $4"
    ))
    .bind(q.after_id)
    .bind(q.person_id.unwrap_or(0))
    .bind(q.state.map(|s| s.as_str()).unwrap_or(""))
    .bind(q.limit)
    .fetch_all(e)
    .await?;
    rows.iter().map(TokenRow::from_row).collect()
}

async fn certificate_serials_for_token<'e, E: Executor<'e, Database = Any>>(
    e: E,
    token_id: i64,
) -> Result<Vec<String>> {
    let rows = sqlx::query("SELECT serial FROM certificates WHERE token_id = $1 ORDER BY serial")
        .bind(token_id)
        .fetch_all(e)
        .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<_, _>>()?)
}

const CERTIFICATE_COLUMNS: &str = "serial, person_id, token_id, profile, status, tbs, der, sha256, not_before, \
     not_after, revocation_reason, revoked_at, created_at, updated_at";

/// One certificate by a unique column (`serial` or `sha256`, never from input).
async fn certificate_where<'e, E: Executor<'e, Database = Any>>(
    e: E,
    column: &'static str,
    value: &str,
) -> Result<Option<CertificateRow>> {
    let row = sqlx::query(sql!(
        "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(e)
    .await?;
    row.as_ref().map(CertificateRow::from_row).transpose()
}

async fn crl_state<'e, E: Executor<'e, Database = Any>>(e: E) -> Result<CrlStateRow> {
    let row = sqlx::query(
        "SELECT status_changes, number, built_from, der, this_update, next_update FROM crl_state WHERE id = 1",
    )
    .fetch_one(e)
    .await?;
    CrlStateRow::from_row(&row)
}

async fn idempotency_record<'e, E: Executor<'e, Database = Any>>(
    e: E,
    request_id: &str,
) -> Result<Option<IdempotencyRow>> {
    let row = sqlx::query(
        "SELECT request_id, operation, request_hash, response, created_at FROM idempotency WHERE request_id = $1",
    )
    .bind(request_id)
    .fetch_optional(e)
    .await?;
    row.map(|r: AnyRow| {
        Ok(IdempotencyRow {
            request_id: r.try_get(0)?,
            operation: r.try_get(1)?,
            request_hash: r.try_get(2)?,
            response: r.try_get(3)?,
            created_at: r.try_get(4)?,
        })
    })
    .transpose()
}

async fn audit_events<'e, E: Executor<'e, Database = Any>>(
    e: E,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>> {
    let rows = sqlx::query(sql!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(e)
    .await?;
    rows.iter().map(AuditRow::from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
