//! Split brain: detection from the agents' evidence and the repair the
//! pair's policy asks for, as pure functions.
//!
//! hapair cannot have two members serving at one epoch (the Lease, fencing),
//! but files can still fork: someone writes into the standby's volume, or a
//! member serves on a stale role file. The standby's agent notices (its
//! files changed while it was not active) and reports it. The policies are
//! an HA appliance's three methods:
//!
//! - `ForceSecondaryStandby`: the side that loses (by `keep`; by default the
//!   side that does not hold the Lease) is, or is made, the standby, and is
//!   resynced from the kept side; its own versions go to quarantine, never
//!   lost.
//! - `Manual`: nothing is changed; a dry-run resync shows the difference in
//!   `status.resync`; a resolve request naming the side to keep repairs it.
//! - `IsolateSecondary`: the secondary's pod is stopped and kept down, the
//!   primary serves alone until a resolve request.

use chrono::{DateTime, Utc};

use super::model::{ResyncLabel, Step, can_take_over, handover, resync_order};
use super::observe::{JobPhase, Observed};
use crate::api::{HighAvailabilityPairSpec, KeepSide, Member, SplitBrainPolicy, TransitionType};
use crate::proto::ResyncOrder;

/// A standby whose files changed while it was not active, with the time
/// the first change was seen. Only a member whose agent answers counts.
pub fn evidence(obs: &Observed, holder: Option<Member>) -> Option<(Member, DateTime<Utc>)> {
    let standby = holder?.peer();
    let a = &obs.member(standby).agent;
    let sync = a.last.as_ref().filter(|_| a.missed == 0)?.sync.as_ref()?;
    sync.changed_while_standby.values().min().map(|t| (standby, *t))
}

/// What to do about a split brain this round.
#[derive(Debug, Clone, PartialEq)]
pub enum Repair {
    /// Run this resync Job (the repair itself, or a dry run for the diff).
    Resync { target: Member, order: ResyncOrder },
    /// The kept side is the standby: it takes the active role (the active
    /// drains first; no wait for its files, which lose).
    HandOver { to: Member },
    /// Stop the secondary's pod and keep it down.
    Isolate,
    /// Waiting (for the diff, or for a resolve request); the message says why.
    Hold(String),
}

/// Labels of an incident's Jobs: unique per epoch and first evidence, so a
/// second incident in the same epoch gets Jobs of its own.
pub fn labels(epoch: i64, since: DateTime<Utc>) -> (String, String) {
    let since = since.timestamp();
    (ResyncLabel::SplitBrainDiff { epoch, since }.to_string(), ResyncLabel::SplitBrain { epoch, since }.to_string())
}

fn order(spec: &HighAvailabilityPairSpec, obs: &Observed, label: String, dry_run: bool) -> ResyncOrder {
    resync_order(spec, obs, label, dry_run, true)
}

/// One round of split-brain repair, by the policy or by `keep` (a resolve
/// request).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitBrainRound {
    pub step: Step,
    /// Why the split brain is not being repaired right now.
    pub hold: Option<String>,
    /// Stop the secondary's pod and keep it down (IsolateSecondary).
    pub isolate: bool,
}

/// The repair step for this round. `isolated`: the member already kept
/// down.
pub fn step(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    isolated: Option<Member>,
    holder: Option<Member>,
    epoch: i64,
    keep: Option<Member>,
) -> SplitBrainRound {
    let missed = spec.heartbeat.missed_threshold as u32;
    let idle = SplitBrainRound { step: Step::Idle, hold: None, isolate: false };
    let Some(h) = holder else { return idle };
    let Some((standby, since)) = evidence(obs, holder) else { return idle };
    if isolated == Some(standby) {
        return idle;
    }
    match repair(spec, obs, h, standby, since, epoch, keep) {
        Repair::Resync { target, order } => SplitBrainRound { step: Step::Resync { target, order }, ..idle },
        Repair::HandOver { to } if can_take_over(obs.member(to), missed) => {
            let takeover = Step::Takeover {
                to,
                type_: TransitionType::SplitBrainResolved,
                force: false,
                lossy: false,
                id: String::new(),
                reason: "SplitBrainRepair".into(),
            };
            SplitBrainRound {
                step: handover(obs, to, epoch, holder, false, takeover),
                hold: None,
                // IsolateSecondary with the secondary active: the primary
                // takes over, then the secondary is stopped (never while it
                // holds the Lease) until a resolve request.
                isolate: keep.is_none() && spec.split_brain.policy == SplitBrainPolicy::IsolateSecondary,
            }
        }
        Repair::HandOver { to } => {
            SplitBrainRound { hold: Some(format!("the side to keep, {to}, cannot serve now")), ..idle }
        }
        Repair::Isolate => SplitBrainRound { isolate: true, ..idle },
        Repair::Hold(why) => SplitBrainRound { hold: Some(why), ..idle },
    }
}

