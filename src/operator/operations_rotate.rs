//! The `rotateCertificates` request's step (a part of `operations`): the
//! rotation itself is the certificates module's; the request follows it.

use chrono::{DateTime, Utc};

use super::super::model::Step;
use super::super::observe::Observed;
use super::{Ledger, OperationReason, accepted};
use crate::api::{OperationKind, OperationPhase, OperationRequest, OperationStatus};

/// A rotation request: acknowledged at once; the certificates module
/// begins the rotation once it sees the acknowledgement, recording the id
/// in the pair's TLS Secret, and the request succeeds when that rotation
/// is over. Its message follows the rotation's steps.
pub(super) fn step(
    ledger: &mut Ledger,
    obs: &Observed,
    req: &OperationRequest,
    existing: Option<OperationStatus>,
    now: DateTime<Utc>,
) -> Step {
    let kind = OperationKind::RotateCertificates;
    let op = match existing {
        Some(o) if o.phase.is_terminal() => return Step::Idle,
        Some(o) => o,
        None => {
            let mut op = accepted(req, kind, None, obs.lease.as_ref().map_or(0, |l| l.epoch), now);
            op.message = Some("rotating the pair's CA and certificates".into());
            ledger.ack(op.clone());
            op
        }
    };
    let r = &obs.rotation;
    if r.last_cause.as_deref() != Some(req.id.as_str()) {
        let message = match &r.under_way {
            Some(u) => format!("waiting for the rotation under way ({}) to finish", u.cause.as_deref().unwrap_or("?")),
            None => "rotating the pair's CA and certificates".into(),
        };
        say(ledger, op, message);
        return Step::Idle;
    }
    match &r.under_way {
        None => ledger.finish(
            OperationPhase::Succeeded,
            OperationReason::Done,
            "a new CA and new certificates: both agents present them and the old CA is trusted no more".into(),
            now,
        ),
        Some(u) => {
            let step = if u.stage == "Trusting" {
                "the new CA is trusted beside the old"
            } else {
                "the certificates in use are the new CA's; the old CA is still trusted"
            };
            let who = u.waiting_for.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(" and ");
            let message = if who.is_empty() {
                step.to_string()
            } else {
                format!(
                    "{step}; waiting for {who} to load it (the kubelet brings a changed Secret into a pod within about a minute)"
                )
            };
            say(ledger, op, message);
        }
    }
    Step::Idle
}

/// A request's message changed: recorded (only when it did).
fn say(ledger: &mut Ledger, mut op: OperationStatus, message: String) {
    if op.message.as_deref() != Some(message.as_str()) {
        op.message = Some(message);
        ledger.ack(op);
    }
}
