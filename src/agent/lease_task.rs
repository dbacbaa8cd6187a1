//! The agent's Lease tasks: the lease loop, which performs what
//! [`renewal`](super::renewal) decides each tick (renew, release, read,
//! claim) and applies its verdict, and the watchdog, which fences at the
//! renew deadline whatever the loop is doing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tracing::{info, warn};

use super::{Agent, lease, renewal, role_word};
use crate::api::Role;

/// Runs an API call in a task of its own and waits for it at most `wait`;
/// `None` if it takes longer. A late call is left to finish (for at most
/// `linger`) instead of being dropped: dropping an HTTP/1.1 request mid-way
/// closes its connection, and when the API server answers slowly rather than
/// not at all, every later call would pay a new TLS handshake on top of the
/// delay and time out too — measured: answers held 0.6–0.9 s made every
/// renewal of a 1 s interval time out. Left to finish, the connection goes
/// back to the pool warm and the next call fits. The late result is not
/// used: the loop already acted on the timeout, and a renewal the server
/// applied late only keeps others waiting longer (its `test` operations let
/// it apply only while this member still holds the Lease at that epoch).
async fn bounded<T: Send + 'static>(
    wait: Duration,
    linger: Duration,
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let mut task = tokio::spawn(tokio::time::timeout(linger, call));
    match tokio::time::timeout(wait, &mut task).await {
        Ok(Ok(Ok(v))) => Some(v),
        Ok(_) => None,
        Err(_) => None,
    }
}

/// Renews (active) or watches for promotion (standby), every interval or
/// when the operator wakes it. What to ask and what the answer means come
/// from [`renewal`]; this loop performs the calls and applies the verdict.
pub(super) async fn lease_loop(agent: Arc<Agent>, api: Api<Lease>) {
    let name = agent.config.pair.clone();
    let realtime = agent.syncer.as_ref().map(|x| x.spec.realtime_interval_seconds);
    // Whether this tick was woken rather than due: a woken one reads the
    // Lease even while the watch delivers it, unless the watched view names
    // this member (`lease_watch::fresh`). The first reads too.
    let mut woken = true;
    loop {
        let (tick, used) = {
            let s = agent.lock();
            let hold = crate::proto::handover_hold(s.interval_seconds, s.missed_threshold, realtime);
            let tick = renewal::Tick {
                role: s.role,
                epoch: s.epoch,
                healthy: s.app_healthy(),
                draining_for: s.draining_since.map(|t| t.elapsed()),
                handover_hold: hold,
                seen_other: s.seen_other,
                drain_mark: s.lease_mark.clone(),
                annotated: s.lease_annotated,
            };
            (tick, (s.interval_seconds, s.missed_threshold))
        };
        let wait = Duration::from_secs(used.0 as u64);
        let duration = used.0 * used.1;
        let sent = Instant::now();
        let answer = match renewal::step(&tick) {
            renewal::Step::Renew { epoch, mark } => {
                let (api, name, identity) = (api.clone(), name.clone(), agent.identity.clone());
                let call = async move { lease::renew(&api, &name, &identity, epoch, duration, &mark).await };
                match bounded(wait, Duration::from_secs(duration as u64), call).await {
                    Some(r) => renewal::Answer::from(r),
                    None => renewal::Answer::Unreachable("timed out".into()),
                }
            }
            renewal::Step::Release { epoch } => {
                release(&agent, &api, &name, epoch).await;
                renewal::Answer::Released
            }
            renewal::Step::Read => {
                // The lock is let go before the read below takes it again.
                let watched = super::lease_watch::fresh(&agent.lock(), woken, sent);
                read_or_watched(&agent, &api, &name, watched, wait, duration).await
            }
        };
        let verdict = renewal::verdict(&tick, &agent.identity, &answer);
        apply_verdict(&agent, &api, &name, tick.epoch, verdict, used, sent).await;
        // A claim deferred to a moment sooner than the next tick is tried then.
        let claim_in = agent.lock().claim_at.map(|t| t.saturating_duration_since(Instant::now()));
        woken = tokio::select! {
            _ = tokio::time::sleep(claim_in.map_or(wait, |c| c.min(wait))) => false,
            _ = agent.wake.notified() => true,
        };
    }
}

/// Takes what a read (or the watch, [`super::lease_watch`]) showed of the
/// Lease at `now`: whether this member is named holder (no more promises
/// to the active, see failsafe), the highest epoch another held, the drain
/// mark, and the holder's latest renewal, which bounds when it fences.
pub(super) fn take_read(agent: &Agent, s: &mut super::State, view: Option<&lease::LeaseView>, now: Instant) {
    let named = view.filter(|v| v.holder.as_deref() == Some(agent.identity.as_str()));
    let other = view.filter(|v| v.holder.is_some() && named.is_none()).map(|v| v.epoch);
    s.named_at = named.map(|v| v.epoch);
    s.seen_other = s.seen_other.max(other);
    s.lease_epoch_read = view.map_or(0, |v| v.epoch);
    s.lease_version = other.and(view).and_then(|v| v.resource_version.clone());
    if let Some(v) = view {
        s.note_lease(v);
        super::failsafe::observe_holder(s, v, &agent.identity, now);
    }
}

