//! The pair's status as a pure function of what was observed and decided:
//! mode, per-member states in classic HA appliance terms, conditions (whose
//! `lastTransitionTime` only moves when their status does), history.

use chrono::{DateTime, Utc};

use super::failover::Blocked;
use super::model::{
    Decision, LeaseAction, Notice, RoundInputs, Usable, push_history, standby_lag, syncs_files, usable,
};
use super::observe::{MemberObs, Observed};
use super::outage::{outage_rank, standby_outage};

/// The `StandbyOutage` condition's type (its full resync reads it).
pub const STANDBY_OUTAGE: &str = "StandbyOutage";
use crate::api::{
    Condition, ConditionStatus, EffectiveTimings, HighAvailabilityPairSpec, Member, MemberState, MemberStatus, Mode,
    Role,
};

/// Sets a condition, keeping `lastTransitionTime` unless the status changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
    generation: Option<i64>,
) {
    let status = if status { ConditionStatus::True } else { ConditionStatus::False };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

fn state(member: Member, m: &MemberObs, active: Option<Member>, peer_ok: bool, mode: Mode, u: Usable) -> MemberState {
    use MemberState::*;
    let primary = member == Member::Primary;
    match u {
        Usable::NoPod | Usable::NotRunning | Usable::AgentSilent => return Down,
        Usable::Fenced => return Fenced,
        Usable::AppFailing => return if primary { PrimaryUncertain } else { SecondaryUncertain },
        Usable::Yes => {}
    }
    let Some(active) = active else { return HaInitializing };
    let reaches_peer = m.agent.last.as_ref().and_then(|a| a.peer_reachable) != Some(false);
    match (member == active, primary) {
        (true, true) if peer_ok => PrimaryActive,
        (true, true) if mode == Mode::Alone => PrimaryAlone,
        (true, true) => PrimaryLostSecondary,
        (true, false) if peer_ok => SecondaryActive,
        (true, false) => SecondaryAlone,
        (false, false) if !reaches_peer => SecondaryLostPrimary,
        (false, false) => SecondarySyncing,
        (false, true) if !reaches_peer => PrimaryLostSecondary,
        (false, true) => PrimaryPreparingForFailback,
    }
}

pub fn compute(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    plan: &mut Decision,
    active: Option<Member>,
    blocked: Option<Blocked>,
    clock: &RoundInputs,
) {
    let missed = spec.heartbeat.missed_threshold as u32;
    let now = clock.now;
    let generation = clock.generation;
    let s = &mut plan.status;
    let usable = |m: Member| usable(obs.member(m), missed);
    // Both serving: at the same epoch, or the old epoch's member still
    // serving a full lease duration after the Lease moved (it should have
    // fenced). Right after a takeover the old active's last answer may
    // still say active for one poll: that is not a split brain.
    let serving: Vec<i64> = Member::BOTH
        .iter()
        .filter_map(|m| {
            let a = &obs.member(*m).agent;
            a.last.as_ref().filter(|x| a.missed == 0 && x.role == Role::Active).map(|x| x.epoch)
        })
        .collect();
    let settled = obs.lease.as_ref().is_none_or(|l| l.unchanged_for >= l.duration);
    let both_active = serving.len() == 2 && (serving[0] == serving[1] || settled);
    // A member whose files changed while it was standby wrote outside its epoch.
    let evidence: Vec<String> = Member::BOTH
        .into_iter()
        .filter_map(|m| {
            let s = obs.member(m).agent.last.as_ref()?.sync.as_ref()?;
            (!s.changed_while_standby.is_empty()).then(|| {
                let dirs: Vec<&str> = s.changed_while_standby.keys().map(String::as_str).collect();
                format!("{m} changed {} while not active", dirs.join(", "))
            })
        })
        .collect();
    let isolated = s.isolated_member;
    let active_ok = active.is_some_and(|a| usable(a) == Usable::Yes);
    let standby_ok = active.is_some_and(|a| usable(a.peer()) == Usable::Yes);
    let mode = if spec.paused {
        Mode::Paused
    } else if both_active || (!evidence.is_empty() && isolated.is_none()) || plan.repair_pending.is_some() {
        Mode::SplitBrain
    } else if obs.lease.is_none() && plan.lease.is_none() {
        Mode::Initializing
    } else if active_ok && standby_ok && isolated.is_none() {
        Mode::Enabled
    } else {
        Mode::Alone
    };
    let epoch = match &plan.lease {
        Some(LeaseAction::Takeover { epoch, .. }) => *epoch,
        Some(LeaseAction::Create { .. }) => 1,
        _ => obs.lease.as_ref().map_or(0, |l| l.epoch),
    };
    if s.mode != Some(mode) {
        plan.events.push(Notice {
            warning: matches!(mode, Mode::Alone | Mode::SplitBrain),
            reason: format!("Mode{mode:?}"),
            note: format!("pair mode {} -> {mode:?}", s.mode.map_or("none".to_string(), |m| format!("{m:?}"))),
        });
    }
    s.mode = Some(mode);
    s.observed_generation = generation;
    s.active_member = active;
    s.standby_member = plan.standby;
    s.epoch = epoch;
    s.effective_timings = Some(EffectiveTimings::of(spec));

    let previous = std::mem::take(&mut s.members);
    for m in Member::BOTH {
        let o = obs.member(m);
        let u = usable(m);
        let prev = previous.iter().find(|p| p.name == m);
        let role = if Some(m) == active && u == Usable::Yes {
            Role::Active
        } else {
            o.agent.last.as_ref().filter(|_| o.agent.missed < missed).map_or(Role::Unknown, |a| match a.role {
                Role::Active if Some(m) != active => Role::Standby,
                r => r,
            })
        };
        let answered = o.agent.missed == 0 && o.agent.last.is_some();
        s.members.push(MemberStatus {
            name: m,
            pod: o.pod.as_ref().map_or_else(|| m.pod_name(&clock.pair), |p| p.name.clone()),
            role,
            state: state(m, o, active, usable(m.peer()) == Usable::Yes, mode, u),
            healthy: o.agent.last.as_ref().and_then(|a| a.app_healthy),
            epoch: o.agent.last.as_ref().map(|a| a.epoch),
            missed_heartbeats: o.agent.missed.min(i32::MAX as u32) as i32,
            // Recorded when the agent stops answering, so steady state writes nothing.
            last_seen_time: if answered { None } else { prev.and_then(|p| p.last_seen_time).or(Some(now)) },
            clock_skew_seconds: o.agent.skew_ms.map(|k| (k as f64 / 1000.0).round() as i64),
            sync_generation: o.agent.last.as_ref().map(|a| a.sync_generation),
            // The active member knows how far behind its standby is.
            sync_lag_seconds: active
                .filter(|a| *a == m.peer())
                .and_then(|a| standby_lag(obs, a))
                .map(|l| l.ceil() as i64),
        });
    }

    if let Some(LeaseAction::Takeover { transition, .. }) = &plan.lease {
        plan.events.push(Notice {
            warning: true,
            reason: format!("{:?}", transition.type_),
            note: format!(
                "{} -> {} at epoch {}: {}",
                transition.from.map_or("none".into(), |m| m.to_string()),
                transition.to.map_or("none".into(), |m| m.to_string()),
                transition.epoch,
                transition.reason
            ),
        });
    }
    if let Some(LeaseAction::Create { holder, .. }) = &plan.lease {
        let t = crate::api::Transition {
            type_: crate::api::TransitionType::Bootstrap,
            from: None,
            to: Some(*holder),
            epoch: 1,
            reason: if standby_ok || usable(holder.peer()) == Usable::Yes { "BothMembersUp" } else { "OnlyMemberUp" }
                .into(),
            message: Some(format!("{holder} becomes active at epoch 1")),
            time: now,
            detection_millis: None,
            lease_to_selector_millis: None,
            data_loss_possible: false,
            operation_id: None,
        };
        plan.events.push(Notice {
            warning: false,
            reason: "Bootstrap".into(),
            note: t.message.clone().unwrap_or_default(),
        });
        push_history(s, t);
    }

    let c = &mut s.conditions;
    set_condition(
        c,
        "Available",
        active_ok,
        if active_ok { "ActiveServing" } else { "NoActiveMember" },
        match active {
            Some(a) if active_ok => format!("{a} is active at epoch {epoch}"),
            Some(a) => format!("{a} holds the lease but cannot serve"),
            None => "no member holds the lease".into(),
        },
        now,
        generation,
    );
    set_condition(
        c,
        "Ready",
        mode == Mode::Enabled,
        &format!("{mode:?}"),
        match mode {
            Mode::Enabled => "one member active, the other ready to take over".into(),
            Mode::Alone => "running without a usable standby".into(),
            m => format!("mode {m:?}"),
        },
        now,
        generation,
    );
    let degraded: Vec<String> = Member::BOTH
        .into_iter()
        .filter_map(|m| match usable(m) {
            Usable::Yes => None,
            u => Some(format!("{m}: {u:?}")),
        })
        .collect();
    set_condition(
        c,
        "Degraded",
        !degraded.is_empty(),
        if degraded.is_empty() { "BothMembersHealthy" } else { "MemberUnavailable" },
        degraded.join("; "),
        now,
        generation,
    );
    let (required, reason, message) = match &blocked {
        Some(b) => (true, b.gate.as_str(), b.message.clone()),
        None => (false, "NotRequired", String::new()),
    };
    if required && !c.iter().any(|x| x.type_ == "FailoverRequired" && x.status == ConditionStatus::True) {
        plan.events.push(Notice { warning: true, reason: "FailoverRequired".into(), note: message.clone() });
    }
    set_condition(c, "FailoverRequired", required, reason, message, now, generation);
    let split = both_active || !evidence.is_empty() || isolated.is_some() || plan.repair_pending.is_some();
    let mut message = if both_active {
        "both members report active".to_string()
    } else if let Some(m) = isolated {
        format!(
            "{m}'s pod is stopped (splitBrain.policy IsolateSecondary); the other member serves alone until a \
             resolveSplitBrain request"
        )
    } else if let (true, Some((_, why))) = (evidence.is_empty(), &plan.repair_pending) {
        why.clone()
    } else {
        evidence.join("; ")
    };
    if let Some(why) = &plan.split_brain_hold {
        message = format!("{message}; {why}");
    }
    let was = c.iter().any(|x| x.type_ == "SplitBrain" && x.status == ConditionStatus::True);
    if split && !was {
        plan.events.push(Notice { warning: true, reason: "SplitBrain".into(), note: message.clone() });
    } else if was && !split {
        plan.events.push(Notice {
            warning: false,
            reason: "SplitBrainResolved".into(),
            note: "no member reports changes made while it was not active any more".into(),
        });
    }
    let reason = if both_active {
        "BothMembersActive"
    } else if isolated.is_some() {
        "SecondaryIsolated"
    } else if let (true, Some((reason, _))) = (evidence.is_empty(), &plan.repair_pending) {
        reason
    } else if split {
        "ChangedWhileStandby"
    } else {
        "OneActive"
    };
    set_condition(c, "SplitBrain", split, reason, message.chars().take(1024).collect(), now, generation);
    if syncs_files(spec) {
        let (ok, reason, message) = synced(spec, obs, active);
        set_condition(c, "Synced", ok, reason, message, now, generation);
    } else {
        c.retain(|x| x.type_ != "Synced");
    }
    let limit = i64::from(spec.max_clock_skew_seconds) * 1000;
    let skewed: Vec<String> = Member::BOTH
        .into_iter()
        .filter_map(|m| {
            let k = obs.member(m).agent.skew_ms.filter(|_| obs.member(m).agent.missed < missed)?;
            (k.abs() > limit).then(|| format!("{m}'s clock is {:+.1}s off the operator's", k as f64 / 1000.0))
        })
        .collect();
    if !skewed.is_empty() && !c.iter().any(|x| x.type_ == "ClockSkew" && x.status == ConditionStatus::True) {
        plan.events.push(Notice { warning: true, reason: "ClockSkew".into(), note: skewed.join("; ") });
    }
    set_condition(
        c,
        "ClockSkew",
        !skewed.is_empty(),
        if skewed.is_empty() { "ClocksAgree" } else { "ClockSkewTooHigh" },
        if skewed.is_empty() {
            String::new()
        } else {
            format!("{} (limit {}s; NewestWins resync refused)", skewed.join("; "), spec.max_clock_skew_seconds)
        },
        now,
        generation,
    );
    let outage = standby_outage(spec, obs, active);
    let level = outage.level();
    let was = c.iter().find(|x| x.type_ == "StandbyOutage").map(|x| x.reason.clone()).unwrap_or_default();
    let mut reason = match level {
        100 => "LimitExceeded",
        90 => "Above90Percent",
        75 => "Above75Percent",
        _ => "WithinLimits",
    };
    if level > 0 && was != reason && outage_rank(&was) < level {
        plan.events.push(Notice {
            warning: true,
            reason: format!("StandbyOutage{reason}"),
            note: outage.message.clone(),
        });
    }
    let mut message = if level > 0 { outage.message.clone() } else { String::new() };
    // Past the limit, the condition stays until the full resync is done.
    if let Some((r, m)) = &plan.outage_resync
        && outage_rank(reason) < 100
    {
        if was != *r && *r != "LimitExceeded" {
            plan.events.push(Notice {
                warning: *r == "FullResyncFailed",
                reason: format!("StandbyOutage{r}"),
                note: m.clone(),
            });
        }
        (reason, message) = (r, m.clone());
    }
    let outage_on = reason != "WithinLimits";
    set_condition(c, "StandbyOutage", outage_on, reason, message, now, generation);
    set_condition(
        c,
        "Paused",
        spec.paused,
        if spec.paused { "SpecPaused" } else { "Running" },
        if spec.paused { "spec.paused is set: observing only".into() } else { String::new() },
        now,
        generation,
    );
}

fn synced(spec: &HighAvailabilityPairSpec, obs: &Observed, active: Option<Member>) -> (bool, &'static str, String) {
    let Some(a) = active else { return (false, "NoActiveMember", "no member is active".into()) };
    let standby = a.peer();
    let report = |m: Member| obs.member(m).agent.last.as_ref().and_then(|x| x.sync.clone());
    let Some(theirs) = report(standby) else {
        return (false, "StandbyUnreachable", format!("{standby} does not report its files"));
    };
    if !theirs.diverged.is_empty() {
        let why: Vec<String> = theirs.diverged.values().cloned().collect();
        return (false, "Diverged", format!("{standby} needs a resync: {}", why.join("; ")));
    }
    let Some(mine) = report(a) else { return (false, "ActiveUnreachable", format!("{a} does not report its files")) };
    let lag = mine.peer_lag_seconds.unwrap_or(f64::INFINITY);
    let limit = 2.0 * f64::from(spec.file_sync.as_ref().map_or(11, |f| f.realtime_interval_seconds));
    if lag <= limit {
        (true, "InSync", format!("{standby} holds generation {} of {}", theirs.point.generation, mine.point.generation))
    } else {
        (
            false,
            "Behind",
            format!(
                "{standby} is {lag:.0}s behind: {} files, {} bytes to copy",
                mine.pending_files, mine.pending_bytes
            ),
        )
    }
}
