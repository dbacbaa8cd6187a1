//! One pair's worker: observe → decide → act, again and again, plus the
//! agent poller and the operator's health and metrics endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use prometheus::Encoder;
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Context;
use super::act;
use super::decide::{Clock, decide};
use super::observe::{JobObs, LeaseObs, MemberObs, Observed, PodObs, selected_member, service_hash};
use super::poller::{Endpoint, PollState, poll_member};
use crate::api::{HighAvailabilityPair, Member};
use crate::http::{self, Target, reply};
use crate::tls;

/// What the worker remembers between rounds. Lost on restart, and every
/// default is the cautious one (a fresh worker waits a full lease duration
/// before calling a silent active failed).
struct Memory {
    /// Generation whose supporting objects (RBAC, claims) were last ensured,
    /// and when: re-checked on a new generation and every few minutes (they
    /// are not watched, and someone may delete them).
    supporting: Option<(Option<i64>, Instant)>,
    lease_rv: Option<String>,
    lease_seen: Instant,
    started: Instant,
    failure: Option<(String, Instant)>,
    /// Since when the primary has been able to serve without a break.
    primary_usable_since: Option<Instant>,
    /// The status this worker last wrote. The watch cache can lag a write by
    /// a moment; deciding from a stale status would undo what the last round
    /// recorded (a transition, an acknowledged operation). The operator is the
    /// status's only writer, so its own last write is the truth.
    status: Option<crate::api::HighAvailabilityPairStatus>,
}

