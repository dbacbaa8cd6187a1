//! The pair's status as a pure function of what was observed and decided:
//! mode, per-member states in classic HA appliance terms, conditions (whose
//! `lastTransitionTime` only moves when their status does; each built in
//! `conditions`), history.

use chrono::{DateTime, Utc};

use super::conditions::{
    Cond, Facts, available, clock_skew, degraded, failover_required, paused, ready, split_brain,
    standby_outage_condition, synced, synced_state,
};
use super::failover::Blocked;
use super::model::{
    ConditionType, Decision, LeaseAction, Notice, Reason, RoundInputs, Usable, push_history, standby_lag, syncs_files,
    usable,
};
use super::observe::Observed;
use super::outage::recorded_away;
use crate::api::{
    Condition, ConditionStatus, EffectiveTimings, HighAvailabilityPairSpec, Member, MemberStatus, Mode, Role,
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
    // Registration (the manual's "HA Initializing") lasts from the pair's
    // creation until its standby first serves as one, holding the active
    // member's files when it syncs them.
    // One member by configuration (`spec.standby: Removed`) until the
    // standby is added again, which is a registration too.
    let removed = s.removed_member;
    let registering = s.mode.is_none_or(|m| matches!(m, Mode::Initializing | Mode::NotConfigured));
    // A takeover that may have lost writes: the other member is not in sync
    // before it has copied at that epoch (see `synced_state`).
    let lossy = s.last_transition.as_ref().filter(|t| t.data_loss_possible).map(|t| (t.epoch, t.time));
    let registered = active_ok && standby_ok && (!syncs_files(spec) || synced_state(spec, obs, active, lossy).0);
    let mode = if spec.paused {
        Mode::Paused
    } else if both_active || (!evidence.is_empty() && isolated.is_none()) || plan.repair_pending.is_some() {
        Mode::SplitBrain
    } else if removed.is_some() {
        Mode::NotConfigured
    } else if (obs.lease.is_none() && plan.lease.is_none()) || (registering && !registered) {
        Mode::Initializing
    } else if active_ok && standby_ok && isolated.is_none() {
        Mode::Enabled
    } else {
        Mode::Alone
    };
    let epoch = match &plan.lease {
        Some(LeaseAction::Takeover { epoch, .. }) => *epoch,
        Some(LeaseAction::Create { epoch, .. } | LeaseAction::Restore { epoch, .. }) => *epoch,
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
    if let Some(t) = super::unrecorded::unrecorded(spec, obs, plan.lease.is_some(), s, now) {
        plan.events.push(Notice::warning("TransitionRecordedLate", t.message.clone().unwrap_or_default()));
        push_history(s, t);
    }
    s.observed_generation = generation;
    s.active_member = active;
    s.standby_member = plan.standby;
    s.epoch = epoch;
    s.effective_timings = Some(EffectiveTimings::of(spec));
    if let Some(e) = obs.certificates {
        s.certificates = Some(crate::api::CertificatesStatus {
            ca_not_after: e.ca,
            members_not_after: e.members,
            renew_after: e.renew_after,
            ca_renew_after: e.ca_renew_after,
            rotation: obs.rotation.under_way.clone(),
        });
    }
    s.routing = obs.vip_slice.as_ref().map(|slice| {
        let addresses = slice.ready_addresses();
        let pod = slice.endpoints.iter().find(|e| e.1.0 != Some(false)).and_then(|e| e.2.clone());
        crate::api::Routing {
            member: pod.and_then(|p| Member::BOTH.into_iter().find(|m| m.pod_name(&clock.pair) == p)),
            addresses: addresses.into_iter().take(8).collect(),
        }
    });

    let round = super::member_state::Round {
        obs,
        lease: plan.lease.as_ref(),
        drain: plan.drain,
        sync_now: plan.sync_now,
        failure: plan.failure.is_some(),
        last_transition: s.last_transition.clone(),
        isolated: s.isolated_member,
        removed,
        active,
        mode,
        standby_in_sync: syncs_files(spec).then(|| synced_state(spec, obs, active, lossy).0),
    };
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
            state: super::member_state::state(&round, m, u, usable(m.peer()) == Usable::Yes),
            healthy: o.agent.last.as_ref().and_then(|a| a.app_healthy),
            epoch: o.agent.last.as_ref().map(|a| a.epoch),
            missed_heartbeats: o.agent.missed.min(i32::MAX as u32) as i32,
            // Recorded when the agent stops answering, so steady state writes nothing.
            // A removed member is not away: adding it back starts no outage.
            last_seen_time: if answered || removed == Some(m) {
                None
            } else {
                prev.and_then(|p| p.last_seen_time).or(Some(now))
            },
            clock_skew_seconds: o.agent.skew_ms.map(|k| (k as f64 / 1000.0).round() as i64),
            sync_generation: o.agent.last.as_ref().map(|a| a.sync_generation),
            // The active member knows how far behind its standby is.
            sync_lag_seconds: active
                .filter(|a| *a == m.peer() && removed != Some(m))
                .and_then(|a| standby_lag(obs, a))
                .map(|l| l.ceil() as i64),
            volume_used_percent: o.agent.last.as_ref().and_then(|a| a.volume?.used_percent()).map(i32::from),
            quarantine: o.agent.last.as_ref().and_then(|a| a.sync.as_ref()).map(|x| crate::api::QuarantineStatus {
                resyncs: x.quarantine.labels.min(i64::MAX as u64) as i64,
                files: x.quarantine.files.min(i64::MAX as u64) as i64,
                bytes: x.quarantine.bytes.min(i64::MAX as u64) as i64,
            }),
        });
    }

    // Every transition enters the history here; `act` writes this status
    // only once the Lease has moved.
    if let Some(LeaseAction::Takeover { transition, .. }) = &plan.lease {
        push_history(s, transition.clone());
        plan.events.push(Notice {
            warning: true,
            reason: format!("{:?}", transition.type_),
            note: format!(
                "{} -> {} at epoch {}: {}{}",
                transition.from.map_or("none".into(), |m| m.to_string()),
                transition.to.map_or("none".into(), |m| m.to_string()),
                transition.epoch,
                transition.reason,
                // What the administrator must know: why files may be missing.
                transition
                    .message
                    .as_deref()
                    .filter(|_| transition.data_loss_possible)
                    .map_or(String::new(), |m| format!(" ({m}; data loss possible)"))
            ),
        });
    }
    let restored = match &plan.lease {
        Some(LeaseAction::Restore { holder, epoch, edit, .. }) => Some((*holder, *epoch, edit.clone())),
        _ => None,
    };
    if let Some((holder, epoch, edit)) = restored {
        let message = format!("the Lease was edited by hand ({edit}): written again for {holder} at epoch {epoch}");
        let t = crate::api::Transition {
            type_: crate::api::TransitionType::Bootstrap,
            from: None,
            to: Some(holder),
            epoch,
            reason: "LeaseRestored".into(),
            message: Some(message.clone()),
            time: now,
            detection_millis: None,
            lease_to_selector_millis: None,
            data_loss_possible: false,
            operation_id: None,
        };
        plan.events.push(Notice::warning("LeaseRestored", message));
        push_history(s, t);
    }
    if let Some(LeaseAction::Create { holder, epoch, lossy, .. }) = &plan.lease {
        let (reason, message) = if *epoch > 1 {
            let mut m = format!(
                "the Lease was gone: recreated for {holder} at epoch {epoch}, past the highest epoch seen ({})",
                epoch - 1
            );
            if *lossy {
                m += &format!("; {} did not return and its files may be newer", holder.peer());
            }
            ("LeaseRecreated", m)
        } else if standby_ok || usable(holder.peer()) == Usable::Yes {
            ("BothMembersUp", format!("{holder} becomes active at epoch 1"))
        } else {
            ("OnlyMemberUp", format!("{holder} becomes active at epoch 1"))
        };
        let t = crate::api::Transition {
            type_: crate::api::TransitionType::Bootstrap,
            from: None,
            to: Some(*holder),
            epoch: *epoch,
            reason: reason.into(),
            message: Some(message),
            time: now,
            detection_millis: None,
            lease_to_selector_millis: None,
            data_loss_possible: *lossy,
            operation_id: None,
        };
        plan.events.push(Notice {
            warning: *epoch > 1,
            reason: if *epoch > 1 { "LeaseRecreated" } else { "Bootstrap" }.into(),
            note: t.message.clone().unwrap_or_default(),
        });
        push_history(s, t);
    }

    // Every condition from its own builder, read against the conditions as
    // they stood, then merged once.
    // A removed member is no member to worry about.
    let usable = Member::BOTH.map(|m| if removed == Some(m) { Usable::Yes } else { usable(m) });
    let f = Facts { active, active_ok, both_active, evidence, isolated, epoch, usable };
    // Every builder reads the conditions as they stood; nothing is written
    // before all are built.
    let was = |t: ConditionType| s.conditions.iter().find(|c| c.type_ == t.as_str());
    let away = recorded_away(s, active, now);
    let one = |(c, n): (Cond, Option<Notice>)| (c, n.into_iter().collect::<Vec<_>>());
    let mut built: Vec<(Cond, Vec<Notice>)> = vec![
        one(available(&f)),
        one(ready(mode)),
        one(degraded(&f)),
        one(failover_required(blocked.as_ref(), was(ConditionType::FailoverRequired))),
        one(split_brain(
            &f,
            plan.repair_pending.as_ref(),
            plan.split_brain_hold.as_deref(),
            was(ConditionType::SplitBrain),
        )),
    ];
    let syncs = syncs_files(spec);
    if syncs {
        built.push(one(match removed {
            Some(m) => {
                let why = format!("{m} is removed (spec.standby: Removed): nothing is synced");
                (Cond::new(ConditionType::Synced, false, Reason::StandbyRemoved, why), None)
            }
            None => synced(spec, obs, active, lossy, was(ConditionType::Synced)),
        }));
    }
    built.push(one(clock_skew(spec, obs, was(ConditionType::ClockSkew))));
    built.push(standby_outage_condition(
        away,
        spec,
        obs,
        active.filter(|_| removed.is_none()),
        plan.outage_resync.as_ref(),
        was(ConditionType::StandbyOutage),
    ));
    if spec.storage.is_some() {
        let was_on = was(ConditionType::VolumeSpaceLow).filter(|c| c.status == ConditionStatus::True);
        let (reason, message, notices) = super::volume::volume_space(obs, was_on.map(|c| c.reason.as_str()));
        built.push((
            Cond::new(ConditionType::VolumeSpaceLow, reason != Reason::SpaceAvailable, reason, message),
            notices,
        ));
    } else {
        s.conditions.retain(|x| x.type_ != ConditionType::VolumeSpaceLow.as_str());
    }
    built.push(one(paused(spec)));
    if !syncs {
        s.conditions.retain(|x| x.type_ != ConditionType::Synced.as_str());
    }
    for (c, notices) in built {
        plan.events.extend(notices);
        set_condition(&mut s.conditions, c.type_.as_str(), c.on, c.reason, c.message, now, generation);
    }
}
