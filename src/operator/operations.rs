//! Declarative operations (`spec.operation`), as a pure step function.
//!
//! A request is acknowledged once in `status.operations` and then driven,
//! round after round, from what is observed — never from memory — so an
//! operator restart in the middle picks up where it stood:
//!
//! - **switchover** (and failback, and go-standby of the active member): the
//!   active agent drains (stops serving, keeps the Lease), then the Lease
//!   moves to the standby, which promotes; succeeded once the target serves
//!   at the new epoch;
//! - **failover**: the Lease moves at once (manual mode's way to act on
//!   `FailoverRequired`); `force` skips the standby's health checks and
//!   records that data may be missing;
//! - **go-standby** of a member that is not active: nothing to do;
//! - **resync**: the standby's files are reconciled with the active
//!   member's by a resync Job (`dryRun`: only planned); succeeded or failed
//!   with the Job, the counts in the message and in `status.resync`;
//! - **resolve split brain**: the named side is kept: the other is (made)
//!   standby and resynced from it, its versions quarantined; an isolated
//!   secondary is started again first. Succeeded once no evidence is left
//!   and the kept side is active.
//!
//! A request that cannot be honoured is refused with a reason, never ignored.

use chrono::{DateTime, Utc};

#[path = "operations_resolve.rs"]
mod resolve;
#[path = "operations_rotate.rs"]
mod rotate;

use super::model::{
    ResyncLabel, Step, can_take_over, gave_up_handover, handover, handover_timeout, resync_order, standby_lag,
    syncs_files, words,
};
use super::observe::Observed;
use super::split_brain;
use crate::api::{
    HighAvailabilityPairSpec, HighAvailabilityPairStatus, Member, OperationKind, OperationPhase, OperationRequest,
    OperationStatus, Role, TransitionType,
};

words! {
    /// Why a request was refused, failed or succeeded (its `reason`).
    pub enum OperationReason {
        Malformed,
        NoActiveMember,
        AlreadyOnPrimary,
        Paused,
        AlreadyStandby,
        NotInitialized,
        TargetUnreachable,
        StandbyNotHealthy,
        SyncLagTooHigh,
        NoFileSync,
        StandbyUnreachable,
        NoSplitBrain,
        Superseded,
        HandoverTimedOut,
        ResyncFailed,
        TimedOut,
        Done,
        StandbyRemoved,
    }
}

/// A request that cannot be honoured, and why in words.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    reason: OperationReason,
    message: String,
}

impl Refusal {
    fn new(reason: OperationReason, message: String) -> Self {
        Refusal { reason, message }
    }
}

/// What a round of `spec.operation` changes: the step, and the request's
/// record for `status.operations`.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRound {
    pub step: Step,
    /// The request's status as acknowledged or finished this round.
    pub record: Option<OperationStatus>,
    /// A resolve request starts the isolated secondary again.
    pub release_isolated: bool,
}

/// The request's record as it stands this round, and whether it changed.
struct Ledger {
    record: Option<OperationStatus>,
    changed: bool,
    release_isolated: bool,
}

impl Ledger {
    fn ack(&mut self, op: OperationStatus) {
        self.record = Some(op);
        self.changed = true;
    }

    fn finish(&mut self, phase: OperationPhase, reason: OperationReason, message: String, now: DateTime<Utc>) {
        if let Some(o) = self.record.as_mut() {
            o.phase = phase;
            o.reason = Some(reason.to_string());
            o.message = Some(message);
            o.end_time = Some(now);
            self.changed = true;
        }
    }
}

