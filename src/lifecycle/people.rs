//! People: create, update, suspend, reinstate, offboard, and directory sync.
use super::{CertificateEffect, RevocationReason, apply_certificate_effect};
use super::{LifecycleError, invalid};
use crate::audit::{self, Actor, AuditBatch, Change};
use crate::store::{
    CertificateOwner, CertificateStatus, NewPerson, PersonRow, PersonState, TokenRow, WriteTx,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The HR-owned fields of a person, as a request carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonInput {
    pub external_id: String,
    pub display_name: String,
    pub upn: String,
    pub email: String,
    /// Empty when absent.
    pub windows_sid: String,
    pub attributes: BTreeMap<String, String>,
}

/// At most this many attributes per person (keys up to 128 bytes, values up to 4096 bytes).
pub const MAX_ATTRIBUTES: usize = 64;
/// At most this many people in one `SyncPeople` request.
pub const MAX_SYNC_PEOPLE: usize = 200_000;
/// People handled per round of bulk statements (and audit events held in memory before they
/// are written) by a sync or an offboarding wave.
const SYNC_CHUNK: usize = 5_000;

/// A person input that passed validation.
struct ValidPerson {
    input: PersonInput,
    attributes_json: String,
}

impl PersonInput {
    /// Checks every field; `prefix` names the field path in errors (e.g. `people[3].`).
    fn validate(self, prefix: &str) -> Result<ValidPerson, LifecycleError> {
        let f = |name: &str| format!("{prefix}{name}");
        check_text(&f("person.external_id"), &self.external_id, 256)?;
        check_text(&f("person.display_name"), &self.display_name, 256)?;
        check_text(&f("person.upn"), &self.upn, 256)?;
        check_text(&f("person.email"), &self.email, 256)?;
        if !is_address_like(&self.upn) {
            return Err(invalid(
                f("person.upn"),
                "INVALID_UPN",
                "must look like name@domain",
            ));
        }
        if !is_address_like(&self.email) {
            return Err(invalid(
                f("person.email"),
                "INVALID_EMAIL",
                "must look like name@domain",
            ));
        }
        if !self.windows_sid.is_empty() && !is_windows_sid(&self.windows_sid) {
            return Err(invalid(
                f("person.windows_sid"),
                "INVALID_WINDOWS_SID",
                "must be empty or a SID such as S-1-5-21-1-2-3-1001",
            ));
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(invalid(
                f("person.attributes"),
                "TOO_MANY_ITEMS",
                format!("has more than {MAX_ATTRIBUTES} entries"),
            ));
        }
        for (k, v) in &self.attributes {
            check_text(&f("person.attributes"), k, 128)?;
            if v.len() > 4096 {
                return Err(invalid(
                    f("person.attributes"),
                    "FIELD_TOO_LONG",
                    format!("value of {k:?} exceeds 4096 bytes"),
                ));
            }
        }
        let attributes_json = serde_json::to_string(&self.attributes).unwrap_or_default();
        Ok(ValidPerson {
            input: self,
            attributes_json,
        })
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), LifecycleError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "FIELD_REQUIRED", "is empty"));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            "FIELD_TOO_LONG",
            format!("exceeds {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "FIELD_INVALID",
            "contains control characters",
        ));
    }
    Ok(())
}

fn is_address_like(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !s.contains(' ')
        }
        None => false,
    }
}

fn is_windows_sid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("S-1-") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('-').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn to_json(p: &PersonRow) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

fn subject(external_id: &str) -> String {
    format!("person:{external_id}")
}

pub async fn create_person(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    input: PersonInput,
) -> Result<PersonRow, LifecycleError> {
    let valid = input.validate("")?;
    insert(tx, actor, request_id, valid, 0).await
}

async fn insert(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    valid: ValidPerson,
    sync_generation: i64,
) -> Result<PersonRow, LifecycleError> {
    let p = valid.input;
    if tx.person_by_external_id(&p.external_id).await?.is_some() {
        return Err(LifecycleError::PersonExists(p.external_id));
    }
    let row = tx
        .insert_person(&NewPerson {
            external_id: p.external_id,
            display_name: p.display_name,
            upn: p.upn,
            email: p.email,
            windows_sid: (!p.windows_sid.is_empty()).then_some(p.windows_sid),
            attributes_json: valid.attributes_json,
            state: PersonState::Active,
            sync_generation,
        })
        .await?;
    audit::record(
        tx,
        actor,
        Change {
            action: "person.create",
            subject: subject(&row.external_id),
            before: None,
            after: Some(to_json(&row)),
            request_id,
        },
    )
    .await?;
    Ok(row)
}

