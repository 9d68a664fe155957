//! Token credentials kept wrapped by the HSM's AES key, and the PUK released to the help desk.
//!
//! Each wrapped blob's AES-GCM associated data names where it belongs ([`credential_aad`]): the
//! token serial, the field (PUK or management key) and the generation of the credentials (a
//! per-token counter, one more at each wrapping, kept in the row). A blob copied into another
//! token's row, into the other field or into another generation no longer unwraps, and the
//! request is refused as [`EnrollmentRefusal::CredentialsTampered`]. Rows written before
//! migration 0006 (`aad_version` 1) were wrapped with a fixed tag; they are unwrapped so once
//! and re-wrapped bound (version 2) when ReleasePuk or BeginEnrollment uses them.

use super::puk_release::{Caller, PendingRelease, ReleaseGrant, ReleaseReason};
use super::puk_rotation::PukRotation;
use super::{
    DeskFailure, EnrollmentDesk, EnrollmentRefusal, SecretRepeat, record, refusal::refused,
};
use crate::enroll::{ManagementKeyAlgorithm, ManagementKeySecret, TokenCredentials};
use crate::hsm::HsmError;
use crate::lifecycle::LifecycleError;
use crate::store::{StoreError, TokenCredentialsRow, TokenState, WrappedCredentials, WriteTx};
use zeroize::Zeroizing;

/// `aad_version` of rows wrapped with the fixed tag (before migration 0006).
const AAD_FIXED_TAG: i64 = 1;
/// `aad_version` of rows whose blobs are bound by [`credential_aad`].
const AAD_BOUND: i64 = 2;
/// The associated data of every blob of an `aad_version` 1 row.
const FIXED_TAG_V1: &[u8] = b"tessera-wrap-v1";
const BOUND_CONTEXT: &[u8] = b"tessera/token-credential/v2";

/// Which secret of a token a wrapped blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialField {
    Puk,
    ManagementKey,
    /// The new PUK of a pending rotation (`puk_rotations`), apart from the confirmed PUK.
    PukRotation,
}

impl CredentialField {
    fn name(self) -> &'static str {
        match self {
            CredentialField::Puk => "puk",
            CredentialField::ManagementKey => "management-key",
            CredentialField::PukRotation => "puk-rotation",
        }
    }
}

