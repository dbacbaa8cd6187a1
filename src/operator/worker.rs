//! One pair's worker: gather → decide → act, again and again, plus the
//! agent poller that feeds `gather`. It orders the steps and keeps the
//! worker's memory; it writes nothing itself (`act` does).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tokio::sync::Notify;
use tracing::{Instrument, debug, info_span, warn};

use super::act;
use super::context::Context;
use super::decide::decide;
use super::gather::{Memory, gather};
use super::model::RoundInputs;
use super::poller::{PollState, poll_member};
use crate::api::{HighAvailabilityPair, Member};
use crate::tls;

pub async fn run(ctx: Arc<Context>, ns: String, name: String, notify: Arc<Notify>) {
    let span = info_span!("pair", namespace = %ns, pair = %name);
    async {
        let poll = Arc::new(Mutex::new(PollState::default()));
        let mut poller: Option<tokio::task::JoinHandle<()>> = None;
        let mut client_tls: Option<Arc<rustls::ClientConfig>> = None;
        let mut mem = Memory::default();
        let mut failing = Failing::default();
        let mut told_invalid: Option<String> = None;
        while let Some(stored) = ctx.pair(&ns, &name) {
            let pair = match &stored.0 {
                Ok(p) => {
                    told_invalid = None;
                    p
                }
                Err(bad) => {
                    // Nothing is decided on a spec that cannot be read: the
                    // agents keep renewing and fencing on their own, and the
                    // pair waits here until its object is fixed.
                    act::report_invalid(&ctx, bad, &mut told_invalid).await;
                    notify.notified().await;
                    continue;
                }
            };
            ctx.metrics.invalid.with_label_values(&[&ns, &name]).set(0);
            if pair.metadata.deletion_timestamp.is_some() {
                break;
            }
            let started = Instant::now();
            ctx.metrics.reconciles.with_label_values(&[&ns, &name]).inc();
            let recheck = match round(&ctx, pair, &poll, &mut poller, &mut client_tls, &mut mem, &notify).await {
                Ok(r) => {
                    failing = Failing::default();
                    r
                }
                Err(e) => {
                    warn!(error = %e, "reconcile failed");
                    ctx.metrics.reconcile_errors.with_label_values(&[&ns, &name, e.metric_label()]).inc();
                    let conflict = e.metric_label() == "conflict";
                    if let Some(note) = failing.failed(&e.to_string(), conflict) {
                        act::warn(&ctx, pair, "ReconcileFailed", note).await;
                    }
                    failing.backoff(conflict)
                }
            };
            ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(recheck) => {}
            }
        }
        if let Some(p) = poller {
            p.abort();
        }
        debug!("pair gone; worker stops");
    }
    .instrument(span)
    .await
}

/// Whether a member's agent has not answered this worker yet although its
/// pod runs: it was asked, but its silence is not yet a silence by the
/// heartbeat rule (`missedThreshold` polls). A new leader of 1,000 pairs
/// opens 2,000 heartbeat connections at once, and on a busy machine a first
/// answer can miss the poll's timeout; taken as it was, the pair's first
/// round would report that member `Unknown`, relabel an active pod
/// `standby` and write the status, then write it all back a poll later.
/// Waiting costs nothing the rules would give: an agent that never answers
/// is silent after the same polls either way, a member whose pod or
/// application the kubelet reports down is not waited for, and an
/// unconfirmed failover needs a lease duration observed anyway. Only in a
/// worker's first `missedThreshold` polling rounds: a member pod made later
/// (its predecessor's answers forgotten) is decided on as before.
fn unheard(pair: &HighAvailabilityPair, obs: &super::observe::Observed, rounds: u64) -> bool {
    let threshold = pair.spec.heartbeat.missed_threshold.max(1) as u32;
    rounds <= u64::from(threshold)
        && Member::BOTH.into_iter().any(|m| {
            let o = obs.member(m);
            o.agent.last.is_none()
                && o.agent.missed < threshold
                && super::model::usable(o, threshold) == super::model::Usable::AgentSilent
        })
}

