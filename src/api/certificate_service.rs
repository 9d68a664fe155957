//! `tessera.v1.CertificateService`: read, look up, revoke, hold and release certificates; issuing from a CSR
//! and the CA chain are in `certificate_issuance.rs`.
use super::authz::authorize;
use super::pb::{self, certificate_service_server::CertificateService};
use super::{next_page_token, page_size, person_filter, status, token_filter};
use crate::lifecycle::{self, LifecycleError, RevocationReason};
use crate::store::{
    CertificateRow, CertificateStatus, CertificatesQuery, ExpiringQuery, Store, Timestamp,
};
use tonic::{Request, Response, Status};

pub struct Certificates {
    pub store: Store,
    /// The CA; `None` when the server has no `[ca]` section (issuing RPCs then answer
    /// FAILED_PRECONDITION).
    pub ca: Option<std::sync::Arc<crate::ca::OnlineCa>>,
    /// Attestation trust anchors and policy (from `[enrollment]`), for CSRs that carry a
    /// YubiKey attestation; `None` without `[enrollment]` (such CSRs are then refused).
    pub attestation: Option<std::sync::Arc<crate::enroll::EnrollmentSettings>>,
}

fn method(name: &str) -> String {
    format!("/tessera.v1.CertificateService/{name}")
}

/// Lower-case hex without `:` separators; `None` unless hex of the right length.
fn normalise_hex(text: &str, max_len: usize, exact: bool) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let ok = !hex.is_empty()
        && hex.len() <= max_len
        && (!exact || hex.len() == max_len)
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(hex)
}

fn serial_arg(field: &str, serial: &str) -> Result<String, Status> {
    normalise_hex(serial, 40, false).ok_or_else(|| {
        status::invalid_argument(
            field,
            "INVALID_SERIAL",
            &format!("{field} must be the certificate serial in hex"),
        )
    })
}

/// `ListExpiringCertificates` page tokens are `<notAfter>/<serial>` of the last row returned.
fn expiring_page_token(token: &str) -> Result<Option<(Timestamp, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let parsed = token.split_once('/').and_then(|(time, serial)| {
        let time = Timestamp::parse(time).ok()?;
        let serial = normalise_hex(serial, 40, false)?;
        Some((time, serial))
    });
    parsed.map(Some).ok_or_else(|| {
        status::invalid_argument(
            "page_token",
            "INVALID_PAGE_TOKEN",
            "page_token is not one this server returned",
        )
    })
}

/// The proto's reasons and ours (RFC 5280), one pair each; both directions read this table.
const PB_REASONS: [(pb::RevocationReason, RevocationReason); 9] = {
    use pb::RevocationReason as P;
    [
        (P::NoReasonGiven, RevocationReason::Unspecified),
        (P::KeyCompromise, RevocationReason::KeyCompromise),
        (P::CaCompromise, RevocationReason::CaCompromise),
        (P::AffiliationChanged, RevocationReason::AffiliationChanged),
        (P::Superseded, RevocationReason::Superseded),
        (
            P::CessationOfOperation,
            RevocationReason::CessationOfOperation,
        ),
        (P::CertificateHold, RevocationReason::CertificateHold),
        (P::PrivilegeWithdrawn, RevocationReason::PrivilegeWithdrawn),
        (P::AaCompromise, RevocationReason::AaCompromise),
    ]
};

fn reason_from_pb(value: i32) -> Result<RevocationReason, Status> {
    if value == pb::RevocationReason::Unspecified as i32 {
        return Err(status::invalid_argument(
            "reason",
            "FIELD_REQUIRED",
            "reason is required (REVOCATION_REASON_NO_REASON_GIVEN when there is none)",
        ));
    }
    PB_REASONS
        .into_iter()
        .find_map(|(p, r)| (p as i32 == value).then_some(r))
        .ok_or_else(|| {
            status::invalid_argument(
                "reason",
                "INVALID_ENUM_VALUE",
                "reason is not a RevocationReason",
            )
        })
}

/// The proto reason of a stored RFC 5280 code (UNSPECIFIED for a code Tessera never stores).
fn reason_to_pb(code: i64) -> pb::RevocationReason {
    PB_REASONS
        .into_iter()
        .find_map(|(p, r)| (r.code() == code).then_some(p))
        .unwrap_or(pb::RevocationReason::Unspecified)
}