/// Replaces the HR-owned fields. An offboarded person cannot be changed.
pub async fn update_person(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    input: PersonInput,
) -> Result<PersonRow, LifecycleError> {
    let valid = input.validate("")?;
    let before = existing(tx, &valid.input.external_id).await?;
    if before.state == PersonState::Offboarded {
        return Err(LifecycleError::InvalidTransition {
            kind: "person",
            from: "offboarded",
            action: "update",
        });
    }
    Ok(apply_update(tx, actor, request_id, before, valid, None)
        .await?
        .0)
}

/// Writes the fields when they differ; returns the row and whether anything changed.
async fn apply_update(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    before: PersonRow,
    valid: ValidPerson,
    sync_generation: Option<i64>,
) -> Result<(PersonRow, bool), LifecycleError> {
    let p = valid.input;
    let mut after = before.clone();
    after.display_name = p.display_name;
    after.upn = p.upn;
    after.email = p.email;
    after.windows_sid = (!p.windows_sid.is_empty()).then_some(p.windows_sid);
    after.attributes_json = valid.attributes_json;
    let changed = after != before;
    if let Some(g) = sync_generation {
        after.sync_generation = g;
    }
    if after == before {
        return Ok((before, false));
    }
    let row = tx.update_person(&after).await?;
    if changed {
        audit::record(
            tx,
            actor,
            Change {
                action: "person.update",
                subject: subject(&row.external_id),
                before: Some(to_json(&before)),
                after: Some(to_json(&row)),
                request_id,
            },
        )
        .await?;
    }
    Ok((row, changed))
}

async fn existing(tx: &mut WriteTx, external_id: &str) -> Result<PersonRow, LifecycleError> {
    if external_id.is_empty() {
        return Err(invalid("external_id", "FIELD_REQUIRED", "is empty"));
    }
    tx.person_by_external_id(external_id)
        .await?
        .ok_or_else(|| LifecycleError::PersonNotFound(external_id.to_string()))
}

/// The person transitions HR drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonTransition {
    Suspend,
    Reinstate,
    Offboard,
}

impl PersonTransition {
    fn verb(self) -> &'static str {
        match self {
            PersonTransition::Suspend => "suspend",
            PersonTransition::Reinstate => "reinstate",
            PersonTransition::Offboard => "offboard",
        }
    }
    fn action(self) -> &'static str {
        match self {
            PersonTransition::Suspend => "person.suspend",
            PersonTransition::Reinstate => "person.reinstate",
            PersonTransition::Offboard => "person.offboard",
        }
    }
    /// The state after the transition, or `None` if not allowed from `from`.
    pub fn target(self, from: PersonState) -> Option<PersonState> {
        use PersonState::*;
        match (self, from) {
            (PersonTransition::Suspend, Active) => Some(Suspended),
            (PersonTransition::Reinstate, Suspended) => Some(Active),
            (PersonTransition::Offboard, Active | Suspended) => Some(Offboarded),
            _ => None,
        }
    }
}

pub async fn transition_person(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    external_id: &str,
    transition: PersonTransition,
    reason: &str,
) -> Result<PersonRow, LifecycleError> {
    if reason.len() > 1024 {
        return Err(invalid("reason", "FIELD_TOO_LONG", "exceeds 1024 bytes"));
    }
    let before = existing(tx, external_id).await?;
    let target = transition
        .target(before.state)
        .ok_or(LifecycleError::InvalidTransition {
            kind: "person",
            from: before.state.as_str(),
            action: transition.verb(),
        })?;
    if transition == PersonTransition::Offboard {
        let mut batch = AuditBatch::start(tx).await?;
        offboard_people(
            tx,
            actor,
            request_id,
            std::slice::from_ref(&before),
            reason,
            &mut batch,
        )
        .await?;
        return existing(tx, external_id).await;
    }
    let mut after = before.clone();
    after.state = target;
    let row = tx.update_person(&after).await?;
    let mut after_json = to_json(&row);
    if !reason.is_empty() {
        after_json["reason"] = serde_json::Value::String(reason.to_string());
    }
    audit::record(
        tx,
        actor,
        Change {
            action: transition.action(),
            subject: subject(external_id),
            before: Some(to_json(&before)),
            after: Some(after_json),
            request_id,
        },
    )
    .await?;
    let owner = CertificateOwner::Person(row.id);
    match transition {
        PersonTransition::Suspend => {
            apply_certificate_effect(tx, actor, request_id, owner, CertificateEffect::Hold).await?;
        }
        PersonTransition::Reinstate => {
            apply_certificate_effect(tx, actor, request_id, owner, CertificateEffect::Release)
                .await?;
        }
        // Handled above, in bulk (`offboard_people`).
        PersonTransition::Offboard => {}
    }
    Ok(row)
}