/// Whether a worker that has not read its pair's TLS Secret yet takes its
/// turn ahead of the others: the caches already show the Lease holder
/// failed for sure (its pod gone or being deleted, its application
/// container terminated, the Lease released). A new leader of 1,000 pairs
/// reads their Secrets 16 at a time, about 40 s in all here; a pair whose
/// active died with the old leader waited its place in that queue before
/// its failover could even be decided (`make bench-scale`: the peer
/// serving 9–11 s after the kills). The urgent ones have turns of their
/// own, as many, so even a node's worth of them stays bounded.
fn looks_first(obs: &super::observe::Observed) -> bool {
    super::failover::holder_failure(obs).is_some_and(|f| f.confirmed)
}

#[allow(clippy::too_many_arguments)]
async fn round(
    ctx: &Arc<Context>,
    pair: &HighAvailabilityPair,
    poll: &Arc<Mutex<PollState>>,
    poller: &mut Option<tokio::task::JoinHandle<()>>,
    client_tls: &mut Option<Arc<rustls::ClientConfig>>,
    mem: &mut Memory,
    notify: &Arc<Notify>,
) -> Result<Duration, act::ActError> {
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    if client_tls.is_none() {
        // On a scratch memory: the worker's own starts counting how long
        // the Lease has gone unchanged at its first real look, not before
        // a wait in the queue (an unconfirmed failover counts from there).
        let urgent = looks_first(&gather(ctx, pair, poll, &mut Memory::default()));
        let _turn = if urgent { ctx.urgent_looks.acquire().await } else { ctx.first_looks.acquire().await };
        *client_tls = Some(super::certificates::load(ctx, pair, mem).await?);
    }
    // Before anything waits on the agents: with expired certificates they
    // cannot be asked until these are renewed.
    let renew_in = super::certificates::renew_when_due(ctx, pair, mem).await?;
    if poller.is_none()
        && let Some(tls) = client_tls.clone()
    {
        *poller =
            Some(tokio::spawn(poll_loop(ctx.clone(), ns.clone(), name.clone(), poll.clone(), tls, notify.clone())));
    }
    // Decide nothing before both agents have been asked at least once: a
    // fresh worker (or a new leader) must not act on half a picture.
    let rounds = poll.lock().unwrap_or_else(|p| p.into_inner()).rounds;
    let mut obs = gather(ctx, pair, poll, mem);
    let addressed = |m: Member| obs.member(m).pod.as_ref().is_some_and(|p| p.ip.is_some());
    if (addressed(Member::Primary) || addressed(Member::Secondary)) && (rounds == 0 || unheard(pair, &obs, rounds)) {
        return Ok(Duration::from_millis(200));
    }
    let rotate_in = super::certificates::rotate(ctx, pair, mem, &obs).await?;
    (obs.certificates, obs.rotation) = (mem.certificates, mem.rotation.clone());
    let holder = obs.lease.as_ref().and_then(|l| l.holder.as_ref().map(|(m, _)| *m));
    // Again with a new spec, every five minutes, and at once when the watch
    // shows one of them changed by hand (compared only when their versions
    // moved since they last matched).
    let versions = super::drift::versions(ctx, pair);
    let period = supporting_period(&ns, &name);
    let new_pair = obs.lease.is_none() && mem.status.as_ref().or(pair.status.as_ref()).is_none_or(|s| s.epoch == 0);
    if mem.supporting.is_none()
        && !new_pair
        && !super::claims::drifted(ctx, pair)
        && !super::drift::supporting_drifted(ctx, pair)
    {
        // A new worker for a running pair (a new leader, a restart) whose
        // agent Role, RoleBinding, NetworkPolicy and claims the watch
        // caches show as built: its pass is counted as made at a moment
        // spread over the last period, so it next comes due within one
        // period, not at once. A new leader of 1,000 pairs otherwise ran
        // 1,000 passes (six requests each) in its first minute, on an API
        // server also serving its own renewal. What the caches cannot
        // show (the ServiceAccount, a slice someone made without the
        // pair's label) is looked at when the pass comes due.
        mem.supporting = Some((pair.metadata.generation, first_pass_origin(&ns, &name, period)));
    }
    let recent = mem.supporting.is_some_and(|(g, t)| g == pair.metadata.generation && t.elapsed() < period);
    let fresh = recent
        && !super::claims::drifted(ctx, pair)
        && (mem.supporting_matched.as_ref() == Some(&versions) || !super::drift::supporting_drifted(ctx, pair));
    // Bounded across pairs (see `context::SUPPORTING_AT_ONCE`). A pair that
    // has never had a Lease has no failover to decide and nothing to do
    // before its supporting objects exist: it waits its turn, first come
    // first served, among at most `NEW_PAIRS_AT_ONCE` slots. Any other pair
    // never waits (its decision comes first) and tries again shortly.
    let slot = if fresh { None } else { ctx.supporting_passes.take(new_pair).await };
    if new_pair && slot.is_some() && !unchanged_while_queued(pair, ctx.pair(&ns, &name).as_deref()) {
        // The wait can last minutes in a creation burst: a pair deleted or
        // changed meanwhile is looked at afresh, not acted on as it was.
        return Ok(Duration::ZERO);
    }
    let deferred = !fresh && slot.is_none();
    if fresh {
        mem.supporting_matched = Some(versions);
    } else if deferred {
        debug!("supporting objects: another pass's turn; again shortly");
    } else {
        act::ensure_supporting(ctx, pair).await?;
        super::claims::ensure(ctx, pair).await?;
        // A slice someone made by hand for the pair's Service without the
        // pair's label is outside the watch: looked for on the same rhythm.
        super::routing::sweep_pair_slices(ctx, pair).await?;
        super::certificates::reload(ctx, pair, mem).await?;
        mem.supporting = Some((pair.metadata.generation, Instant::now()));
        mem.supporting_matched = None;
    }
    // A new pair keeps its turn for the whole round: its pods, Service and
    // status are created in it too, and each of those is as costly to the
    // API server as the pass. A Service's creation allocates its cluster IP
    // (an IPAddress object, and the allocator's shared range besides), and
    // at 1,000 pairs created at once, several hundred creations in flight
    // took 26 s each on average (`make bench-scale`), many past the API
    // server's timeout (their addresses then released and repaired), and
    // the operator's own leader renewal starved behind them. Running pairs
    // give their slot back at once: their decision must not wait.
    let _turn = slot.filter(|_| new_pair);
    tell_pruned(ctx, pair, &obs, mem).await;
    super::claims::replace_lost(ctx, pair, &obs, holder).await?;
    let current = mem.status.clone().or_else(|| pair.status.clone());
    let stopped = current.as_ref().and_then(|s| {
        let removed = s.removed_member.filter(|_| pair.spec.standby == crate::api::StandbyPresence::Removed);
        removed
            .map(|m| (m, "removed by spec.standby"))
            .or(s.isolated_member.map(|m| (m, "isolated after a split brain")))
    });
    act::ensure_members(ctx, pair, &obs, holder, stopped).await?;
    let inputs = RoundInputs { pair: name.clone(), now: chrono::Utc::now(), generation: pair.metadata.generation };
    let decision = decide(&pair.spec, current.as_ref(), &obs, &inputs);
    mem.failure = match (&decision.failure, mem.failure.take()) {
        (Some(reason), Some((r, t))) if *reason == r => Some((r, t)),
        (Some(reason), _) => Some((reason.clone(), Instant::now())),
        (None, _) => None,
    };
    let recheck = decision.recheck;
    let failure_started = mem.failure.as_ref().map(|(_, t)| *t);
    let outcome = act::apply(ctx, pair, &obs, decision, current.as_ref(), failure_started, client_tls.clone()).await?;
    // The agents' answers to the round's requests (drain, sync now) are
    // fresh heartbeats: decide on them now rather than at the next poll.
    for (member, answer) in outcome.answers {
        poll.lock().unwrap_or_else(|p| p.into_inner()).answered(member, answer);
        notify.notify_one();
    }
    mem.status = outcome.status.or(mem.status.take());
    // A slice kube-controller-manager makes for a selector the operator
    // removed may land just after the removal (its controllers were
    // mid-sync), and one without the pair's label is outside the operator's
    // watch: look again every 200 ms for a while.
    if outcome.foreign_routes_removed {
        mem.sweep_slices_until = Some(Instant::now() + Duration::from_secs(10));
    }
    let sweeping = mem.sweep_slices_until.is_some_and(|t| Instant::now() < t);
    if sweeping {
        super::routing::sweep_pair_slices(ctx, pair).await?;
    } else {
        mem.sweep_slices_until = None;
    }
    let recheck = if sweeping { recheck.min(Duration::from_millis(200)) } else { recheck };
    let recheck = if deferred { recheck.min(DEFERRED_PASS_AGAIN) } else { recheck };
    let recheck = renew_in.into_iter().chain(rotate_in).fold(recheck, Duration::min);
    if outcome.promoted.is_some() {
        mem.failure = None;
    }
    Ok(if outcome.conflict { Duration::from_millis(20) } else { recheck })
}