/// The member a request makes active, or why it cannot.
fn target(req: &OperationRequest, kind: OperationKind, holder: Option<Member>) -> Result<Member, Refusal> {
    match kind {
        // A rotation moves no role (its own step never asks; listed for a
        // whole match).
        OperationKind::Switchover
        | OperationKind::Failover
        | OperationKind::Resync
        | OperationKind::RotateCertificates => holder
            .map(Member::peer)
            .ok_or(Refusal::new(OperationReason::NoActiveMember, "no member holds the lease".into())),
        OperationKind::Failback => match holder {
            Some(Member::Primary) => {
                Err(Refusal::new(OperationReason::AlreadyOnPrimary, "the primary is already active".into()))
            }
            _ => Ok(Member::Primary),
        },
        OperationKind::GoStandby => {
            let m = req.go_standby.as_ref().map(|g| g.member).unwrap_or(Member::Secondary);
            Ok(m.peer())
        }
        OperationKind::ResolveSplitBrain => Ok(req.resolve_split_brain.as_ref().map_or(Member::Primary, |r| r.keep)),
    }
}

/// Advances `spec.operation` by one round: what to do, and the request's
/// record for `status.operations`.
pub fn step(
    spec: &HighAvailabilityPairSpec,
    status: &HighAvailabilityPairStatus,
    obs: &Observed,
    now: DateTime<Utc>,
) -> OperationRound {
    let Some(req) = &spec.operation else {
        return OperationRound { step: Step::Idle, record: None, release_isolated: false };
    };
    let existing = status.operations.iter().find(|o| o.id == req.id).cloned();
    let mut ledger = Ledger { record: existing.clone(), changed: false, release_isolated: false };
    let step = advance(spec, status, &mut ledger, obs, req, existing, now);
    OperationRound { step, record: ledger.record.filter(|_| ledger.changed), release_isolated: ledger.release_isolated }
}