/// The associated data that binds a wrapped secret to its place: the context
/// `tessera/token-credential/v2`, the token serial, the field and the generation, each preceded
/// by its length (4 bytes, big-endian) so no two different places give the same bytes.
pub fn credential_aad(serial: &str, field: CredentialField, generation: i64) -> Vec<u8> {
    let generation = generation.to_be_bytes();
    let parts: [&[u8]; 4] = [
        BOUND_CONTEXT,
        serial.as_bytes(),
        field.name().as_bytes(),
        &generation,
    ];
    let mut aad = Vec::with_capacity(64);
    for part in parts {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// The highest generation a row has used (0 for none or a version-1 row).
pub(super) fn last_generation(row: Option<&TokenCredentialsRow>) -> i64 {
    row.into_iter()
        .flat_map(|r| [&r.confirmed, &r.pending])
        .flatten()
        .map(|w| w.generation)
        .max()
        .unwrap_or(0)
}

/// What ReleasePuk gives: the token's credentials and their generation (kept with the answer,
/// so a repeat releases that generation or nothing), or under dual control the caller's request
/// that waits for its approval.
#[derive(Debug)]
pub enum PukRelease {
    Released {
        credentials: TokenCredentials,
        generation: i64,
        /// The new PUK for the station to set after the unblock (`puk_rotation.rs`).
        rotation: PukRotation,
    },
    Pending(PendingRelease),
}

/// A token's credentials unwrapped from its row: the confirmed ones and the pending ones.
pub(super) struct UnwrappedRow {
    pub confirmed: Option<TokenCredentials>,
    pub pending: Option<TokenCredentials>,
}

impl EnrollmentDesk {
    pub(super) async fn wrap(
        &self,
        serial: &str,
        field: CredentialField,
        generation: i64,
        secret: &[u8],
    ) -> Result<Vec<u8>, EnrollmentRefusal> {
        let (hsm, label) = (
            self.ca.hsm.clone(),
            self.settings.wrapping_key_label.clone(),
        );
        let secret = Zeroizing::new(secret.to_vec());
        let aad = credential_aad(serial, field, generation);
        tokio::task::spawn_blocking(move || hsm.wrap_secret(&label, &secret, &aad))
            .await
            .map_err(EnrollmentRefusal::internal)?
            .map_err(EnrollmentRefusal::internal)
    }

    /// Unwraps one blob of `row`; a blob the key refuses (tampered, or moved from another
    /// row, field or generation) is [`EnrollmentRefusal::CredentialsTampered`].
    async fn unwrap(
        &self,
        row: &TokenCredentialsRow,
        serial: &str,
        field: CredentialField,
        generation: i64,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnrollmentRefusal> {
        let aad = match row.aad_version {
            AAD_FIXED_TAG => FIXED_TAG_V1.to_vec(),
            AAD_BOUND => credential_aad(serial, field, generation),
            other => {
                return Err(StoreError::BadStoredValue {
                    column: "token_credentials.aad_version",
                    value: other.to_string(),
                }
                .into());
            }
        };
        self.unwrap_with(
            &row.wrapping_key_label,
            aad,
            serial,
            field,
            generation,
            blob,
        )
        .await
    }

    /// Unwraps `blob` with the HSM key `label` and the associated data `aad` (of `serial`,
    /// `field`, `generation`); a blob the key refuses is
    /// [`EnrollmentRefusal::CredentialsTampered`].
    pub(super) async fn unwrap_with(
        &self,
        label: &str,
        aad: Vec<u8>,
        serial: &str,
        field: CredentialField,
        generation: i64,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnrollmentRefusal> {
        let (hsm, label, blob) = (self.ca.hsm.clone(), label.to_string(), blob.to_vec());
        match tokio::task::spawn_blocking(move || hsm.unwrap_secret(&label, &blob, &aad))
            .await
            .map_err(EnrollmentRefusal::internal)?
        {
            Ok(secret) => Ok(secret),
            Err(e @ HsmError::WrappedSecretRejected { .. }) => {
                tracing::error!(
                    token = serial,
                    field = field.name(),
                    generation,
                    error = %e,
                    "a wrapped token credential does not unwrap for its place; the database was tampered with"
                );
                Err(EnrollmentRefusal::CredentialsTampered(serial.to_string()))
            }
            Err(e) => Err(EnrollmentRefusal::internal(e)),
        }
    }

    async fn wrap_credentials(
        &self,
        serial: &str,
        generation: i64,
        c: &TokenCredentials,
    ) -> Result<WrappedCredentials, EnrollmentRefusal> {
        Ok(WrappedCredentials {
            generation,
            management_key_algorithm: c.management_key.algorithm.as_str().to_string(),
            management_key_wrapped: self
                .wrap(
                    serial,
                    CredentialField::ManagementKey,
                    generation,
                    &c.management_key.key,
                )
                .await?,
            puk_wrapped: self
                .wrap(serial, CredentialField::Puk, generation, c.puk.as_bytes())
                .await?,
        })
    }

    /// A new row for the token: `confirmed` and `pending` wrapped under the configured key,
    /// each as a new generation after those of `previous`, bound to `serial`.
    pub(super) async fn wrap_row(
        &self,
        token_id: i64,
        serial: &str,
        previous: Option<&TokenCredentialsRow>,
        confirmed: Option<&TokenCredentials>,
        pending: Option<&TokenCredentials>,
    ) -> Result<TokenCredentialsRow, EnrollmentRefusal> {
        let last = last_generation(previous);
        Ok(TokenCredentialsRow {
            token_id,
            wrapping_key_label: self.settings.wrapping_key_label.clone(),
            aad_version: AAD_BOUND,
            confirmed: match confirmed {
                Some(c) => Some(self.wrap_credentials(serial, last + 1, c).await?),
                None => None,
            },
            pending: match pending {
                Some(c) => Some(self.wrap_credentials(serial, last + 2, c).await?),
                None => None,
            },
        })
    }

    pub(super) async fn unwrap_credentials(
        &self,
        row: &TokenCredentialsRow,
        serial: &str,
        w: &WrappedCredentials,
    ) -> Result<TokenCredentials, EnrollmentRefusal> {
        let algorithm =
            ManagementKeyAlgorithm::parse(&w.management_key_algorithm).ok_or_else(|| {
                StoreError::BadStoredValue {
                    column: "token_credentials.management_key_algorithm",
                    value: w.management_key_algorithm.clone(),
                }
            })?;
        let key = self
            .unwrap(
                row,
                serial,
                CredentialField::ManagementKey,
                w.generation,
                &w.management_key_wrapped,
            )
            .await?;
        let puk = self
            .unwrap(
                row,
                serial,
                CredentialField::Puk,
                w.generation,
                &w.puk_wrapped,
            )
            .await?;
        let puk = Zeroizing::new(String::from_utf8_lossy(&puk).into_owned());
        Ok(TokenCredentials {
            management_key: ManagementKeySecret { algorithm, key },
            puk,
        })
    }

    /// Both halves of a row unwrapped.
    pub(super) async fn unwrap_row(
        &self,
        row: &TokenCredentialsRow,
        serial: &str,
    ) -> Result<UnwrappedRow, EnrollmentRefusal> {
        Ok(UnwrappedRow {
            confirmed: match &row.confirmed {
                Some(w) => Some(self.unwrap_credentials(row, serial, w).await?),
                None => None,
            },
            pending: match &row.pending {
                Some(w) => Some(self.unwrap_credentials(row, serial, w).await?),
                None => None,
            },
        })
    }

    /// ReleasePuk: the PUK and management key of an active token, recorded as
    /// `token.release_puk` with the caller's reason, within the caller certificate's rate limit;
    /// under dual control only once a second certificate approved the caller's request, and
    /// otherwise the request, made or found (`puk_release.rs`). A pending request is stored in
    /// `tx` too: the caller commits it and answers PUK_RELEASE_PENDING_APPROVAL. A
    /// release carries the generation of the credentials released.
    pub async fn release_puk(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        token_serial: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<PukRelease, DeskFailure> {
        self.release(tx, caller, token_serial, reason, request_id, None)
            .await
    }

    /// ReleasePuk for a first call, or (`repeat`) for a repeat of one: the same checks in the
    /// same order, and a repeat gets only the generation its first answer released. A repeat
    /// neither asks for nor collects an approval (its first call did), but it is within the
    /// caller certificate's rate limit and counts towards it like any release.
    pub(super) async fn release(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        token_serial: &str,
        reason: &str,
        request_id: &str,
        repeat: Option<&SecretRepeat>,
    ) -> Result<PukRelease, DeskFailure> {
        let reason = ReleaseReason::parse(reason)?;
        let subject = format!("token:{token_serial}");
        let token = tx
            .token_by_serial(token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(token_serial.to_string()))?;
        if token.state != TokenState::Active {
            return Err(refused(
                subject,
                EnrollmentRefusal::TokenNotActive {
                    serial: token.serial.clone(),
                    state: token.state.as_str(),
                },
            ));
        }
        let held = tx
            .token_credentials(token.id)
            .await?
            .filter(|row| row.confirmed.is_some());
        let Some(row) = held else {
            return Err(refused(
                subject,
                EnrollmentRefusal::CredentialsNotHeld(token.serial.clone()),
            ));
        };
        let approved = if let Some(repeat) = repeat {
            let now_held = row.confirmed.as_ref().map(|w| w.generation);
            if repeat.released_generation.is_none() || now_held != repeat.released_generation {
                return Err(refused(
                    subject,
                    repeat.expired("the token's credentials changed since (it was re-enrolled, or its PUK was rotated)"),
                ));
            }
            self.check_release_rate(tx, caller, &subject).await?;
            None
        } else {
            match self
                .grant_release(tx, caller, &token, &reason, request_id)
                .await?
            {
                ReleaseGrant::Pending(pending) => return Ok(PukRelease::Pending(pending)),
                ReleaseGrant::Direct => None,
                ReleaseGrant::Approved(row) => Some(row),
            }
        };
        let unwrapped = self
            .unwrap_row(&row, &token.serial)
            .await
            .map_err(|e| refused_if_tampered(&subject, e))?;
        let (Some(c), Some(confirmed)) = (unwrapped.confirmed, &row.confirmed) else {
            return Err(refused(
                subject,
                EnrollmentRefusal::CredentialsNotHeld(token.serial.clone()),
            ));
        };
        let mut generation = confirmed.generation;
        let rotation = self
            .rotation_for_release(tx, caller, &token, &row)
            .await
            .map_err(|e| refused_if_tampered(&subject, e))?;
        if row.aad_version != AAD_BOUND {
            // A row from before migration 0006: bound from now on.
            let bound = self
                .wrap_row(
                    token.id,
                    &token.serial,
                    Some(&row),
                    Some(&c),
                    unwrapped.pending.as_ref(),
                )
                .await?;
            generation = bound
                .confirmed
                .as_ref()
                .map_or(generation, |w| w.generation);
            tx.put_token_credentials(&bound).await?;
        }
        // A repeat is recorded as a release of its own (a `released` row, counted by the rate
        // limit); the approval its first call collected is not used again.
        let mut after = self
            .record_release(tx, caller, &token, &reason, approved)
            .await?;
        if repeat.is_some() {
            after["repeat"] = true.into();
        }
        after["puk_rotation"] = serde_json::json!({
            "generation": rotation.generation,
            "resumed": rotation.resumed,
        });
        record(
            tx,
            &caller.actor,
            "token.release_puk",
            &subject,
            None,
            Some(after),
            request_id,
        )
        .await?;
        Ok(PukRelease::Released {
            credentials: c,
            generation,
            rotation,
        })
    }
}

/// A tampered row is refused (and the refusal audited); other failures stay errors.
pub(super) fn refused_if_tampered(subject: &str, e: EnrollmentRefusal) -> DeskFailure {
    match e {
        EnrollmentRefusal::CredentialsTampered(_) => refused(subject, e),
        e => DeskFailure::Error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associated_data_differs_for_every_serial_field_and_generation() {
        let places = [
            ("30000080", CredentialField::Puk, 1),
            ("30000080", CredentialField::ManagementKey, 1),
            ("30000080", CredentialField::Puk, 2),
            ("30000081", CredentialField::Puk, 1),
            ("3000008", CredentialField::Puk, 1),
            ("", CredentialField::Puk, 1),
        ];
        let all: std::collections::BTreeSet<Vec<u8>> = places
            .iter()
            .map(|(serial, field, generation)| credential_aad(serial, *field, *generation))
            .collect();
        assert_eq!(all.len(), places.len());
        assert!(!all.contains(FIXED_TAG_V1));
        // Length-prefixed parts: the context, the serial, the field, the generation.
        let mut expected = Vec::new();
        for part in [
            &b"tessera/token-credential/v2"[..],
            b"12",
            b"puk",
            &7i64.to_be_bytes(),
        ] {
            expected.extend_from_slice(&(part.len() as u32).to_be_bytes());
            expected.extend_from_slice(part);
        }
        assert_eq!(credential_aad("12", CredentialField::Puk, 7), expected);
    }

    #[test]
    fn the_next_generation_follows_the_highest_of_the_row() {
        let wrapped = |generation| WrappedCredentials {
            generation,
            management_key_algorithm: "aes192".into(),
            management_key_wrapped: vec![],
            puk_wrapped: vec![],
        };
        let row = TokenCredentialsRow {
            token_id: 1,
            wrapping_key_label: "k".into(),
            aad_version: AAD_BOUND,
            confirmed: Some(wrapped(3)),
            pending: Some(wrapped(4)),
        };
        assert_eq!(last_generation(Some(&row)), 4);
        assert_eq!(last_generation(None), 0);
    }
}
