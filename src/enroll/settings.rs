//! The `[enrollment]` section of the server configuration and the settings checked from it at
//! start-up: attestation trust anchors and policy, enrollment profiles, the HSM wrapping key
//! label, the expiry times, and how long a repeated request may get its secrets again.

use super::EnrollmentProfiles;
use crate::attest::{Policy, TrustAnchors};
use crate::ca::OnlineCa;
use std::path::PathBuf;
use std::time::Duration;

/// The `[enrollment]` section of the server configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// PEM (or DER) files of attestation roots to trust, besides Yubico's.
    #[serde(default)]
    pub attestation_roots: Vec<PathBuf>,
    /// Trust Yubico's attestation roots and intermediates (shipped with Tessera).
    #[serde(default = "yes")]
    pub trust_yubico_roots: bool,
    /// The attestation policy file; the shipped config/attestation-policy.toml without it.
    #[serde(default)]
    pub attestation_policy: Option<PathBuf>,
    /// CKA_LABEL of the HSM AES key that wraps per-token management keys and PUKs
    /// (`tessera admin init-wrapping-key` makes it).
    #[serde(default = "default_wrapping_key_label")]
    pub wrapping_key_label: String,
    /// An enrollment not confirmed this long after BeginEnrollment expires and its
    /// certificates are revoked.
    #[serde(default = "default_expiry_seconds")]
    pub expiry_seconds: u64,
    /// How often the server looks for expired enrollments (each call also checks its own).
    #[serde(default = "default_expiry_sweep_seconds")]
    pub expiry_sweep_seconds: u64,
    /// Enrollment profiles directory; the built-in profiles without it.
    #[serde(default)]
    pub profiles_dir: Option<PathBuf>,
    /// How long after the first answer a repeat of a BeginEnrollment or ReleasePuk (same
    /// request id, same caller) gets its secrets again; later repeats are refused with
    /// `REQUEST_ID_EXPIRED`. 0: never.
    #[serde(default = "default_secret_replay_minutes")]
    pub secret_replay_minutes: u64,
    /// Dual control of ReleasePuk: a request waits until a second helpdesk or admin
    /// certificate approves it (ApprovePukRelease), then the requester collects it once.
    #[serde(default)]
    pub puk_release_approval: bool,
    /// How long a PUK release request waits for its approval, and then how long an approval
    /// waits to be collected.
    #[serde(default = "default_puk_release_approval_minutes")]
    pub puk_release_approval_minutes: u64,
    /// PUK releases one client certificate may receive in any 60 minutes.
    #[serde(default = "default_puk_releases_per_hour")]
    pub puk_releases_per_hour: u32,
}

fn yes() -> bool {
    true
}
fn default_wrapping_key_label() -> String {
    "tessera-wrap".into()
}
fn default_expiry_seconds() -> u64 {
    900
}
fn default_expiry_sweep_seconds() -> u64 {
    30
}
fn default_puk_release_approval_minutes() -> u64 {
    30
}
fn default_puk_releases_per_hour() -> u32 {
    10
}
fn default_secret_replay_minutes() -> u64 {
    5
}
/// A day: a repeat that late is no retry.
const MAX_SECRET_REPLAY_MINUTES: u64 = 24 * 60;

/// The controls on ReleasePuk (docs/api.md, docs/help-desk.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PukReleaseRules {
    /// A second certificate approves each release (dual control).
    pub approval: bool,
    /// How long a request waits for its approval, then the approval for its collection.
    pub approval_window: Duration,
    /// Releases one client certificate may receive in any [`PukReleaseRules::RATE_WINDOW`].
    pub per_hour: u32,
}

impl PukReleaseRules {
    /// The sliding window of the rate limit.
    pub const RATE_WINDOW: Duration = Duration::from_secs(3600);
}

/// The shipped attestation policy.
const DEFAULT_ATTESTATION_POLICY: &str = include_str!("../../config/attestation-policy.toml");