/// When a pair whose pass found no slot tries again.
const DEFERRED_PASS_AGAIN: Duration = Duration::from_millis(500);

/// How often a pair's supporting objects are checked without a reason:
/// five minutes, plus up to one more spread by the pair's name, so pairs
/// that started together do not all come due in the same second.
fn supporting_period(ns: &str, name: &str) -> Duration {
    Duration::from_secs(300) + Duration::from_millis(name_hash(ns, name) % 60_000)
}

/// FNV-1a of the pair's key: the same spread in every process, for every
/// build.
fn name_hash(ns: &str, name: &str) -> u64 {
    format!("{ns}/{name}").bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// When a new worker counts a running pair's last supporting pass as
/// made: up to one `period` ago, spread by the pair's name (other bits of
/// the same hash as [`supporting_period`]), so the pairs a new leader
/// takes over come due one by one across the period.
fn first_pass_origin(ns: &str, name: &str, period: Duration) -> Instant {
    let ago = Duration::from_millis(name_hash(ns, name) / 60_000 % period.as_millis().max(1) as u64);
    let now = Instant::now();
    now.checked_sub(ago).unwrap_or(now)
}

/// Each quarantine a member's agent removed by the retention limits is
/// told once as a Warning Event (files go away only with a trace).
async fn tell_pruned(
    ctx: &Context,
    pair: &crate::api::HighAvailabilityPair,
    obs: &super::observe::Observed,
    mem: &mut Memory,
) {
    for (i, m) in Member::BOTH.into_iter().enumerate() {
        let Some(sync) = obs.member(m).agent.last.as_ref().and_then(|a| a.sync.as_ref()) else { continue };
        let told = mem.pruned_told[i];
        for p in sync.pruned.iter().filter(|p| told.is_none_or(|t| p.at > t)) {
            let note = format!(
                "{m}: quarantine {} removed by {} ({} files, {} bytes, newest from {}); recorded in .hapair/quarantine-pruned.jsonl",
                p.label, p.why, p.files, p.bytes, p.newest
            );
            act::warn(ctx, pair, "QuarantinePruned", note).await;
        }
        mem.pruned_told[i] = sync.pruned.iter().map(|p| p.at).max().max(told);
    }
}

/// Polls both agents every heartbeat interval.
async fn poll_loop(
    ctx: Arc<Context>,
    ns: String,
    name: String,
    poll: Arc<Mutex<PollState>>,
    tls: Arc<rustls::ClientConfig>,
    notify: Arc<Notify>,
) {
    let names: Vec<_> = Member::BOTH
        .into_iter()
        .filter_map(|m| tls::server_name(&tls::member_server_name(m, &name, &ns)).ok().map(|n| (m, n)))
        .collect();
    // One connection kept to each agent (a new one when its pod moves).
    let mut kept: Vec<crate::http::Kept> = names.iter().map(|_| crate::http::Kept::default()).collect();
    loop {
        let interval = match ctx.pair(&ns, &name).as_deref() {
            Some(kube::core::DeserializeGuard(Ok(p))) => p.spec.heartbeat.interval_seconds.max(1) as u64,
            _ => 5,
        };
        let tick = Duration::from_secs(interval);
        let timeout = (tick / 2).clamp(Duration::from_millis(300), Duration::from_secs(2));
        let polls = names.iter().zip(kept.iter_mut()).map(|((m, server_name), kept)| {
            poll_member(&poll, *m, kept, tls.clone(), server_name.clone(), timeout, &notify)
        });
        let start = Instant::now();
        let asked = futures::future::join_all(polls).await;
        // A round counts once every member with an address has been asked.
        let first = {
            let mut p = poll.lock().unwrap_or_else(|p| p.into_inner());
            let reachable = Member::BOTH.iter().filter(|m| p.get(**m).endpoint.is_some()).count();
            if reachable > 0 && asked.iter().filter(|a| **a).count() >= reachable {
                p.rounds += 1;
            }
            p.rounds == 1
        };
        if first {
            notify.notify_one();
        }
        tokio::time::sleep(tick.saturating_sub(start.elapsed())).await;
    }
}

/// Reconciles failing in a row: retried with a growing back-off (a watch
/// event still wakes the worker at once), and told on the pair as a Warning
/// Event once they keep failing — the same error at most every 5 minutes.
/// Conflicts are optimistic concurrency at work: retried quickly, never told.
#[derive(Default)]
struct Failing {
    in_a_row: u32,
    told: Option<(String, Instant)>,
}

impl Failing {
    /// Counts a failure; the Event's note when it is time to tell.
    fn failed(&mut self, error: &str, conflict: bool) -> Option<String> {
        self.in_a_row += 1;
        if conflict || self.in_a_row < 3 {
            return None;
        }
        let again = self.told.as_ref().is_none_or(|(e, t)| e != error || t.elapsed() >= Duration::from_secs(300));
        if !again {
            return None;
        }
        self.told = Some((error.to_string(), Instant::now()));
        let note = format!("{} reconciles in a row failed: {error}", self.in_a_row);
        Some(note.chars().take(1024).collect())
    }

    fn backoff(&self, conflict: bool) -> Duration {
        if conflict {
            return Duration::from_millis(500);
        }
        let exp = self.in_a_row.saturating_sub(1).min(6);
        (Duration::from_millis(500) * 2u32.pow(exp)).min(Duration::from_secs(30))
    }
}

/// Whether the pair as stored now is the one a round began with: the same
/// object (uid), the same spec (generation), not being deleted.
fn unchanged_while_queued(
    began: &HighAvailabilityPair,
    now: Option<&kube::core::DeserializeGuard<HighAvailabilityPair>>,
) -> bool {
    let Some(Ok(now)) = now.map(|g| g.0.as_ref()) else { return false };
    now.metadata.uid == began.metadata.uid
        && now.metadata.generation == began.metadata.generation
        && now.metadata.deletion_timestamp.is_none()
}

#[cfg(test)]
mod queued_tests {
    use kube::core::DeserializeGuard;
    use serde_json::json;

    use super::*;

    fn pair(uid: &str, generation: i64, deleting: bool) -> HighAvailabilityPair {
        let mut meta = json!({"name": "web", "namespace": "ns", "uid": uid, "generation": generation});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "hapair.dev/v1alpha1", "kind": "HighAvailabilityPair", "metadata": meta,
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}},
                     "service": {"ports": [{"name": "http", "port": 80}]}},
        }))
        .unwrap()
    }

    #[test]
    fn a_pair_deleted_changed_or_made_again_while_queued_is_looked_at_afresh() {
        let began = pair("u1", 1, false);
        let stored = |p: HighAvailabilityPair| DeserializeGuard(Ok(p));
        assert!(unchanged_while_queued(&began, Some(&stored(pair("u1", 1, false)))));
        assert!(!unchanged_while_queued(&began, None), "deleted");
        assert!(!unchanged_while_queued(&began, Some(&stored(pair("u1", 1, true)))), "being deleted");
        assert!(!unchanged_while_queued(&began, Some(&stored(pair("u1", 2, false)))), "spec changed");
        assert!(!unchanged_while_queued(&began, Some(&stored(pair("u2", 1, false)))), "deleted and made again");
    }
}

