//! The agent's Lease tasks: the lease loop, which performs what
//! [`renewal`](super::renewal) decides each tick (renew, release, read,
//! claim) and applies its verdict, and the watchdog, which fences at the
//! renew deadline whatever the loop is doing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tracing::{info, warn};

use super::{Agent, lease, renewal};
use crate::api::Role;

/// Renews (active) or watches for promotion (standby), every interval or
/// when the operator wakes it. What to ask and what the answer means come
/// from [`renewal`]; this loop performs the calls and applies the verdict.
pub(super) async fn lease_loop(agent: Arc<Agent>, api: Api<Lease>) {
    let name = agent.config.pair.clone();
    let realtime = agent.syncer.as_ref().map(|x| x.spec.realtime_interval_seconds);
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
            };
            (tick, (s.interval_seconds, s.missed_threshold))
        };
        let wait = Duration::from_secs(used.0 as u64);
        let duration = used.0 * used.1;
        let sent = Instant::now();
        let answer = match renewal::step(&tick) {
            renewal::Step::Renew { epoch } => {
                match tokio::time::timeout(wait, lease::renew(&api, &name, &agent.identity, epoch, duration)).await {
                    Ok(r) => renewal::Answer::from(r),
                    Err(_) => renewal::Answer::Unreachable("timed out".into()),
                }
            }
            renewal::Step::Release { epoch } => {
                release(&agent, &api, &name, epoch).await;
                renewal::Answer::Released
            }
            renewal::Step::Read => match tokio::time::timeout(wait, lease::read(&api, &name)).await {
                Ok(Ok(view)) => renewal::Answer::Read(view),
                Ok(Err(e)) => renewal::Answer::Unreachable(e.to_string()),
                Err(_) => renewal::Answer::Unreachable("reading the lease timed out".into()),
            },
        };
        if let renewal::Answer::Read(view) = &answer {
            // Named holder: no more promises to the active (see failsafe).
            let named = view.as_ref().filter(|v| v.holder.as_deref() == Some(agent.identity.as_str()));
            let other = view.as_ref().filter(|v| v.holder.is_some() && named.is_none()).map(|v| v.epoch);
            let mut s = agent.lock();
            s.named_at = named.map(|v| v.epoch);
            s.seen_other = s.seen_other.max(other);
            if let Some(v) = view {
                super::failsafe::observe_holder(&mut s, v, &agent.identity, Instant::now());
            }
        }
        let verdict = renewal::verdict(&tick, &agent.identity, &answer);
        apply_verdict(&agent, &api, &name, tick.epoch, verdict, used, sent).await;
        // A claim deferred to a moment sooner than the next tick is tried then.
        let claim_in = agent.lock().claim_at.map(|t| t.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(claim_in.map_or(wait, |c| c.min(wait))) => {}
            _ = agent.wake.notified() => {}
        }
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
        Verdict::ServeAgain(view) => {
            renewed(agent, used, view, sent);
            warn!(epoch, "handover did not happen: serving again");
            let mut s = agent.lock();
            s.draining_since = None;
            agent.set_role(&mut s, Role::Active, epoch);
        }
        Verdict::HandoverDone => {
            info!(epoch, "lease moved: handover complete");
            let mut s = agent.lock();
            s.draining_since = None;
            agent.publish_serving(&s);
        }
        Verdict::StandDown => {
            warn!(epoch, "lease lost: standing down");
            let mut s = agent.lock();
            agent.set_role(&mut s, Role::Standby, epoch);
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

fn renewed(agent: &Agent, used: (i32, i32), view: lease::LeaseView, sent: Instant) {
    let mut s = agent.lock();
    let changed = s.record_renewal(used, &view, sent);
    if s.role == Role::Active
        && let Err(e) = agent.files.refresh(s.deadline())
    {
        warn!(error = %e, "cannot move the role file's deadline");
    }
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
    match lease::renew(api, name, &agent.identity, epoch, used.0 * used.1).await {
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
        let mut s = agent.lock();
        let now = Instant::now();
        agent.metrics.failsafe_serving.set(i64::from(s.on_promise(now)));
        if s.role != Role::Active && s.draining_since.is_none() {
            continue;
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
}