/// The API's view of a stored certificate, with its owner's names already looked up.
pub(super) fn certificate_pb(
    c: CertificateRow,
    person_external_id: String,
    token_serial: String,
) -> pb::Certificate {
    let status = match c.status {
        CertificateStatus::Reserved => pb::CertificateStatus::Reserved,
        CertificateStatus::Good => pb::CertificateStatus::Good,
        CertificateStatus::OnHold => pb::CertificateStatus::OnHold,
        CertificateStatus::Revoked => pb::CertificateStatus::Revoked,
    };
    pb::Certificate {
        serial: c.serial,
        sha256_fingerprint: c.sha256.unwrap_or_default(),
        status: status as i32,
        person_external_id,
        token_serial,
        profile: c.profile,
        not_before: c.not_before.to_string(),
        not_after: c.not_after.to_string(),
        revocation_reason: c
            .revocation_reason
            .map(reason_to_pb)
            .unwrap_or(pb::RevocationReason::Unspecified) as i32,
        revoked_at: c.revoked_at.map(|t| t.to_string()).unwrap_or_default(),
        der: c.der.unwrap_or_default(),
    }
}

impl Certificates {
    pub(super) async fn to_pb(&self, c: CertificateRow) -> Result<pb::Certificate, Status> {
        let person_external_id = match c.person_id {
            Some(id) => self.store.person_external_id(id).await?.unwrap_or_default(),
            None => String::new(),
        };
        let token_serial = match c.token_id {
            Some(id) => self.store.token_serial(id).await?.unwrap_or_default(),
            None => String::new(),
        };
        Ok(certificate_pb(c, person_external_id, token_serial))
    }

    async fn found(
        &self,
        row: Option<CertificateRow>,
        key: &str,
    ) -> Result<pb::Certificate, Status> {
        match row {
            Some(r) => self.to_pb(r).await,
            None => Err(LifecycleError::CertificateNotFound(key.to_string()).into()),
        }
    }
}

#[tonic::async_trait]
impl CertificateService for Certificates {
    async fn get_certificate(
        &self,
        request: Request<pb::GetCertificateRequest>,
    ) -> Result<Response<pb::GetCertificateResponse>, Status> {
        authorize(&request, &method("GetCertificate"))?;
        let serial = serial_arg("serial", &request.into_inner().serial)?;
        let row = self.store.certificate_by_serial(&serial).await?;
        Ok(Response::new(pb::GetCertificateResponse {
            certificate: Some(self.found(row, &serial).await?),
        }))
    }

    async fn list_certificates(
        &self,
        request: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        authorize(&request, &method("ListCertificates"))?;
        let req = request.into_inner();
        let limit = page_size(req.page_size)?;
        let after_serial = if req.page_token.is_empty() {
            String::new()
        } else {
            serial_arg("page_token", &req.page_token)?
        };
        let person_id = person_filter(&self.store, &req.person_external_id).await?;
        let token_id = token_filter(&self.store, &req.token_serial).await?;
        let rows = self
            .store
            .list_certificates(&CertificatesQuery {
                after_serial,
                limit,
                person_id,
                token_id,
            })
            .await?;
        let next_page_token = next_page_token(&rows, limit, |r| r.serial.clone());
        let mut certificates = Vec::with_capacity(rows.len());
        for r in rows {
            certificates.push(self.to_pb(r).await?);
        }
        Ok(Response::new(pb::ListCertificatesResponse {
            certificates,
            next_page_token,
        }))
    }

