//! Attestation policy: which verified attestations are allowed, with every reason a denied one
//! fails. Read from TOML (see config/attestation-policy.toml and docs/attestation.md).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::facts::{FirmwareVersion, FormFactor, KeyAlgorithm, PinPolicy, Slot, TouchPolicy};
use super::verify::{AttestationFacts, VerifiedAttestation};

/// Firmware range of YSA-2017-01 (ROCA, Infineon RSA key generation): 4.2.6 to 4.3.4.
pub const YSA_2017_01_FIRST: FirmwareVersion = FirmwareVersion::new(4, 2, 6);
pub const YSA_2017_01_LAST: FirmwareVersion = FirmwareVersion::new(4, 3, 4);
/// YSA-2024-03 (EUCLEAK, ECDSA side channel) affects firmware before 5.7.0.
pub const YSA_2024_03_FIXED: FirmwareVersion = FirmwareVersion::new(5, 7, 0);

/// Why reading a policy failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("attestation policy: {0}")]
    Toml(String),
    #[error(
        "attestation policy: [slots] key {key:?} is not a PIV key slot (9a, 9c, 9d, 9e, 82 … 95)"
    )]
    UnknownSlot { key: String },
}

/// Which advisories block keys. Both on by default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advisories {
    /// YSA-2017-01 (ROCA): RSA keys generated on firmware 4.2.6–4.3.4 are weak.
    #[serde(rename = "ysa-2017-01", default = "yes")]
    pub ysa_2017_01: bool,
    /// YSA-2024-03 (EUCLEAK): ECDSA keys on firmware before 5.7.0.
    #[serde(rename = "ysa-2024-03", default = "yes")]
    pub ysa_2024_03: bool,
}

fn yes() -> bool {
    true
}

impl Default for Advisories {
    fn default() -> Self {
        Advisories {
            ysa_2017_01: true,
            ysa_2024_03: true,
        }
    }
}

/// Rules for one slot. Unset fields fall back to the global ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRule {
    /// Allowed key algorithms in this slot; empty = any.
    #[serde(default)]
    pub algorithms: Vec<KeyAlgorithm>,
    pub minimum_pin_policy: Option<PinPolicy>,
    pub minimum_touch_policy: Option<TouchPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    minimum_firmware: Option<FirmwareVersion>,
    minimum_pin_policy: Option<PinPolicy>,
    minimum_touch_policy: Option<TouchPolicy>,
    allowed_form_factors: Option<Vec<FormFactor>>,
    minimum_rsa_bits: Option<u32>,
    #[serde(default)]
    require_fips: bool,
    #[serde(default)]
    advisories: Advisories,
    slots: Option<BTreeMap<String, SlotRule>>,
}

/// An attestation policy. `Policy::default()` allows every verified attestation except those
/// hit by an advisory, and RSA keys under 2048 bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub minimum_firmware: Option<FirmwareVersion>,
    pub minimum_pin_policy: Option<PinPolicy>,
    pub minimum_touch_policy: Option<TouchPolicy>,
    /// `None` = any form factor.
    pub allowed_form_factors: Option<Vec<FormFactor>>,
    pub minimum_rsa_bits: u32,
    pub require_fips: bool,
    pub advisories: Advisories,
    /// `None` = every slot with any algorithm; otherwise only the listed slots.
    pub slots: Option<BTreeMap<Slot, SlotRule>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            minimum_firmware: None,
            minimum_pin_policy: None,
            minimum_touch_policy: None,
            allowed_form_factors: None,
            minimum_rsa_bits: 2048,
            require_fips: false,
            advisories: Advisories::default(),
            slots: None,
        }
    }
}

