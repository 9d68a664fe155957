//! Enrollment profiles: the slot plan a station carries out (which keys, which policies) and
//! the certificate profile issued for each slot. TOML files named after the profile; the ones
//! in `profiles/enrollment/` are compiled in, and a directory can replace them.

use super::EnrollError;
use crate::protocol::SlotPlan;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const BUILT_IN: &[(&str, &str)] = &[
    (
        "piv-login",
        include_str!("../../profiles/enrollment/piv-login.toml"),
    ),
    (
        "temporary-piv-login",
        include_str!("../../profiles/enrollment/temporary-piv-login.toml"),
    ),
    (
        "windows-logon",
        include_str!("../../profiles/enrollment/windows-logon.toml"),
    ),
];

/// One key the station generates, as the wire (proto `SlotPlan`) names things: the form of
/// the profile files and of the stored plan; `protocol::SlotPlan` reads and writes the names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotPlanText {
    pub slot: String,
    pub algorithm: String,
    pub pin_policy: String,
    pub touch_policy: String,
    pub certificate_profile: String,
}

impl TryFrom<&SlotPlanText> for SlotPlan {
    type Error = String;
    fn try_from(t: &SlotPlanText) -> Result<SlotPlan, String> {
        SlotPlan::from_names(
            &t.slot,
            &t.algorithm,
            &t.pin_policy,
            &t.touch_policy,
            &t.certificate_profile,
        )
    }
}

impl From<&SlotPlan> for SlotPlanText {
    fn from(s: &SlotPlan) -> SlotPlanText {
        SlotPlanText {
            slot: s.slot_name(),
            algorithm: s.algorithm_name().to_string(),
            pin_policy: s.pin_policy_name(),
            touch_policy: s.touch_policy_name(),
            certificate_profile: s.certificate_profile.clone(),
        }
    }
}

/// The slot plan as stored with an enrollment (JSON of the wire form).
pub fn plan_to_json(plan: &[SlotPlan]) -> String {
    serde_json::to_string(&plan.iter().map(SlotPlanText::from).collect::<Vec<_>>())
        .expect("plain strings serialize")
}

pub fn plan_from_json(json: &str) -> Result<Vec<SlotPlan>, EnrollError> {
    let texts: Vec<SlotPlanText> =
        serde_json::from_str(json).map_err(|e| EnrollError::StoredPlanInvalid(e.to_string()))?;
    texts
        .iter()
        .map(|t| SlotPlan::try_from(t).map_err(EnrollError::StoredPlanInvalid))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    description: String,
    #[serde(default)]
    temporary: bool,
    slots: Vec<SlotPlanText>,
}

/// An enrollment profile: a name, a description and its slot plan (at least one slot, each
/// slot at most once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentProfile {
    pub name: String,
    pub description: String,
    /// A temporary token's profile: enrolled only for a person with a forgotten token, and
    /// recorded as standing in for it (`temporary = true` in the file; default false).
    pub temporary: bool,
    pub slots: Vec<SlotPlan>,
}

impl EnrollmentProfile {
    pub fn from_toml(name: &str, text: &str, origin: &str) -> Result<Self, EnrollError> {
        let invalid = |reason: String| EnrollError::ProfileInvalid {
            origin: origin.to_string(),
            reason,
        };
        let file: ProfileFile =
            toml::from_str(text).map_err(|e| invalid(e.message().replace('\n', " ")))?;
        if file.slots.is_empty() {
            return Err(invalid("no [[slots]]".into()));
        }
        let mut slots = Vec::new();
        for t in &file.slots {
            let plan =
                SlotPlan::try_from(t).map_err(|r| invalid(format!("slot {}: {r}", t.slot)))?;
            if slots.iter().any(|s: &SlotPlan| s.slot == plan.slot) {
                return Err(invalid(format!("slot {} is planned twice", plan.slot)));
            }
            slots.push(plan);
        }
        Ok(EnrollmentProfile {
            name: name.to_string(),
            description: file.description,
            temporary: file.temporary,
            slots,
        })
    }
}

/// The enrollment profiles a server offers.
#[derive(Clone, Debug)]
pub struct EnrollmentProfiles {
    profiles: BTreeMap<String, EnrollmentProfile>,
}

impl EnrollmentProfiles {
    pub fn built_in() -> EnrollmentProfiles {
        EnrollmentProfiles {
            profiles: BUILT_IN
                .iter()
                .map(|(name, text)| {
                    let p = EnrollmentProfile::from_toml(
                        name,
                        text,
                        &format!("built-in enrollment profile {name}"),
                    )
                    .expect("shipped enrollment profiles are checked by unit tests");
                    (name.to_string(), p)
                })
                .collect(),
        }
    }