    async fn list_expiring_certificates(
        &self,
        request: Request<pb::ListExpiringCertificatesRequest>,
    ) -> Result<Response<pb::ListExpiringCertificatesResponse>, Status> {
        authorize(&request, &method("ListExpiringCertificates"))?;
        let req = request.into_inner();
        let window =
            lifecycle::ExpiryWindow::from_request("within_days", i64::from(req.within_days))?;
        let limit = page_size(req.page_size)?;
        let after = expiring_page_token(&req.page_token)?;
        let person_id = person_filter(&self.store, &req.person_external_id).await?;
        let (from, until) = window.range(self.store.now());
        let rows = self
            .store
            .expiring_certificates(&ExpiringQuery {
                from,
                until,
                after,
                limit,
                profile: (!req.profile.is_empty()).then_some(req.profile),
                person_id,
            })
            .await?;
        let next_page_token =
            next_page_token(&rows, limit, |r| format!("{}/{}", r.not_after, r.serial));
        let mut certificates = Vec::with_capacity(rows.len());
        for r in rows {
            certificates.push(self.to_pb(r).await?);
        }
        Ok(Response::new(pb::ListExpiringCertificatesResponse {
            certificates,
            next_page_token,
            window_end: until.to_string(),
        }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        let identity = authorize(&request, &method("RevokeCertificate"))?;
        let req = request.into_inner();
        let serial = serial_arg("serial", &req.serial)?;
        let reason = reason_from_pb(req.reason)?;
        idempotent!(self.store, identity, "RevokeCertificate", req, |tx| {
            lifecycle::revoke_certificate_within(
                tx,
                &identity.actor(),
                identity.certificate_scope(),
                &req.request_id,
                &serial,
                reason,
            )
            .await?;
            // Read back outside the transaction's borrow for the answer's names.
            let row = tx.certificate_by_serial(&serial).await?;
            let certificate = match row {
                Some(r) => Some(self.to_pb(r).await?),
                None => None,
            };
            pb::RevokeCertificateResponse { certificate }
        })
    }

    async fn release_certificate_hold(
        &self,
        request: Request<pb::ReleaseCertificateHoldRequest>,
    ) -> Result<Response<pb::ReleaseCertificateHoldResponse>, Status> {
        let identity = authorize(&request, &method("ReleaseCertificateHold"))?;
        let req = request.into_inner();
        let serial = serial_arg("serial", &req.serial)?;
        idempotent!(self.store, identity, "ReleaseCertificateHold", req, |tx| {
            let row = lifecycle::release_certificate_hold(
                tx,
                &identity.actor(),
                identity.certificate_scope(),
                &req.request_id,
                &serial,
                &req.reason,
            )
            .await?;
            pb::ReleaseCertificateHoldResponse {
                certificate: Some(self.to_pb(row).await?),
            }
        })
    }

    async fn lookup_certificate(
        &self,
        request: Request<pb::LookupCertificateRequest>,
    ) -> Result<Response<pb::LookupCertificateResponse>, Status> {
        authorize(&request, &method("LookupCertificate"))?;
        use pb::lookup_certificate_request::Key;
        let (row, key) = match request.into_inner().key {
            Some(Key::Sha256Fingerprint(f)) => {
                let hex = normalise_hex(&f, 64, true).ok_or_else(|| {
                    status::invalid_argument(
                        "sha256_fingerprint",
                        "INVALID_FINGERPRINT",
                        "sha256_fingerprint must be 64 hex digits (colons allowed)",
                    )
                })?;
                (self.store.certificate_by_sha256(&hex).await?, hex)
            }
            Some(Key::Serial(s)) => {
                let serial = serial_arg("serial", &s)?;
                (self.store.certificate_by_serial(&serial).await?, serial)
            }
            None => {
                return Err(status::invalid_argument(
                    "key",
                    "FIELD_REQUIRED",
                    "give sha256_fingerprint or serial",
                ));
            }
        };
        Ok(Response::new(pb::LookupCertificateResponse {
            certificate: Some(self.found(row, &key).await?),
        }))
    }

    async fn issue_from_csr(
        &self,
        request: Request<pb::IssueFromCsrRequest>,
    ) -> Result<Response<pb::IssueFromCsrResponse>, Status> {
        let identity = authorize(&request, &method("IssueFromCsr"))?;
        self.issue_csr(&identity, request.into_inner()).await
    }

    async fn get_ca_chain(
        &self,
        request: Request<pb::GetCaChainRequest>,
    ) -> Result<Response<pb::GetCaChainResponse>, Status> {
        authorize(&request, &method("GetCaChain"))?;
        self.ca_chain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_normalisation() {
        assert_eq!(normalise_hex("AB:cd", 40, false).as_deref(), Some("abcd"));
        assert_eq!(normalise_hex("xyz", 40, false), None);
        assert_eq!(normalise_hex("", 40, false), None);
        assert_eq!(normalise_hex(&"a".repeat(63), 64, true), None);
        assert!(normalise_hex(&"A".repeat(64), 64, true).is_some());
    }
}
