//! A transition the history lacks: found from the Lease after the fact.

use super::observe::Observed;
use crate::api::HighAvailabilityPairSpec;

/// A Lease at an epoch the status never recorded a transition for: the
/// operator died after moving the Lease (the commit point) and before its
/// status write, or someone raised the epoch by hand. Recorded from what the
/// Lease says, so the history misses no epoch: a takeover made for a request
/// carries its id (a switchover, failback or go-standby drained first, so
/// nothing is missing); any other is taken for an automatic failover, which
/// with file sync may have lost what the standby had not pulled.
pub fn unrecorded(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    acting: bool,
    s: &crate::api::HighAvailabilityPairStatus,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<crate::api::Transition> {
    use crate::api::{OperationKind, TransitionType};
    let lease = obs.lease.as_ref()?;
    let (holder, _) = lease.holder.as_ref()?;
    if acting || lease.epoch <= s.epoch || s.epoch == 0 || s.history.iter().any(|t| t.epoch >= lease.epoch) {
        return None;
    }
    let kind = lease.operation_id.as_ref().and_then(|id| s.operations.iter().find(|o| &o.id == id)).map(|o| o.kind);
    let type_ = match kind {
        Some(OperationKind::Switchover) => TransitionType::Switchover,
        Some(OperationKind::Failback) => TransitionType::Failback,
        Some(OperationKind::GoStandby) => TransitionType::GoStandby,
        _ => TransitionType::Failover,
    };
    let drained = matches!(type_, TransitionType::Switchover | TransitionType::Failback | TransitionType::GoStandby);
    let message = format!(
        "the Lease moved to {holder} at epoch {} (it was {}) without this operator recording why: recorded late",
        lease.epoch, s.epoch
    );
    Some(crate::api::Transition {
        type_,
        from: s.active_member.filter(|a| a != holder),
        to: Some(*holder),
        epoch: lease.epoch,
        reason: "RecordedLate".into(),
        message: Some(message),
        time: now,
        detection_millis: None,
        lease_to_selector_millis: None,
        data_loss_possible: !drained && crate::operator::model::syncs_files(spec),
        operation_id: lease.operation_id.clone(),
    })
}