/// One reason a policy denies an attestation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The slot certificate has no serial extension (firmware 4.3.x): the key cannot be bound
    /// to a token. Always applied, whatever the policy file says.
    SerialMissing,
    SlotNotAllowed {
        slot: Slot,
    },
    AlgorithmNotAllowed {
        slot: Slot,
        algorithm: KeyAlgorithm,
    },
    PinPolicyBelowMinimum {
        found: PinPolicy,
        minimum: PinPolicy,
    },
    TouchPolicyBelowMinimum {
        found: TouchPolicy,
        minimum: TouchPolicy,
    },
    FormFactorNotAllowed {
        found: FormFactor,
    },
    FirmwareBelowMinimum {
        found: FirmwareVersion,
        minimum: FirmwareVersion,
    },
    RsaKeyBelowMinimum {
        bits: u32,
        minimum: u32,
    },
    FipsRequired,
    AdvisoryYsa2017_01 {
        firmware: FirmwareVersion,
    },
    AdvisoryYsa2024_03 {
        firmware: FirmwareVersion,
    },
}

impl DenyReason {
    /// Every code [`DenyReason::code`] returns (docs/attestation.md lists the same).
    pub const CODES: &'static [&'static str] = &[
        "serial-missing",
        "slot-not-allowed",
        "algorithm-not-allowed",
        "pin-policy-below-minimum",
        "touch-policy-below-minimum",
        "form-factor-not-allowed",
        "firmware-below-minimum",
        "rsa-key-below-minimum",
        "fips-required",
        "advisory-ysa-2017-01",
        "advisory-ysa-2024-03",
    ];

    /// Stable reason code, documented in docs/attestation.md.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::SerialMissing => "serial-missing",
            DenyReason::SlotNotAllowed { .. } => "slot-not-allowed",
            DenyReason::AlgorithmNotAllowed { .. } => "algorithm-not-allowed",
            DenyReason::PinPolicyBelowMinimum { .. } => "pin-policy-below-minimum",
            DenyReason::TouchPolicyBelowMinimum { .. } => "touch-policy-below-minimum",
            DenyReason::FormFactorNotAllowed { .. } => "form-factor-not-allowed",
            DenyReason::FirmwareBelowMinimum { .. } => "firmware-below-minimum",
            DenyReason::RsaKeyBelowMinimum { .. } => "rsa-key-below-minimum",
            DenyReason::FipsRequired => "fips-required",
            DenyReason::AdvisoryYsa2017_01 { .. } => "advisory-ysa-2017-01",
            DenyReason::AdvisoryYsa2024_03 { .. } => "advisory-ysa-2024-03",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::SerialMissing => f.write_str(
                "the attestation states no token serial (firmware 4.3.x writes none), so the key \
                 cannot be bound to a token",
            ),
            DenyReason::SlotNotAllowed { slot } => {
                write!(f, "slot {slot} is not allowed by the policy")
            }
            DenyReason::AlgorithmNotAllowed { slot, algorithm } => {
                write!(f, "{algorithm} keys are not allowed in slot {slot}")
            }
            DenyReason::PinPolicyBelowMinimum { found, minimum } => {
                write!(
                    f,
                    "PIN policy {found} is weaker than the required {minimum}"
                )
            }
            DenyReason::TouchPolicyBelowMinimum { found, minimum } => {
                write!(
                    f,
                    "touch policy {found} is weaker than the required {minimum}"
                )
            }
            DenyReason::FormFactorNotAllowed { found } => {
                write!(f, "form factor {found} is not allowed")
            }
            DenyReason::FirmwareBelowMinimum { found, minimum } => {
                write!(f, "firmware {found} is older than the required {minimum}")
            }
            DenyReason::RsaKeyBelowMinimum { bits, minimum } => {
                write!(f, "RSA key of {bits} bits is below the required {minimum}")
            }
            DenyReason::FipsRequired => f.write_str("a FIPS model is required"),
            DenyReason::AdvisoryYsa2017_01 { firmware } => write!(
                f,
                "RSA key generated on firmware {firmware} (4.2.6 to 4.3.4) is weak: YSA-2017-01 (ROCA)"
            ),
            DenyReason::AdvisoryYsa2024_03 { firmware } => write!(
                f,
                "ECDSA key on firmware {firmware} (before 5.7.0) is exposed to YSA-2024-03 (EUCLEAK)"
            ),
        }
    }
}