#[allow(clippy::too_many_arguments)]
fn advance(
    spec: &HighAvailabilityPairSpec,
    status: &HighAvailabilityPairStatus,
    ledger: &mut Ledger,
    obs: &Observed,
    req: &OperationRequest,
    existing: Option<OperationStatus>,
    now: DateTime<Utc>,
) -> Step {
    let missed = spec.heartbeat.missed_threshold as u32;
    let lease = obs.lease.as_ref();
    let holder = lease.and_then(|l| l.holder.as_ref().map(|(m, _)| *m));
    // A member that released the Lease still counts as the one to move away from.
    let last_holder = holder.or(lease.and_then(|l| l.released_by));
    let epoch = lease.map_or(0, |l| l.epoch);
    let Some(kind) = req.kind() else {
        if existing.is_none() {
            ledger.ack(refused(
                req,
                OperationKind::Switchover,
                OperationReason::Malformed,
                "the request names no single action".into(),
                now,
            ));
        }
        return Step::Idle;
    };
    // Certificates are the pair's, not a member's: rotated in any mode.
    if kind == OperationKind::RotateCertificates {
        return rotate::step(ledger, obs, req, existing, now);
    }
    // One member by configuration: nothing to move to, copy to or take
    // back (a split brain can still be resolved).
    if let Some(m) = status.removed_member.filter(|_| kind != OperationKind::ResolveSplitBrain) {
        if existing.is_none() {
            let why = format!(
                "the pair runs one member ({m} is removed by spec.standby: Removed); set spec.standby to Enabled and wait for mode Enabled first"
            );
            ledger.ack(refused(req, kind, OperationReason::StandbyRemoved, why, now));
        }
        return Step::Idle;
    }
    if kind == OperationKind::Resync {
        return resync(spec, ledger, obs, req, existing, last_holder, epoch, now);
    }
    if kind == OperationKind::ResolveSplitBrain {
        return resolve::step(spec, status.isolated_member, ledger, obs, req, existing, holder, epoch, now);
    }
    let op = match existing {
        Some(o) if o.phase.is_terminal() => return Step::Idle,
        Some(o) => o,
        None => {
            // First sight: accept or refuse.
            let refuse = |reason: OperationReason, message: String| Some(Refusal { reason, message });
            let t = target(req, kind, last_holder);
            let problem = match (&t, kind) {
                (Err(r), _) => Some(r.clone()),
                _ if spec.paused => refuse(OperationReason::Paused, "the pair is paused (spec.paused)".into()),
                (Ok(_), OperationKind::GoStandby) if holder != req.go_standby.as_ref().map(|g| g.member) => {
                    let m = req.go_standby.as_ref().map(|g| g.member.to_string()).unwrap_or_default();
                    ledger.ack(OperationStatus {
                        phase: OperationPhase::Succeeded,
                        reason: Some(OperationReason::AlreadyStandby.to_string()),
                        message: Some(format!("{m} is not active; nothing to do")),
                        end_time: Some(now),
                        ..accepted(req, kind, None, epoch, now)
                    });
                    return Step::Idle;
                }
                (Ok(t), _) if lease.is_none() => {
                    refuse(OperationReason::NotInitialized, format!("no member is active yet; cannot move to {t}"))
                }
                (Ok(t), OperationKind::Failover) if req.failover.as_ref().is_some_and(|f| f.force) => {
                    let m = obs.member(*t);
                    let reachable = m.pod.as_ref().is_some_and(|p| p.running && !p.deleting) && m.agent.missed < missed;
                    (!reachable).then(|| {
                        Refusal::new(
                            OperationReason::TargetUnreachable,
                            format!("{t} is not running or its agent does not answer"),
                        )
                    })
                }
                (Ok(_), OperationKind::Failover) if lag_over_limit(spec, obs, holder).is_some() => {
                    let (lag, max) = lag_over_limit(spec, obs, holder).unwrap_or_default();
                    refuse(
                        OperationReason::SyncLagTooHigh,
                        format!(
                            "the standby's files were {lag:.0}s behind at the last answer, over \
                             failover.maxSyncLagSeconds ({max}s); request a forced failover to proceed"
                        ),
                    )
                }
                (Ok(t), _) if !can_take_over(obs.member(*t), missed) => refuse(
                    OperationReason::StandbyNotHealthy,
                    format!("{t} cannot take over now (not running, silent, failing its health check or fenced)"),
                ),
                _ => None,
            };
            if let Some(Refusal { reason, message }) = problem {
                ledger.ack(refused(req, kind, reason, message, now));
                return Step::Idle;
            }
            let op = accepted(req, kind, t.ok(), epoch, now);
            ledger.ack(op.clone());
            op
        }
    };
    let Some(to) = op.target else { return Step::Idle };
    let start = op.start_epoch.unwrap_or(0);
    // Committed: the Lease moved past the starting epoch by this request's
    // own takeover (the Lease records which request made its holder).
    let ours = lease.and_then(|l| l.operation_id.as_deref()) == Some(req.id.as_str());
    if epoch > start && !ours {
        ledger.finish(
            OperationPhase::Refused,
            OperationReason::Superseded,
            format!(
                "the active role moved to {} at epoch {epoch} by another transition first",
                holder.map_or("nobody".into(), |m| m.to_string())
            ),
            now,
        );
        return Step::Idle;
    }
    if holder == Some(to) && epoch > start {
        let serving = obs.member(to).agent.last.as_ref().is_some_and(|a| a.role == Role::Active && a.epoch == epoch);
        if serving {
            ledger.finish(
                OperationPhase::Succeeded,
                OperationReason::Done,
                format!("{to} active at epoch {epoch}"),
                now,
            );
            return Step::Idle;
        }
        return Step::Wait;
    }
    if epoch > start {
        ledger.finish(
            OperationPhase::Failed,
            OperationReason::Superseded,
            format!("the lease moved to another member at epoch {epoch}"),
            now,
        );
        return Step::Idle;
    }
    let force = kind == OperationKind::Failover && req.failover.as_ref().is_some_and(|f| f.force);
    if !force && !can_take_over(obs.member(to), missed) {
        ledger.finish(
            OperationPhase::Failed,
            OperationReason::StandbyNotHealthy,
            format!("{to} stopped being able to take over"),
            now,
        );
        return Step::Idle;
    }
    let type_ = match kind {
        OperationKind::Failback => TransitionType::Failback,
        OperationKind::GoStandby => TransitionType::GoStandby,
        OperationKind::Failover => TransitionType::Failover,
        _ => TransitionType::Switchover,
    };
    let reason = req.reason.clone().unwrap_or_else(|| format!("{kind:?}Requested"));
    if kind == OperationKind::Failover {
        // The Lease moves at once, without a drain: what the standby had not
        // pulled yet may be lost, forced or not. A lag of 0 in the last
        // report does not prove otherwise: the active serves on until it is
        // told, and what it acknowledges meanwhile the standby never pulls.
        let lossy = force || syncs_files(spec);
        return Step::Takeover { to, type_, force, lossy, id: req.id.clone(), reason };
    }
    let started = op.start_time.unwrap_or(now);
    let running_for = (now - started).to_std().unwrap_or_default();
    if gave_up_handover(obs, to.peer(), epoch).is_some_and(|ago| ago < running_for) {
        // Drained for this request, its hold ran out and it serves again:
        // draining it once more would only take it out of service again.
        let late = if syncs_files(spec) {
            format!("{to} did not hold its final files in time")
        } else {
            "the Lease did not move in time".to_string()
        };
        let why = format!("{} gave the handover up when its hold ran out ({late}) and serves again", to.peer());
        ledger.finish(OperationPhase::Failed, OperationReason::HandoverTimedOut, why, now);
        return Step::Idle;
    }
    if running_for > handover_timeout(spec) {
        let why = if syncs_files(spec) {
            format!("{to} did not hold the active member's final files in time; the active member serves again")
        } else {
            "the active member did not hand over in time; it serves again".to_string()
        };
        ledger.finish(OperationPhase::Failed, OperationReason::HandoverTimedOut, why, now);
        return Step::Idle;
    }
    // Planned handover: the active drains first, so the old and the new
    // active never take writes at the same time.
    let takeover = Step::Takeover { to, type_, force: false, lossy: false, id: req.id.clone(), reason };
    handover(obs, to, epoch, holder, syncs_files(spec), takeover)
}

