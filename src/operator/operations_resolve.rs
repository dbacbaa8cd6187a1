//! The `resolveSplitBrain` request's step (a part of `operations`).

use super::*;

/// A resolve request: keep the named side. Accepted only while there is a
/// split brain (evidence, or an isolated secondary).
#[allow(clippy::too_many_arguments)]
pub(super) fn step(
    spec: &HighAvailabilityPairSpec,
    isolated: Option<Member>,
    ledger: &mut Ledger,
    obs: &Observed,
    req: &OperationRequest,
    existing: Option<OperationStatus>,
    holder: Option<Member>,
    epoch: i64,
    now: DateTime<Utc>,
) -> Step {
    let kind = OperationKind::ResolveSplitBrain;
    let keep = req.resolve_split_brain.as_ref().map_or(Member::Primary, |r| r.keep);
    let evidence = split_brain::evidence(obs, holder);
    let op = match existing {
        Some(o) if o.phase.is_terminal() => return Step::Idle,
        Some(o) => o,
        None => {
            let problem: Option<Refusal> = if spec.paused {
                Some(Refusal::new(OperationReason::Paused, "the pair is paused (spec.paused)".into()))
            } else if holder.is_none() {
                Some(Refusal::new(OperationReason::NoActiveMember, "no member holds the lease".into()))
            } else if evidence.is_none() && isolated.is_none() {
                Some(Refusal::new(
                    OperationReason::NoSplitBrain,
                    "no member reports changes made while it was not active".into(),
                ))
            } else {
                None
            };
            if let Some(Refusal { reason, message }) = problem {
                ledger.ack(refused(req, kind, reason, message, now));
                return Step::Idle;
            }
            let mut op = accepted(req, kind, Some(keep), epoch, now);
            op.message = Some(format!("keeping {keep}'s files; the other side is resynced from it"));
            ledger.ack(op.clone());
            op
        }
    };
    if isolated.is_some() {
        ledger.release_isolated = true;
        // The isolated member's pod is created again; once it answers, its
        // evidence is repaired like any other.
        return Step::Wait;
    }
    // Resolved: the kept side serves and the other follows it again (it
    // answers, has completed a sync since it started, nothing diverged and
    // no evidence).
    let follows = {
        let a = &obs.member(keep.peer()).agent;
        a.missed == 0
            && a.last
                .as_ref()
                .and_then(|l| l.sync.as_ref())
                .is_some_and(|s| s.changed_while_standby.is_empty() && s.diverged.is_empty() && s.in_sync_at.is_some())
    };
    if evidence.is_none() && holder == Some(keep) && follows {
        ledger.finish(
            OperationPhase::Succeeded,
            OperationReason::Done,
            format!("{keep} kept and active at epoch {epoch}; {} follows it again", keep.peer()),
            now,
        );
        return Step::Idle;
    }
    let started = op.start_time.unwrap_or(now);
    if (now - started).to_std().unwrap_or_default() > std::time::Duration::from_secs(3600) {
        ledger.finish(OperationPhase::Failed, OperationReason::TimedOut, "not resolved within an hour".into(), now);
        return Step::Idle;
    }
    match holder {
        // No evidence left, but the kept side is the standby: hand over.
        Some(h) if evidence.is_none() && h != keep => {
            if !can_take_over(obs.member(keep), spec.heartbeat.missed_threshold as u32) {
                return Step::Wait;
            }
            let takeover = Step::Takeover {
                to: keep,
                type_: TransitionType::SplitBrainResolved,
                force: false,
                lossy: false,
                id: req.id.clone(),
                reason: "SplitBrainResolved".into(),
            };
            handover(obs, keep, epoch, holder, false, takeover)
        }
        _ => match split_brain::step(spec, obs, None, holder, epoch, Some(keep)).step {
            Step::Takeover { to, type_, force, lossy, reason, .. } => {
                Step::Takeover { to, type_, force, lossy, id: req.id.clone(), reason }
            }
            Step::Idle => Step::Wait,
            s => s,
        },
    }
}