/// The Lease as a tick that must know it sees it: what the watch delivered
/// (already taken, see `lease_watch::publish`), or else a read, taken here.
async fn read_or_watched(
    agent: &Arc<Agent>,
    api: &Api<Lease>,
    name: &str,
    watched: Option<lease::LeaseView>,
    wait: Duration,
    duration: i32,
) -> renewal::Answer {
    if let Some(view) = watched {
        return renewal::Answer::Read(Some(view));
    }
    agent.metrics.lease_views.with_label_values(&["read"]).inc();
    agent.lock().last_read = Some(Instant::now());
    let (api, name) = (api.clone(), name.to_string());
    let call = async move { lease::read(&api, &name).await };
    match bounded(wait, Duration::from_secs(duration as u64), call).await {
        Some(Ok(view)) => {
            take_read(agent, &mut agent.lock(), view.as_ref(), Instant::now());
            renewal::Answer::Read(view)
        }
        Some(Err(e)) => renewal::Answer::Unreachable(e.to_string()),
        None => renewal::Answer::Unreachable("reading the lease timed out".into()),
    }
}

/// Makes a verdict of the lease loop true; `epoch` is the tick's, `sent`
/// when its request left.
async fn apply_verdict(
    agent: &Agent,
    api: &Api<Lease>,
    name: &str,
    epoch: i64,
    verdict: renewal::Verdict,
    used: (i32, i32),
    sent: Instant,
) {
    use renewal::Verdict;
    match verdict {
        Verdict::Keep(view) => renewed(agent, used, view, sent),
        Verdict::ServeAgain(view) => serve_again(agent, used, view, sent, epoch),
        Verdict::HandoverDone => {
            info!(epoch, "lease moved: handover complete");
            let mut s = agent.lock();
            s.draining_since = None;
            agent.publish_serving(&s);
        }
        Verdict::StandDown => {
            warn!(epoch, "lease lost: standing down");
            {
                let mut s = agent.lock();
                agent.set_role(&mut s, Role::Standby, epoch);
            }
            // The new holder, woken by the operator at the same moment as
            // this member, may have asked a moment ago whether this member
            // still served and heard yes: it would wait a whole interval to
            // ask again. Tell it to ask now.
            if let Some(peer) = agent.peer_target() {
                tokio::spawn(async move {
                    let _ = crate::http::call(&peer, hyper::Method::POST, "/v1/wake", Duration::from_secs(1)).await;
                });
            }
        }
        Verdict::RenewFailed(why) => renew_failed(agent, &why),
        Verdict::Unread(why) => warn!(%why, "cannot read the lease"),
        Verdict::Unfence => {
            let mut s = agent.lock();
            if s.role == Role::Fenced {
                let epoch = s.epoch;
                agent.set_role(&mut s, Role::Standby, epoch);
            }
        }
        Verdict::GiveBack { epoch } => {
            // Made holder while the application is failing: give it straight back.
            release(agent, api, name, epoch).await;
        }
        Verdict::Claim { epoch } => claim(agent, api, name, epoch, used).await,
        Verdict::Nothing => {}
    }
}

/// The drain's hold ran out and the renewal that cleared the drain mark
/// succeeded: serve again, and say so (the operator does not drain this
/// member again for the same request).
pub(super) fn serve_again(agent: &Agent, used: (i32, i32), view: lease::LeaseView, sent: Instant, epoch: i64) {
    renewed(agent, used, view, sent);
    warn!(epoch, "handover did not happen: serving again");
    let mut s = agent.lock();
    s.draining_since = None;
    s.gave_up = Some((epoch, Instant::now()));
    agent.set_role(&mut s, Role::Active, epoch);
}

fn renewed(agent: &Agent, used: (i32, i32), view: lease::LeaseView, sent: Instant) {
    let mut s = agent.lock();
    s.note_lease(&view);
    let changed = s.record_renewal(used, &view, sent);
    agent.refresh_deadline(&mut s);
    drop(s);
    if changed {
        // New heartbeat settings: publish their lease duration right away.
        agent.wake.notify_one();
    }
}

fn renew_failed(agent: &Agent, why: &str) {
    warn!(%why, "lease renewal failed");
    agent.lock().renew_failures += 1;
    agent.metrics.lease_renew_failures.inc();
}

/// Named holder at `epoch`: no file may arrive from the old active once
/// this member serves, so pulling stops first; a successful renewal at that
/// epoch proves the holding before the member acts on it.
async fn claim(agent: &Agent, api: &Api<Lease>, name: &str, epoch: i64, used: (i32, i32)) {
    let waiting_on_holder = agent.lock().other_fenced_by.is_some_and(|t| t > Instant::now());
    if waiting_on_holder && peer_not_active(agent, used.0).await {
        super::failsafe::peer_stood_down(&mut agent.lock());
    }
    // The lock is released before the branch takes it again.
    let claimable = super::failsafe::begin_claim(&mut agent.lock(), Instant::now(), epoch);
    if let Err(until) = claimable {
        // The old active may still serve: on this member's promise, or
        // until its own fence deadline.
        let left = until.saturating_duration_since(Instant::now());
        info!(epoch, ?left, "named holder: waiting until the old active cannot be serving");
        agent.lock().claim_at = Some(until);
        return;
    }
    agent.lock().claim_at = None;
    claim_now(agent, api, name, epoch, used).await;
    agent.lock().claiming = false;
}

