//! The pair's conditions, each built from what was observed and decided
//! (with the Event that tells it, when it changes): `Available`, `Ready`,
//! `Degraded`, `FailoverRequired`, `SplitBrain`, `ClockSkew`,
//! `StandbyOutage`, `Paused`, `Synced`.

use super::failover::Blocked;
use super::model::{ConditionType, Notice, Pending, Reason, Usable};
use super::observe::Observed;
use super::outage::{outage_rank, standby_outage};
use crate::api::{Condition, ConditionStatus, HighAvailabilityPairSpec, Member, Mode};

/// A condition as its builder computed it.
pub(super) struct Cond {
    pub(super) type_: ConditionType,
    pub(super) on: bool,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl Cond {
    pub(super) fn new(type_: ConditionType, on: bool, reason: impl Into<&'static str>, message: String) -> Self {
        Cond { type_, on, reason: reason.into(), message }
    }
}

/// What several conditions read, computed once per round.
pub(super) struct Facts {
    pub(super) active: Option<Member>,
    pub(super) active_ok: bool,
    pub(super) both_active: bool,
    /// Members whose files changed while they were not active, in words.
    pub(super) evidence: Vec<String>,
    pub(super) isolated: Option<Member>,
    pub(super) epoch: i64,
    /// Whether each member (primary, secondary) can serve.
    pub(super) usable: [Usable; 2],
}

pub(super) fn was_on(c: Option<&Condition>) -> bool {
    c.is_some_and(|c| c.status == ConditionStatus::True)
}

pub(super) fn available(f: &Facts) -> (Cond, Option<Notice>) {
    let reason = if f.active_ok { Reason::ActiveServing } else { Reason::NoActiveMember };
    let message = match f.active {
        Some(a) if f.active_ok => format!("{a} is active at epoch {}", f.epoch),
        Some(a) => format!("{a} holds the lease but cannot serve"),
        None => "no member holds the lease".into(),
    };
    (Cond::new(ConditionType::Available, f.active_ok, reason, message), None)
}

pub(super) fn ready(mode: Mode) -> (Cond, Option<Notice>) {
    let message = match mode {
        Mode::Enabled => "one member active, the other ready to take over".into(),
        Mode::Alone => "running without a usable standby".into(),
        Mode::NotConfigured => "one member serves alone by configuration (spec.standby: Removed)".into(),
        m => format!("mode {m:?}"),
    };
    (Cond::new(ConditionType::Ready, mode == Mode::Enabled, mode_word(mode), message), None)
}

/// A mode's name, the `Ready` condition's reason.
pub(super) fn mode_word(mode: Mode) -> &'static str {
    match mode {
        Mode::NotConfigured => "NotConfigured",
        Mode::Initializing => "Initializing",
        Mode::Enabled => "Enabled",
        Mode::Alone => "Alone",
        Mode::SplitBrain => "SplitBrain",
        Mode::Paused => "Paused",
    }
}

pub(super) fn degraded(f: &Facts) -> (Cond, Option<Notice>) {
    let down: Vec<String> = Member::BOTH
        .into_iter()
        .zip(f.usable)
        .filter(|(_, u)| *u != Usable::Yes)
        .map(|(m, u)| format!("{m}: {u:?}"))
        .collect();
    let reason = if down.is_empty() { Reason::BothMembersHealthy } else { Reason::MemberUnavailable };
    (Cond::new(ConditionType::Degraded, !down.is_empty(), reason, down.join("; ")), None)
}

pub(super) fn failover_required(blocked: Option<&Blocked>, was: Option<&Condition>) -> (Cond, Option<Notice>) {
    let Some(b) = blocked else {
        return (Cond::new(ConditionType::FailoverRequired, false, Reason::NotRequired, String::new()), None);
    };
    let notice = (!was_on(was)).then(|| Notice::warning("FailoverRequired", b.message.clone()));
    (Cond::new(ConditionType::FailoverRequired, true, b.gate.as_str(), b.message.clone()), notice)
}

