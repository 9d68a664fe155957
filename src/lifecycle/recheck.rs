//! Fleet re-check after an advisory or a policy change: every good certificate of every active
//! token is judged again, by its stored attestation facts (`certificate_attestations`), against
//! a new [`Policy`]. A dry run changes nothing; `hold` puts each denied certificate on hold
//! (certificateHold, audited like an operator hold, the broken rules named in the event);
//! `notify` records one audit event per affected token (no notifier delivers them yet).
//! Certificates without stored facts (issued before migration 0013) are listed as unknown,
//! never guessed and never held.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;

use super::{LifecycleError, RevocationReason, revoke_certificate_noted};
use crate::attest::{AttestationFacts, Policy};
use crate::audit::{self, Actor, Change};
use crate::store::{FleetCertificateRow, Store, WriteTx};

/// What a re-check does besides reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecheckApply {
    /// Put every denied certificate on hold (certificateHold).
    Hold,
    /// Record an audit event per affected token (`attestation.recheck_notice`).
    Notify,
}

impl RecheckApply {
    pub fn as_str(self) -> &'static str {
        match self {
            RecheckApply::Hold => "hold",
            RecheckApply::Notify => "notify",
        }
    }
}

/// An `--apply` value that is neither `hold` nor `notify`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown apply value {0:?}: use hold or notify (or leave it out for a dry run)")]
pub struct UnknownApply(pub String);

impl FromStr for RecheckApply {
    type Err = UnknownApply;
    fn from_str(s: &str) -> Result<Self, UnknownApply> {
        match s {
            "hold" => Ok(RecheckApply::Hold),
            "notify" => Ok(RecheckApply::Notify),
            other => Err(UnknownApply(other.to_string())),
        }
    }
}

/// One certificate the new policy denies, or whose facts are unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecheckEntry {
    pub token_serial: String,
    /// The person's external id, when the token is assigned.
    pub person: Option<String>,
    pub person_name: Option<String>,
    /// From the stored facts; the token's recorded firmware when the facts are unknown.
    pub firmware: String,
    pub slot: Option<String>,
    pub key_algorithm: Option<&'static str>,
    pub certificate_serial: String,
    pub profile: String,
    /// Deny reason codes (docs/attestation.md); empty for an unknown entry.
    pub reasons: Vec<&'static str>,
    /// One sentence per reason; for an unknown entry, why the facts are unknown.
    pub messages: Vec<String>,
}

/// The outcome of a re-check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecheckReport {
    /// `None` for a dry run.
    pub applied: Option<RecheckApply>,
    /// Active tokens with at least one good certificate.
    pub tokens_checked: usize,
    /// Good certificates of active tokens.
    pub certificates_checked: usize,
    /// Certificates the policy now denies (held with `hold`).
    pub denied: Vec<RecheckEntry>,
    /// Certificates whose facts were not stored (or do not decode): not judged, not changed.
    pub unknown: Vec<RecheckEntry>,
}

impl RecheckReport {
    /// Serials of the tokens with a denied certificate, in order, once each.
    pub fn affected_tokens(&self) -> Vec<&str> {
        let mut tokens: Vec<&str> = self
            .denied
            .iter()
            .map(|e| e.token_serial.as_str())
            .collect();
        tokens.dedup();
        tokens
    }
}