/// What a sync did, by external id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub offboarded: Vec<String>,
}

/// Offboards `people` (each active or suspended; the caller checked) with bulk statements:
/// the people, then every good or held certificate they own revoked (affiliationChanged),
/// then every token they hold taken back. Audited exactly as one offboarding after another
/// would be — per person `person.offboard` (with `reason` when not empty), a
/// `certificate.revoke` per certificate and a `token.unassign` per token — through `audit`,
/// which is flushed at the end.
pub async fn offboard_people(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    people: &[PersonRow],
    reason: &str,
    audit: &mut AuditBatch,
) -> Result<(), LifecycleError> {
    let revoke = RevocationReason::AffiliationChanged.code();
    for chunk in people.chunks(SYNC_CHUNK) {
        let now = tx.now();
        let at = now.to_string();
        let ids: Vec<i64> = chunk.iter().map(|p| p.id).collect();
        tx.set_people_state(&ids, PersonState::Offboarded).await?;
        let mut certificates: HashMap<i64, Vec<_>> = HashMap::new();
        for c in tx.certificates_of_people(&ids).await? {
            if matches!(
                c.status,
                CertificateStatus::Good | CertificateStatus::OnHold
            ) && let Some(person) = c.person_id
            {
                certificates.entry(person).or_default().push(c);
            }
        }
        let serials: Vec<String> = certificates
            .values()
            .flatten()
            .map(|c| c.serial.clone())
            .collect();
        tx.update_certificates_status(
            &serials,
            CertificateStatus::Revoked,
            Some(revoke),
            Some(now),
        )
        .await?;
        let mut tokens: HashMap<i64, Vec<TokenRow>> = HashMap::new();
        for t in tx.release_tokens_of_people(&ids).await? {
            if let Some(person) = t.person_id {
                tokens.entry(person).or_default().push(t);
            }
        }
        for before in chunk {
            let mut after = before.clone();
            after.state = PersonState::Offboarded;
            let mut after_json = to_json(&after);
            if !reason.is_empty() {
                after_json["reason"] = serde_json::Value::String(reason.to_string());
            }
            audit.push(
                &at,
                actor,
                Change {
                    action: PersonTransition::Offboard.action(),
                    subject: subject(&before.external_id),
                    before: Some(to_json(before)),
                    after: Some(after_json),
                    request_id,
                },
            );
            for c in certificates.remove(&before.id).unwrap_or_default() {
                let mut revoked = c.clone();
                revoked.status = CertificateStatus::Revoked;
                revoked.revocation_reason = Some(revoke);
                revoked.revoked_at = Some(now);
                audit.push(
                    &at,
                    actor,
                    Change {
                        action: "certificate.revoke",
                        subject: format!("certificate:{}", c.serial),
                        before: Some(serde_json::to_value(&c).unwrap_or_default()),
                        after: Some(serde_json::to_value(&revoked).unwrap_or_default()),
                        request_id,
                    },
                );
            }
            // One event per token, so the log says who held a token until when.
            for held in tokens.remove(&before.id).unwrap_or_default() {
                let mut held = held;
                held.person_external_id = Some(before.external_id.clone());
                let mut released = held.clone();
                released.person_id = None;
                released.person_external_id = None;
                audit.push(
                    &at,
                    actor,
                    Change {
                        action: "token.unassign",
                        subject: format!("token:{}", held.serial),
                        before: Some(serde_json::to_value(&held).unwrap_or_default()),
                        after: Some(serde_json::to_value(&released).unwrap_or_default()),
                        request_id,
                    },
                );
            }
        }
        audit.flush(tx).await?;
    }
    Ok(())
}

