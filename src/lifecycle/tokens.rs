//! Token transitions the help desk drives.
use super::{CertificateEffect, RevocationReason, apply_certificate_effect, release_owner_hold};
use super::{LifecycleError, invalid};
use crate::audit::{self, Actor, Change};
use crate::store::{CertificateOwner, CertificateStatus, TokenRow, TokenState, WriteTx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTransition {
    MarkLost,
    MarkDamaged,
    Retire,
    Suspend,
    Reinstate,
    /// Active → forgotten (temporarily unavailable: left at home): its good certificates go on
    /// hold, and the holds are recorded so that reinstating it releases exactly these.
    MarkForgotten,
}

impl TokenTransition {
    fn verb(self) -> &'static str {
        match self {
            TokenTransition::MarkLost => "mark lost",
            TokenTransition::MarkDamaged => "mark damaged",
            TokenTransition::Retire => "retire",
            TokenTransition::Suspend => "suspend",
            TokenTransition::Reinstate => "reinstate",
            TokenTransition::MarkForgotten => "mark forgotten",
        }
    }
    fn action(self) -> &'static str {
        match self {
            TokenTransition::MarkLost => "token.mark_lost",
            TokenTransition::MarkDamaged => "token.mark_damaged",
            TokenTransition::Retire => "token.retire",
            TokenTransition::Suspend => "token.suspend",
            TokenTransition::Reinstate => "token.reinstate",
            TokenTransition::MarkForgotten => "token.mark_forgotten",
        }
    }
    /// The state after the transition, or `None` if not allowed from `from`. Lost, damaged
    /// and retired are final; a forgotten token is reinstated when found, or declared lost.
    pub fn target(self, from: TokenState) -> Option<TokenState> {
        use TokenState::*;
        let live = matches!(from, Enrolling | Active | Suspended | Forgotten);
        match self {
            TokenTransition::MarkLost if live => Some(Lost),
            TokenTransition::MarkDamaged if live => Some(Damaged),
            TokenTransition::Retire if live => Some(Retired),
            TokenTransition::Suspend if from == Active => Some(Suspended),
            TokenTransition::Reinstate if matches!(from, Suspended | Forgotten) => Some(Active),
            TokenTransition::MarkForgotten if from == Active => Some(Forgotten),
            _ => None,
        }
    }
}

/// Moves the token `serial` through `transition`, audited (`reason` kept in the event), with
/// its notice and the effect on its certificates. From `forgotten`: reinstating releases only
/// the holds the move to `forgotten` made and retires the temporary tokens enrolled for it;
/// lost, damaged and retired revoke its certificates, held ones included.
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
    let row = transition_row(tx, actor, request_id, &before, transition, reason).await?;
    if before.state == TokenState::Forgotten && transition == TokenTransition::Reinstate {
        // The temporary tokens that stood in for it are no longer needed.
        for temporary in tx.temporary_tokens_for(row.id).await? {
            if TokenTransition::Retire.target(temporary.state).is_none() {
                continue;
            }
            let note =
                format!("temporary token for token {serial}, which was found and reinstated");
            transition_row(
                tx,
                actor,
                request_id,
                &temporary,
                TokenTransition::Retire,
                &note,
            )
            .await?;
        }
    }
    Ok(row)
}

/// One token's transition from `before` (its row as read in `tx`).
async fn transition_row(
    tx: &mut WriteTx,
    actor: &Actor,
    request_id: &str,
    before: &TokenRow,
    transition: TokenTransition,
    reason: &str,
) -> Result<TokenRow, LifecycleError> {
    let serial = before.serial.as_str();
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
            before: Some(serde_json::to_value(before).unwrap_or_default()),
            after: Some(after_json),
            request_id,
        },
    )
    .await?;
    // The notice commits with the change or not at all (docs/operations.md, Notifications).
    let notice = match transition {
        TokenTransition::Suspend => Some("token.suspended"),
        TokenTransition::MarkLost => Some("token.lost"),
        TokenTransition::MarkForgotten => Some("token.forgotten"),
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
        TokenTransition::Suspend | TokenTransition::MarkForgotten => CertificateEffect::Hold,
        TokenTransition::Reinstate => CertificateEffect::Release,
    };
    let owner = CertificateOwner::Token(row.id);
    if before.state == TokenState::Forgotten {
        // Only what the move to `forgotten` held is released; a hold made for another reason
        // (a fleet re-check, an operator's) stays. Lost, damaged and retired revoke them all.
        let held = tx.forgotten_holds_of(row.id).await?;
        tx.delete_forgotten_holds(row.id).await?;
        if effect == CertificateEffect::Release {
            for serial in held {
                let still_held = tx
                    .certificate_by_serial(&serial)
                    .await?
                    .is_some_and(|c| c.status == CertificateStatus::OnHold);
                if still_held {
                    release_owner_hold(tx, actor, request_id, &serial).await?;
                }
            }
            return Ok(row);
        }
    }
    let changed = apply_certificate_effect(tx, actor, request_id, owner, effect).await?;
    if transition == TokenTransition::MarkForgotten {
        tx.insert_forgotten_holds(row.id, &changed).await?;
    }
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
            TokenTransition::MarkForgotten,
        ] {
            for s in [Lost, Damaged, Retired] {
                assert_eq!(t.target(s), None, "{t:?} from {s:?}");
            }
        }
        assert_eq!(TokenTransition::MarkLost.target(Suspended), Some(Lost));
        assert_eq!(TokenTransition::Suspend.target(Active), Some(Suspended));
        assert_eq!(TokenTransition::Suspend.target(Enrolling), None);
        assert_eq!(TokenTransition::Reinstate.target(Suspended), Some(Active));
        // Forgotten: only from active; found (reinstated) or declared lost, damaged, retired.
        assert_eq!(
            TokenTransition::MarkForgotten.target(Active),
            Some(Forgotten)
        );
        for s in [Enrolling, Suspended, Forgotten] {
            assert_eq!(TokenTransition::MarkForgotten.target(s), None, "{s:?}");
        }
        assert_eq!(TokenTransition::Reinstate.target(Forgotten), Some(Active));
        assert_eq!(TokenTransition::MarkLost.target(Forgotten), Some(Lost));
        assert_eq!(TokenTransition::Retire.target(Forgotten), Some(Retired));
        assert_eq!(TokenTransition::Suspend.target(Forgotten), None);
    }
}
