//! Rows as stored, and the vocabularies of the state columns.
use super::{Result, StoreError};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

macro_rules! stored_enum {
    ($name:ident, $column:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> Result<Self> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(StoreError::BadStoredValue { column: $column, value: other.to_string() }),
                }
            }
        }
    };
}

stored_enum!(PersonState, "people.state", {
    Active => "active", Suspended => "suspended", Offboarded => "offboarded",
});
stored_enum!(TokenState, "tokens.state", {
    Enrolling => "enrolling", Active => "active", Suspended => "suspended",
    Lost => "lost", Damaged => "damaged", Retired => "retired",
});

stored_enum!(CertificateStatus, "certificates.status", {
    Reserved => "reserved", Good => "good", OnHold => "on_hold", Revoked => "revoked",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PersonRow {
    #[serde(skip)]
    pub id: i64,
    pub external_id: String,
    pub display_name: String,
    pub upn: String,
    pub email: String,
    pub windows_sid: Option<String>,
    pub attributes_json: String,
    pub state: PersonState,
    pub sync_generation: i64,
    #[serde(skip)]
    pub created_at: String,
    #[serde(skip)]
    pub updated_at: String,
}

impl PersonRow {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(PersonRow {
            id: r.try_get(0)?,
            external_id: r.try_get(1)?,
            display_name: r.try_get(2)?,
            upn: r.try_get(3)?,
            email: r.try_get(4)?,
            windows_sid: r.try_get(5)?,
            attributes_json: r.try_get(6)?,
            state: PersonState::parse(&r.try_get::<String, _>(7)?)?,
            sync_generation: r.try_get(8)?,
            created_at: r.try_get(9)?,
            updated_at: r.try_get(10)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewPerson {
    pub external_id: String,
    pub display_name: String,
    pub upn: String,
    pub email: String,
    pub windows_sid: Option<String>,
    pub attributes_json: String,
    pub state: PersonState,
    pub sync_generation: i64,
}

#[derive(Debug, Clone, Default)]
pub struct PeopleQuery {
    /// Rows with a greater id (paging).
    pub after_id: i64,
    pub limit: i64,
    pub state: Option<PersonState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    #[serde(skip)]
    pub id: i64,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub form_factor: String,
    pub state: TokenState,
    #[serde(skip)]
    pub person_id: Option<i64>,
    /// Read from `people` by `person_id`; ignored on write.
    pub person_external_id: Option<String>,
    #[serde(skip)]
    pub created_at: String,
    #[serde(skip)]
    pub updated_at: String,
}

impl TokenRow {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(TokenRow {
            id: r.try_get(0)?,
            serial: r.try_get(1)?,
            model: r.try_get(2)?,
            firmware: r.try_get(3)?,
            form_factor: r.try_get(4)?,
            state: TokenState::parse(&r.try_get::<String, _>(5)?)?,
            person_id: r.try_get(6)?,
            person_external_id: r.try_get(7)?,
            created_at: r.try_get(8)?,
            updated_at: r.try_get(9)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub form_factor: String,
    pub state: TokenState,
    pub person_id: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct TokensQuery {
    pub after_id: i64,
    pub limit: i64,
    pub person_id: Option<i64>,
    pub state: Option<TokenState>,
}

/// The first answer given to a state-changing request, kept so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    pub request_id: String,
    pub operation: String,
    pub request_hash: Vec<u8>,
    pub response: Vec<u8>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub sequence: i64,
    pub at: String,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub subject: String,
    pub before_json: String,
    pub after_json: String,
    pub request_id: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditRow {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(AuditRow {
            sequence: r.try_get(0)?,
            at: r.try_get(1)?,
            actor: r.try_get(2)?,
            role: r.try_get(3)?,
            action: r.try_get(4)?,
            subject: r.try_get(5)?,
            before_json: r.try_get(6)?,
            after_json: r.try_get(7)?,
            request_id: r.try_get(8)?,
            prev_hash: r.try_get(9)?,
            hash: r.try_get(10)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub sequence: i64,
    pub head_hash: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
    pub at: String,
}

impl CheckpointRow {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(CheckpointRow {
            sequence: r.try_get(0)?,
            head_hash: r.try_get(1)?,
            key_id: r.try_get(2)?,
            signature: r.try_get(3)?,
            at: r.try_get(4)?,
        })
    }
}

/// A certificate about to be signed: serial reserved and what will be signed recorded first.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    /// Lower-case hex.
    pub serial: String,
    pub person_id: Option<i64>,
    pub token_id: Option<i64>,
    pub profile: String,
    /// What the CA is about to sign (the to-be-signed certificate, or the request it is made from).
    pub tbs: Vec<u8>,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRow {
    pub serial: String,
    #[serde(skip)]
    pub person_id: Option<i64>,
    #[serde(skip)]
    pub token_id: Option<i64>,
    pub profile: String,
    pub status: CertificateStatus,
    #[serde(skip)]
    pub tbs: Vec<u8>,
    #[serde(skip)]
    pub der: Option<Vec<u8>>,
    /// Lower-case hex SHA-256 of the DER, once signed.
    pub sha256: Option<String>,
    pub not_before: String,
    pub not_after: String,
    /// RFC 5280 CRLReason code.
    pub revocation_reason: Option<i64>,
    pub revoked_at: Option<String>,
    #[serde(skip)]
    pub created_at: String,
    #[serde(skip)]
    pub updated_at: String,
}

impl CertificateRow {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(CertificateRow {
            serial: r.try_get(0)?,
            person_id: r.try_get(1)?,
            token_id: r.try_get(2)?,
            profile: r.try_get(3)?,
            status: CertificateStatus::parse(&r.try_get::<String, _>(4)?)?,
            tbs: r.try_get(5)?,
            der: r.try_get(6)?,
            sha256: r.try_get(7)?,
            not_before: r.try_get(8)?,
            not_after: r.try_get(9)?,
            revocation_reason: r.try_get(10)?,
            revoked_at: r.try_get(11)?,
            created_at: r.try_get(12)?,
            updated_at: r.try_get(13)?,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct CertificatesQuery {
    /// Rows with a greater serial (paging); empty starts at the first.
    pub after_serial: String,
    pub limit: i64,
    pub person_id: Option<i64>,
    pub token_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateOwner {
    Person(i64),
    Token(i64),
}

/// The shared CRL state (table `crl_state`, one row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlStateRow {
    /// Bumped by every certificate status change.
    pub status_changes: i64,
    /// CRL number of the last CRL signed; 0 before the first.
    pub number: i64,
    /// `status_changes` the last CRL was built from.
    pub built_from: i64,
    pub der: Option<Vec<u8>>,
    /// RFC 3339.
    pub this_update: Option<String>,
    pub next_update: Option<String>,
}

impl CrlStateRow {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(CrlStateRow {
            status_changes: r.try_get(0)?,
            number: r.try_get(1)?,
            built_from: r.try_get(2)?,
            der: r.try_get(3)?,
            this_update: r.try_get(4)?,
            next_update: r.try_get(5)?,
        })
    }
}

/// A CRL just signed, to be recorded as the current one.
#[derive(Debug, Clone)]
pub struct NewCrl {
    pub number: i64,
    pub built_from: i64,
    pub der: Vec<u8>,
    pub this_update: String,
    pub next_update: String,
}