/// Applies a batch of HR records with a generation greater than every earlier one. Listed
/// people are created or updated (an offboarded person listed again is left offboarded and
/// reported unchanged); with `offboard_missing`, everyone not listed is offboarded.
///
/// Built for a whole directory in one request: people are looked up, inserted and re-stamped
/// with bulk statements [`SYNC_CHUNK`] at a time, only a changed person is written on its own,
/// and the audit events (the same ones, in the same order, as record by record) are chained
/// in memory and written in multi-row statements ([`AuditBatch`]).
pub async fn sync_people(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    generation: i64,
    records: Vec<PersonInput>,
    offboard_missing: bool,
) -> Result<SyncOutcome, LifecycleError> {
    if records.len() > MAX_SYNC_PEOPLE {
        return Err(invalid(
            "people",
            "TOO_MANY_ITEMS",
            format!("has more than {MAX_SYNC_PEOPLE} entries; sync in several requests"),
        ));
    }
    if generation <= 0 {
        return Err(invalid(
            "generation",
            "FIELD_REQUIRED",
            "must be a positive number",
        ));
    }
    let last = tx.last_sync_generation().await?;
    if generation <= last {
        return Err(LifecycleError::StaleSyncGeneration {
            given: generation,
            last,
        });
    }
    let mut seen = BTreeSet::new();
    let mut valid = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let prefix = format!("people[{i}].");
        if !seen.insert(r.external_id.clone()) {
            return Err(invalid(
                format!("{prefix}person.external_id"),
                "DUPLICATE_EXTERNAL_ID",
                "appears twice in this sync",
            ));
        }
        valid.push(r.validate(&prefix)?);
    }
    drop(seen);
    let mut outcome = SyncOutcome::default();
    let mut audit = AuditBatch::start(tx).await?;
    let mut valid = valid.into_iter().peekable();
    while valid.peek().is_some() {
        let chunk: Vec<ValidPerson> = valid.by_ref().take(SYNC_CHUNK).collect();
        let ids: Vec<String> = chunk.iter().map(|v| v.input.external_id.clone()).collect();
        let mut stored: HashMap<String, PersonRow> = tx
            .people_by_external_ids(&ids)
            .await?
            .into_iter()
            .map(|p| (p.external_id.clone(), p))
            .collect();
        let now = tx.now();
        let at = now.to_string();
        let mut created = Vec::new();
        let mut restamped = Vec::new();
        for v in chunk {
            let id = v.input.external_id.clone();
            match stored.remove(&id) {
                None => {
                    let p = v.input;
                    let new = NewPerson {
                        external_id: p.external_id,
                        display_name: p.display_name,
                        upn: p.upn,
                        email: p.email,
                        windows_sid: (!p.windows_sid.is_empty()).then_some(p.windows_sid),
                        attributes_json: v.attributes_json,
                        state: PersonState::Active,
                        sync_generation: generation,
                    };
                    audit.push(
                        &at,
                        actor,
                        Change {
                            action: "person.create",
                            subject: subject(&new.external_id),
                            before: None,
                            after: Some(to_json(&as_row(&new, now))),
                            request_id,
                        },
                    );
                    created.push(new);
                    outcome.created.push(id);
                }
                Some(before) if before.state == PersonState::Offboarded => {
                    restamped.push(before.id);
                    outcome.unchanged.push(id);
                }
                Some(before) => {
                    let p = v.input;
                    let mut after = before.clone();
                    after.display_name = p.display_name;
                    after.upn = p.upn;
                    after.email = p.email;
                    after.windows_sid = (!p.windows_sid.is_empty()).then_some(p.windows_sid);
                    after.attributes_json = v.attributes_json;
                    if after == before {
                        restamped.push(before.id);
                        outcome.unchanged.push(id);
                        continue;
                    }
                    after.sync_generation = generation;
                    let row = tx.update_person(&after).await?;
                    audit.push(
                        &at,
                        actor,
                        Change {
                            action: "person.update",
                            subject: subject(&row.external_id),
                            before: Some(to_json(&before)),
                            after: Some(to_json(&row)),
                            request_id,
                        },
                    );
                    outcome.updated.push(id);
                }
            }
        }
        tx.insert_people(&created).await?;
        tx.set_sync_generation(&restamped, generation).await?;
        audit.flush(tx).await?;
    }
    if offboard_missing {
        let missing = tx.people_missing_from_sync(generation).await?;
        offboard_people(
            tx,
            actor,
            request_id,
            &missing,
            "missing from directory sync",
            &mut audit,
        )
        .await?;
        outcome
            .offboarded
            .extend(missing.into_iter().map(|p| p.external_id));
    }
    tx.set_last_sync_generation(generation).await?;
    audit.push(
        &tx.now().to_string(),
        actor,
        Change {
            action: "directory.sync",
            subject: format!("sync:{generation}"),
            before: Some(serde_json::json!({ "generation": last })),
            after: Some(serde_json::json!({
                "generation": generation,
                "offboard_missing": offboard_missing,
                "created": outcome.created.len(),
                "updated": outcome.updated.len(),
                "unchanged": outcome.unchanged.len(),
                "offboarded": outcome.offboarded.len(),
            })),
            request_id,
        },
    );
    audit.flush(tx).await?;
    Ok(outcome)
}