pub async fn run(ctx: Arc<Context>, ns: String, name: String, notify: Arc<Notify>) {
    let span = info_span!("pair", namespace = %ns, pair = %name);
    async {
        let poll = Arc::new(Mutex::new(PollState::default()));
        let mut poller: Option<tokio::task::JoinHandle<()>> = None;
        let mut client_tls: Option<Arc<rustls::ClientConfig>> = None;
        let mut mem = Memory {
            supporting: None,
            lease_rv: None,
            lease_seen: Instant::now(),
            started: Instant::now(),
            failure: None,
            primary_usable_since: None,
            status: None,
        };
        let mut failing = Failing::default();
        let mut told_invalid: Option<String> = None;
        while let Some(pair) = ctx.pair(&ns, &name) {
            let pair = match pair {
                Ok(p) => {
                    told_invalid = None;
                    p
                }
                Err(bad) => {
                    // Nothing is decided on a spec that cannot be read: the
                    // agents keep renewing and fencing on their own, and the
                    // pair waits here until its object is fixed.
                    report_invalid(&ctx, &bad, &mut told_invalid).await;
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
            let recheck = match round(&ctx, &pair, &poll, &mut poller, &mut client_tls, &mut mem, &notify).await {
                Ok(r) => {
                    failing = Failing::default();
                    r
                }
                Err(e) => {
                    warn!(error = %e, "reconcile failed");
                    ctx.metrics.reconcile_errors.with_label_values(&[&ns, &name, e.metric_label()]).inc();
                    let conflict = e.metric_label() == "conflict";
                    if let Some(note) = failing.failed(&e.to_string(), conflict) {
                        let ev = kube::runtime::events::Event {
                            type_: kube::runtime::events::EventType::Warning,
                            reason: "ReconcileFailed".into(),
                            note: Some(note),
                            action: "Reconcile".into(),
                            secondary: None,
                        };
                        if let Err(err) = ctx.recorder.publish(&ev, &kube::Resource::object_ref(&*pair, &())).await {
                            warn!(error = %err, "cannot publish event");
                        }
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

/// Logs a pair object that does not deserialize and tells it on the object
/// as a Warning Event, once per resourceVersion.
async fn report_invalid(ctx: &Context, bad: &kube::core::error_boundary::InvalidObject, told: &mut Option<String>) {
    let (ns, name) =
        (bad.metadata.namespace.clone().unwrap_or_default(), bad.metadata.name.clone().unwrap_or_default());
    ctx.metrics.invalid.with_label_values(&[&ns, &name]).set(1);
    if told.is_some() && *told == bad.metadata.resource_version {
        return;
    }
    *told = bad.metadata.resource_version.clone();
    warn!(error = %bad.error, "the pair's stored object cannot be read; holding it until it is fixed");
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(<HighAvailabilityPair as kube::Resource>::api_version(&()).into_owned()),
        kind: Some(<HighAvailabilityPair as kube::Resource>::kind(&()).into_owned()),
        name: Some(name),
        namespace: Some(ns),
        uid: bad.metadata.uid.clone(),
        resource_version: bad.metadata.resource_version.clone(),
        ..Default::default()
    };
    let note = format!(
        "the stored object does not match the HighAvailabilityPair schema this operator knows, so the pair is \
         held (no failover) until it is fixed: {}",
        bad.error
    );
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
        warn!(error = %err, "cannot publish event");
    }
}

fn client_config(secret: &Secret) -> Result<Arc<rustls::ClientConfig>, tls::TlsError> {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .unwrap_or_default()
    };
    tls::client_config(&tls::Identity { ca: get(tls::CA_CERT), cert: get(tls::CLIENT_CERT), key: get(tls::CLIENT_KEY) })
}

#[allow(clippy::too_many_arguments)]
async fn round(
    ctx: &Arc<Context>,
    pair: &Arc<HighAvailabilityPair>,
    poll: &Arc<Mutex<PollState>>,
    poller: &mut Option<tokio::task::JoinHandle<()>>,
    client_tls: &mut Option<Arc<rustls::ClientConfig>>,
    mem: &mut Memory,
    notify: &Arc<Notify>,
) -> Result<Duration, act::ActError> {
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    if client_tls.is_none() {
        let secret = act::ensure_tls(ctx, pair).await?;
        *client_tls = Some(client_config(&secret)?);
    }
    if poller.is_none()
        && let Some(tls) = client_tls.clone()
    {
        *poller =
            Some(tokio::spawn(poll_loop(ctx.clone(), ns.clone(), name.clone(), poll.clone(), tls, notify.clone())));
    }
    // Decide nothing before both agents have been asked at least once: a
    // fresh worker (or a new leader) must not act on half a picture.
    let polled = poll.lock().unwrap_or_else(|p| p.into_inner()).rounds > 0;
    let obs = gather(ctx, pair, poll, mem);
    let addressed = |m: Member| obs.member(m).pod.as_ref().is_some_and(|p| p.ip.is_some());
    if !polled && (addressed(Member::Primary) || addressed(Member::Secondary)) {
        return Ok(Duration::from_millis(200));
    }
    let holder = obs.lease.as_ref().and_then(|l| l.holder.as_ref().map(|(m, _)| *m));
    let fresh =
        mem.supporting.is_some_and(|(g, t)| g == pair.metadata.generation && t.elapsed() < Duration::from_secs(300));
    if !fresh {
        act::ensure_supporting(ctx, pair).await?;
        mem.supporting = Some((pair.metadata.generation, Instant::now()));
    }
    let current = mem.status.clone().or_else(|| pair.status.clone());
    let isolated = current.as_ref().and_then(|s| s.isolated_member);
    act::ensure_members(ctx, pair, &obs, holder, isolated).await?;
    let clock = Clock { pair: name.clone(), now: chrono::Utc::now(), generation: pair.metadata.generation };
    let plan = decide(&pair.spec, current.as_ref(), &obs, &clock);
    mem.failure = match (&plan.failure, mem.failure.take()) {
        (Some(reason), Some((r, t))) if *reason == r => Some((r, t)),
        (Some(reason), _) => Some((reason.clone(), Instant::now())),
        (None, _) => None,
    };
    let recheck = plan.recheck;
    // A planned handover: the active drains (its answer carries its final
    // generation), the standby pulls now (its answer says whether it holds
    // it). Each answer is a fresh heartbeat: act on it now rather than at
    // the next poll.
    let asks = [
        plan.drain.map(|(m, epoch)| (m, format!("/v1/drain?epoch={epoch}"), Duration::from_secs(2))),
        plan.sync_now.map(|m| (m, "/v1/sync?wait=1".to_string(), Duration::from_secs(8))),
    ];
    for (member, path, timeout) in asks.into_iter().flatten() {
        if let Some(answer) = ask_agent(pair, &obs, member, &path, timeout, client_tls.clone()).await {
            poll.lock().unwrap_or_else(|p| p.into_inner()).answered(member, answer);
            notify.notify_one();
        }
    }
    if let Some((member, order)) = &plan.resync
        && let Some(addr) = agent_address(pair, &obs, *member)
    {
        let job = super::build::resync_job(pair, *member, addr, order, &ctx.build);
        let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(ctx.client.clone(), &ns);
        match jobs.create(&Default::default(), &job).await {
            Ok(_) => info!(%member, label = %order.label, job = %job.name_any(), "resync Job started"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => warn!(%member, error = %e, "could not start the resync Job"),
        }
    }
    if let (Some(label), Some(container), Some(kept)) =
        (&plan.repair, pair.spec.split_brain.repair_job.as_ref(), plan.vip)
    {
        let epoch = obs.lease.as_ref().map_or(0, |l| l.epoch);
        let addresses = [agent_address(pair, &obs, Member::Primary), agent_address(pair, &obs, Member::Secondary)];
        let job = super::build::repair_job(pair, container, label, kept, epoch, addresses);
        let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(ctx.client.clone(), &ns);
        match jobs.create(&Default::default(), &job).await {
            Ok(_) => info!(job = %job.name_any(), %kept, "split-brain repair Job started"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => warn!(error = %e, "could not start the split-brain repair Job"),
        }
    }
    let failure_started = mem.failure.as_ref().map(|(_, t)| *t);
    let outcome = act::apply_plan(ctx, pair, &obs, plan, current.as_ref(), failure_started).await?;
    mem.status = outcome.status.clone().or(mem.status.take());
    if let Some(m) = outcome.promoted {
        mem.failure = None;
        wake_agent(pair, &obs, m, client_tls.clone());
    }
    Ok(if outcome.conflict { Duration::from_millis(20) } else { recheck })
}

/// Observe: the pair's objects from the watch caches, agents from the poller.
fn gather(ctx: &Context, pair: &HighAvailabilityPair, poll: &Mutex<PollState>, mem: &mut Memory) -> Observed {
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    let uid = pair.uid();
    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.iter().flatten().any(|o| Some(&o.uid) == uid.as_ref())
    };
    let agent_port = pair.spec.agent.port as u16;
    let mut obs = Observed::default();
    let mut ips = [None, None];
    {
        let poll = poll.lock().unwrap_or_else(|p| p.into_inner());
        for (i, m) in Member::BOTH.into_iter().enumerate() {
            let pod = ctx.pod(&ns, &m.pod_name(&name)).filter(|p| owned(&p.metadata));
            let pod = pod.map(|p| PodObs::of(&p));
            ips[i] = pod.as_ref().and_then(|p| p.ip.clone()).and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
            *obs.member_mut(m) = MemberObs { pod, agent: poll.observe(m) };
        }
    }
    {
        let mut poll = poll.lock().unwrap_or_else(|p| p.into_inner());
        for (i, m) in Member::BOTH.into_iter().enumerate() {
            let endpoint = ips[i].map(|ip| Endpoint {
                addr: SocketAddr::new(ip, agent_port),
                peer: ips[1 - i].map(|p| SocketAddr::new(p, agent_port)),
            });
            let p = poll.get_mut(m);
            if p.endpoint.as_ref().map(|e| e.addr) != endpoint.as_ref().map(|e| e.addr) {
                // A new pod: what its predecessor said no longer counts.
                p.last = None;
                p.missed = 0;
                p.answered_at = None;
            }
            p.endpoint = endpoint;
        }
    }
    if let Some(lease) = ctx.lease(&ns, &name).filter(|l| owned(&l.metadata)) {
        let rv = lease.resource_version();
        if rv != mem.lease_rv {
            mem.lease_rv = rv;
            mem.lease_seen = Instant::now();
        }
        obs.lease = Some(LeaseObs::of(&lease, mem.lease_seen.elapsed()));
    } else {
        mem.lease_rv = None;
    }
    if obs.lease.is_none() {
        obs.without_lease_for = mem.started.elapsed();
    }
    if let Some(vip) = ctx.service(&ns, &name).filter(|s| owned(&s.metadata)) {
        obs.vip_exists = true;
        obs.vip_member = selected_member(&vip);
        obs.vip_hash = service_hash(&vip);
    }
    if let Some(sb) = ctx.service(&ns, &super::build::standby_service_name(&name)).filter(|s| owned(&s.metadata)) {
        obs.standby_exists = true;
        obs.standby_member = selected_member(&sb);
    }
    obs.resync_jobs =
        ctx.jobs.in_namespace(&ns).iter().filter(|j| owned(&j.metadata)).filter_map(|j| JobObs::of(j)).collect();
    obs.resync_jobs.sort_by_key(|j| (j.created, j.name.clone()));
    obs.failure_for = mem.failure.as_ref().map(|(_, t)| t.elapsed());
    let missed = pair.spec.heartbeat.missed_threshold as u32;
    if super::status::usable(obs.member(Member::Primary), missed) == super::status::Usable::Yes {
        mem.primary_usable_since.get_or_insert_with(Instant::now);
    } else {
        mem.primary_usable_since = None;
    }
    obs.primary_usable_for = mem.primary_usable_since.map(|t| t.elapsed());
    obs
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
    loop {
        let interval = match ctx.pair(&ns, &name) {
            Some(Ok(p)) => p.spec.heartbeat.interval_seconds.max(1) as u64,
            _ => 5,
        };
        let tick = Duration::from_secs(interval);
        let timeout = (tick / 2).clamp(Duration::from_millis(300), Duration::from_secs(2));
        let polls = names
            .iter()
            .map(|(m, server_name)| poll_member(&poll, *m, tls.clone(), server_name.clone(), timeout, &notify));
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

/// Tells the new holder's agent to re-read the Lease now instead of at its
/// next tick, so it promotes without waiting an interval.
fn wake_agent(
    pair: &HighAvailabilityPair,
    obs: &Observed,
    member: Member,
    client_tls: Option<Arc<rustls::ClientConfig>>,
) {
    let Some(target) = agent_target(pair, obs, member, client_tls) else { return };
    tokio::spawn(async move {
        let _ = http::call(&target, hyper::Method::POST, "/v1/wake", Duration::from_secs(2)).await;
    });
}

/// One call to a member's agent whose answer is its status (drain, sync
/// now); `None` when it fails or answers for another member.
async fn ask_agent(
    pair: &HighAvailabilityPair,
    obs: &Observed,
    member: Member,
    path: &str,
    timeout: Duration,
    client_tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<crate::proto::AgentStatus> {
    let target = agent_target(pair, obs, member, client_tls)?;
    let body = http::call(&target, hyper::Method::POST, path, timeout)
        .await
        .inspect_err(|e| warn!(%member, path, error = %e, "agent request failed"))
        .ok()?;
    serde_json::from_slice::<crate::proto::AgentStatus>(&body).ok().filter(|a| a.member == member)
}

/// A member's agent address, from its pod's IP.
fn agent_address(pair: &HighAvailabilityPair, obs: &Observed, member: Member) -> Option<SocketAddr> {
    let ip = obs.member(member).pod.as_ref()?.ip.as_ref()?.parse::<std::net::IpAddr>().ok()?;
    Some(SocketAddr::new(ip, pair.spec.agent.port as u16))
}

fn agent_target(
    pair: &HighAvailabilityPair,
    obs: &Observed,
    member: Member,
    client_tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<Target> {
    let tls = client_tls?;
    let addr = agent_address(pair, obs, member)?;
    let ns = pair.namespace().unwrap_or_default();
    let server_name = tls::server_name(&tls::member_server_name(member, &pair.name_any(), &ns)).ok()?;
    Some(Target { addr, server_name, tls })
}

pub async fn serve_health(addr: SocketAddr, ready: Arc<AtomicBool>) {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            http::serve(l, None, Duration::from_secs(60), move |req, _| {
                let ready = ready.clone();
                async move {
                    match req.uri().path() {
                        "/healthz" => reply(StatusCode::OK, "ok"),
                        "/readyz" if ready.load(Ordering::SeqCst) => reply(StatusCode::OK, "ready"),
                        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "starting"),
                        _ => reply(StatusCode::NOT_FOUND, "not found"),
                    }
                }
            })
            .await
        }
        Err(e) => warn!(%addr, error = %e, "cannot serve health endpoints"),
    }
}

pub async fn serve_metrics(addr: SocketAddr, registry: prometheus::Registry) {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            http::serve(l, None, Duration::from_secs(60), move |req, _| {
                let registry = registry.clone();
                async move {
                    if req.uri().path() != "/metrics" {
                        return reply(StatusCode::NOT_FOUND, "not found");
                    }
                    let mut buf = Vec::new();
                    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
                    reply(StatusCode::OK, buf)
                }
            })
            .await
        }
        Err(e) => warn!(%addr, error = %e, "cannot serve metrics"),
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