/// The policy's verdict: allowed when there is no reason to deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    reasons: Vec<DenyReason>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.reasons.is_empty()
    }
    /// Every reason that applies, in a fixed order.
    pub fn reasons(&self) -> &[DenyReason] {
        &self.reasons
    }
    pub fn reason_codes(&self) -> Vec<&'static str> {
        self.reasons.iter().map(DenyReason::code).collect()
    }
}

impl Policy {
    /// Parses a policy file. Unknown keys are errors naming the key.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| {
                text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            });
            let message = one_line(e.message());
            PolicyError::Toml(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        })?;
        let slots = match file.slots {
            None => None,
            Some(map) => {
                let mut slots = BTreeMap::new();
                for (key, rule) in map {
                    let slot = key
                        .to_ascii_lowercase()
                        .parse::<Slot>()
                        .map_err(|_| PolicyError::UnknownSlot { key: key.clone() })?;
                    slots.insert(slot, rule);
                }
                Some(slots)
            }
        };
        let defaults = Policy::default();
        Ok(Policy {
            minimum_firmware: file.minimum_firmware,
            minimum_pin_policy: file.minimum_pin_policy,
            minimum_touch_policy: file.minimum_touch_policy,
            allowed_form_factors: file.allowed_form_factors,
            minimum_rsa_bits: file.minimum_rsa_bits.unwrap_or(defaults.minimum_rsa_bits),
            require_fips: file.require_fips,
            advisories: file.advisories,
            slots,
        })
    }

    /// Decides, collecting every reason that applies.
    pub fn evaluate(&self, attestation: &VerifiedAttestation) -> Decision {
        self.decide(&Judged {
            serial: attestation.serial(),
            slot: attestation.slot(),
            algorithm: attestation.key_algorithm(),
            firmware: attestation.firmware(),
            pin_policy: attestation.pin_policy(),
            touch_policy: attestation.touch_policy(),
            form_factor: attestation.form_factor(),
            fips: attestation.fips(),
        })
    }

    /// Decides over facts stored when a key was verified (a fleet re-check after an advisory
    /// or a policy change), with the same rules and reasons as [`Policy::evaluate`]. The facts
    /// prove nothing by themselves: only facts kept from a [`VerifiedAttestation`] should be
    /// judged this way.
    pub fn evaluate_facts(&self, facts: &AttestationFacts) -> Decision {
        self.decide(&Judged {
            serial: facts.serial,
            slot: facts.slot,
            algorithm: facts.key_algorithm,
            firmware: facts.firmware,
            pin_policy: facts.pin_policy,
            touch_policy: facts.touch_policy,
            form_factor: facts.form_factor,
            fips: facts.fips,
        })
    }

    fn decide(&self, attestation: &Judged) -> Decision {
        let mut reasons = Vec::new();
        let slot = attestation.slot;
        let algorithm = attestation.algorithm;
        let firmware = attestation.firmware;
        if attestation.serial.is_none() {
            reasons.push(DenyReason::SerialMissing);
        }

        let slot_rule = match &self.slots {
            None => None,
            Some(slots) => match slots.get(&slot) {
                None => {
                    reasons.push(DenyReason::SlotNotAllowed { slot });
                    None
                }
                Some(rule) => Some(rule),
            },
        };
        if let Some(rule) = slot_rule
            && !rule.algorithms.is_empty()
            && !rule.algorithms.contains(&algorithm)
        {
            reasons.push(DenyReason::AlgorithmNotAllowed { slot, algorithm });
        }
        if let Some(bits) = algorithm.rsa_bits()
            && bits < self.minimum_rsa_bits
        {
            reasons.push(DenyReason::RsaKeyBelowMinimum {
                bits,
                minimum: self.minimum_rsa_bits,
            });
        }
        let minimum_pin = slot_rule
            .and_then(|r| r.minimum_pin_policy)
            .or(self.minimum_pin_policy);
        if let Some(minimum) = minimum_pin {
            let found = attestation.pin_policy;
            if found.strength() < minimum.strength() {
                reasons.push(DenyReason::PinPolicyBelowMinimum { found, minimum });
            }
        }
        let minimum_touch = slot_rule
            .and_then(|r| r.minimum_touch_policy)
            .or(self.minimum_touch_policy);
        if let Some(minimum) = minimum_touch {
            let found = attestation.touch_policy;
            if found.strength() < minimum.strength() {
                reasons.push(DenyReason::TouchPolicyBelowMinimum { found, minimum });
            }
        }
        if let Some(allowed) = &self.allowed_form_factors {
            let found = attestation.form_factor;
            if !allowed.contains(&found) {
                reasons.push(DenyReason::FormFactorNotAllowed { found });
            }
        }
        if let Some(minimum) = self.minimum_firmware
            && firmware < minimum
        {
            reasons.push(DenyReason::FirmwareBelowMinimum {
                found: firmware,
                minimum,
            });
        }
        if self.require_fips && !attestation.fips {
            reasons.push(DenyReason::FipsRequired);
        }
        if self.advisories.ysa_2017_01
            && algorithm.rsa_bits().is_some()
            && (YSA_2017_01_FIRST..=YSA_2017_01_LAST).contains(&firmware)
        {
            reasons.push(DenyReason::AdvisoryYsa2017_01 { firmware });
        }
        if self.advisories.ysa_2024_03 && algorithm.is_ecdsa() && firmware < YSA_2024_03_FIXED {
            reasons.push(DenyReason::AdvisoryYsa2024_03 { firmware });
        }
        Decision { reasons }
    }
}