/// The row `new` becomes when inserted at `now` (for its audit event: the id and times are
/// not part of it).
fn as_row(new: &NewPerson, now: crate::store::Timestamp) -> PersonRow {
    PersonRow {
        id: 0,
        external_id: new.external_id.clone(),
        display_name: new.display_name.clone(),
        upn: new.upn.clone(),
        email: new.email.clone(),
        windows_sid: new.windows_sid.clone(),
        attributes_json: new.attributes_json.clone(),
        state: new.state,
        sync_generation: new.sync_generation,
        created_at: now,
        updated_at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PersonInput {
        PersonInput {
            external_id: "E1".into(),
            display_name: "Ada".into(),
            upn: "ada@corp.test".into(),
            email: "ada@corp.test".into(),
            windows_sid: String::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// The reason and field of the refusal of `input()` changed by `change`, validated under
    /// `prefix`.
    fn refusal(change: impl FnOnce(&mut PersonInput), prefix: &str) -> (&'static str, String) {
        let mut p = input();
        change(&mut p);
        match p.validate(prefix) {
            Err(e) => (e.reason(), e.field().unwrap_or_default().to_string()),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn refusals_name_reason_and_field() {
        type Change = fn(&mut PersonInput);
        let cases: [(Change, &str, (&str, &str)); 7] = [
            (
                |p| {
                    p.attributes = (0..=MAX_ATTRIBUTES)
                        .map(|i| (format!("k{i}"), "v".into()))
                        .collect()
                },
                "people[1].",
                ("TOO_MANY_ITEMS", "people[1].person.attributes"),
            ),
            (
                |p| p.external_id = " ".into(),
                "",
                ("FIELD_REQUIRED", "person.external_id"),
            ),
            (|p| p.upn = "ada".into(), "", ("INVALID_UPN", "person.upn")),
            (
                |p| p.email = "a@b@c".into(),
                "people[2].",
                ("INVALID_EMAIL", "people[2].person.email"),
            ),
            (
                |p| p.windows_sid = "S-1-5-x".into(),
                "",
                ("INVALID_WINDOWS_SID", "person.windows_sid"),
            ),
            (
                |p| p.display_name = "a\nb".into(),
                "",
                ("FIELD_INVALID", "person.display_name"),
            ),
            (
                |p| p.display_name = "x".repeat(257),
                "",
                ("FIELD_TOO_LONG", "person.display_name"),
            ),
        ];
        for (change, prefix, (reason, field)) in cases {
            assert_eq!(refusal(change, prefix), (reason, field.to_string()));
        }
    }

    #[test]
    fn accepts_a_sid() {
        let mut p = input();
        p.windows_sid = "S-1-5-21-3623811015-3361044348-30300820-1013".into();
        assert!(p.validate("").is_ok());
    }

    #[test]
    fn transitions() {
        use PersonState::*;
        use PersonTransition::*;
        assert_eq!(Suspend.target(Active), Some(Suspended));
        assert_eq!(Suspend.target(Suspended), None);
        assert_eq!(Reinstate.target(Suspended), Some(Active));
        assert_eq!(Reinstate.target(Active), None);
        assert_eq!(Offboard.target(Suspended), Some(Offboarded));
        assert_eq!(Offboard.target(Offboarded), None);
        assert_eq!(Reinstate.target(Offboarded), None);
    }
}