/// Judges `rows` by `policy`. Pure.
pub fn judge_fleet(policy: &Policy, rows: &[FleetCertificateRow]) -> RecheckReport {
    let mut denied = Vec::new();
    let mut unknown = Vec::new();
    let mut tokens: Vec<&str> = rows.iter().map(|r| r.token_serial.as_str()).collect();
    tokens.dedup();
    for row in rows {
        let entry = |firmware: String,
                     key_algorithm: Option<&'static str>,
                     reasons: Vec<&'static str>,
                     messages: Vec<String>| RecheckEntry {
            token_serial: row.token_serial.clone(),
            person: row.person_external_id.clone(),
            person_name: row.person_display_name.clone(),
            firmware,
            slot: row.slot.clone(),
            key_algorithm,
            certificate_serial: row.certificate_serial.clone(),
            profile: row.profile.clone(),
            reasons,
            messages,
        };
        let Some(json) = &row.facts_json else {
            unknown.push(entry(
                row.token_firmware.clone(),
                None,
                Vec::new(),
                vec!["no attestation facts stored for this certificate (issued before they were kept, or without attestation)".into()],
            ));
            continue;
        };
        let facts: AttestationFacts = match serde_json::from_str(json) {
            Ok(facts) => facts,
            Err(e) => {
                unknown.push(entry(
                    row.token_firmware.clone(),
                    None,
                    Vec::new(),
                    vec![format!("stored attestation facts do not decode: {e}")],
                ));
                continue;
            }
        };
        let decision = policy.evaluate_facts(&facts);
        if !decision.allowed() {
            denied.push(entry(
                facts.firmware.to_string(),
                Some(facts.key_algorithm.as_str()),
                decision.reason_codes(),
                decision.reasons().iter().map(ToString::to_string).collect(),
            ));
        }
    }
    RecheckReport {
        applied: None,
        tokens_checked: tokens.len(),
        certificates_checked: rows.len(),
        denied,
        unknown,
    }
}

/// A dry run: reads the fleet and judges it; changes nothing.
pub async fn recheck_fleet_dry_run(
    store: &Store,
    policy: &Policy,
) -> Result<RecheckReport, LifecycleError> {
    let rows = store.active_fleet_certificates().await?;
    Ok(judge_fleet(policy, &rows))
}

/// Judges the fleet inside `tx` and applies `apply` to what the policy denies, each change
/// audited with `policy_source` (e.g. the policy file and its SHA-256) and the rules broken,
/// plus one `attestation.recheck` event for the run.
pub async fn recheck_fleet_apply(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    policy: &Policy,
    policy_source: &str,
    apply: RecheckApply,
) -> Result<RecheckReport, LifecycleError> {
    let rows = tx.active_fleet_certificates().await?;
    let mut report = judge_fleet(policy, &rows);
    report.applied = Some(apply);
    match apply {
        RecheckApply::Hold => {
            for entry in &report.denied {
                let note = format!(
                    "attestation recheck ({policy_source}): {}",
                    entry.reasons.join(", ")
                );
                revoke_certificate_noted(
                    tx,
                    actor,
                    request_id,
                    &entry.certificate_serial,
                    RevocationReason::CertificateHold,
                    &note,
                )
                .await?;
            }
        }
        RecheckApply::Notify => {
            let mut by_token: BTreeMap<&str, Vec<&RecheckEntry>> = BTreeMap::new();
            for entry in &report.denied {
                by_token.entry(&entry.token_serial).or_default().push(entry);
            }
            for (token, entries) in by_token {
                audit::record(
                    tx,
                    actor,
                    Change {
                        action: "attestation.recheck_notice",
                        subject: format!("token:{token}"),
                        before: None,
                        after: Some(serde_json::json!({
                            "policy": policy_source,
                            "person": entries[0].person,
                            "certificates": entries,
                        })),
                        request_id,
                    },
                )
                .await?;
            }
        }
    }
    audit::record(
        tx,
        actor,
        Change {
            action: "attestation.recheck",
            subject: "fleet".into(),
            before: None,
            after: Some(serde_json::json!({
                "policy": policy_source,
                "applied": apply.as_str(),
                "tokens_checked": report.tokens_checked,
                "certificates_checked": report.certificates_checked,
                "denied_certificates": report.denied.iter().map(|e| &e.certificate_serial).collect::<Vec<_>>(),
                "unknown_certificates": report.unknown.iter().map(|e| &e.certificate_serial).collect::<Vec<_>>(),
            })),
            request_id,
        },
    )
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_values() {
        assert_eq!("hold".parse(), Ok(RecheckApply::Hold));
        assert_eq!("notify".parse(), Ok(RecheckApply::Notify));
        assert_eq!(
            "revoke".parse::<RecheckApply>().unwrap_err().to_string(),
            "unknown apply value \"revoke\": use hold or notify (or leave it out for a dry run)"
        );
        assert!("Hold".parse::<RecheckApply>().is_err());
    }
}
