//! Whose names a certificate from a CSR may carry (issue 12, finding 1). A CSR without a person
//! is certified only under a profile with `subject_from_csr = true` (service clients), within
//! its `allowed_names`; and a CSR whose commonName or email address is a directory person's
//! display name, email, UPN or external id is certified only for that person, so nobody can mint
//! a certificate in a person's name that is bound to nobody (and that suspending or offboarding
//! the person would never touch). `IssueFromCsr` and `tessera ca sign-csr --config` both ask
//! here before reserving.
use super::{IssuanceError, LifecycleError};
use crate::ca::{CaError, Profile, SubjectParams};
use crate::store::{PersonRow, Store};

/// Refuses the CSR's `subject` for `profile` when it is issued to `person` (`None`: to nobody,
/// the certificate then carries the CSR's names). See the module documentation.
pub async fn check_csr_names(
    store: &Store,
    profile: &Profile,
    subject: &SubjectParams,
    person: Option<&PersonRow>,
) -> Result<(), IssuanceError> {
    if person.is_none() {
        if !profile.subject_from_csr {
            return Err(CaError::ProfileRequiresPerson {
                profile: profile.name.clone(),
            }
            .into());
        }
        profile.check_allowed_names(subject)?;
    }
    let csr_names: Vec<(&'static str, &String)> =
        std::iter::once(("commonName", &subject.common_name))
            .chain(subject.emails.iter().map(|e| ("email address", e)))
            // A blank name names nobody (and is refused later as SUBJECT_INVALID).
            .filter(|(_, name)| !name.trim().is_empty())
            .collect();
    let names: Vec<String> = csr_names.iter().map(|(_, n)| (*n).clone()).collect();
    // Enough rows to find one that is not `person` (external ids, and so rows, are unique).
    let people = store
        .people_named(&names, 2)
        .await
        .map_err(LifecycleError::from)?;
    let Some(other) = people
        .iter()
        .find(|p| Some(p.id) != person.map(|named| named.id))
    else {
        return Ok(());
    };
    for (csr_field, name) in csr_names {
        for (person_field, value) in [
            ("display name", &other.display_name),
            ("email", &other.email),
            ("UPN", &other.upn),
            ("external id", &other.external_id),
        ] {
            if value.eq_ignore_ascii_case(name) {
                return Err(LifecycleError::CsrNamesAPerson {
                    csr_field,
                    name: name.clone(),
                    person_field,
                }
                .into());
            }
        }
    }
    // The database matched what Rust's comparison does not (it should not happen): refuse all
    // the same, without naming a field.
    Err(LifecycleError::CsrNamesAPerson {
        csr_field: "name",
        name: subject.common_name.clone(),
        person_field: "name",
    }
    .into())
}
