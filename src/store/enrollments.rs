//! Rows of help-desk enrollment: enrollments, the certificates each issued, and the wrapped
//! per-token credentials. Rows only; the rules are in `enroll` and `api::enrollment_service`.
use super::{Result, Store, StoreError, WriteTx, map_unique, now_rfc3339};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

stored_enum!(EnrollmentState, "enrollments.state", {
    Begun => "begun", Completed => "completed", Confirmed => "confirmed",
    Aborted => "aborted", Expired => "expired",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentRow {
    #[serde(skip)]
    pub id: i64,
    pub public_id: String,
    #[serde(skip)]
    pub person_id: i64,
    #[serde(skip)]
    pub token_id: i64,
    pub profile: String,
    pub state: EnrollmentState,
    #[serde(skip)]
    pub nonce: Vec<u8>,
    #[serde(skip)]
    pub plan_json: String,
    pub firmware: String,
    pub expires_at: String,
    pub created_by: String,
    #[serde(skip)]
    pub created_at: String,
    #[serde(skip)]
    pub updated_at: String,
}

const ENROLLMENT_COLUMNS: &str = "id, public_id, person_id, token_id, profile, state, nonce, plan_json, \
     firmware, expires_at, created_by, created_at, updated_at";

impl EnrollmentRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(EnrollmentRow {
            id: r.try_get(0)?,
            public_id: r.try_get(1)?,
            person_id: r.try_get(2)?,
            token_id: r.try_get(3)?,
            profile: r.try_get(4)?,
            state: EnrollmentState::parse(&r.try_get::<String, _>(5)?)?,
            nonce: r.try_get(6)?,
            plan_json: r.try_get(7)?,
            firmware: r.try_get(8)?,
            expires_at: r.try_get(9)?,
            created_by: r.try_get(10)?,
            created_at: r.try_get(11)?,
            updated_at: r.try_get(12)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewEnrollment {
    pub public_id: String,
    pub person_id: i64,
    pub token_id: i64,
    pub profile: String,
    pub nonce: Vec<u8>,
    pub plan_json: String,
    pub firmware: String,
    /// RFC 3339.
    pub expires_at: String,
    pub created_by: String,
}

/// A certificate an enrollment issued for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentCertificateRow {
    pub slot: String,
    pub serial: String,
}

/// A token's secrets, each wrapped by the HSM key `wrapping_key_label`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenCredentialsRow {
    pub token_id: i64,
    pub wrapping_key_label: String,
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
            .field("confirmed", &self.confirmed.is_some())
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

/// A management key (algorithm name + wrapped key) and a wrapped PUK.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedCredentials {
    pub management_key_algorithm: String,
    pub management_key_wrapped: Vec<u8>,
    pub puk_wrapped: Vec<u8>,
}

impl TokenCredentialsRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        let pair = |a: usize| -> Result<Option<WrappedCredentials>> {
            let alg: Option<String> = r.try_get(a)?;
            let key: Option<Vec<u8>> = r.try_get(a + 1)?;
            let puk: Option<Vec<u8>> = r.try_get(a + 2)?;
            Ok(match (alg, key, puk) {
                (
                    Some(management_key_algorithm),
                    Some(management_key_wrapped),
                    Some(puk_wrapped),
                ) => Some(WrappedCredentials {
                    management_key_algorithm,
                    management_key_wrapped,
                    puk_wrapped,
                }),
                (None, None, None) => None,
                _ => {
                    return Err(StoreError::BadStoredValue {
                        column: "token_credentials",
                        value: "a partly empty credential triple".into(),
                    });
                }
            })
        };
        Ok(TokenCredentialsRow {
            token_id: r.try_get(0)?,
            wrapping_key_label: r.try_get(1)?,
            confirmed: pair(2)?,
            pending: pair(5)?,
        })
    }
}

const CREDENTIAL_COLUMNS: &str = "token_id, wrapping_key_label, management_key_algorithm, management_key_wrapped, \
     puk_wrapped, pending_management_key_algorithm, pending_management_key_wrapped, pending_puk_wrapped";

async fn enrollment_where<'e, E: Executor<'e, Database = Any>>(
    e: E,
    public_id: &str,
) -> Result<Option<EnrollmentRow>> {
    let row = sqlx::query(sql!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE public_id = $1"
    ))
    .bind(public_id)
    .fetch_optional(e)
    .await?;
    row.as_ref().map(EnrollmentRow::from_row).transpose()
}

async fn enrollment_certificates<'e, E: Executor<'e, Database = Any>>(
    e: E,
    enrollment_id: i64,
) -> Result<Vec<EnrollmentCertificateRow>> {
    let rows = sqlx::query(
        "SELECT slot, serial FROM enrollment_certificates WHERE enrollment_id = $1 ORDER BY slot",
    )
    .bind(enrollment_id)
    .fetch_all(e)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EnrollmentCertificateRow {
                slot: r.try_get(0)?,
                serial: r.try_get(1)?,
            })
        })
        .collect()
}

impl Store {
    pub async fn enrollment_by_public_id(&self, public_id: &str) -> Result<Option<EnrollmentRow>> {
        enrollment_where(&self.pool, public_id).await
    }
    pub async fn enrollment_certificates(
        &self,
        enrollment_id: i64,
    ) -> Result<Vec<EnrollmentCertificateRow>> {
        enrollment_certificates(&self.pool, enrollment_id).await
    }
    /// Public ids of enrollments in `begun` or `completed` whose `expires_at` is before `now`
    /// (both RFC 3339 UTC, so text order is time order).
    pub async fn enrollments_expired_at(&self, now: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT public_id FROM enrollments WHERE state IN ('begun', 'completed') AND expires_at <= $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?)
    }
}

