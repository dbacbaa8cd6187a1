//! Cold start: both members were down (the EPN manual's "both HA servers
//! are powered down"). The member that held the role last has the newest
//! files, so it becomes active again whatever order the two return in; the
//! other resyncs from it and nothing of the newer member is quarantined.
//! If only the older member returns, it is started after a bounded wait,
//! with `dataLossPossible` recorded (automatic mode), or the pair raises
//! `FailoverRequired` (manual mode: the manual's "the secondary will not
//! restart").
//!
//! What tells a cold start from a failover is time, measured without
//! comparing two machines' clocks where it can be: the peer's agent reports
//! how long it has been up (its monotonic clock); the operator knows how
//! long the Lease has gone unchanged (its own). A peer that came up after
//! the holder last renewed was down when the holder stopped: it was no hot
//! standby then, whatever its files say. An operator that started after
//! the holder stopped cannot know how long the Lease has been unchanged,
//! so the Lease's `renewTime` against the operator's wall clock stands in
//! (a skew shifts the verdict for a peer that came up within the skew of
//! the holder's end; either verdict keeps the pair safe, it only decides
//! whom to wait for).
//!
//! The same evidence serves when there is no Lease at all (a pair created
//! again over retained claims, a Lease deleted while both were down): each
//! agent reports the point of its files (`epoch.generation`), kept on its
//! volume, and the newest point serves.

use std::time::Duration;

use super::model::can_take_over;
use super::observe::{LeaseObs, Observed};
use crate::api::{HighAvailabilityPairSpec, Member};
use crate::sync::state::Point;

/// How long to wait for the other member before starting one alone: at
/// bootstrap, and for the last active after both members were down.
pub fn wait_for_other(spec: &HighAvailabilityPairSpec) -> Duration {
    let lease = (spec.heartbeat.interval_seconds * spec.heartbeat.missed_threshold) as u64;
    Duration::from_secs(2 * lease + 5)
}

/// How long `m`'s agent has been up, on the operator's clock (its reported
/// uptime plus the age of that answer). `None` without a report, or with
/// one no clock could give (garbage is not trusted).
fn up_for(obs: &Observed, m: Member) -> Option<Duration> {
    let a = &obs.member(m).agent;
    let up = a.last.as_ref()?.uptime_seconds?;
    Some(Duration::try_from_secs_f64(up).ok()? + a.since_answer?)
}

/// The point of `m`'s files, as its agent last reported (file sync only).
pub fn point(obs: &Observed, m: Member) -> Option<Point> {
    obs.member(m).agent.last.as_ref()?.sync.as_ref().map(|s| s.point)
}

/// The highest epoch the members' files were written at (0: none), within
/// what a Lease can count (a garbage record is not trusted).
pub fn files_epoch(obs: &Observed) -> i64 {
    Member::BOTH
        .into_iter()
        .filter_map(|m| point(obs, m).map(|p| p.epoch))
        .filter(|e| (0..i64::from(i32::MAX)).contains(e))
        .max()
        .unwrap_or(0)
}

/// The pair was already waiting for the last active: the status says so
/// (`FailoverRequired` with reason `gate`), which survives an operator
/// restart and the returning holder's own renewal.
pub fn was_waiting(status: &crate::api::HighAvailabilityPairStatus, gate: &str) -> bool {
    status.conditions.iter().any(|c| {
        c.type_ == super::model::ConditionType::FailoverRequired.as_str()
            && c.status == crate::api::ConditionStatus::True
            && c.reason == gate
    })
}

/// Both members were down: `peer`'s agent came up after `holder` last
/// renewed the Lease — or the pair was already waiting for the holder
/// (`waiting`: the returning holder's own renewal, made before its
/// application is back, ends no cold start) — and nothing shows the peer
/// holds what the holder does (a holder still answering whose point the
/// peer has reached is no reason to wait).
pub fn both_were_down(obs: &Observed, lease: &LeaseObs, holder: Member, peer: Member, waiting: bool) -> bool {
    let Some(peer_up) = up_for(obs, peer) else { return false };
    let silent = lease.unchanged_for.max(lease.renewed_ago.unwrap_or_default());
    if peer_up >= silent && !waiting {
        return false;
    }
    let holder_answers = obs.member(holder).agent.missed == 0;
    !matches!((point(obs, holder).filter(|_| holder_answers), point(obs, peer)), (Some(h), Some(p)) if p >= h)
}

/// While `peer` waits for the last active: how much longer, at most. `None`
/// once the wait is over (or the peer's uptime is unknown).
pub fn still_waiting(spec: &HighAvailabilityPairSpec, obs: &Observed, peer: Member) -> Option<Duration> {
    let left = wait_for_other(spec).checked_sub(up_for(obs, peer)?)?;
    (!left.is_zero()).then_some(left)
}

/// Without a Lease: the member whose files are newest, when both report a
/// point and they differ.
fn newest(obs: &Observed) -> Option<Member> {
    match (point(obs, Member::Primary), point(obs, Member::Secondary)) {
        (Some(p), Some(s)) if p > s => Some(Member::Primary),
        (Some(p), Some(s)) if s > p => Some(Member::Secondary),
        _ => None,
    }
}

/// Without a Lease, the member to start and whether its files may be
/// older than its peer's: the first of `evidence` (then the newest files)
/// that can serve. A member the evidence does not name — or, without
/// evidence, one whose peer has not said where its files stand — starts
/// only once its peer has been away for [`wait_for_other`], and then with
/// `dataLossPossible`. `Err`: when to look again, if ever.
pub fn without_lease_holder(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    evidence: [Option<Member>; 2],
) -> Result<(Member, bool), Option<Duration>> {
    let missed = spec.heartbeat.missed_threshold as u32;
    let ready = |m: Member| can_take_over(obs.member(m), missed);
    let named: Vec<Member> = evidence.into_iter().flatten().chain(newest(obs)).collect();
    if let Some(first) = named.first().copied() {
        if ready(first) {
            return Ok((first, false));
        }
        // It cannot serve, but it answers and its peer holds what it holds.
        let other = first.peer();
        let answers = obs.member(first).agent.missed == 0;
        if let (Some(f), Some(o), true) = (point(obs, first), point(obs, other), answers && ready(other))
            && o >= f
        {
            return Ok((other, false));
        }
    } else if ready(Member::Primary) && ready(Member::Secondary) {
        // Nothing tells them apart: the configured primary.
        return Ok((Member::Primary, false));
    } else if Member::BOTH.iter().all(|m| point(obs, *m).is_some()) {
        // Both said where their files stand and they agree.
        if let Some(m) = Member::BOTH.into_iter().find(|m| ready(*m)) {
            return Ok((m, false));
        }
    }
    let only = Member::BOTH.into_iter().find(|m| ready(*m)).ok_or(None)?;
    match wait_for_other(spec).checked_sub(obs.without_lease_for) {
        Some(left) if !left.is_zero() => Err(Some(left)),
        _ => Ok((only, true)),
    }
}

// Tested through `decide` (`cold_start_tests.rs`).