/// What the rules look at, from a verified attestation or from stored facts.
struct Judged {
    serial: Option<u32>,
    slot: Slot,
    algorithm: KeyAlgorithm,
    firmware: FirmwareVersion,
    pin_policy: PinPolicy,
    touch_policy: TouchPolicy,
    form_factor: FormFactor,
    fips: bool,
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::for_policy_tests;

    const EXAMPLE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/attestation-policy.toml"
    ));

    fn slot(s: &str) -> Slot {
        s.parse().unwrap()
    }

    /// A token that passes the example policy: 5.7.4, 9a, p256, PIN once, touch never, USB-C.
    fn good() -> (
        FirmwareVersion,
        PinPolicy,
        TouchPolicy,
        Option<u8>,
        bool,
        Slot,
        KeyAlgorithm,
    ) {
        (
            FirmwareVersion::new(5, 7, 4),
            PinPolicy::Once,
            TouchPolicy::Never,
            Some(0x03),
            false,
            slot("9a"),
            KeyAlgorithm::P256,
        )
    }

    fn decide(
        policy: &Policy,
        facts: (
            FirmwareVersion,
            PinPolicy,
            TouchPolicy,
            Option<u8>,
            bool,
            Slot,
            KeyAlgorithm,
        ),
    ) -> Vec<&'static str> {
        let (fw, pin, touch, ff, fips, s, alg) = facts;
        policy
            .evaluate(&for_policy_tests(fw, pin, touch, ff, fips, s, alg))
            .reason_codes()
    }

    fn example() -> Policy {
        Policy::from_toml(EXAMPLE).unwrap()
    }

    #[test]
    fn example_policy_parses() {
        let p = example();
        assert_eq!(p.minimum_firmware, Some(FirmwareVersion::new(5, 2, 0)));
        assert_eq!(p.slots.as_ref().unwrap().len(), 3);
        assert!(p.advisories.ysa_2017_01 && p.advisories.ysa_2024_03);
    }

    #[test]
    fn good_token_is_allowed() {
        let d = example().evaluate(&{
            let (fw, pin, touch, ff, fips, s, alg) = good();
            for_policy_tests(fw, pin, touch, ff, fips, s, alg)
        });
        assert!(d.allowed());
        assert!(d.reasons().is_empty());
    }

    #[test]
    fn slot_not_listed_is_denied() {
        let mut f = good();
        f.5 = slot("9e");
        assert_eq!(decide(&example(), f), ["slot-not-allowed"]);
    }

    #[test]
    fn algorithm_not_allowed_in_slot() {
        let mut f = good();
        f.6 = KeyAlgorithm::Ed25519;
        assert_eq!(decide(&example(), f), ["algorithm-not-allowed"]);
        f.5 = slot("9c");
        f.1 = PinPolicy::Always;
        assert!(decide(&example(), f).is_empty());
    }

    #[test]
    fn pin_policy_matrix() {
        let policy = example(); // global minimum once, 9c minimum always
        for (pin, slot_name, denied) in [
            (PinPolicy::Never, "9a", true),
            (PinPolicy::Once, "9a", false),
            (PinPolicy::MatchOnce, "9a", false),
            (PinPolicy::Always, "9a", false),
            (PinPolicy::MatchAlways, "9a", false),
            (PinPolicy::Once, "9c", true),
            (PinPolicy::MatchOnce, "9c", true),
            (PinPolicy::Always, "9c", false),
            (PinPolicy::MatchAlways, "9c", false),
        ] {
            let mut f = good();
            f.1 = pin;
            f.5 = slot(slot_name);
            let codes = decide(&policy, f);
            assert_eq!(
                codes == ["pin-policy-below-minimum"],
                denied,
                "{pin} in {slot_name}: {codes:?}"
            );
            assert!(denied || codes.is_empty());
        }
    }

    #[test]
    fn touch_policy_matrix() {
        let policy = Policy::from_toml("minimum_touch_policy = \"cached\"").unwrap();
        for (touch, denied) in [
            (TouchPolicy::Never, true),
            (TouchPolicy::Cached, false),
            (TouchPolicy::Always, false),
        ] {
            let mut f = good();
            f.2 = touch;
            let codes = decide(&policy, f);
            assert_eq!(!codes.is_empty(), denied, "{touch}");
            if denied {
                assert_eq!(codes, ["touch-policy-below-minimum"]);
            }
        }
        let always = Policy::from_toml("minimum_touch_policy = \"always\"").unwrap();
        let mut f = good();
        f.2 = TouchPolicy::Cached;
        assert_eq!(decide(&always, f), ["touch-policy-below-minimum"]);
    }

    #[test]
    fn form_factor_matrix() {
        let policy = example();
        for (code, denied) in [
            (Some(0x01), false),
            (Some(0x83), false),
            (Some(0x06), true),
            (None, true),
            (Some(0x0d), true),
        ] {
            let mut f = good();
            f.3 = code;
            let codes = decide(&policy, f);
            assert_eq!(
                codes == ["form-factor-not-allowed"],
                denied,
                "{code:?}: {codes:?}"
            );
            assert!(denied || codes.is_empty());
        }
    }

    #[test]
    fn firmware_minimum() {
        let mut f = good();
        f.0 = FirmwareVersion::new(5, 1, 9);
        f.6 = KeyAlgorithm::Rsa2048;
        assert_eq!(decide(&example(), f), ["firmware-below-minimum"]);
        f.0 = FirmwareVersion::new(5, 2, 0);
        assert!(decide(&example(), f).is_empty());
    }

    #[test]
    fn rsa_below_minimum() {
        let mut f = good();
        f.6 = KeyAlgorithm::Rsa1024;
        let p = Policy::default();
        assert_eq!(decide(&p, f), ["rsa-key-below-minimum"]);
        let d = p.evaluate(&for_policy_tests(f.0, f.1, f.2, f.3, f.4, f.5, f.6));
        assert_eq!(
            d.reasons()[0].to_string(),
            "RSA key of 1024 bits is below the required 2048"
        );
        let strict = Policy::from_toml("minimum_rsa_bits = 3072").unwrap();
        f.6 = KeyAlgorithm::Rsa2048;
        assert_eq!(decide(&strict, f), ["rsa-key-below-minimum"]);
        f.6 = KeyAlgorithm::Rsa3072;
        assert!(decide(&strict, f).is_empty());
    }

    #[test]
    fn fips_required() {
        let p = Policy::from_toml("require_fips = true").unwrap();
        let mut f = good();
        assert_eq!(decide(&p, f), ["fips-required"]);
        f.4 = true;
        assert!(decide(&p, f).is_empty());
    }

    #[test]
    fn roca_advisory_matrix() {
        let on = Policy::default();
        let off = Policy::from_toml("[advisories]\nysa-2017-01 = false").unwrap();
        for (fw, alg, hit) in [
            (FirmwareVersion::new(4, 2, 5), KeyAlgorithm::Rsa2048, false),
            (FirmwareVersion::new(4, 2, 6), KeyAlgorithm::Rsa2048, true),
            (FirmwareVersion::new(4, 3, 4), KeyAlgorithm::Rsa2048, true),
            (FirmwareVersion::new(4, 3, 4), KeyAlgorithm::Rsa4096, true),
            (FirmwareVersion::new(4, 3, 5), KeyAlgorithm::Rsa2048, false),
            (FirmwareVersion::new(4, 3, 4), KeyAlgorithm::P256, false),
        ] {
            let mut f = good();
            f.0 = fw;
            f.6 = alg;
            let codes = decide(&on, f);
            assert_eq!(
                codes.contains(&"advisory-ysa-2017-01"),
                hit,
                "{fw} {alg}: {codes:?}"
            );
            assert!(!decide(&off, f).contains(&"advisory-ysa-2017-01"));
        }
    }

    #[test]
    fn eucleak_advisory_matrix() {
        let on = Policy::default();
        let off = Policy::from_toml("[advisories]\nysa-2024-03 = false").unwrap();
        for (fw, alg, hit) in [
            (FirmwareVersion::new(5, 4, 3), KeyAlgorithm::P256, true),
            (FirmwareVersion::new(5, 6, 9), KeyAlgorithm::P384, true),
            (FirmwareVersion::new(5, 7, 0), KeyAlgorithm::P256, false),
            (FirmwareVersion::new(5, 4, 3), KeyAlgorithm::Rsa2048, false),
            (FirmwareVersion::new(5, 7, 4), KeyAlgorithm::Ed25519, false),
        ] {
            let mut f = good();
            f.0 = fw;
            f.6 = alg;
            assert_eq!(
                decide(&on, f) == ["advisory-ysa-2024-03"],
                hit,
                "{fw} {alg}"
            );
            assert!(decide(&off, f).is_empty(), "{fw} {alg}");
        }
    }

    #[test]
    fn every_applicable_reason_is_listed_in_order() {
        let mut p = example();
        p.require_fips = true;
        let f = (
            FirmwareVersion::new(4, 3, 1),
            PinPolicy::Never,
            TouchPolicy::Never,
            None,
            false,
            slot("9c"),
            KeyAlgorithm::Rsa1024,
        );
        let strict_touch = Policy {
            minimum_touch_policy: Some(TouchPolicy::Always),
            ..p
        };
        assert_eq!(
            decide(&strict_touch, f),
            [
                "algorithm-not-allowed",
                "rsa-key-below-minimum",
                "pin-policy-below-minimum",
                "touch-policy-below-minimum",
                "form-factor-not-allowed",
                "firmware-below-minimum",
                "fips-required",
                "advisory-ysa-2017-01",
            ]
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Policy::from_toml("minimum_rsa_bits = 2048\nminimum_pin = \"once\"").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("attestation policy: line 2: unknown field `minimum_pin`"),
            "{err}"
        );
        let err = Policy::from_toml("[advisories]\nysa-2099-01 = true").unwrap_err();
        assert!(err.to_string().contains("ysa-2099-01"), "{err}");
        let err = Policy::from_toml("[slots.9a]\nalgorithm = [\"p256\"]").unwrap_err();
        assert!(err.to_string().contains("algorithm"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        let err = Policy::from_toml("minimum_pin_policy = \"sometimes\"").unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
        let err = Policy::from_toml("minimum_firmware = \"5.7\"").unwrap_err();
        assert!(err.to_string().contains("5.7"), "{err}");
        let err = Policy::from_toml("[slots.9b]\nalgorithms = []").unwrap_err();
        assert_eq!(err, PolicyError::UnknownSlot { key: "9b".into() });
        let err = Policy::from_toml("[slots.9a]\nalgorithms = [\"rsa512\"]").unwrap_err();
        assert!(err.to_string().contains("rsa512"), "{err}");
    }

    #[test]
    fn the_real_fw543_sample_is_denied_for_eucleak_by_default() {
        let base = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/attestation/samples/fw5.4.3-p256-9a/"
        );
        let input = crate::AttestationInput::new(
            std::fs::read(format!("{base}slot.pem")).unwrap(),
            std::fs::read(format!("{base}device.pem")).unwrap(),
        );
        let v = crate::verify(&input, &crate::TrustAnchors::yubico().unwrap()).unwrap();
        assert_eq!(
            Policy::default().evaluate(&v).reason_codes(),
            ["advisory-ysa-2024-03"]
        );
    }

    #[test]
    fn stored_facts_are_judged_as_the_attestation_was() {
        let samples = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/attestation/samples/"
        );
        let trust = crate::TrustAnchors::yubico().unwrap();
        let eucleak_only = Policy::from_toml(
            "minimum_rsa_bits = 1024\n[advisories]\nysa-2017-01 = false\nysa-2024-03 = true",
        )
        .unwrap();
        let mut checked = 0;
        for entry in std::fs::read_dir(samples).unwrap() {
            let dir = entry.unwrap().path();
            let read = |name: &str| {
                std::fs::read(dir.join(format!("{name}.pem")))
                    .or_else(|_| std::fs::read(dir.join(format!("{name}.der"))))
            };
            let (Ok(slot), Ok(device)) = (read("slot"), read("device")) else {
                continue;
            };
            let Ok(v) = crate::verify(&crate::AttestationInput::new(slot, device), &trust) else {
                continue;
            };
            let stored = serde_json::to_string(&v.facts()).unwrap();
            let facts: AttestationFacts = serde_json::from_str(&stored).unwrap();
            assert_eq!(facts, v.facts(), "{}", dir.display());
            for policy in [Policy::default(), example(), eucleak_only.clone()] {
                assert_eq!(
                    policy.evaluate_facts(&facts),
                    policy.evaluate(&v),
                    "{}",
                    dir.display()
                );
            }
            checked += 1;
        }
        assert!(checked >= 5, "only {checked} samples verified");
    }

    #[test]
    fn eucleak_rule_over_stored_facts_lists_only_old_firmware() {
        let mut facts = crate::verify::tests::for_policy_tests(
            FirmwareVersion::new(5, 4, 3),
            PinPolicy::Once,
            TouchPolicy::Never,
            Some(0x01),
            false,
            slot("9a"),
            KeyAlgorithm::P256,
        )
        .facts();
        let off = Policy::from_toml("[advisories]\nysa-2024-03 = false").unwrap();
        let on = Policy::from_toml("[advisories]\nysa-2024-03 = true").unwrap();
        assert!(off.evaluate_facts(&facts).allowed());
        assert_eq!(
            on.evaluate_facts(&facts).reason_codes(),
            ["advisory-ysa-2024-03"]
        );
        facts.firmware = FirmwareVersion::new(5, 7, 4);
        assert!(on.evaluate_facts(&facts).allowed());
    }
}
