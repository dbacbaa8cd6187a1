//! The model every rule shares: what a round decides ([`Decision`]), the
//! steps a rule may ask for, and the predicates several rules read
//! (whether a member can serve, whether the pair syncs files, how far the
//! standby lags). Imports only `observe`; every rule module imports this,
//! none imports another rule through it.

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use super::build::ResyncLabel;
use super::observe::{MemberObs, Observed};
use crate::api::{
    HighAvailabilityPairSpec, HighAvailabilityPairStatus, MAX_HISTORY, Member, Role, Transition, TransitionType,
};

/// A change to the leader Lease: the commit point of every role change.
/// An enum of unit variants whose names are the words written to the API
/// (reasons, gates, labels): `Display` writes the name, `FromStr` reads it
/// back, `ALL` lists every one.
macro_rules! words {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),* }

        impl $name {
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),* }
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> &'static str {
                v.as_str()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)*
                    _ => Err(format!("{s:?} is not a {}", stringify!($name))),
                }
            }
        }
    };
}
pub(crate) use words;

#[derive(Debug, Clone, PartialEq)]
pub enum LeaseAction {
    /// Create the Lease for `holder` at `epoch`: 1 at bootstrap; past the
    /// highest epoch ever seen when the Lease was deleted (epochs never go
    /// backwards). `lossy`: the holder was started without its peer, whose
    /// files may be newer (`cold_start`).
    Create { holder: Member, pod_uid: String, epoch: i64, lossy: bool },
    /// Compare-and-swap to a new holder at `epoch` (current + 1).
    Takeover { to: Member, pod_uid: String, expected_rv: String, epoch: i64, transition: Transition },
    /// Heartbeat settings on the Lease differ from the spec.
    UpdateTimings,
    /// The Lease was edited by hand (`edit` says how): write it again for
    /// `holder` past the highest epoch, compare-and-swap at `expected_rv`.
    Restore { holder: Member, pod_uid: String, epoch: i64, expected_rv: String, edit: String },
}

/// Something under way that a condition reports until it is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub reason: Reason,
    pub message: String,
}

words! {
    /// The pair's status conditions.
    pub enum ConditionType {
        Available,
        Ready,
        Degraded,
        FailoverRequired,
        SplitBrain,
        Synced,
        ClockSkew,
        StandbyOutage,
        VolumeSpaceLow,
        Paused,
    }
}