#[cfg(test)]
mod failing_tests {
    use super::*;

    #[test]
    fn a_lasting_error_is_told_once_and_retried_ever_more_slowly() {
        let mut f = Failing::default();
        assert_eq!(f.failed("forbidden", false), None);
        assert_eq!(f.backoff(false), Duration::from_millis(500));
        assert_eq!(f.failed("forbidden", false), None);
        let told = f.failed("forbidden", false).expect("the third failure in a row is told");
        assert!(told.starts_with("3 reconciles in a row failed: forbidden"), "{told}");
        assert_eq!(f.failed("forbidden", false), None, "the same error is not told again at once");
        assert!(f.failed("quota exceeded", false).is_some(), "a new error is");
        for _ in 0..10 {
            f.failed("quota exceeded", false);
        }
        assert_eq!(f.backoff(false), Duration::from_secs(30), "capped");
        assert_eq!(f.backoff(true), Duration::from_millis(500), "conflicts retry quickly");
        let mut c = Failing::default();
        for _ in 0..5 {
            assert_eq!(c.failed("409 conflict", true), None, "conflicts are never told");
        }
    }
}

#[cfg(test)]
mod supporting_tests {
    use super::*;

    #[test]
    fn pairs_created_together_come_due_for_their_pass_spread_over_a_minute() {
        let periods: Vec<Duration> = (0..1000).map(|i| supporting_period("prod", &format!("p{i:04}"))).collect();
        assert!(periods.iter().all(|p| *p >= Duration::from_secs(300) && *p < Duration::from_secs(360)));
        // Spread: no second of the minute holds more than a few percent.
        let mut per_second = [0u32; 60];
        for p in &periods {
            per_second[(p.as_secs() - 300) as usize] += 1;
        }
        assert!(per_second.iter().all(|n| *n <= 40), "{per_second:?}");
        // The same pair, the same period, in every process.
        assert_eq!(supporting_period("prod", "p0001"), periods[1]);
    }