    /// Every `*.toml` in `dir`, each a profile named after its file.
    pub fn load_dir(dir: &Path) -> Result<EnrollmentProfiles, EnrollError> {
        let io = |e: std::io::Error| EnrollError::ProfileInvalid {
            origin: dir.display().to_string(),
            reason: e.to_string(),
        };
        let mut profiles = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let p = EnrollmentProfile::from_toml(name, &text, &path.display().to_string())?;
            profiles.insert(name.to_string(), p);
        }
        if profiles.is_empty() {
            return Err(EnrollError::ProfileInvalid {
                origin: dir.display().to_string(),
                reason: "the directory holds no *.toml enrollment profile".into(),
            });
        }
        Ok(EnrollmentProfiles { profiles })
    }

    pub fn get(&self, name: &str) -> Option<&EnrollmentProfile> {
        self.profiles.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.profiles.keys().map(String::as_str).collect()
    }

    /// Checks every slot names a certificate profile `known` has (at server start).
    pub fn check_certificate_profiles(&self, known: &[&str]) -> Result<(), EnrollError> {
        for p in self.profiles.values() {
            for s in &p.slots {
                if !known.contains(&s.certificate_profile.as_str()) {
                    return Err(EnrollError::ProfileInvalid {
                        origin: p.name.clone(),
                        reason: format!(
                            "slot {} names certificate profile {:?}, which the CA does not have (known: {})",
                            s.slot,
                            s.certificate_profile,
                            known.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_plan_the_documented_slots() {
        let set = EnrollmentProfiles::built_in();
        assert_eq!(
            set.names(),
            ["piv-login", "temporary-piv-login", "windows-logon"]
        );
        assert!(!set.get("piv-login").unwrap().temporary);
        let temporary = set.get("temporary-piv-login").unwrap();
        assert!(temporary.temporary);
        assert_eq!(
            temporary
                .slots
                .iter()
                .map(|s| (s.slot_name(), s.certificate_profile.as_str()))
                .collect::<Vec<_>>(),
            [("9a".to_string(), "temporary-piv-authentication")]
        );
        let login = set.get("piv-login").unwrap();
        assert_eq!(
            login
                .slots
                .iter()
                .map(SlotPlanText::from)
                .collect::<Vec<_>>(),
            [
                SlotPlanText {
                    slot: "9a".into(),
                    algorithm: "ECCP256".into(),
                    pin_policy: "ONCE".into(),
                    touch_policy: "NEVER".into(),
                    certificate_profile: "piv-authentication".into()
                },
                SlotPlanText {
                    slot: "9c".into(),
                    algorithm: "ECCP256".into(),
                    pin_policy: "ALWAYS".into(),
                    touch_policy: "CACHED".into(),
                    certificate_profile: "piv-signature".into()
                }
            ]
        );
        let windows = set.get("windows-logon").unwrap();
        assert_eq!(windows.slots[0].certificate_profile, "smartcard-logon");
        set.check_certificate_profiles(&crate::ca::ProfileSet::built_in().names())
            .unwrap();
        let json = plan_to_json(&login.slots);
        assert_eq!(plan_from_json(&json).unwrap(), login.slots);
    }

    #[test]
    fn bad_profiles_name_the_problem() {
        let slot = "[[slots]]\nslot = \"9a\"\nalgorithm = \"ECCP256\"\npin_policy = \"ONCE\"\ntouch_policy = \"NEVER\"\ncertificate_profile = \"x\"\n";
        let err = |text: &str| {
            EnrollmentProfile::from_toml("p", text, "p.toml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("description = \"d\"\nslots = []\n"),
            "enrollment profile p.toml is invalid: no [[slots]]"
        );
        assert_eq!(
            err(&format!("description = \"d\"\n{slot}{slot}")),
            "enrollment profile p.toml is invalid: slot 9a is planned twice"
        );
        assert_eq!(
            err(&format!(
                "description = \"d\"\n{}",
                slot.replace("ECCP256", "ED25519")
            )),
            "enrollment profile p.toml is invalid: slot 9a: algorithm \"ED25519\" is not one of ECCP256, ECCP384, RSA2048, RSA3072, RSA4096"
        );
        assert_eq!(
            err(&format!(
                "description = \"d\"\n{}",
                slot.replace("\"9a\"", "\"9f\"")
            )),
            "enrollment profile p.toml is invalid: slot 9f: \"9f\" is not a PIV key slot (9a, 9c, 9d, 9e, 82 … 95)"
        );
        let set = EnrollmentProfiles {
            profiles: [(
                "p".to_string(),
                EnrollmentProfile::from_toml(
                    "p",
                    &format!("description = \"d\"\n{slot}"),
                    "p.toml",
                )
                .unwrap(),
            )]
            .into(),
        };
        assert_eq!(
            set.check_certificate_profiles(&["tls-client"])
                .unwrap_err()
                .to_string(),
            "enrollment profile p is invalid: slot 9a names certificate profile \"x\", which the CA does not have (known: tls-client)"
        );
    }
}