words! {
    /// Reasons of the status conditions (besides `Ready`'s, the mode, and
    /// `FailoverRequired`'s, the failover gate).
    pub enum Reason {
        ActiveServing,
        NoActiveMember,
        BothMembersHealthy,
        MemberUnavailable,
        NotRequired,
        BothMembersActive,
        SecondaryIsolated,
        RepairJobRunning,
        RepairJobFailed,
        ChangedWhileStandby,
        OneActive,
        StandbyUnreachable,
        /// `spec.standby: Removed`: one member by configuration.
        StandbyRemoved,
        ActiveUnreachable,
        Diverged,
        InSync,
        Behind,
        SyncFailing,
        ClocksAgree,
        ClockSkewTooHigh,
        WithinLimits,
        Above75Percent,
        Above90Percent,
        LimitExceeded,
        FullResync,
        FullResyncFailed,
        SpecPaused,
        Running,
        SpaceAvailable,
        Above80Percent,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// What the operator should make true.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub lease: Option<LeaseAction>,
    /// Ask this member's agent to drain at this epoch (planned handover).
    pub drain: Option<(Member, i64)>,
    /// Ask this member's agent to pull every synced directory now.
    pub sync_now: Option<Member>,
    /// Start the resync Job for this member (the target) and order.
    pub start_resync: Option<(Member, crate::proto::ResyncOrder)>,
    /// Why a split brain is not being repaired right now.
    pub split_brain_hold: Option<String>,
    /// Start the user's repair Job after the split-brain resync so labelled.
    pub repair: Option<String>,
    /// The repair Job is due, running or failed: not `Enabled` yet.
    pub repair_pending: Option<Pending>,
    /// A standby back from an outage past its limit gets a full resync:
    /// the condition's reason and message meanwhile.
    pub outage_resync: Option<Pending>,
    /// Member the VIP Service should select once the Lease action is done.
    pub vip: Option<Member>,
    pub standby: Option<Member>,
    pub status: HighAvailabilityPairStatus,
    pub events: Vec<Notice>,
    /// The failure currently holding the pair up, if any (the worker times it).
    pub failure: Option<String>,
    /// Reconcile again within this time even if nothing happens.
    pub recheck: Duration,
}

impl Notice {
    pub fn warning(reason: impl Into<String>, note: String) -> Self {
        Notice { warning: true, reason: reason.into(), note }
    }
}

impl Decision {
    /// Nothing to change yet: the current status, a recheck in one interval.
    pub fn new(status: HighAvailabilityPairStatus, recheck: Duration) -> Self {
        Decision {
            lease: None,
            drain: None,
            sync_now: None,
            start_resync: None,
            split_brain_hold: None,
            repair: None,
            repair_pending: None,
            outage_resync: None,
            vip: None,
            standby: None,
            status,
            events: Vec::new(),
            failure: None,
            recheck,
        }
    }
}

/// Inputs besides spec and observation.
pub struct RoundInputs {
    pub pair: String,
    pub now: DateTime<Utc>,
    pub generation: Option<i64>,
}

/// Whether `m` can take the active role now: pod running, agent answering,
/// application not failing, not fenced.
pub fn can_take_over(m: &MemberObs, missed_threshold: u32) -> bool {
    usable(m, missed_threshold) == Usable::Yes
}

/// How far behind the active member `holder` last said its standby's files
/// were, in seconds; `None` when it never said.
pub fn standby_lag(obs: &Observed, holder: Member) -> Option<f64> {
    obs.member(holder).agent.last.as_ref()?.sync.as_ref()?.peer_lag_seconds
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Yes,
    NoPod,
    NotRunning,
    AgentSilent,
    AppFailing,
    Fenced,
}

pub fn usable(m: &MemberObs, missed_threshold: u32) -> Usable {
    let Some(pod) = &m.pod else { return Usable::NoPod };
    if !pod.running || pod.deleting || pod.ip.is_none() {
        return Usable::NotRunning;
    }
    if pod.app_down {
        return Usable::AppFailing;
    }
    let Some(agent) = &m.agent.last else { return Usable::AgentSilent };
    if m.agent.missed >= missed_threshold || agent.pod_uid != pod.uid {
        return Usable::AgentSilent;
    }
    if agent.app_healthy == Some(false) {
        return Usable::AppFailing;
    }
    if agent.role == Role::Fenced {
        return Usable::Fenced;
    }
    Usable::Yes
}

pub fn push_history(s: &mut crate::api::HighAvailabilityPairStatus, t: crate::api::Transition) {
    s.last_transition = Some(t.clone());
    s.history.insert(0, t);
    s.history.truncate(MAX_HISTORY);
}

/// What the operation needs done this round.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing (no request, or it is over).
    Idle,
    /// Ask the active member to drain at its epoch.
    Drain { member: Member, epoch: i64 },
    /// Move the Lease to `to`. `lossy`: writes the standby never pulled may
    /// be lost (recorded as `dataLossPossible`).
    Takeover { to: Member, type_: TransitionType, force: bool, lossy: bool, id: String, reason: String },
    /// The active member has drained; the standby must pull its final
    /// files before the Lease moves.
    SyncWait { member: Member },
    /// Waiting for agents (draining, promoting).
    Wait,
    /// Run the resync Job for `target` with this order (once per label).
    Resync { target: Member, order: crate::proto::ResyncOrder },
}

/// Whether the pair syncs files (a planned handover then waits for them).
pub fn syncs_files(spec: &HighAvailabilityPairSpec) -> bool {
    spec.storage.is_some() && spec.file_sync.as_ref().is_some_and(|f| !f.paths.is_empty())
}

/// How long a planned handover may take before it is given up.
pub fn handover_timeout(spec: &HighAvailabilityPairSpec) -> std::time::Duration {
    let realtime = syncs_files(spec).then(|| spec.file_sync.as_ref().map_or(11, |f| f.realtime_interval_seconds));
    crate::proto::handover_hold(spec.heartbeat.interval_seconds, spec.heartbeat.missed_threshold, realtime)
        + std::time::Duration::from_secs(5)
}