/// Whether the peer answers, over the pair's mTLS link, that it is not
/// active (it stood down, or never was); `false` when it cannot be asked.
async fn peer_not_active(agent: &Agent, interval: i32) -> bool {
    let Some(peer) = agent.peer_target() else { return false };
    let timeout = (Duration::from_secs(interval.max(1) as u64) / 4).min(Duration::from_millis(500));
    match crate::http::get_json::<crate::proto::AgentStatus>(&peer, "/v1/status", timeout).await {
        Ok(status) => status.role != Role::Active,
        Err(_) => false,
    }
}

async fn claim_now(agent: &Agent, api: &Api<Lease>, name: &str, epoch: i64, used: (i32, i32)) {
    if let Some(syncer) = &agent.syncer {
        syncer.stop_pulling().await;
    }
    let sent = Instant::now();
    // A serving member leaves no drain mark: one a former life of this
    // agent wrote (it restarted mid-drain) goes in the claiming renewal.
    let mark = renewal::clear_mark(agent.lock().lease_mark.as_deref());
    match lease::renew(api, name, &agent.identity, epoch, used.0 * used.1, &mark).await {
        Ok(view) => {
            let epoch = view.epoch;
            renewed(agent, used, view, sent);
            let mut s = agent.lock();
            s.released = None;
            agent.set_role(&mut s, Role::Active, epoch);
        }
        Err(e) => warn!(error = %e, "promotion renew failed; staying standby"),
    }
    if let Some(syncer) = &agent.syncer {
        syncer.resume();
    }
}

async fn release(agent: &Agent, api: &Api<Lease>, name: &str, epoch: i64) {
    let reason = "AppHealthCheckFailed";
    {
        let mut s = agent.lock();
        agent.set_role(&mut s, Role::Standby, epoch);
        s.released = Some(reason.to_string());
    }
    match lease::release(api, name, &agent.identity, epoch, reason).await {
        Ok(()) => info!(epoch, "released the lease: application failed its health check"),
        Err(e) => warn!(error = %e, "could not release the lease; it will expire"),
    }
}

/// Fences the member at its renew deadline, whatever the API server does.
pub(super) async fn watchdog(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        watchdog_tick(&agent, Instant::now());
    }
}

/// One watchdog pass: retries role files that could not be written, and
/// fences an active member whose deadline passed.
pub(super) fn watchdog_tick(agent: &Agent, now: Instant) {
    let mut s = agent.lock();
    agent.metrics.failsafe_serving.set(i64::from(s.on_promise(now)));
    if s.files.stale && agent.write_files(&mut s) {
        info!(role = role_word(s.role), epoch = s.epoch, "role files written after earlier failures");
    }
    if s.files.active_until.is_some_and(|t| t <= now) {
        // Their deadline passed: the application no longer acts on them.
        s.files.active_until = None;
    }
    if s.role != Role::Active && s.draining_since.is_none() {
        return;
    }
    let overdue = s.fence_at().is_none_or(|t| now >= t);
    if overdue {
        let epoch = s.epoch;
        s.draining_since = None;
        warn!(epoch, "no lease renewal within the deadline: fencing");
        agent.set_role(&mut s, Role::Fenced, epoch);
        agent.metrics.fenced_total.inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const WAIT: Duration = Duration::from_millis(100);
    const LINGER: Duration = Duration::from_millis(400);

    fn call(takes: Duration, done: &Arc<AtomicBool>) -> impl std::future::Future<Output = u8> + Send + 'static {
        let flag = done.clone();
        async move {
            tokio::time::sleep(takes).await;
            flag.store(true, Ordering::SeqCst);
            7
        }
    }

    #[tokio::test]
    async fn a_late_call_times_out_but_is_left_to_finish_and_a_prompt_one_answers() {
        let done = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        assert_eq!(bounded(WAIT, LINGER, call(Duration::from_millis(200), &done)).await, None);
        assert!(started.elapsed() < Duration::from_millis(190), "the caller waits `wait`, no more");
        // Dropped, the call would never finish (its connection closed with it).
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(done.load(Ordering::SeqCst), "the late call ran to its end");
        let prompt = Arc::new(AtomicBool::new(false));
        assert_eq!(bounded(WAIT, LINGER, call(Duration::from_millis(10), &prompt)).await, Some(7));
    }

    #[tokio::test]
    async fn a_call_that_outlives_the_linger_is_dropped() {
        let done = Arc::new(AtomicBool::new(false));
        assert_eq!(bounded(WAIT, LINGER, call(Duration::from_millis(700), &done)).await, None);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!done.load(Ordering::SeqCst), "no call outlives the linger");
    }
}