pub(super) fn split_brain(
    f: &Facts,
    repair_pending: Option<&Pending>,
    hold: Option<&str>,
    was: Option<&Condition>,
) -> (Cond, Option<Notice>) {
    let pending = repair_pending.filter(|_| f.evidence.is_empty());
    let split = f.both_active || !f.evidence.is_empty() || f.isolated.is_some() || repair_pending.is_some();
    let (reason, mut message) = if f.both_active {
        (Reason::BothMembersActive, "both members report active".to_string())
    } else if let Some(m) = f.isolated {
        let why = format!(
            "{m}'s pod is stopped (splitBrain.policy IsolateSecondary); the other member serves alone until a \
             resolveSplitBrain request"
        );
        (Reason::SecondaryIsolated, why)
    } else if let Some(p) = pending {
        (p.reason, p.message.clone())
    } else if split {
        (Reason::ChangedWhileStandby, f.evidence.join("; "))
    } else {
        (Reason::OneActive, f.evidence.join("; "))
    };
    if let Some(why) = hold {
        message = format!("{message}; {why}");
    }
    let notice = match (split, was_on(was)) {
        (true, false) => Some(Notice::warning("SplitBrain", message.clone())),
        (false, true) => Some(Notice {
            warning: false,
            reason: "SplitBrainResolved".into(),
            note: "no member reports changes made while it was not active any more".into(),
        }),
        _ => None,
    };
    (Cond::new(ConditionType::SplitBrain, split, reason, message.chars().take(1024).collect()), notice)
}

pub(super) fn clock_skew(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    was: Option<&Condition>,
) -> (Cond, Option<Notice>) {
    let missed = spec.heartbeat.missed_threshold as u32;
    let limit = i64::from(spec.max_clock_skew_seconds) * 1000;
    let skewed: Vec<String> = Member::BOTH
        .into_iter()
        .filter_map(|m| {
            let k = obs.member(m).agent.skew_ms.filter(|_| obs.member(m).agent.missed < missed)?;
            (k.abs() > limit).then(|| format!("{m}'s clock is {:+.1}s off the operator's", k as f64 / 1000.0))
        })
        .collect();
    if skewed.is_empty() {
        return (Cond::new(ConditionType::ClockSkew, false, Reason::ClocksAgree, String::new()), None);
    }
    let notice = (!was_on(was)).then(|| Notice::warning("ClockSkew", skewed.join("; ")));
    let message = format!("{} (limit {}s; NewestWins resync refused)", skewed.join("; "), spec.max_clock_skew_seconds);
    (Cond::new(ConditionType::ClockSkew, true, Reason::ClockSkewTooHigh, message), notice)
}

/// `StandbyOutage`: the thresholds the standby's outage has reached (an
/// Event each time a higher one is), and past the limit the full resync
/// until it is done.
pub(super) fn standby_outage_condition(
    away: Option<std::time::Duration>,
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    active: Option<Member>,
    outage_resync: Option<&Pending>,
    was: Option<&Condition>,
) -> (Cond, Vec<Notice>) {
    let outage = standby_outage(spec, obs, active, away);
    let level = outage.level();
    let was = was.map(|c| c.reason.clone()).unwrap_or_default();
    let mut notices = Vec::new();
    let mut reason = match level {
        100 => Reason::LimitExceeded,
        90 => Reason::Above90Percent,
        75 => Reason::Above75Percent,
        _ => Reason::WithinLimits,
    };
    if level > 0 && was != reason.as_str() && outage_rank(&was) < level {
        notices.push(Notice::warning(format!("StandbyOutage{reason}"), outage.message.clone()));
    }
    let mut message = if level > 0 { outage.message.clone() } else { String::new() };
    // Past the limit, the condition stays until the full resync is done.
    if let Some(p) = outage_resync
        && outage_rank(reason.as_str()) < 100
    {
        if was != p.reason.as_str() && p.reason != Reason::LimitExceeded {
            notices.push(Notice {
                warning: p.reason == Reason::FullResyncFailed,
                reason: format!("StandbyOutage{}", p.reason),
                note: p.message.clone(),
            });
        }
        (reason, message) = (p.reason, p.message.clone());
    }
    (Cond::new(ConditionType::StandbyOutage, reason != Reason::WithinLimits, reason, message), notices)
}

