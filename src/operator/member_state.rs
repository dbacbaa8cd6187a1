//! Each member's state in the appliance manual's terms (its "HA States and
//! Transitions" table), from what was observed and what this round does.
//!
//! Steady states follow from who is active and whether the members hear
//! each other. The transition states follow from the procedure under way:
//!
//! - `PrimaryFailover`: a failover away from the primary is pending (its
//!   failure seen, the Lease not moved yet) or under way (the secondary not
//!   yet serving at the new epoch); not for a planned switchover;
//! - `SecondaryFailover`: the Lease moved (or is moving) to the secondary,
//!   planned or not, and it does not serve at the new epoch yet;
//! - `PrimaryFailback` / `SecondaryFailback`: the role is on its way back to
//!   the primary (a failback, a switchover or go-standby towards it,
//!   automatic failback): the secondary drains, the primary pulls its final
//!   files, the Lease moves, until the primary serves;
//! - `SecondaryPostFailback`: after that, the secondary as standby until it
//!   holds the primary's files again (with file sync);
//! - `PrimaryPreparingForFailback` / `PrimarySyncing`: the primary as
//!   standby, before and after it holds the active member's files (with
//!   file sync; without, there is nothing to prepare and it stays
//!   `PrimaryPreparingForFailback`, "started in standby after a failover");
//! - `Isolated`: stopped by the split-brain policy `IsolateSecondary`;
//! - `HaInitializing`: both members while the pair registers (mode
//!   `Initializing`: from its creation, or from the standby added back
//!   after `spec.standby: Removed`, until the standby first serves as one,
//!   holding the active's files when it syncs them) — a member whose pod is
//!   still starting too; one without a pod is `Down`;
//! - `StandAlone`: both members while the pair runs one member by
//!   configuration (`spec.standby: Removed`).

use super::model::{LeaseAction, Usable};
use super::observe::Observed;
use crate::api::{Member, MemberState, Mode, Role, Transition, TransitionType};

/// What the states of both members are read from, once per round.
pub struct Round<'a> {
    pub obs: &'a Observed,
    /// This round's Lease action, drain, request for final files, and
    /// whether the holder's failure is seen.
    pub lease: Option<&'a LeaseAction>,
    pub drain: Option<(Member, i64)>,
    pub sync_now: Option<Member>,
    pub failure: bool,
    /// The last transition recorded before this round.
    pub last_transition: Option<Transition>,
    pub isolated: Option<Member>,
    /// The member `spec.standby: Removed` stopped.
    pub removed: Option<Member>,
    pub active: Option<Member>,
    pub mode: Mode,
    /// Whether the standby holds the active member's files; `None` without
    /// file sync.
    pub standby_in_sync: Option<bool>,
}

/// A change of active member under way: to whom, of what kind, and at
/// which epoch.
fn moving(r: &Round) -> Option<(Member, TransitionType, i64)> {
    if let Some(LeaseAction::Takeover { to, transition, epoch, .. }) = r.lease {
        return Some((*to, transition.type_, *epoch));
    }
    // The Lease moved in an earlier round; the new holder does not serve at
    // its epoch yet.
    let lease = r.obs.lease.as_ref()?;
    let (to, _) = lease.holder.as_ref()?;
    let serving =
        r.obs.member(*to).agent.last.as_ref().is_some_and(|a| a.role == Role::Active && a.epoch >= lease.epoch);
    let t = r.last_transition.as_ref().filter(|t| t.epoch == lease.epoch && t.to == Some(*to))?;
    (!serving).then_some((*to, t.type_, lease.epoch))
}

/// The role going back to the primary before the Lease moves: the
/// secondary, active, drains (or was asked to), or the primary is asked for
/// its final files.
fn returning_to_primary(r: &Round) -> bool {
    r.active == Some(Member::Secondary)
        && (matches!(r.drain, Some((Member::Secondary, _)))
            || r.sync_now == Some(Member::Primary)
            || r.obs.member(Member::Secondary).agent.last.as_ref().is_some_and(|a| a.draining))
}

/// A change that takes the role away from the member that had it, planned
/// or not (a member taking its own role back after a restart is not one):
/// the manual's "Secondary Failover" covers a triggered one too.
fn is_failover(t: TransitionType) -> bool {
    !matches!(t, TransitionType::Bootstrap)
}

