//! PUK rotation after an unblock: ReleasePuk hands out, besides the token's PUK, a new PUK the
//! server generated and keeps wrapped as the token's pending rotation (table `puk_rotations`,
//! its blob bound to the token serial, the field `puk-rotation` and its generation). The station
//! unblocks the PIN, changes the card's PUK from the old to the new one and calls
//! ConfirmPukRotation: only then is the new PUK the token's confirmed one (re-wrapped as a new
//! generation of its credentials) and the old one is never released again. Until then every
//! ReleasePuk hands out the same pending PUK again, marked `resumed`: a station that lost the
//! card after the change finds the new PUK on it next time, and tries only the two PUKs the
//! server gave it.

use super::puk_release::Caller;
use super::refusal::refused;
use super::secrets::{CredentialField, credential_aad, last_generation, refused_if_tampered};
use super::{DeskFailure, EnrollmentDesk, EnrollmentRefusal, record};
use crate::enroll::{ManagementKeyAlgorithm, TokenCredentials};
use crate::lifecycle::LifecycleError;
use crate::store::{PukRotationRow, TokenCredentialsRow, TokenRow, TokenState, WriteTx};
use zeroize::Zeroizing;

/// The new PUK a release hands out for the station to set on the card.
pub struct PukRotation {
    pub puk: Zeroizing<String>,
    /// The generation ConfirmPukRotation names.
    pub generation: i64,
    /// Handed out before and not confirmed since: the card may hold this PUK already.
    pub resumed: bool,
}

impl std::fmt::Debug for PukRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PukRotation")
            .field("puk", &"[redacted]")
            .field("generation", &self.generation)
            .field("resumed", &self.resumed)
            .finish()
    }
}

impl EnrollmentDesk {
    /// The token's pending rotation for a release to `caller`, made when there is none (a fresh
    /// 8-digit PUK, wrapped as the generation after every one the row used), else the same one
    /// again, now handed to `caller`.
    pub(super) async fn rotation_for_release(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        token: &TokenRow,
        row: &TokenCredentialsRow,
    ) -> Result<PukRotation, EnrollmentRefusal> {
        if let Some(pending) = tx.puk_rotation(token.id).await? {
            let puk = self.unwrap_rotation(&pending, &token.serial).await?;
            tx.set_puk_rotation_caller(token.id, &caller.certificate_serial)
                .await?;
            return Ok(PukRotation {
                puk,
                generation: pending.generation,
                resumed: true,
            });
        }
        // Only the PUK of fresh credentials is used (the management key stays the token's).
        let fresh = TokenCredentials::generate(ManagementKeyAlgorithm::Aes256)
            .map_err(EnrollmentRefusal::internal)?;
        let generation = last_generation(Some(row)) + 1;
        let puk_wrapped = self
            .wrap(
                &token.serial,
                CredentialField::PukRotation,
                generation,
                fresh.puk.as_bytes(),
            )
            .await?;
        tx.put_puk_rotation(&PukRotationRow {
            token_id: token.id,
            generation,
            wrapping_key_label: self.settings.wrapping_key_label.clone(),
            puk_wrapped,
            caller: caller.certificate_serial.clone(),
            created_at: tx.now(),
        })
        .await?;
        Ok(PukRotation {
            puk: fresh.puk.clone(),
            generation,
            resumed: false,
        })
    }

    async fn unwrap_rotation(
        &self,
        r: &PukRotationRow,
        serial: &str,
    ) -> Result<Zeroizing<String>, EnrollmentRefusal> {
        let field = CredentialField::PukRotation;
        let aad = credential_aad(serial, field, r.generation);
        let puk = self
            .unwrap_with(
                &r.wrapping_key_label,
                aad,
                serial,
                field,
                r.generation,
                &r.puk_wrapped,
            )
            .await?;
        Ok(Zeroizing::new(String::from_utf8_lossy(&puk).into_owned()))
    }

    /// ConfirmPukRotation: the card holds the pending PUK of generation `generation` now. It
    /// becomes the token's confirmed PUK (with the same management key, re-wrapped as a new
    /// generation), the rotation row goes, and `token.puk_rotate` is recorded. Returns the new
    /// confirmed generation. Refused for a token that is not active, one without held
    /// credentials, without a pending rotation, with another pending generation, or whose
    /// pending PUK was last handed to another certificate.
    pub async fn confirm_puk_rotation(
        &self,
        tx: &mut WriteTx,
        caller: &Caller,
        token_serial: &str,
        generation: i64,
        request_id: &str,
    ) -> Result<i64, DeskFailure> {
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
        let Some(row) = tx
            .token_credentials(token.id)
            .await?
            .filter(|row| row.confirmed.is_some())
        else {
            return Err(refused(
                subject,
                EnrollmentRefusal::CredentialsNotHeld(token.serial.clone()),
            ));
        };
        let Some(pending) = tx.puk_rotation(token.id).await? else {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukRotationNotPending(token.serial.clone()),
            ));
        };
        if pending.generation != generation {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukRotationStale {
                    serial: token.serial.clone(),
                    given: generation,
                    pending: pending.generation,
                },
            ));
        }
        if pending.caller != caller.certificate_serial {
            return Err(refused(
                subject,
                EnrollmentRefusal::PukRotationOfAnotherCaller(token.serial.clone()),
            ));
        }
        let tampered = |e| refused_if_tampered(&subject, e);
        let new_puk = self
            .unwrap_rotation(&pending, &token.serial)
            .await
            .map_err(tampered)?;
        let unwrapped = self
            .unwrap_row(&row, &token.serial)
            .await
            .map_err(tampered)?;
        let Some(current) = unwrapped.confirmed else {
            return Err(refused(
                subject,
                EnrollmentRefusal::CredentialsNotHeld(token.serial.clone()),
            ));
        };
        let rotated = TokenCredentials {
            management_key: current.management_key,
            puk: new_puk,
        };
        // Past every generation the row and the rotation used, so no blob is wrapped for a
        // place another one had.
        let mut previous = row.clone();
        if let Some(c) = previous.confirmed.as_mut() {
            c.generation = c.generation.max(pending.generation);
        }
        let new_row = self
            .wrap_row(
                token.id,
                &token.serial,
                Some(&previous),
                Some(&rotated),
                unwrapped.pending.as_ref(),
            )
            .await?;
        let confirmed_generation = new_row.confirmed.as_ref().map_or(0, |w| w.generation);
        tx.put_token_credentials(&new_row).await?;
        tx.delete_puk_rotation(token.id).await?;
        record(
            tx,
            &caller.actor,
            "token.puk_rotate",
            &subject,
            Some(serde_json::json!({
                "generation": row.confirmed.as_ref().map_or(0, |w| w.generation),
            })),
            Some(serde_json::json!({
                "generation": confirmed_generation,
                "rotation_generation": pending.generation,
                "certificate_serial": caller.certificate_serial,
            })),
            request_id,
        )
        .await?;
        Ok(confirmed_generation)
    }
}
