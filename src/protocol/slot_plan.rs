//! The slot plan: which key the station generates in which slot, with which PIN and touch
//! policy, and which certificate profile the server issues for it. The wire (proto `SlotPlan`),
//! the enrollment profiles and the stored plan name these as text ("9a", "ECCP256", "ONCE",
//! "CACHED"); this is the one place that reads and writes those names.

use super::pb;
use crate::attest::{KeyAlgorithm, PinPolicy, Slot, TouchPolicy};

/// One planned key, checked: only what a YubiKey can generate and attest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPlan {
    pub slot: Slot,
    pub algorithm: KeyAlgorithm,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub certificate_profile: String,
}

impl SlotPlan {
    /// Reads the wire names; the error names the field at fault.
    pub fn from_names(
        slot: &str,
        algorithm: &str,
        pin_policy: &str,
        touch_policy: &str,
        certificate_profile: &str,
    ) -> Result<SlotPlan, String> {
        let slot: Slot = slot.parse()?;
        let algorithm = match algorithm {
            "ECCP256" => KeyAlgorithm::P256,
            "ECCP384" => KeyAlgorithm::P384,
            "RSA2048" => KeyAlgorithm::Rsa2048,
            "RSA3072" => KeyAlgorithm::Rsa3072,
            "RSA4096" => KeyAlgorithm::Rsa4096,
            other => {
                return Err(format!(
                    "algorithm {other:?} is not one of ECCP256, ECCP384, RSA2048, RSA3072, RSA4096"
                ));
            }
        };
        let pin_policy = match pin_policy {
            "NEVER" => PinPolicy::Never,
            "ONCE" => PinPolicy::Once,
            "ALWAYS" => PinPolicy::Always,
            other => {
                return Err(format!(
                    "pin_policy {other:?} is not one of NEVER, ONCE, ALWAYS"
                ));
            }
        };
        let touch_policy = match touch_policy {
            "NEVER" => TouchPolicy::Never,
            "ALWAYS" => TouchPolicy::Always,
            "CACHED" => TouchPolicy::Cached,
            other => {
                return Err(format!(
                    "touch_policy {other:?} is not one of NEVER, ALWAYS, CACHED"
                ));
            }
        };
        if certificate_profile.trim().is_empty() {
            return Err("certificate_profile is empty".into());
        }
        Ok(SlotPlan {
            slot,
            algorithm,
            pin_policy,
            touch_policy,
            certificate_profile: certificate_profile.to_string(),
        })
    }

    /// The slot as the wire names it: two lower-case hex digits.
    pub fn slot_name(&self) -> String {
        self.slot.to_string()
    }

    /// The algorithm as the wire names it (YubiKey PIV names).
    pub fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            KeyAlgorithm::P256 => "ECCP256",
            KeyAlgorithm::P384 => "ECCP384",
            KeyAlgorithm::Rsa2048 => "RSA2048",
            KeyAlgorithm::Rsa3072 => "RSA3072",
            KeyAlgorithm::Rsa4096 => "RSA4096",
            // from_names makes no other algorithm
            other => other.as_str(),
        }
    }

    /// The PIN policy as the wire names it ("NEVER", "ONCE", "ALWAYS").
    pub fn pin_policy_name(&self) -> String {
        self.pin_policy.as_str().to_ascii_uppercase()
    }

    /// The touch policy as the wire names it ("NEVER", "ALWAYS", "CACHED").
    pub fn touch_policy_name(&self) -> String {
        self.touch_policy.as_str().to_ascii_uppercase()
    }
}

impl TryFrom<&pb::SlotPlan> for SlotPlan {
    type Error = String;
    /// The error is prefixed with the slot as the wire named it.
    fn try_from(p: &pb::SlotPlan) -> Result<SlotPlan, String> {
        SlotPlan::from_names(
            &p.slot,
            &p.algorithm,
            &p.pin_policy,
            &p.touch_policy,
            &p.certificate_profile,
        )
        .map_err(|reason| format!("slot {}: {reason}", p.slot))
    }
}

impl From<&SlotPlan> for pb::SlotPlan {
    fn from(s: &SlotPlan) -> pb::SlotPlan {
        pb::SlotPlan {
            slot: s.slot_name(),
            algorithm: s.algorithm_name().to_string(),
            pin_policy: s.pin_policy_name(),
            touch_policy: s.touch_policy_name(),
            certificate_profile: s.certificate_profile.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(slot: &str, algorithm: &str, pin: &str, touch: &str) -> pb::SlotPlan {
        pb::SlotPlan {
            slot: slot.into(),
            algorithm: algorithm.into(),
            pin_policy: pin.into(),
            touch_policy: touch.into(),
            certificate_profile: "tls-client".into(),
        }
    }

    #[test]
    fn reads_and_writes_the_wire_names() {
        for wire in [
            plan("9a", "ECCP256", "ONCE", "CACHED"),
            plan("82", "RSA2048", "ALWAYS", "NEVER"),
            plan("9e", "ECCP384", "NEVER", "ALWAYS"),
            plan("95", "RSA4096", "ONCE", "NEVER"),
            plan("9d", "RSA3072", "ONCE", "NEVER"),
        ] {
            let typed = SlotPlan::try_from(&wire).unwrap();
            assert_eq!(pb::SlotPlan::from(&typed), wire);
        }
        let k = SlotPlan::try_from(&plan("9c", "ECCP256", "ALWAYS", "CACHED")).unwrap();
        assert_eq!(k.slot, Slot::new(0x9c).unwrap());
        assert_eq!(k.algorithm, KeyAlgorithm::P256);
        assert_eq!(k.pin_policy, PinPolicy::Always);
        assert_eq!(k.touch_policy, TouchPolicy::Cached);
    }

    #[test]
    fn refuses_what_cannot_be_planned() {
        let err = |p: pb::SlotPlan| SlotPlan::try_from(&p).unwrap_err();
        assert_eq!(
            err(plan("9a", "ED448", "ONCE", "NEVER")),
            "slot 9a: algorithm \"ED448\" is not one of ECCP256, ECCP384, RSA2048, RSA3072, RSA4096"
        );
        assert_eq!(
            err(plan("f9", "ECCP256", "ONCE", "NEVER")),
            "slot f9: \"f9\" is not a PIV key slot (9a, 9c, 9d, 9e, 82 … 95)"
        );
        assert_eq!(
            err(plan("9", "ECCP256", "ONCE", "NEVER")),
            "slot 9: \"9\" is not a PIV key slot (9a, 9c, 9d, 9e, 82 … 95)"
        );
        assert_eq!(
            err(plan("9a", "ECCP256", "SOMETIMES", "NEVER")),
            "slot 9a: pin_policy \"SOMETIMES\" is not one of NEVER, ONCE, ALWAYS"
        );
        assert_eq!(
            err(plan("9a", "ECCP256", "ONCE", "OFTEN")),
            "slot 9a: touch_policy \"OFTEN\" is not one of NEVER, ALWAYS, CACHED"
        );
        let mut no_profile = plan("9a", "ECCP256", "ONCE", "NEVER");
        no_profile.certificate_profile = " ".into();
        assert_eq!(err(no_profile), "slot 9a: certificate_profile is empty");
    }
}