    #[test]
    fn a_new_leader_finds_the_running_pairs_passes_due_one_by_one_across_the_period() {
        // Each pass counted as made up to a period ago: due within a period
        // from now, not at once, and spread across it.
        let mut per_tenth = [0u32; 10];
        for i in 0..1000 {
            let name = format!("p{i:04}");
            let period = supporting_period("prod", &name);
            let due_in = period.saturating_sub(first_pass_origin("prod", &name, period).elapsed());
            assert!(due_in <= period, "{name}: due in {due_in:?}, period {period:?}");
            per_tenth[(due_in.as_secs_f64() / period.as_secs_f64() * 10.0).min(9.0) as usize] += 1;
        }
        assert!(per_tenth.iter().all(|n| (50..=150).contains(n)), "{per_tenth:?}");
    }
}

#[cfg(test)]
mod first_round_tests {
    use super::*;
    use crate::operator::observe::{MemberObs, Observed, PodObs};

    fn pair() -> HighAvailabilityPair {
        serde_yaml::from_str(
            "apiVersion: hapair.dev/v1alpha1\nkind: HighAvailabilityPair\nmetadata: {name: db, namespace: prod}\n\
             spec:\n  template: {spec: {containers: [{name: app, image: x}]}}\n  service: {ports: [{name: pg, port: 5432}]}\n",
        )
        .unwrap()
    }