pub(super) fn paused(spec: &HighAvailabilityPairSpec) -> (Cond, Option<Notice>) {
    if spec.paused {
        (Cond::new(ConditionType::Paused, true, Reason::SpecPaused, "spec.paused is set: observing only".into()), None)
    } else {
        (Cond::new(ConditionType::Paused, false, Reason::Running, String::new()), None)
    }
}

/// `Synced`: the standby holds the active member's files (within two
/// realtime intervals) and nothing has diverged. A standby that falls behind
/// because it cannot store the files (a full volume, a file it may not
/// write) says why, with a Warning Event when that starts.
pub(super) fn synced(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    active: Option<Member>,
    lossy: Option<(i64, chrono::DateTime<chrono::Utc>)>,
    was: Option<&Condition>,
) -> (Cond, Option<Notice>) {
    let (ok, reason, message) = synced_state(spec, obs, active, lossy);
    let notice = (reason == Reason::SyncFailing && was.is_none_or(|c| c.reason != reason.as_str()))
        .then(|| Notice::warning("SyncFailing", message.clone()));
    (Cond::new(ConditionType::Synced, ok, reason, message), notice)
}

/// `lossy`: the epoch and time of the active member's takeover, when that
/// takeover may have left the other member holding writes it never got (a
/// failover recorded with `dataLossPossible`). Until that member has
/// completed a pull since, its files were never compared with the active's,
/// and the active's count of what it "has" (a generation number of the
/// older line, which the newer one may have passed) says nothing: it is not
/// in sync, and that pull finds out whether it diverged. (Its completion
/// time is on the member's clock: a clock behind only delays this, as each
/// complete pull moves it on.)
pub(super) fn synced_state(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    active: Option<Member>,
    lossy: Option<(i64, chrono::DateTime<chrono::Utc>)>,
) -> (bool, Reason, String) {
    let Some(a) = active else { return (false, Reason::NoActiveMember, "no member is active".into()) };
    let standby = a.peer();
    let report = |m: Member| obs.member(m).agent.last.as_ref().and_then(|x| x.sync.clone());
    let Some(theirs) = report(standby) else {
        return (false, Reason::StandbyUnreachable, format!("{standby} does not report its files"));
    };
    if !theirs.diverged.is_empty() {
        let why: Vec<String> = theirs.diverged.values().cloned().collect();
        return (false, Reason::Diverged, format!("{standby} needs a resync: {}", why.join("; ")));
    }
    if let Some((epoch, _)) = lossy.filter(|(_, at)| theirs.in_sync_at.is_none_or(|t| t < *at)) {
        return (
            false,
            Reason::Behind,
            format!(
                "{standby} has not completed a pull from {a} since {a} took over at epoch {epoch} with data loss possible: its files are compared with {a}'s on its next pull"
            ),
        );
    }
    let Some(mine) = report(a) else {
        return (false, Reason::ActiveUnreachable, format!("{a} does not report its files"));
    };
    let lag = mine.peer_lag_seconds.unwrap_or(f64::INFINITY);
    let limit = 2.0 * f64::from(spec.file_sync.as_ref().map_or(11, |f| f.realtime_interval_seconds));
    if lag <= limit {
        (
            true,
            Reason::InSync,
            format!("{standby} holds generation {} of {}", theirs.point.generation, mine.point.generation),
        )
    } else if let Some(error) = &theirs.failing {
        (
            false,
            Reason::SyncFailing,
            format!(
                "{standby} cannot store the active member's files ({error}); {lag:.0}s behind: {} files, {} bytes \
                 to copy",
                mine.pending_files, mine.pending_bytes
            ),
        )
    } else if mine.peer_lag_seconds.is_none() {
        let (have, of) = (theirs.point.generation, mine.point.generation);
        (
            false,
            Reason::Behind,
            format!("{standby} holds generation {have} of {of}; missing changes from before {a}'s agent started"),
        )
    } else {
        (
            false,
            Reason::Behind,
            format!(
                "{standby} is {lag:.0}s behind: {} files, {} bytes to copy",
                mine.pending_files, mine.pending_bytes
            ),
        )
    }
}