fn towards_primary(t: TransitionType) -> bool {
    matches!(t, TransitionType::Failback | TransitionType::Switchover | TransitionType::GoStandby)
}

pub fn state(r: &Round, member: Member, u: Usable, peer_ok: bool) -> MemberState {
    use MemberState::*;
    let primary = member == Member::Primary;
    let m = r.obs.member(member);
    let isolated = r.isolated == Some(member) && r.active != Some(member);
    let moving = moving(r);
    let failing_from_primary = primary
        && (moving.is_some_and(|(to, t, _)| to == Member::Secondary && t == TransitionType::Failover)
            || (r.active == Some(Member::Primary) && r.failure && r.lease.is_none()));
    // HA not configured: the member serving alone by configuration and the
    // one removed are both "Stand Alone" (the manual's word for both).
    if r.removed == Some(member) || (r.removed.is_some() && r.active == Some(member) && u == Usable::Yes) {
        return StandAlone;
    }
    match u {
        Usable::NoPod | Usable::NotRunning | Usable::AgentSilent if isolated => return Isolated,
        // Registering, its pod still starting: part of the registration.
        Usable::NotRunning | Usable::AgentSilent if r.mode == Mode::Initializing && m.pod.is_some() => {
            return HaInitializing;
        }
        Usable::NoPod | Usable::NotRunning => return Down,
        _ if failing_from_primary => return PrimaryFailover,
        Usable::AgentSilent => return Down,
        Usable::Fenced => return Fenced,
        Usable::AppFailing => return if primary { PrimaryUncertain } else { SecondaryUncertain },
        Usable::Yes => {}
    }
    if let Some((to, t, _)) = moving {
        match (to, member) {
            (Member::Secondary, Member::Secondary) if is_failover(t) => return SecondaryFailover,
            (Member::Primary, Member::Primary) if towards_primary(t) => return PrimaryFailback,
            (Member::Primary, Member::Secondary) if towards_primary(t) => return SecondaryPostFailback,
            _ => {}
        }
    }
    if returning_to_primary(r) {
        return if primary { PrimaryFailback } else { SecondaryFailback };
    }
    let Some(active) = r.active else { return HaInitializing };
    if r.mode == Mode::Initializing {
        return HaInitializing;
    }
    let reaches_peer = m.agent.last.as_ref().and_then(|a| a.peer_reachable) != Some(false);
    let after_failback = r.last_transition.as_ref().is_some_and(|t| {
        towards_primary(t.type_) && t.to == Some(Member::Primary) && t.from == Some(Member::Secondary)
    });
    match (member == active, primary) {
        (true, true) if peer_ok => PrimaryActive,
        (true, true) if r.mode == Mode::Alone => PrimaryAlone,
        (true, true) => PrimaryLostSecondary,
        (true, false) if peer_ok => SecondaryActive,
        (true, false) => SecondaryAlone,
        (false, false) if !reaches_peer => SecondaryLostPrimary,
        (false, false) if after_failback && r.standby_in_sync == Some(false) => SecondaryPostFailback,
        (false, false) => SecondarySyncing,
        (false, true) if !reaches_peer => PrimaryLostSecondary,
        (false, true) if r.standby_in_sync == Some(true) => PrimarySyncing,
        (false, true) => PrimaryPreparingForFailback,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::operator::observe::{AgentObs, LeaseObs, MemberObs};
    use MemberState::*;

    /// Both members' agents answering: `roles` as (role, epoch) each.
    fn obs(primary: (Role, i64), secondary: (Role, i64), holder: Member, epoch: i64) -> Observed {
        let member = |m: Member, (role, epoch): (Role, i64)| {
            let mut a: crate::proto::AgentStatus = serde_json::from_value(serde_json::json!({
                "member": m, "podUid": format!("{m}-uid"), "role": "Standby", "epoch": epoch,
                "wallClock": "2026-01-01T00:00:00Z", "syncGeneration": 0, "leaseRenewFailures": 0,
                "peerReachable": true
            }))
            .unwrap();
            a.role = role;
            MemberObs { agent: AgentObs { last: Some(a), ..Default::default() }, ..Default::default() }
        };
        Observed {
            primary: member(Member::Primary, primary),
            secondary: member(Member::Secondary, secondary),
            lease: Some(LeaseObs {
                holder: Some((holder, format!("{holder}-uid"))),
                epoch,
                resource_version: "1".into(),
                duration: Duration::from_secs(3),
                released_reason: None,
                released_by: None,
                operation_id: None,
                drained_at: None,
                unchanged_for: Duration::ZERO,
                renewed_ago: None,
                interval_seconds: Some(1),
                missed_threshold: Some(3),
            }),
            ..Default::default()
        }
    }

    fn round<'a>(obs: &'a Observed, active: Member) -> Round<'a> {
        Round {
            obs,
            lease: None,
            drain: None,
            sync_now: None,
            failure: false,
            last_transition: None,
            isolated: None,
            removed: None,
            active: Some(active),
            mode: Mode::Enabled,
            standby_in_sync: None,
        }
    }

    fn transition(type_: TransitionType, from: Member, to: Member, epoch: i64) -> Transition {
        serde_json::from_value(serde_json::json!({
            "type": format!("{type_:?}"), "from": from, "to": to, "epoch": epoch, "reason": "r",
            "time": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    fn takeover(to: Member, t: Transition) -> LeaseAction {
        LeaseAction::Takeover {
            to,
            pod_uid: format!("{to}-uid"),
            expected_rv: "1".into(),
            epoch: t.epoch,
            transition: t,
        }
    }

    fn both(r: &Round, usable: [Usable; 2]) -> [MemberState; 2] {
        [
            state(r, Member::Primary, usable[0], usable[1] == Usable::Yes),
            state(r, Member::Secondary, usable[1], usable[0] == Usable::Yes),
        ]
    }

    const UP: [Usable; 2] = [Usable::Yes, Usable::Yes];

    #[test]
    fn steady_states_follow_who_is_active_and_whether_the_standby_holds_the_files() {
        let o = obs((Role::Active, 1), (Role::Standby, 1), Member::Primary, 1);
        assert_eq!(both(&round(&o, Member::Primary), UP), [PrimaryActive, SecondarySyncing]);
        let o = obs((Role::Standby, 2), (Role::Active, 2), Member::Secondary, 2);
        let mut r = round(&o, Member::Secondary);
        assert_eq!(both(&r, UP), [PrimaryPreparingForFailback, SecondaryActive], "no file sync");
        r.standby_in_sync = Some(false);
        assert_eq!(both(&r, UP), [PrimaryPreparingForFailback, SecondaryActive]);
        r.standby_in_sync = Some(true);
        assert_eq!(both(&r, UP), [PrimarySyncing, SecondaryActive]);
        r.mode = Mode::Alone;
        assert_eq!(both(&r, [Usable::NoPod, Usable::Yes]), [Down, SecondaryAlone]);
    }

    #[test]
    fn a_failover_shows_on_both_members_until_the_secondary_serves() {
        // The primary's failure is seen; the Lease has not moved yet.
        let o = obs((Role::Active, 1), (Role::Standby, 1), Member::Primary, 1);
        let mut r = round(&o, Member::Primary);
        r.failure = true;
        assert_eq!(both(&r, [Usable::AppFailing, Usable::Yes]), [PrimaryFailover, SecondarySyncing]);
        assert_eq!(both(&r, [Usable::NoPod, Usable::Yes])[0], Down, "a primary without a pod is down");
        // This round moves the Lease.
        let t = transition(TransitionType::Failover, Member::Primary, Member::Secondary, 2);
        let lease = takeover(Member::Secondary, t.clone());
        let mut r = round(&o, Member::Secondary);
        r.lease = Some(&lease);
        assert_eq!(both(&r, [Usable::AgentSilent, Usable::Yes]), [PrimaryFailover, SecondaryFailover]);
        // Moved; the secondary is not serving at epoch 2 yet, then is.
        let o = obs((Role::Standby, 1), (Role::Standby, 1), Member::Secondary, 2);
        let mut r = round(&o, Member::Secondary);
        r.last_transition = Some(t.clone());
        assert_eq!(both(&r, UP), [PrimaryFailover, SecondaryFailover]);
        let o = obs((Role::Standby, 1), (Role::Active, 2), Member::Secondary, 2);
        let mut r = round(&o, Member::Secondary);
        r.last_transition = Some(t);
        assert_eq!(both(&r, UP), [PrimaryPreparingForFailback, SecondaryActive]);
        // A planned switchover is no failure of the primary.
        let t = transition(TransitionType::Switchover, Member::Primary, Member::Secondary, 2);
        let lease = takeover(Member::Secondary, t);
        let o2 = obs((Role::Active, 1), (Role::Standby, 1), Member::Primary, 1);
        let mut r = round(&o2, Member::Secondary);
        r.lease = Some(&lease);
        assert_eq!(both(&r, UP), [PrimaryPreparingForFailback, SecondaryFailover]);
        // A member taking its own role back after a restart is no failover.
        let t = transition(TransitionType::Bootstrap, Member::Secondary, Member::Secondary, 3);
        let lease = takeover(Member::Secondary, t);
        let mut r = round(&o, Member::Secondary);
        r.lease = Some(&lease);
        assert_eq!(both(&r, UP)[1], SecondaryActive);
    }

    #[test]
    fn a_failback_shows_from_the_drain_to_the_secondary_holding_the_files_again() {
        let o = obs((Role::Standby, 2), (Role::Active, 2), Member::Secondary, 2);
        let mut r = round(&o, Member::Secondary);
        r.standby_in_sync = Some(true);
        r.drain = Some((Member::Secondary, 2));
        assert_eq!(both(&r, UP), [PrimaryFailback, SecondaryFailback]);
        r.drain = None;
        r.sync_now = Some(Member::Primary);
        assert_eq!(both(&r, UP), [PrimaryFailback, SecondaryFailback]);
        let t = transition(TransitionType::Failback, Member::Secondary, Member::Primary, 3);
        let lease = takeover(Member::Primary, t.clone());
        let mut r = round(&o, Member::Primary);
        r.lease = Some(&lease);
        assert_eq!(both(&r, UP), [PrimaryFailback, SecondaryPostFailback]);
        // The primary serves; the secondary pulls the primary's files.
        let o = obs((Role::Active, 3), (Role::Standby, 2), Member::Primary, 3);
        let mut r = round(&o, Member::Primary);
        r.last_transition = Some(t.clone());
        r.standby_in_sync = Some(false);
        assert_eq!(both(&r, UP), [PrimaryActive, SecondaryPostFailback]);
        r.standby_in_sync = Some(true);
        assert_eq!(both(&r, UP), [PrimaryActive, SecondarySyncing]);
        // A switchover back to the primary is a failback in the manual's terms.
        let t = transition(TransitionType::Switchover, Member::Secondary, Member::Primary, 3);
        let lease = takeover(Member::Primary, t);
        let mut r = round(&o, Member::Primary);
        r.lease = Some(&lease);
        assert_eq!(both(&r, UP), [PrimaryFailback, SecondaryPostFailback]);
    }

    #[test]
    fn both_members_are_initializing_while_the_pair_registers() {
        let o = obs((Role::Active, 1), (Role::Standby, 1), Member::Primary, 1);
        let mut r = round(&o, Member::Primary);
        r.mode = Mode::Initializing;
        assert_eq!(both(&r, UP), [HaInitializing, HaInitializing]);
        assert_eq!(both(&r, [Usable::Yes, Usable::NoPod]), [HaInitializing, Down]);
        // Its pod there but still starting: registering, not down.
        let mut o = o.clone();
        o.secondary.pod = Some(Default::default());
        let mut r = round(&o, Member::Primary);
        r.mode = Mode::Initializing;
        assert_eq!(both(&r, [Usable::Yes, Usable::NotRunning]), [HaInitializing, HaInitializing]);
        assert_eq!(both(&r, [Usable::Yes, Usable::AgentSilent]), [HaInitializing, HaInitializing]);
        r.mode = Mode::Enabled;
        assert_eq!(both(&r, [Usable::Yes, Usable::NotRunning]), [PrimaryLostSecondary, Down]);
        r.mode = Mode::Enabled;
        assert_eq!(both(&r, UP), [PrimaryActive, SecondarySyncing]);
    }

    #[test]
    fn an_isolated_secondary_is_isolated_not_down() {
        let o = obs((Role::Active, 1), (Role::Standby, 1), Member::Primary, 1);
        let mut r = round(&o, Member::Primary);
        r.isolated = Some(Member::Secondary);
        r.mode = Mode::Alone;
        assert_eq!(both(&r, [Usable::Yes, Usable::NoPod]), [PrimaryAlone, Isolated]);
        let r = round(&o, Member::Primary);
        assert_eq!(both(&r, [Usable::Yes, Usable::NoPod])[1], Down, "not isolated: down");
    }
}