/// The repair for the split brain seen on `standby` (evidence since
/// `since`) while `holder` is active; `keep` overrides the policy (a
/// resolve request).
pub fn repair(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    holder: Member,
    standby: Member,
    since: DateTime<Utc>,
    epoch: i64,
    keep: Option<Member>,
) -> Repair {
    let (diff_label, label) = labels(epoch, since);
    let job = |l: &str| obs.resync_jobs.iter().find(|j| j.label == l);
    // The dry run: the difference, for people (Manual) or for MostChanges.
    let diff = || match job(&diff_label) {
        None => Err(Repair::Resync { target: standby, order: order(spec, obs, diff_label.clone(), true) }),
        Some(j) if j.phase == JobPhase::Running => {
            Err(Repair::Hold(format!("computing the difference (Job {})", j.name)))
        }
        Some(j) if j.phase == JobPhase::Failed => {
            Err(Repair::Hold(format!("the difference could not be computed (Job {} failed)", j.name)))
        }
        Some(_) => Ok(obs
            .member(standby)
            .agent
            .last
            .as_ref()
            .and_then(|a| a.sync.as_ref()?.resync_report(&diff_label).cloned())),
    };
    let kept = match (keep, spec.split_brain.policy) {
        (Some(k), _) => k,
        (None, SplitBrainPolicy::Manual) => {
            return match diff() {
                Err(r) => r,
                Ok(_) => Repair::Hold(
                    "splitBrain.policy is Manual: the difference is in status.resync; resolve it with a \
                     resolveSplitBrain request (kubectl hapair resolve NAME --keep primary|secondary)"
                        .into(),
                ),
            };
        }
        (None, SplitBrainPolicy::IsolateSecondary) => {
            return if holder == Member::Secondary {
                Repair::HandOver { to: Member::Primary }
            } else {
                Repair::Isolate
            };
        }
        (None, SplitBrainPolicy::ForceSecondaryStandby) => match spec.split_brain.keep {
            KeepSide::Active => holder,
            KeepSide::Primary => Member::Primary,
            // Which side wrote last is read from each member's own wall
            // clock: while they disagree beyond maxClockSkewSeconds the
            // answer is the skew's, not the writes', and the side clients
            // were told serves is kept (as NewestWins falls back to
            // SourceWins).
            KeepSide::MostRecent if !super::model::clocks_agree(spec, obs) => holder,
            KeepSide::MostRecent => {
                let active_wrote = obs.member(holder).agent.last.as_ref().and_then(|a| a.sync.as_ref()?.last_change_at);
                let standby_wrote = obs
                    .member(standby)
                    .agent
                    .last
                    .as_ref()
                    .and_then(|a| a.sync.as_ref()?.changed_while_standby.values().max().copied());
                if standby_wrote > active_wrote { standby } else { holder }
            }
            KeepSide::MostChanges => match diff() {
                Err(r) => return r,
                // Files only the standby has (and would lose) against files
                // only the active has; a tie keeps the active member.
                Ok(Some(r)) if r.summary.quarantines > r.summary.copies => standby,
                Ok(_) => holder,
            },
        },
    };
    if kept == standby {
        return Repair::HandOver { to: standby };
    }
    match job(&label) {
        None => Repair::Resync { target: standby, order: order(spec, obs, label, false) },
        Some(j) if j.phase == JobPhase::Failed => Repair::Hold(format!(
            "the repair Job {} failed: {}; request a resync to try again",
            j.name,
            j.message.clone().unwrap_or_default()
        )),
        Some(j) => Repair::Hold(format!("resyncing {standby} from {holder} (Job {})", j.name)),
    }
}

/// Where the user's repair Job (`splitBrain.repairJob`) stands: it runs
/// once after each split-brain repair's file resync has succeeded, and the
/// pair is not `Enabled` again before it succeeds.
#[derive(Debug, Clone, PartialEq)]
pub enum RepairJob {
    /// Nothing due.
    None,
    /// Start it for the resync labelled so.
    Start {
        label: String,
    },
    Running {
        job: String,
    },
    Failed {
        job: String,
        why: String,
    },
}

pub fn repair_job(spec: &HighAvailabilityPairSpec, obs: &Observed) -> RepairJob {
    if spec.split_brain.repair_job.is_none() {
        return RepairJob::None;
    }
    let repaired = obs.resync_jobs.iter().rev().find(|j| {
        matches!(j.label.parse(), Ok(ResyncLabel::SplitBrain { .. } | ResyncLabel::SplitBrainHandover { .. }))
    });
    let Some(resync) = repaired else { return RepairJob::None };
    match resync.phase {
        // The files may be repaired before its Job reports Complete.
        JobPhase::Running => return RepairJob::Running { job: resync.name.clone() },
        JobPhase::Failed => return RepairJob::None,
        JobPhase::Succeeded => {}
    }
    let label = ResyncLabel::repair_of(&resync.label);
    match obs.resync_jobs.iter().find(|j| j.label == label) {
        None => RepairJob::Start { label: resync.label.clone() },
        Some(j) if j.phase == JobPhase::Running => RepairJob::Running { job: j.name.clone() },
        Some(j) if j.phase == JobPhase::Failed => RepairJob::Failed {
            job: j.name.clone(),
            why: j.message.clone().unwrap_or_else(|| "no reason given".into()),
        },
        Some(_) => RepairJob::None,
    }
}