/// An order for a resync Job by the pair's `resync` rules (NewestWins only
/// while the clocks agree); `full` reconciles every directory, not only
/// diverged ones.
pub fn resync_order(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    label: String,
    dry_run: bool,
    full: bool,
) -> crate::proto::ResyncOrder {
    crate::proto::ResyncOrder {
        label,
        only_on_target: spec.resync.only_on_target,
        conflict: spec.resync.conflict,
        clocks_agree: clocks_agree(spec, obs),
        dry_run,
        full,
    }
}

/// Whether both members' clocks agree with the operator's within
/// `maxClockSkewSeconds` (NewestWins is honoured only then).
pub fn clocks_agree(spec: &HighAvailabilityPairSpec, obs: &Observed) -> bool {
    let limit = i64::from(spec.max_clock_skew_seconds) * 1000;
    Member::BOTH.iter().all(|m| obs.member(*m).agent.skew_ms.is_some_and(|k| k.abs() <= limit))
}

/// A planned handover to `to`: drain the active member, let `to` pull the
/// drained member's final files (when the pair syncs files), then move the
/// Lease. Zero data loss: the Lease moves only once `to` holds the final
/// generation the drained member reported.
pub fn handover(obs: &Observed, to: Member, epoch: i64, holder: Option<Member>, syncs: bool, takeover: Step) -> Step {
    let from = to.peer();
    let drained = obs.member(from).agent.last.as_ref().filter(|a| a.draining && a.epoch == epoch);
    let from_gone = holder != Some(from) || !obs.member(from).pod.as_ref().is_some_and(|p| p.running);
    if from_gone {
        return takeover;
    }
    let Some(drained) = drained else { return Step::Drain { member: from, epoch } };
    // The Lease moves only from a Lease marked drained at this epoch: the
    // takeover's compare-and-swap is on the Lease as read here, and a member
    // that gives the handover up clears the mark before it serves again, so
    // a drained report older than its resumption cannot move the Lease from
    // under writes the standby never pulled. The agent marks before it
    // reports; an unmarked Lease here is a watch not yet caught up.
    let marked = obs.lease.as_ref().is_some_and(|l| l.drained_at == Some(epoch));
    if drained.marks_drain && !marked {
        return Step::Wait;
    }
    if !syncs {
        return takeover;
    }
    let last = drained.sync.as_ref().map_or(0, |s| s.point.generation);
    let holds = obs
        .member(to)
        .agent
        .last
        .as_ref()
        .and_then(|a| a.sync.as_ref())
        .is_some_and(|s| s.point.generation >= last && s.diverged.is_empty());
    if holds { takeover } else { Step::SyncWait { member: to } }
}

/// How long ago `member`, at `epoch`, gave a planned handover up because
/// its hold ran out (it serves again), as of now: its report's age plus the
/// time since that report.
pub fn gave_up_handover(obs: &Observed, member: Member, epoch: i64) -> Option<std::time::Duration> {
    let agent = &obs.member(member).agent;
    let ago = agent.last.as_ref().filter(|a| a.epoch == epoch)?.handover_given_up_seconds_ago?;
    let ago = std::time::Duration::try_from_secs_f64(ago).ok()?;
    Some(ago + agent.since_answer.unwrap_or_default())
}

/// Records an operation's status: in place when known, else newest first,
/// keeping at most [`MAX_OPERATIONS`](crate::api::MAX_OPERATIONS).
pub fn record_operation(status: &mut HighAvailabilityPairStatus, op: crate::api::OperationStatus) {
    match status.operations.iter_mut().find(|o| o.id == op.id) {
        Some(o) => *o = op,
        None => {
            status.operations.insert(0, op);
            status.operations.truncate(crate::api::MAX_OPERATIONS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_and_condition_type_reads_back_as_the_word_written() {
        for r in Reason::ALL {
            assert_eq!(r.to_string().parse::<Reason>(), Ok(*r));
        }
        for t in ConditionType::ALL {
            assert_eq!(t.as_str().parse::<ConditionType>(), Ok(*t));
        }
        assert!("ActiveServing ".parse::<Reason>().is_err(), "no trimming, no guessing");
    }
}
