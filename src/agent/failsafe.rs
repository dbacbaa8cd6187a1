//! Serving through an API-server outage (the idea of Patroni's failsafe
//! mode, done with the pair's own mTLS link).
//!
//! An active whose renewals stop reaching the API server would fence one
//! interval before its Lease runs out, taking the service down for as long
//! as the API server is away, although nothing is wrong with the pair. So
//! when a renewal is overdue, the active asks its peer for a **promise**:
//! `POST /v1/failsafe?epoch=E&ms=D` — "I serve at epoch E; do not act as
//! active for D". A peer that grants it will not claim the role for D
//! counted from when the request *arrived*; the active counts the same D
//! from when it *sent* the request, so its extended deadline always ends
//! first. Without a grant the active fences exactly as before.
//!
//! Why no interleaving lets the standby serve while the active does:
//!
//! 1. The standby serves only after [`claim`](super::lease_task) proves it
//!    holds the Lease; a claim starts only when no promise is live, and it
//!    marks the member `claiming` under the same lock that grants promises.
//!    A grant racing a claim is either before the check (the claim waits for
//!    the promise to end) or after the mark (the grant is refused).
//! 2. A member that has read itself named holder refuses every promise, so
//!    once the operator moved the Lease to it, the active's promises stop
//!    being renewed and its deadline runs out before the last promise does.
//! 3. A member that serves, drains, or was active at a later epoch than the
//!    one asked for refuses too: a promise is only ever given by a member
//!    that is not acting as active, for a member no older than itself.
//! 4. The active extends only the epoch it was granted for, and only while
//!    it is still active at that epoch; the role file's deadline carries the
//!    extension, so the application's own check stays exact.
//!
//! The operator holds back an unconfirmed failover while the holder's
//! agent answers it as active at the Lease's epoch (it is inside its
//! deadline by the rule above); a failover that does happen meanwhile (the
//! operator could not reach the active) is safe by 1–2: the new holder
//! waits out the promise before it serves.
//!
//! A promise needs a margin to ask in: with `missedThreshold: 2` the fence
//! comes at the very moment the next renewal is due, so such pairs fence on
//! an outage as before.

use std::time::{Duration, Instant};

use hyper::Method;
use tracing::{info, warn};

use super::{Agent, State};
use crate::api::Role;

/// Why a member refused to promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This member acts as active, or is handing over.
    Serving,
    /// This member is proving it holds the Lease.
    Claiming,
    /// The Lease names this member holder at this epoch.
    Named(i64),
    /// This member was active at a later epoch than the one asked for.
    Stale { mine: i64 },
    /// A zero or negative duration.
    Empty,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Serving => f.write_str("this member serves"),
            Refusal::Claiming => f.write_str("this member is taking the role"),
            Refusal::Named(e) => write!(f, "the Lease names this member holder at epoch {e}"),
            Refusal::Stale { mine } => write!(f, "this member was active at the later epoch {mine}"),
            Refusal::Empty => f.write_str("nothing to promise"),
        }
    }
}

/// Grants (or refuses) a promise not to act as active, asked by a member
/// serving at `epoch` for `asked`; `now` is when the request arrived. The
/// grant is capped at the lease duration this member knows, so a peer
/// sending garbage cannot freeze it for long.
pub(super) fn grant(s: &mut State, epoch: i64, asked: Duration, now: Instant) -> Result<Duration, Refusal> {
    if s.shown_role(now) == Role::Active || s.draining_since.is_some() {
        return Err(Refusal::Serving);
    }
    if s.claiming {
        return Err(Refusal::Claiming);
    }
    if let Some(e) = s.named_at {
        return Err(Refusal::Named(e));
    }
    if epoch < s.epoch {
        return Err(Refusal::Stale { mine: s.epoch });
    }
    let cap = Duration::from_secs((s.interval_seconds.max(1) * s.missed_threshold.max(2)) as u64);
    let granted = asked.min(cap);
    if granted.is_zero() {
        return Err(Refusal::Empty);
    }
    let until = now + granted;
    s.promised_until = Some(s.promised_until.map_or(until, |t| t.max(until)));
    Ok(granted)
}

