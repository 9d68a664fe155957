//! Token credentials kept wrapped by the HSM's AES key, and the PUK released to the help desk.

use super::{DeskFailure, EnrollmentDesk, EnrollmentRefusal, record, refusal::refused};
use crate::audit::Actor;
use crate::enroll::{ManagementKeyAlgorithm, ManagementKeySecret, TokenCredentials};
use crate::lifecycle::LifecycleError;
use crate::store::{StoreError, TokenState, WrappedCredentials, WriteTx};
use zeroize::Zeroizing;

impl EnrollmentDesk {
    async fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, EnrollmentRefusal> {
        let (hsm, label) = (
            self.ca.hsm.clone(),
            self.settings.wrapping_key_label.clone(),
        );
        let secret = Zeroizing::new(secret.to_vec());
        tokio::task::spawn_blocking(move || hsm.wrap_secret(&label, &secret))
            .await
            .map_err(EnrollmentRefusal::internal)?
            .map_err(EnrollmentRefusal::internal)
    }

    async fn unwrap(
        &self,
        label: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, EnrollmentRefusal> {
        let (hsm, label, blob) = (self.ca.hsm.clone(), label.to_string(), blob.to_vec());
        tokio::task::spawn_blocking(move || hsm.unwrap_secret(&label, &blob))
            .await
            .map_err(EnrollmentRefusal::internal)?
            .map_err(EnrollmentRefusal::internal)
    }

    pub(super) async fn wrap_credentials(
        &self,
        c: &TokenCredentials,
    ) -> Result<WrappedCredentials, EnrollmentRefusal> {
        Ok(WrappedCredentials {
            management_key_algorithm: c.management_key.algorithm.as_str().to_string(),
            management_key_wrapped: self.wrap(&c.management_key.key).await?,
            puk_wrapped: self.wrap(c.puk.as_bytes()).await?,
        })
    }

    pub(super) async fn unwrap_credentials(
        &self,
        label: &str,
        w: &WrappedCredentials,
    ) -> Result<TokenCredentials, EnrollmentRefusal> {
        let algorithm =
            ManagementKeyAlgorithm::parse(&w.management_key_algorithm).ok_or_else(|| {
                StoreError::BadStoredValue {
                    column: "token_credentials.management_key_algorithm",
                    value: w.management_key_algorithm.clone(),
                }
            })?;
        let key = self.unwrap(label, &w.management_key_wrapped).await?;
        let puk = self.unwrap(label, &w.puk_wrapped).await?;
        let puk = Zeroizing::new(String::from_utf8_lossy(&puk).into_owned());
        Ok(TokenCredentials {
            management_key: ManagementKeySecret { algorithm, key },
            puk,
        })
    }

    /// ReleasePuk: the PUK and management key of an active token, recorded as
    /// `token.release_puk`.
    pub async fn release_puk(
        &self,
        tx: &mut WriteTx,
        actor: &Actor,
        token_serial: &str,
        reason: &str,
        request_id: &str,
    ) -> Result<TokenCredentials, DeskFailure> {
        let subject = format!("token:{token_serial}");
        if reason.len() > 1024 {
            return Err(DeskFailure::Error(EnrollmentRefusal::ReasonTooLong));
        }
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
        let credentials = tx.token_credentials(token.id).await?;
        let Some((label, wrapped)) =
            credentials.and_then(|c| c.confirmed.map(|w| (c.wrapping_key_label, w)))
        else {
            return Err(refused(
                subject,
                EnrollmentRefusal::CredentialsNotHeld(token.serial.clone()),
            ));
        };
        let c = self.unwrap_credentials(&label, &wrapped).await?;
        let mut after = serde_json::json!({ "released": "puk" });
        if !reason.is_empty() {
            after["reason"] = reason.into();
        }
        record(
            tx,
            actor,
            "token.release_puk",
            &subject,
            None,
            Some(after),
            request_id,
        )
        .await?;
        Ok(c)
    }

    /// The credentials of a repeated ReleasePuk, unwrapped again.
    pub async fn release_puk_again(
        &self,
        token_serial: &str,
    ) -> Result<TokenCredentials, EnrollmentRefusal> {
        let mut tx = self.store.begin_write().await?;
        let token = tx
            .token_by_serial(token_serial)
            .await?
            .ok_or_else(|| LifecycleError::TokenNotFound(token_serial.to_string()))?;
        let credentials = tx.token_credentials(token.id).await?;
        drop(tx);
        let Some((label, wrapped)) =
            credentials.and_then(|c| c.confirmed.map(|w| (c.wrapping_key_label, w)))
        else {
            return Err(EnrollmentRefusal::CredentialsGone);
        };
        self.unwrap_credentials(&label, &wrapped).await
    }
}