/// Everything the enrollment service needs, checked at start-up.
pub struct EnrollmentSettings {
    pub trust: TrustAnchors,
    pub policy: Policy,
    pub wrapping_key_label: String,
    pub expiry: Duration,
    pub sweep: Duration,
    pub profiles: EnrollmentProfiles,
    /// `secret_replay_minutes`.
    pub secret_replay: Duration,
    pub puk_release: PukReleaseRules,
}

impl EnrollmentSettings {
    /// Reads roots, policy and profiles, and checks the wrapping key works; every problem is
    /// one message naming the setting.
    pub fn load(config: &EnrollmentConfig, ca: &OnlineCa) -> Result<EnrollmentSettings, String> {
        let mut trust = TrustAnchors::builder();
        if config.trust_yubico_roots {
            trust = trust
                .with_yubico_roots()
                .and_then(|t| t.with_yubico_intermediates())
                .map_err(|e| format!("Yubico attestation roots: {e}"))?;
        }
        for path in &config.attestation_roots {
            let bytes = std::fs::read(path).map_err(|e| {
                format!(
                    "enrollment.attestation_roots: cannot read {}: {e}",
                    path.display()
                )
            })?;
            trust = trust
                .with_anchors(&bytes, &path.display().to_string())
                .map_err(|e| format!("enrollment.attestation_roots: {e}"))?;
        }
        let trust = trust.build().map_err(|e| {
            format!("enrollment: {e} (set attestation_roots or trust_yubico_roots = true)")
        })?;
        let policy_text = match &config.attestation_policy {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "enrollment.attestation_policy: cannot read {}: {e}",
                    path.display()
                )
            })?,
            None => DEFAULT_ATTESTATION_POLICY.to_string(),
        };
        let policy = Policy::from_toml(&policy_text).map_err(|e| e.to_string())?;
        let profiles = match &config.profiles_dir {
            Some(dir) => EnrollmentProfiles::load_dir(dir).map_err(|e| e.to_string())?,
            None => EnrollmentProfiles::built_in(),
        };
        profiles
            .check_certificate_profiles(&ca.profiles.names())
            .map_err(|e| e.to_string())?;
        if config.expiry_seconds == 0 || config.expiry_sweep_seconds == 0 {
            return Err(
                "enrollment.expiry_seconds and expiry_sweep_seconds must be at least 1".into(),
            );
        }
        if config.secret_replay_minutes > MAX_SECRET_REPLAY_MINUTES {
            return Err(format!(
                "enrollment.secret_replay_minutes must be at most {MAX_SECRET_REPLAY_MINUTES} (0 never repeats secrets)"
            ));
        }
        if config.puk_release_approval_minutes == 0 || config.puk_release_approval_minutes > 24 * 60
        {
            return Err(
                "enrollment.puk_release_approval_minutes must be 1 to 1440 (minutes)".into(),
            );
        }
        if config.puk_releases_per_hour == 0 {
            return Err("enrollment.puk_releases_per_hour must be at least 1".into());
        }
        ca.hsm
            .wrap_secret(
                &config.wrapping_key_label,
                b"tessera wrapping key check",
                b"tessera/wrapping-key-check",
            )
            .map_err(|e| {
                format!(
                    "enrollment.wrapping_key_label {:?}: {e}; make the key with `tessera admin init-wrapping-key`",
                    config.wrapping_key_label
                )
            })?;
        Ok(EnrollmentSettings {
            trust,
            policy,
            wrapping_key_label: config.wrapping_key_label.clone(),
            expiry: Duration::from_secs(config.expiry_seconds),
            sweep: Duration::from_secs(config.expiry_sweep_seconds),
            profiles,
            secret_replay: Duration::from_secs(config.secret_replay_minutes * 60),
            puk_release: PukReleaseRules {
                approval: config.puk_release_approval,
                approval_window: Duration::from_secs(config.puk_release_approval_minutes * 60),
                per_hour: config.puk_releases_per_hour,
            },
        })
    }
}