/// Whether this member may start proving it holds the Lease at `epoch`
/// now; if so it is marked `claiming`, and no promise is granted until it is
/// done. A promise lives in memory only, so an agent that has just started
/// cannot know what its previous incarnation (or the pod it replaces)
/// promised: it takes over an epoch that someone held before (`epoch > 1`)
/// only one lease duration after it started.
///
/// Nor before the previous holder's own fence deadline has passed, unless
/// that holder said it is not active (`peer_stood_down`): an operator that
/// moved the Lease and died before waking it, or a wake-up that did not
/// arrive, leaves it acting as active until its next renewal fails — and its
/// application may act until its deadline. A Lease that ran out unrenewed
/// is past that deadline already; a confirmed failure whose holder's agent
/// still answers costs one question to the peer.
pub(super) fn begin_claim(s: &mut State, now: Instant, epoch: i64) -> Result<(), Instant> {
    let hold = [s.promised_until, s.started_hold.filter(|_| epoch > 1), s.other_fenced_by].into_iter().flatten().max();
    match hold {
        Some(until) if until > now => Err(until),
        _ => {
            s.claiming = true;
            Ok(())
        }
    }
}

/// Notes a Lease read: a renewal by another holder not seen before moves the
/// moment that holder has surely fenced to `now` plus its fence delay (the
/// interval and threshold it published on the Lease). The renewal was sent
/// before it was written, and written before this read: its sender's
/// deadline ends no later than that.
///
/// Read named holder by a takeover, the Lease says which renewal of the
/// previous holder it replaced: if this agent read that very renewal, the
/// bound above stands; if not (the previous holder renewed between this
/// agent's reads, then the takeover came), the renewal was at least sent
/// before this read, so the bound is `now` plus the fence delay.
pub(super) fn observe_holder(s: &mut State, view: &crate::agent::lease::LeaseView, identity: &str, now: Instant) {
    let interval = view.interval_seconds.unwrap_or(s.published.0).max(1);
    let missed = view.missed_threshold.unwrap_or(s.published.1);
    let fence = Duration::from_secs(((missed - 1).max(1) * interval) as u64);
    let Some(holder) = view.holder.as_deref() else { return };
    if holder == identity {
        if s.named_checked != Some(view.epoch) {
            s.named_checked = Some(view.epoch);
            let read = s.other_renewal.as_ref().and_then(|(_, _, r)| r.as_ref());
            if view.replaced.is_some() && view.replaced.as_ref() != read {
                s.other_fenced_by = s.other_fenced_by.max(Some(now + fence));
            }
        }
        return;
    }
    let seen = (holder.to_string(), view.epoch, view.renewed.clone());
    if s.other_renewal.as_ref() == Some(&seen) {
        return;
    }
    s.other_fenced_by = Some(now + fence);
    s.other_renewal = Some(seen);
}

/// The peer answered that it is not active: nothing to wait for on its account.
pub(super) fn peer_stood_down(s: &mut State) {
    s.other_fenced_by = None;
}

/// Whether the active should ask its peer now: a renewal is overdue by
/// half an interval (at most a second), and the last promise, if any, is as
/// old. `None` when there is nothing to ask; else the epoch and duration.
pub(super) fn due(s: &State, now: Instant) -> Option<(i64, Duration)> {
    if s.role != Role::Active || s.draining_since.is_some() || s.published.1 < 3 {
        return None;
    }
    let interval = Duration::from_secs(s.published.0.max(1) as u64);
    let overdue = interval + (interval / 2).min(Duration::from_secs(1));
    let last = s.last_renew?;
    let asked = s.confirmed.filter(|c| c.epoch == s.epoch).map(|c| c.sent);
    let evidence = asked.map_or(last, |a| a.max(last));
    (now.saturating_duration_since(evidence) >= overdue).then(|| (s.epoch, s.fence_after()))
}

/// A peer's promise for this member's service at `epoch`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Confirmed {
    pub epoch: i64,
    /// When the request left.
    pub sent: Instant,
    /// The end of the promise on this member's clock: `sent` plus the grant.
    pub until: Instant,
}

