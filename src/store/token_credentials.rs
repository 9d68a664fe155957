//! Table `token_credentials`: per-token secrets, each wrapped (AES-256-GCM) by an HSM key;
//! never in the clear. `aad_version` says which associated data the blobs were wrapped with
//! (1: a fixed tag, rows written before migration 0006; 2: bound to the token serial, the field
//! and the credentials' `generation`, see `enroll::desk::secrets`).
use super::{Result, StoreError, WriteTx};

/// A token's secrets, each wrapped by the HSM key `wrapping_key_label`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenCredentialsRow {
    pub token_id: i64,
    pub wrapping_key_label: String,
    /// 1: wrapped with the fixed associated data of before migration 0006; 2: bound to the
    /// token, the field and the generation.
    pub aad_version: i64,
    /// What the token is confirmed to hold (after a confirmed enrollment).
    pub confirmed: Option<WrappedCredentials>,
    /// What the last unconfirmed enrollment handed out.
    pub pending: Option<WrappedCredentials>,
}

impl std::fmt::Debug for TokenCredentialsRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCredentialsRow")
            .field("token_id", &self.token_id)
            .field("wrapping_key_label", &self.wrapping_key_label)
            .field("aad_version", &self.aad_version)
            .field("confirmed", &self.confirmed.is_some())
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

/// A management key (algorithm name + wrapped key) and a wrapped PUK, wrapped together as
/// `generation` (a per-token counter that grows with each wrapping; 0 in version-1 rows).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedCredentials {
    pub generation: i64,
    pub management_key_algorithm: String,
    pub management_key_wrapped: Vec<u8>,
    pub puk_wrapped: Vec<u8>,
}

/// The row as stored: each triple of columns is all set or all NULL.
#[derive(sqlx::FromRow)]
struct StoredCredentials {
    token_id: i64,
    wrapping_key_label: String,
    aad_version: i64,
    generation: i64,
    management_key_algorithm: Option<String>,
    management_key_wrapped: Option<Vec<u8>>,
    puk_wrapped: Option<Vec<u8>>,
    pending_generation: i64,
    pending_management_key_algorithm: Option<String>,
    pending_management_key_wrapped: Option<Vec<u8>>,
    pending_puk_wrapped: Option<Vec<u8>>,
}

type CredentialColumns = (Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);

fn joined(generation: i64, columns: CredentialColumns) -> Result<Option<WrappedCredentials>> {
    match columns {
        (Some(management_key_algorithm), Some(management_key_wrapped), Some(puk_wrapped)) => {
            Ok(Some(WrappedCredentials {
                generation,
                management_key_algorithm,
                management_key_wrapped,
                puk_wrapped,
            }))
        }
        (None, None, None) => Ok(None),
        _ => Err(StoreError::BadStoredValue {
            column: "token_credentials",
            value: "a partly empty credential triple".into(),
        }),
    }
}

fn split(w: &Option<WrappedCredentials>) -> (i64, CredentialColumns) {
    match w {
        Some(w) => (
            w.generation,
            (
                Some(w.management_key_algorithm.clone()),
                Some(w.management_key_wrapped.clone()),
                Some(w.puk_wrapped.clone()),
            ),
        ),
        None => (0, (None, None, None)),
    }
}

impl TryFrom<StoredCredentials> for TokenCredentialsRow {
    type Error = StoreError;
    fn try_from(s: StoredCredentials) -> Result<TokenCredentialsRow> {
        Ok(TokenCredentialsRow {
            token_id: s.token_id,
            wrapping_key_label: s.wrapping_key_label,
            aad_version: s.aad_version,
            confirmed: joined(
                s.generation,
                (
                    s.management_key_algorithm,
                    s.management_key_wrapped,
                    s.puk_wrapped,
                ),
            )?,
            pending: joined(
                s.pending_generation,
                (
                    s.pending_management_key_algorithm,
                    s.pending_management_key_wrapped,
                    s.pending_puk_wrapped,
                ),
            )?,
        })
    }
}

const CREDENTIAL_COLUMNS: &str = "token_id, wrapping_key_label, aad_version, generation, management_key_algorithm, \
     management_key_wrapped, puk_wrapped, pending_generation, pending_management_key_algorithm, \
     pending_management_key_wrapped, pending_puk_wrapped";

impl WriteTx {
    pub async fn token_credentials(
        &mut self,
        token_id: i64,
    ) -> Result<Option<TokenCredentialsRow>> {
        let stored: Option<StoredCredentials> = sqlx::query_as(sql!(
            "SELECT {CREDENTIAL_COLUMNS} FROM token_credentials WHERE token_id = $1"
        ))
        .bind(token_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        stored.map(TokenCredentialsRow::try_from).transpose()
    }

    /// Inserts or replaces every column of a token's credentials row.
    pub async fn put_token_credentials(&mut self, c: &TokenCredentialsRow) -> Result<()> {
        sqlx::query("DELETE FROM token_credentials WHERE token_id = $1")
            .bind(c.token_id)
            .execute(&mut *self.tx)
            .await?;
        let (cg, (ca, ck, cp)) = split(&c.confirmed);
        let (pg, (pa, pk, pp)) = split(&c.pending);
        let now = self.now();
        sqlx::query(sql!(
            "INSERT INTO token_credentials ({CREDENTIAL_COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(c.token_id)
        .bind(&c.wrapping_key_label)
        .bind(c.aad_version)
        .bind(cg)
        .bind(ca)
        .bind(ck)
        .bind(cp)
        .bind(pg)
        .bind(pa)
        .bind(pk)
        .bind(pp)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