    fn running(m: Member) -> MemberObs {
        let pod = PodObs {
            name: m.pod_name("db"),
            uid: format!("{m}-uid"),
            ip: Some("10.0.0.1".into()),
            running: true,
            deleting: false,
            app_down: false,
            hash: None,
            role_label: None,
            ready: true,
            node: None,
        };
        MemberObs { pod: Some(pod), ..Default::default() }
    }

    fn answer(m: Member) -> crate::proto::AgentStatus {
        serde_json::from_value(serde_json::json!({
            "member": m, "podUid": format!("{m}-uid"), "role": "Standby", "epoch": 1,
            "wallClock": "2026-01-01T00:00:00Z", "syncGeneration": 0, "leaseRenewFailures": 0,
        }))
        .unwrap()
    }

    #[test]
    fn a_pair_whose_holder_failed_for_sure_takes_its_first_look_ahead_of_the_others() {
        let lease = |unchanged_for| crate::operator::decide::tests::lease(Member::Primary, 1, unchanged_for);
        let mut obs =
            Observed { primary: running(Member::Primary), secondary: running(Member::Secondary), ..Default::default() };
        assert!(!looks_first(&obs), "no Lease yet: a new pair, nothing to fail over");
        obs.lease = Some(lease(Duration::ZERO));
        assert!(!looks_first(&obs), "the holder runs");
        obs.secondary.pod.as_mut().unwrap().app_down = true;
        assert!(!looks_first(&obs), "the standby's failure is no failover");
        obs.primary.pod.as_mut().unwrap().app_down = true;
        assert!(looks_first(&obs), "the holder's application terminated");
        obs.primary = MemberObs::default();
        assert!(looks_first(&obs), "the holder's pod gone");
        obs.primary = running(Member::Primary);
        obs.primary.pod.as_mut().unwrap().deleting = true;
        assert!(looks_first(&obs), "the holder's pod being deleted");
        // Unconfirmed (nothing heard for a lease duration) needs the
        // agents' answers anyway: no turn ahead.
        obs.primary = running(Member::Primary);
        obs.lease = Some(lease(Duration::from_secs(20)));
        assert!(!looks_first(&obs));
    }