impl WriteTx {
    pub async fn insert_enrollment(&mut self, n: &NewEnrollment) -> Result<EnrollmentRow> {
        let now = now_rfc3339();
        let result = sqlx::query(
            "INSERT INTO enrollments (public_id, person_id, token_id, profile, state, nonce, plan_json, firmware, \
             expires_at, created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
        )
        .bind(&n.public_id)
        .bind(n.person_id)
        .bind(n.token_id)
        .bind(&n.profile)
        .bind(EnrollmentState::Begun.as_str())
        .bind(n.nonce.clone())
        .bind(&n.plan_json)
        .bind(&n.firmware)
        .bind(&n.expires_at)
        .bind(&n.created_by)
        .bind(&now)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "enrollment", &n.public_id)?;
        enrollment_where(&mut *self.tx, &n.public_id)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    pub async fn enrollment_by_public_id(
        &mut self,
        public_id: &str,
    ) -> Result<Option<EnrollmentRow>> {
        enrollment_where(&mut *self.tx, public_id).await
    }

    /// Enrollments of a token still in `begun` or `completed`.
    pub async fn open_enrollments_of_token(&mut self, token_id: i64) -> Result<Vec<EnrollmentRow>> {
        let rows = sqlx::query(sql!(
            "SELECT {ENROLLMENT_COLUMNS} FROM enrollments WHERE token_id = $1 AND state IN ('begun', 'completed') ORDER BY id"
        ))
        .bind(token_id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(EnrollmentRow::from_row).collect()
    }

    /// Sets the state of enrollment `id`, but only when it is still `from` (so two writers
    /// cannot both move it); returns whether it moved.
    pub async fn move_enrollment_state(
        &mut self,
        id: i64,
        from: EnrollmentState,
        to: EnrollmentState,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE enrollments SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now_rfc3339())
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *self.tx)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn insert_enrollment_certificate(
        &mut self,
        enrollment_id: i64,
        slot: &str,
        serial: &str,
    ) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO enrollment_certificates (enrollment_id, slot, serial) VALUES ($1, $2, $3)",
        )
        .bind(enrollment_id)
        .bind(slot)
        .bind(serial)
        .execute(&mut *self.tx)
        .await;
        map_unique(result, "enrollment certificate", slot)
    }

    pub async fn enrollment_certificates(
        &mut self,
        enrollment_id: i64,
    ) -> Result<Vec<EnrollmentCertificateRow>> {
        enrollment_certificates(&mut *self.tx, enrollment_id).await
    }

    /// Writes a token's model, firmware and form factor.
    pub async fn update_token_hardware(
        &mut self,
        token_id: i64,
        model: &str,
        firmware: &str,
        form_factor: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE tokens SET model = $1, firmware = $2, form_factor = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(model)
        .bind(firmware)
        .bind(form_factor)
        .bind(now_rfc3339())
        .bind(token_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn person_by_id(&mut self, id: i64) -> Result<Option<super::PersonRow>> {
        let row = sqlx::query(sql!(
            "SELECT {} FROM people WHERE id = $1",
            super::PERSON_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(super::PersonRow::from_row).transpose()
    }

    pub async fn token_by_id(&mut self, id: i64) -> Result<Option<super::TokenRow>> {
        let row = sqlx::query(sql!(
            "SELECT {} FROM tokens WHERE id = $1",
            super::TOKEN_COLUMNS
        ))
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(super::TokenRow::from_row).transpose()
    }

    /// Certificates issued by the token's other enrollments (not `except_enrollment_id`).
    pub async fn earlier_enrollment_certificates(
        &mut self,
        token_id: i64,
        except_enrollment_id: i64,
    ) -> Result<Vec<EnrollmentCertificateRow>> {
        let rows = sqlx::query(
            "SELECT ec.slot, ec.serial FROM enrollment_certificates ec JOIN enrollments e ON e.id = ec.enrollment_id \
             WHERE e.token_id = $1 AND e.id <> $2 ORDER BY ec.serial",
        )
        .bind(token_id)
        .bind(except_enrollment_id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EnrollmentCertificateRow {
                    slot: r.try_get(0)?,
                    serial: r.try_get(1)?,
                })
            })
            .collect()
    }

    pub async fn token_credentials(
        &mut self,
        token_id: i64,
    ) -> Result<Option<TokenCredentialsRow>> {
        let row = sqlx::query(sql!(
            "SELECT {CREDENTIAL_COLUMNS} FROM token_credentials WHERE token_id = $1"
        ))
        .bind(token_id)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(TokenCredentialsRow::from_row).transpose()
    }

    /// Inserts or replaces every column of a token's credentials row.
    pub async fn put_token_credentials(&mut self, c: &TokenCredentialsRow) -> Result<()> {
        sqlx::query("DELETE FROM token_credentials WHERE token_id = $1")
            .bind(c.token_id)
            .execute(&mut *self.tx)
            .await?;
        let split = |w: &Option<WrappedCredentials>| match w {
            Some(w) => (
                Some(w.management_key_algorithm.clone()),
                Some(w.management_key_wrapped.clone()),
                Some(w.puk_wrapped.clone()),
            ),
            None => (None, None, None),
        };
        let (ca, ck, cp) = split(&c.confirmed);
        let (pa, pk, pp) = split(&c.pending);
        sqlx::query(sql!(
            "INSERT INTO token_credentials ({CREDENTIAL_COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(c.token_id)
        .bind(&c.wrapping_key_label)
        .bind(ca)
        .bind(ck)
        .bind(cp)
        .bind(pa)
        .bind(pk)
        .bind(pp)
        .bind(now_rfc3339())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