/// Asks the peer for promises while the renewals fail, every tenth of a
/// second checking whether one is due.
pub(super) async fn failsafe_loop(agent: std::sync::Arc<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let (ask, interval) = {
            let s = agent.lock();
            (due(&s, Instant::now()), Duration::from_secs(s.published.0.max(1) as u64))
        };
        let Some((epoch, want)) = ask else { continue };
        let Some(peer) = agent.peer_target() else { continue };
        let sent = Instant::now();
        // Mark the ask before the answer, so a slow peer is asked once a
        // round; the promise already held stays as long as it was.
        {
            let mut s = agent.lock();
            let until = s.confirmed.filter(|c| c.epoch == epoch).map_or(sent, |c| c.until);
            s.confirmed = Some(Confirmed { epoch, sent, until });
        }
        let path = format!("/v1/failsafe?epoch={epoch}&ms={}", want.as_millis());
        let timeout = (interval / 2).min(Duration::from_secs(1));
        let answer = crate::http::call(&peer, Method::POST, &path, timeout).await;
        let granted = match &answer {
            Ok(body) => std::str::from_utf8(body).ok().and_then(|b| b.trim().parse::<u64>().ok()),
            Err(_) => None,
        };
        let mut s = agent.lock();
        match (answer, granted) {
            (Ok(_), Some(ms)) if s.role == Role::Active && s.epoch == epoch => {
                let was = s.on_promise(Instant::now());
                let held = s.confirmed.filter(|c| c.epoch == epoch).map_or(sent, |c| c.until);
                let until = held.max(sent + Duration::from_millis(ms).min(want));
                s.confirmed = Some(Confirmed { epoch, sent, until });
                agent.metrics.failsafe_requests.with_label_values(&["granted"]).inc();
                if !was && s.on_promise(Instant::now()) {
                    info!(epoch, "the API server does not answer: serving on the peer's promise");
                }
                agent.refresh_deadline(&mut s);
            }
            (Ok(body), None) => {
                warn!(epoch, answer = %String::from_utf8_lossy(&body), "the peer answered a promise with garbage");
                agent.metrics.failsafe_requests.with_label_values(&["refused"]).inc();
            }
            (Err(crate::http::CallError::Status(code)), _) => {
                warn!(epoch, %code, "the peer refused to promise");
                agent.metrics.failsafe_requests.with_label_values(&["refused"]).inc();
            }
            (Err(e), _) => {
                warn!(epoch, error = %e, "the peer cannot be asked for a promise");
                agent.metrics.failsafe_requests.with_label_values(&["unreachable"]).inc();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby() -> State {
        let mut s = super::super::tests::state();
        s.role = Role::Standby;
        s.epoch = 3;
        s
    }

    #[test]
    fn only_a_member_that_does_not_serve_and_is_not_named_promises() {
        let now = Instant::now();
        let asked = Duration::from_secs(2);
        type Set = fn(&mut State);
        let cases: [(&str, Set, i64, Result<Duration, Refusal>); 8] = [
            ("standby", |_| {}, 3, Ok(asked)),
            ("standby, newer asker", |_| {}, 7, Ok(asked)),
            ("fenced", |s| s.role = Role::Fenced, 3, Ok(asked)),
            ("active", |s| s.role = Role::Active, 3, Err(Refusal::Serving)),
            ("draining", |s| s.draining_since = Some(Instant::now()), 3, Err(Refusal::Serving)),
            ("claiming", |s| s.claiming = true, 3, Err(Refusal::Claiming)),
            ("named", |s| s.named_at = Some(4), 3, Err(Refusal::Named(4))),
            ("asker older", |_| {}, 2, Err(Refusal::Stale { mine: 3 })),
        ];
        for (what, set, epoch, want) in cases {
            let mut s = standby();
            set(&mut s);
            assert_eq!(grant(&mut s, epoch, asked, now), want, "{what}");
            assert_eq!(s.promised_until.is_some(), want.is_ok(), "{what}: promised only when granted");
        }
    }

    #[test]
    fn a_promise_is_capped_at_the_lease_and_never_shortened() {
        let now = Instant::now();
        let mut s = standby();
        // 1 s x 3: a garbage hour is cut to the 3 s lease.
        assert_eq!(grant(&mut s, 3, Duration::from_secs(3600), now), Ok(Duration::from_secs(3)));
        assert_eq!(grant(&mut s, 3, Duration::ZERO, now), Err(Refusal::Empty));
        // A shorter promise after a longer one does not shorten it.
        assert_eq!(grant(&mut s, 3, Duration::from_secs(1), now), Ok(Duration::from_secs(1)));
        assert_eq!(s.promised_until, Some(now + Duration::from_secs(3)));
    }

    #[test]
    fn a_claim_waits_out_a_live_promise_and_a_claim_under_way_refuses_promises() {
        let now = Instant::now();
        let mut s = standby();
        grant(&mut s, 3, Duration::from_secs(2), now).unwrap();
        assert_eq!(begin_claim(&mut s, now + Duration::from_secs(1), 4), Err(now + Duration::from_secs(2)));
        assert!(!s.claiming);
        assert_eq!(begin_claim(&mut s, now + Duration::from_secs(2), 4), Ok(()));
        assert!(s.claiming);
        assert_eq!(grant(&mut s, 3, Duration::from_secs(2), now), Err(Refusal::Claiming));
    }

    #[test]
    fn a_freshly_started_agent_takes_over_only_after_a_lease_but_bootstraps_at_once() {
        // It may have promised in a former life: wait a lease out, unless
        // nobody ever held the role (epoch 1).
        let now = Instant::now();
        let mut s = standby();
        s.started_hold = Some(now + Duration::from_secs(3));
        assert_eq!(begin_claim(&mut s, now, 1), Ok(()));
        s.claiming = false;
        assert_eq!(begin_claim(&mut s, now, 2), Err(now + Duration::from_secs(3)));
        assert_eq!(begin_claim(&mut s, now + Duration::from_secs(3), 2), Ok(()));
    }

    #[test]
    fn the_active_asks_only_once_a_renewal_is_overdue_and_only_at_its_epoch() {
        let t0 = Instant::now();
        let mut s = super::super::tests::state(); // active at 1, 1 s x 3
        s.last_renew = Some(t0);
        assert_eq!(due(&s, t0 + Duration::from_millis(1400)), None, "a renewal every interval is not overdue");
        assert_eq!(due(&s, t0 + Duration::from_millis(1500)), Some((1, Duration::from_secs(2))));
        // Asked at 1.5 s: not again until that ask is as old.
        let sent = t0 + Duration::from_millis(1500);
        s.confirmed = Some(Confirmed { epoch: 1, sent, until: sent + Duration::from_secs(2) });
        assert_eq!(due(&s, t0 + Duration::from_millis(2900)), None);
        assert!(due(&s, t0 + Duration::from_millis(3000)).is_some());
        // A promise for another epoch does not count.
        s.confirmed = Some(Confirmed { epoch: 0, sent, until: sent + Duration::from_secs(2) });
        assert!(due(&s, t0 + Duration::from_millis(1600)).is_some());
        // Not active, draining, or no margin to ask in (missed 2): nothing.
        for set in [
            (|s: &mut State| s.role = Role::Fenced) as fn(&mut State),
            |s| s.draining_since = Some(Instant::now()),
            |s| s.published = (1, 2),
        ] {
            let mut s = super::super::tests::state();
            s.last_renew = Some(t0);
            set(&mut s);
            assert_eq!(due(&s, t0 + Duration::from_secs(5)), None);
        }
    }

    fn read(holder: &str, epoch: i64, renewed: &str, replaced: Option<&str>) -> crate::agent::lease::LeaseView {
        crate::agent::lease::LeaseView {
            holder: Some(holder.into()),
            epoch,
            interval_seconds: Some(1),
            missed_threshold: Some(3),
            renewed: Some(renewed.into()),
            replaced: replaced.map(str::to_string),
            drain_mark: None,
            annotated: true,
            resource_version: None,
        }
    }

    #[test]
    fn a_claim_waits_until_the_previous_holder_has_surely_fenced_unless_it_said_it_stood_down() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let me = "secondary/uid-2";
        // Read at 0 ms: the primary renewed (r1). Its deadline is 2 s past its
        // send, which was before this read.
        let mut s = standby();
        observe_holder(&mut s, &read("primary/uid-1", 3, "r1", None), me, at(0));
        assert_eq!(s.other_fenced_by, Some(at(2000)));
        // The same renewal read again does not move the bound.
        observe_holder(&mut s, &read("primary/uid-1", 3, "r1", None), me, at(1000));
        assert_eq!(s.other_fenced_by, Some(at(2000)));
        // Named at 1,200 ms by a takeover that replaced r1, which this agent
        // read: the bound stands; a claim waits until then.
        observe_holder(&mut s, &read(me, 4, "t", Some("r1")), me, at(1200));
        assert_eq!(begin_claim(&mut s, at(1200), 4), Err(at(2000)));
        assert_eq!(begin_claim(&mut s, at(2000), 4), Ok(()));

        // The primary renewed (r2) between this agent's reads, then the
        // takeover came: r2 was sent before this read at 1,500 ms at least.
        let mut s = standby();
        observe_holder(&mut s, &read("primary/uid-1", 3, "r1", None), me, at(0));
        observe_holder(&mut s, &read(me, 4, "t", Some("r2")), me, at(1500));
        assert_eq!(begin_claim(&mut s, at(2100), 4), Err(at(3500)));
        // Judged once per naming: later reads of it change nothing.
        observe_holder(&mut s, &read(me, 4, "t2", Some("r2")), me, at(3000));
        assert_eq!(s.other_fenced_by, Some(at(3500)));
        // The peer answered that it is not active: no wait.
        peer_stood_down(&mut s);
        assert_eq!(begin_claim(&mut s, at(2100), 4), Ok(()));

        // A Lease that ran out unrenewed: the last renewal read is long past
        // its fence, and a claim goes at once.
        let mut s = standby();
        observe_holder(&mut s, &read("primary/uid-1", 3, "r1", None), me, at(0));
        observe_holder(&mut s, &read(me, 4, "t", Some("r1")), me, at(3100));
        assert_eq!(begin_claim(&mut s, at(3100), 4), Ok(()));
        // A Lease recreated without a record of what it replaced adds no wait.
        let mut s = standby();
        observe_holder(&mut s, &read(me, 5, "t", None), me, at(0));
        assert_eq!(s.other_fenced_by, None);
    }
}