    #[test]
    fn a_new_worker_waits_for_a_running_members_first_answer_until_its_silence_counts() {
        let pair = pair();
        let threshold = pair.spec.heartbeat.missed_threshold as u32;
        let mut obs =
            Observed { primary: running(Member::Primary), secondary: running(Member::Secondary), ..Default::default() };
        obs.primary.agent.last = Some(answer(Member::Primary));
        // Asked once, no answer in time: not yet a silence by the rule.
        obs.secondary.agent.missed = 1;
        assert!(unheard(&pair, &obs, 1));
        // Silent for the whole threshold: decided on as silent.
        obs.secondary.agent.missed = threshold;
        assert!(!unheard(&pair, &obs, 1));
        // Its application reported down by the kubelet: not waited for.
        obs.secondary.agent.missed = 1;
        obs.secondary.pod.as_mut().unwrap().app_down = true;
        assert!(!unheard(&pair, &obs, 1));
        // No pod, or no answer needed from it: not waited for either.
        obs.secondary = MemberObs::default();
        assert!(!unheard(&pair, &obs, 1));
        // Answered once: its later misses count as usual.
        obs.secondary = running(Member::Secondary);
        obs.secondary.agent.last = Some(answer(Member::Secondary));
        obs.secondary.agent.missed = 1;
        assert!(!unheard(&pair, &obs, 1));
        // A pod made after the worker's first rounds is not waited for.
        obs.secondary.agent.last = None;
        assert!(unheard(&pair, &obs, u64::from(threshold)));
        assert!(!unheard(&pair, &obs, u64::from(threshold) + 1));
    }
}
