//! Table `crl_state` (one row): the current CRL, shared by every replica, and the
//! status-change counter it was built from.
use super::{Result, Store, Timestamp, WriteTx};
use sqlx::{Any, Executor};

/// The shared CRL state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CrlStateRow {
    /// Bumped by every certificate status change.
    pub status_changes: i64,
    /// CRL number of the last CRL signed; 0 before the first.
    pub number: i64,
    /// `status_changes` the last CRL was built from.
    pub built_from: i64,
    pub der: Option<Vec<u8>>,
    pub this_update: Option<Timestamp>,
    pub next_update: Option<Timestamp>,
}

/// A CRL just signed, to be recorded as the current one.
#[derive(Debug, Clone)]
pub struct NewCrl {
    pub number: i64,
    pub built_from: i64,
    pub der: Vec<u8>,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
}

async fn crl_state<'e, E: Executor<'e, Database = Any>>(e: E) -> Result<CrlStateRow> {
    Ok(sqlx::query_as(
        "SELECT status_changes, number, built_from, der, this_update, next_update FROM crl_state WHERE id = 1",
    )
    .fetch_one(e)
    .await?)
}

impl Store {
    /// The CRL state (current CRL and the status-change counter).
    pub async fn crl_state(&self) -> Result<CrlStateRow> {
        crl_state(&self.pool).await
    }
}

impl WriteTx {
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
        .bind(crl.this_update)
        .bind(crl.next_update)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