/// How far the standby lags the active member `holder` when that is over
/// `failover.maxSyncLagSeconds`: (lag, limit).
fn lag_over_limit(spec: &HighAvailabilityPairSpec, obs: &Observed, holder: Option<Member>) -> Option<(f64, i32)> {
    let max = spec.failover.max_sync_lag_seconds?;
    let lag = standby_lag(obs, holder?)?;
    (syncs_files(spec) && lag > f64::from(max)).then_some((lag, max))
}

/// A resync request: the standby (at the time of the request) is
/// reconciled with the active member by a Job labelled
/// `resync-<epoch>-<id>`, every directory (not only diverged ones), by the
/// pair's `resync` rules; `dryRun` only plans. Done when the Job is.
#[allow(clippy::too_many_arguments)]
fn resync(
    spec: &HighAvailabilityPairSpec,
    ledger: &mut Ledger,
    obs: &Observed,
    req: &OperationRequest,
    existing: Option<OperationStatus>,
    holder: Option<Member>,
    epoch: i64,
    now: DateTime<Utc>,
) -> Step {
    use super::observe::JobPhase;
    let kind = OperationKind::Resync;
    let missed = spec.heartbeat.missed_threshold as u32;
    let op = match existing {
        Some(o) if o.phase.is_terminal() => return Step::Idle,
        Some(o) => o,
        None => {
            let answers = |m: Member| {
                let a = &obs.member(m).agent;
                a.missed < missed && a.last.as_ref().is_some_and(|s| s.role == Role::Standby && s.sync.is_some())
            };
            let problem: Option<Refusal> = match target(req, kind, holder) {
                Err(r) => Some(r),
                Ok(_) if !syncs_files(spec) => Some(Refusal::new(
                    OperationReason::NoFileSync,
                    "the pair syncs no files: set spec.storage and spec.fileSync.paths".into(),
                )),
                Ok(_) if spec.paused => {
                    Some(Refusal::new(OperationReason::Paused, "the pair is paused (spec.paused)".into()))
                }
                Ok(t) if !answers(t) => Some(Refusal::new(
                    OperationReason::StandbyUnreachable,
                    format!("{t} does not answer as a standby syncing files"),
                )),
                Ok(_) => None,
            };
            if let Some(Refusal { reason, message }) = problem {
                ledger.ack(refused(req, kind, reason, message, now));
                return Step::Idle;
            }
            let t = holder.map(Member::peer);
            let mut op = accepted(req, kind, t, epoch, now);
            op.message = t.map(|t| format!("resync of {t}'s files from the active member"));
            ledger.ack(op.clone());
            op
        }
    };
    let Some(target) = op.target else { return Step::Idle };
    let label = ResyncLabel::Request { epoch: op.start_epoch.unwrap_or(epoch), id: req.id.clone() }.to_string();
    let dry_run = req.resync.as_ref().is_some_and(|r| r.dry_run);
    let Some(job) = obs.resync_jobs.iter().find(|j| j.label == label) else {
        return Step::Resync { target, order: resync_order(spec, obs, label, dry_run, true) };
    };
    match job.phase {
        JobPhase::Running => {}
        JobPhase::Succeeded => {
            let report = obs
                .member(target)
                .agent
                .last
                .as_ref()
                .and_then(|a| a.sync.as_ref()?.resync_report(&job.label).cloned());
            let report = report.filter(|r| r.done);
            // The Job saw the target's finished report before this operator's
            // next poll of it: wait for that poll (a few intervals at most),
            // so the outcome and `status.resync` carry the counts and plan.
            // (A Job with no finish time on record is not waited for.)
            let waited = job.finished.map_or(i64::MAX, |f| (now - f).num_seconds());
            if report.is_none() && waited < i64::from(3 * spec.heartbeat.interval_seconds) {
                return Step::Idle;
            }
            let counts = report.map_or(": the target no longer reports the counts".into(), |r| {
                let x = r.summary;
                format!(
                    ": {} copied, {} quarantined, {} deleted, {} copied back, {} conflicts",
                    x.copies + x.updates,
                    x.quarantines,
                    x.deletions,
                    x.copy_backs,
                    x.conflicts
                )
            });
            let what = if dry_run { "planned (dry run, nothing changed)" } else { "done" };
            ledger.finish(
                OperationPhase::Succeeded,
                OperationReason::Done,
                format!("Job {} {what}{counts}", job.name),
                now,
            );
        }
        JobPhase::Failed => {
            let why = job.message.clone().unwrap_or_else(|| "no reason given".into());
            ledger.finish(
                OperationPhase::Failed,
                OperationReason::ResyncFailed,
                format!("Job {}: {why}", job.name),
                now,
            );
        }
    }
    Step::Idle
}

fn accepted(
    req: &OperationRequest,
    kind: OperationKind,
    target: Option<Member>,
    epoch: i64,
    now: DateTime<Utc>,
) -> OperationStatus {
    OperationStatus {
        id: req.id.clone(),
        kind,
        phase: OperationPhase::Running,
        reason: None,
        message: target.map(|t| format!("moving the active role to {t}")),
        target,
        start_epoch: Some(epoch),
        start_time: Some(now),
        end_time: None,
    }
}

fn refused(
    req: &OperationRequest,
    kind: OperationKind,
    reason: OperationReason,
    message: String,
    now: DateTime<Utc>,
) -> OperationStatus {
    OperationStatus {
        phase: OperationPhase::Refused,
        reason: Some(reason.to_string()),
        message: Some(message),
        end_time: Some(now),
        ..accepted(req, kind, None, 0, now)
    }
}
