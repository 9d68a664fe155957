//! Token transitions the help desk drives.
use super::{CertificateEffect, RevocationReason, apply_certificate_effect};
use super::{LifecycleError, invalid};
use crate::audit::{self, Actor, Change};
use crate::store::{CertificateOwner, TokenRow, TokenState, WriteTx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTransition {
    MarkLost,
    MarkDamaged,
    Retire,
    Suspend,
    Reinstate,
}

impl TokenTransition {
    fn verb(self) -> &'static str {
        match self {
            TokenTransition::MarkLost => "mark lost",
            TokenTransition::MarkDamaged => "mark damaged",
            TokenTransition::Retire => "retire",
            TokenTransition::Suspend => "suspend",
            TokenTransition::Reinstate => "reinstate",
        }
    }
    fn action(self) -> &'static str {
        match self {
            TokenTransition::MarkLost => "token.mark_lost",
            TokenTransition::MarkDamaged => "token.mark_damaged",
            TokenTransition::Retire => "token.retire",
            TokenTransition::Suspend => "token.suspend",
            TokenTransition::Reinstate => "token.reinstate",
        }
    }
    /// The state after the transition, or `None` if not allowed from `from`. Lost, damaged
    /// and retired are final.
    pub fn target(self, from: TokenState) -> Option<TokenState> {
        use TokenState::*;
        let live = matches!(from, Enrolling | Active | Suspended);
        match self {
            TokenTransition::MarkLost if live => Some(Lost),
            TokenTransition::MarkDamaged if live => Some(Damaged),
            TokenTransition::Retire if live => Some(Retired),
            TokenTransition::Suspend if from == Active => Some(Suspended),
            TokenTransition::Reinstate if from == Suspended => Some(Active),
            _ => None,
        }
    }
}

pub async fn transition_token(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    serial: &str,
    transition: TokenTransition,
    reason: &str,
) -> Result<TokenRow, LifecycleError> {
    if serial.is_empty() {
        return Err(invalid("serial", "FIELD_REQUIRED", "is empty"));
    }
    if reason.len() > 1024 {
        return Err(invalid("reason", "FIELD_TOO_LONG", "exceeds 1024 bytes"));
    }
    let before = tx
        .token_by_serial(serial)
        .await?
        .ok_or_else(|| LifecycleError::TokenNotFound(serial.to_string()))?;
    let target = transition
        .target(before.state)
        .ok_or(LifecycleError::InvalidTransition {
            kind: "token",
            from: before.state.as_str(),
            action: transition.verb(),
        })?;
    let mut after = before.clone();
    after.state = target;
    let row = tx.update_token(&after).await?;
    let mut after_json = serde_json::to_value(&row).unwrap_or_default();
    if !reason.is_empty() {
        after_json["reason"] = serde_json::Value::String(reason.to_string());
    }
    audit::record(
        tx,
        actor,
        Change {
            action: transition.action(),
            subject: format!("token:{serial}"),
            before: Some(serde_json::to_value(&before).unwrap_or_default()),
            after: Some(after_json),
            request_id,
        },
    )
    .await?;
    // The notice commits with the change or not at all (docs/operations.md, Notifications).
    let notice = match transition {
        TokenTransition::Suspend => Some("token.suspended"),
        TokenTransition::MarkLost => Some("token.lost"),
        _ => None,
    };
    if let Some(event) = notice {
        tx.enqueue_notification(&crate::store::NewNotification {
            event,
            dedup_key: None,
            payload: serde_json::json!({
                "token_serial": row.serial,
                "person_external_id": row.person_external_id,
                "state": row.state.as_str(),
                "request_id": request_id,
            }),
        })
        .await?;
    }
    let effect = match transition {
        TokenTransition::MarkLost => CertificateEffect::Revoke(RevocationReason::KeyCompromise),
        TokenTransition::MarkDamaged => CertificateEffect::Revoke(RevocationReason::Superseded),
        TokenTransition::Retire => {
            CertificateEffect::Revoke(RevocationReason::CessationOfOperation)
        }
        TokenTransition::Suspend => CertificateEffect::Hold,
        TokenTransition::Reinstate => CertificateEffect::Release,
    };
    apply_certificate_effect(
        tx,
        actor,
        request_id,
        CertificateOwner::Token(row.id),
        effect,
    )
    .await?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_stay_final() {
        use TokenState::*;
        for t in [
            TokenTransition::MarkLost,
            TokenTransition::MarkDamaged,
            TokenTransition::Retire,
            TokenTransition::Suspend,
            TokenTransition::Reinstate,
        ] {
            for s in [Lost, Damaged, Retired] {
                assert_eq!(t.target(s), None, "{t:?} from {s:?}");
            }
        }
        assert_eq!(TokenTransition::MarkLost.target(Suspended), Some(Lost));
        assert_eq!(TokenTransition::Suspend.target(Active), Some(Suspended));
        assert_eq!(TokenTransition::Suspend.target(Enrolling), None);
        assert_eq!(TokenTransition::Reinstate.target(Suspended), Some(Active));
    }
}
