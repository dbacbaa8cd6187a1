//! Act: make the cluster match the plan. Objects are written only when
//! they differ from what was last applied (a hash annotation says so), so a
//! healthy pair costs no writes. The Lease takeover is a compare-and-swap on
//! its resourceVersion: the commit point of a failover. The VIP's
//! EndpointSlice follows in the very next write.

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role as RbacRole, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::build::{self, applied_hash};
use super::context::Context;
use super::drift;
use super::model::{Decision, LeaseAction};
use super::observe::Observed;
use super::routing;
use super::writes::{apply_params, is_conflict, not_found};
use crate::api::{HighAvailabilityPair, LABEL_ROLE, Member, Role};
use crate::http::{self, Target};
use crate::proto::AgentStatus;
use crate::proto::{
    ANN_DRAINING, ANN_INTERVAL, ANN_MISSED, ANN_OPERATION, ANN_RELEASED, ANN_RELEASED_BY, ANN_REPLACED_RENEWAL,
    lease_identity,
};
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("certificates: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl ActError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ActError::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            ActError::Kube(_) => "kube",
            ActError::Tls(_) => "tls",
        }
    }
}

/// What acting did that the worker needs to know.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answers of the agents asked this round (drain, sync now): fresh
    /// heartbeats for the poller.
    pub answers: Vec<(Member, AgentStatus)>,
    /// The status as written (or found already written).
    pub status: Option<crate::api::HighAvailabilityPairStatus>,
    /// The Lease moved: the member to wake so it promotes at once.
    pub promoted: Option<Member>,
    /// A compare-and-swap lost a race: observe again now.
    pub conflict: bool,
    /// Routes to the pair's Services other than the operator's slices were
    /// removed (or a selector that makes them): more may still appear for a
    /// moment (see the worker's sweep).
    pub foreign_routes_removed: bool,
}

/// Creates `obj` unless it exists; re-applies it when its hash changed or
/// `matches` says its content no longer is what was built (a hand edit
/// keeps the hash).
async fn ensure<K>(
    api: &Api<K>,
    obj: &K,
    current: Option<&K>,
    matches: impl Fn(&K, &K) -> bool,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    if let Some(cur) = current
        && applied_hash(cur.meta()) == applied_hash(obj.meta())
        && matches(cur, obj)
    {
        return Ok(());
    }
    api.patch(&name, &apply_params(), &Patch::Apply(obj)).await.map(|_| ())
}

pub async fn ensure_tls(ctx: &Context, pair: &HighAvailabilityPair) -> Result<Secret, ActError> {
    let ns = pair.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::tls_secret_name(&pair.name_any());
    if let Some(s) = api.get_opt(&name).await? {
        return Ok(s);
    }
    let material = crate::tls::generate_pair_material(&pair.name_any(), &ns, pair.spec.certificates.lifetime_seconds)?;
    let secret = build::tls_secret(pair, material);
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => Ok(s),
        Err(e) if is_conflict(&e) => Ok(api.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

/// Owned objects that do not change with failovers: the agent's
/// ServiceAccount, Role and RoleBinding (the members' claims have a module
/// of their own). They change only with the spec, so the
/// worker calls this once per generation.
pub async fn ensure_supporting(ctx: &Context, pair: &HighAvailabilityPair) -> Result<(), ActError> {
    let ns = pair.namespace().unwrap_or_default();
    let (sa, role, binding) = build::agent_rbac(pair);
    if let Some(sa) = sa {
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
        if api.get_opt(&sa.name_any()).await?.is_none() {
            api.patch(&sa.name_any(), &apply_params(), &Patch::Apply(&sa)).await?;
        }
    }
    let roles: Api<RbacRole> = Api::namespaced(ctx.client.clone(), &ns);
    let cur = roles.get_opt(&role.name_any()).await?;
    ensure(&roles, &role, cur.as_ref(), drift::role_matches).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let cur = bindings.get_opt(&binding.name_any()).await?;
    ensure(&bindings, &binding, cur.as_ref(), drift::binding_matches).await?;
    if let Some(operator) = &ctx.build.agent_network_policy {
        let np = build::netpol::agent_network_policy(pair, operator);
        let api: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let cur = api.get_opt(&np.name_any()).await?;
        ensure(&api, &np, cur.as_ref(), drift::network_policy_matches).await?;
    }
    Ok(())
}

/// Member pods: created when missing, replaced when finished, or when
/// outdated and not active. Works from the watch cache: no reads.
pub async fn ensure_members(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    obs: &Observed,
    holder: Option<Member>,
    stopped: Option<(Member, &str)>,
) -> Result<(), ActError> {
    let ns = pair.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for m in Member::BOTH {
        // A stopped member — isolated after a split brain (policy
        // IsolateSecondary) until a resolve request, or removed by
        // `spec.standby: Removed` until it is `Enabled` again — has no pod;
        // the Lease's holder is never stopped.
        if let Some((_, why)) = stopped.filter(|(s, _)| *s == m && holder != Some(m)) {
            if let Some(p) = obs.member(m).pod.as_ref().filter(|p| !p.deleting) {
                info!(pod = %p.name, why, "stopping the member's pod");
                pods.delete(&p.name, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
            }
            continue;
        }
        let desired = build::member_pod(pair, m, &ctx.build);
        // A member whose claim is going (deleted, or its volume lost) waits
        // for the new one: a pod made now would hold on to the old claim.
        let claim_going = build::pvc(pair, m).is_some_and(|c| {
            matches!(
                super::observe::claim_state(ctx.claim(&ns, &c.name_any()).as_deref()),
                super::observe::ClaimState::Deleting | super::observe::ClaimState::Lost
            )
        });
        match &obs.member(m).pod {
            None if claim_going => {}
            None => {
                info!(pod = %desired.name_any(), "creating member pod");
                match pods.create(&PostParams::default(), &desired).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(p) if p.deleting => {}
            Some(p) => {
                let finished = !p.running && ctx.pod_finished(&ns, &p.name);
                let outdated = p.hash.as_deref() != applied_hash(&desired.metadata);
                // Only a member that is not active is replaced for a new template;
                // the active one keeps serving until it is no longer active.
                if finished || (outdated && holder != Some(m)) {
                    info!(pod = %p.name, finished, outdated, "replacing member pod");
                    pods.delete(&p.name, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
                }
            }
        }
    }
    Ok(())
}

/// Everything a decision asks for, in this order: the agents' requests
/// (drain, sync now), the resync and repair Jobs, the Lease and, once it
/// moved, the wake-up of both members' agents, then the Services, the role
/// labels, the status and the Events.
pub async fn apply(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    obs: &Observed,
    decision: Decision,
    current: Option<&crate::api::HighAvailabilityPairStatus>,
    failure_started: Option<Instant>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Outcome, ActError> {
    let answers = ask_agents(pair, obs, &decision, client_tls.clone()).await;
    if decision.drain.is_some() {
        super::fault::step("drain-asked");
    }
    if decision.sync_now.is_some() {
        super::fault::step("sync-asked");
    }
    start_jobs(ctx, pair, obs, &decision).await;
    let mut outcome = apply_lease_and_status(ctx, pair, obs, decision, current, failure_started, client_tls).await?;
    outcome.answers = answers;
    Ok(outcome)
}

/// A planned handover: the active drains (its answer carries its final
/// generation), the standby pulls now (its answer says whether it holds it).
async fn ask_agents(
    pair: &HighAvailabilityPair,
    obs: &Observed,
    d: &Decision,
    client_tls: Option<Arc<rustls::ClientConfig>>,
) -> Vec<(Member, AgentStatus)> {
    let asks = [
        // The drain answers once the volume is quiet (at most 1.5 s) and the
        // drain mark is on the Lease (at most 1 s more): a shorter wait gave
        // up on a drain about to answer, and the next round settled again.
        d.drain.map(|(m, epoch)| (m, format!("/v1/drain?epoch={epoch}"), Duration::from_secs(3))),
        d.sync_now.map(|m| (m, "/v1/sync?wait=1".to_string(), Duration::from_secs(8))),
    ];
    let mut answers = Vec::new();
    for (member, path, timeout) in asks.into_iter().flatten() {
        if let Some(answer) = ask_agent(pair, obs, member, &path, timeout, client_tls.clone()).await {
            answers.push((member, answer));
        }
    }
    answers
}

/// The resync Job and the split-brain repair Job the decision orders (each
/// once: a Job that exists already is left alone).
async fn start_jobs(ctx: &Context, pair: &HighAvailabilityPair, obs: &Observed, d: &Decision) {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(ctx.client.clone(), &pair.namespace().unwrap_or_default());
    if let Some((member, order)) = &d.start_resync
        && let Some(addr) = agent_address(pair, obs, *member)
    {
        let job = build::resync_job(pair, *member, addr, order, &ctx.build);
        match jobs.create(&Default::default(), &job).await {
            Ok(_) => {
                info!(%member, label = %order.label, job = %job.name_any(), "resync Job started");
                super::fault::step("job-started");
            }
            Err(e) if is_conflict(&e) => {}
            Err(e) => warn!(%member, error = %e, "could not start the resync Job"),
        }
    }
    if let (Some(label), Some(container), Some(kept)) = (&d.repair, pair.spec.split_brain.repair_job.as_ref(), d.vip) {
        let epoch = obs.lease.as_ref().map_or(0, |l| l.epoch);
        let addresses = [agent_address(pair, obs, Member::Primary), agent_address(pair, obs, Member::Secondary)];
        let job = build::repair_job(pair, container, label, kept, epoch, addresses);
        match jobs.create(&Default::default(), &job).await {
            Ok(_) => {
                info!(job = %job.name_any(), %kept, "split-brain repair Job started");
                super::fault::step("job-started");
            }
            Err(e) if is_conflict(&e) => {}
            Err(e) => warn!(error = %e, "could not start the split-brain repair Job"),
        }
    }
}

/// A Warning Event on the pair.
pub async fn warn(ctx: &Context, pair: &HighAvailabilityPair, reason: &str, note: String) {
    tell(ctx, pair, EventType::Warning, reason, note).await
}

/// An Event on the pair of the given type.
pub async fn tell(ctx: &Context, pair: &HighAvailabilityPair, type_: EventType, reason: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(err) = ctx.recorder.publish(&ev, &pair.object_ref(&())).await {
        warn!(error = %err, "cannot publish event");
    }
}

/// Lease action, Services, role labels, status and Events, in that order.
async fn apply_lease_and_status(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    obs: &Observed,
    mut plan: Decision,
    current: Option<&crate::api::HighAvailabilityPairStatus>,
    failure_started: Option<Instant>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Outcome, ActError> {
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let mut outcome = Outcome::default();
    let mut committed_at = None;
    // A reconcile that carries out a step of some procedure (the only ones
    // whose later steps are crash points: a quiet status refresh is not).
    let procedure = plan.drain.is_some()
        || plan.sync_now.is_some()
        || plan.start_resync.is_some()
        || plan.repair.is_some()
        || plan.lease.as_ref().is_some_and(|l| !matches!(l, LeaseAction::UpdateTimings))
        || !plan.events.is_empty();
    let step = |name| {
        if procedure {
            super::fault::step(name)
        }
    };

    match plan.lease.clone() {
        Some(LeaseAction::Create { holder, pod_uid, epoch, .. }) => {
            match leases.create(&PostParams::default(), &build::lease(pair, holder, &pod_uid, epoch)).await {
                Ok(_) => {
                    info!(pair = %name, %holder, epoch, "lease created");
                    super::fault::step("lease-created");
                    outcome.promoted = Some(holder);
                }
                Err(e) if is_conflict(&e) => {
                    outcome.conflict = true;
                    return Ok(outcome);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(LeaseAction::Takeover { to, pod_uid, expected_rv, epoch, transition }) => {
            let Some(mut lease) = ctx.lease(&ns, &name) else {
                outcome.conflict = true;
                return Ok(outcome);
            };
            lease.metadata.resource_version = Some(expected_rv);
            let ann = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
            ann.remove(ANN_RELEASED);
            ann.remove(ANN_RELEASED_BY);
            ann.remove(ANN_DRAINING);
            match &transition.operation_id {
                Some(id) => ann.insert(ANN_OPERATION.into(), id.clone()),
                None => ann.remove(ANN_OPERATION),
            };
            ann.insert(ANN_INTERVAL.into(), pair.spec.heartbeat.interval_seconds.to_string());
            ann.insert(ANN_MISSED.into(), pair.spec.heartbeat.missed_threshold.to_string());
            match lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) {
                Some(t) => ann.insert(ANN_REPLACED_RENEWAL.into(), t.0.to_string()),
                None => ann.remove(ANN_REPLACED_RENEWAL),
            };
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(lease_identity(to, &pod_uid));
            spec.lease_transitions = Some(epoch as i32);
            spec.lease_duration_seconds =
                Some(pair.spec.heartbeat.interval_seconds * pair.spec.heartbeat.missed_threshold);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            match leases.replace(&name, &PostParams::default(), &lease).await {
                Ok(_) => {
                    committed_at = Some(Instant::now());
                    super::fault::step("lease-moved");
                    warn!(pair = %name, from = ?transition.from, %to, epoch, reason = %transition.reason, "lease moved");
                    outcome.promoted = Some(to);
                    ctx.metrics
                        .failovers
                        .with_label_values(&[&ns, &name, &format!("{:?}", transition.type_), &transition.reason])
                        .inc();
                }
                Err(e) if is_conflict(&e) => {
                    info!(pair = %name, "lease changed under us; observing again");
                    outcome.conflict = true;
                    return Ok(outcome);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(LeaseAction::Restore { holder, pod_uid, epoch, expected_rv, edit }) => {
            let mut lease = build::lease(pair, holder, &pod_uid, epoch);
            lease.metadata.resource_version = Some(expected_rv);
            match leases.replace(&name, &PostParams::default(), &lease).await {
                Ok(_) => {
                    warn!(pair = %name, %holder, epoch, %edit, "lease edited by hand: written again");
                    super::fault::step("lease-restored");
                    outcome.promoted = Some(holder);
                }
                Err(e) if is_conflict(&e) => {
                    outcome.conflict = true;
                    return Ok(outcome);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(LeaseAction::UpdateTimings) => {
            let patch = json!({"metadata": {"annotations": {
                ANN_INTERVAL: pair.spec.heartbeat.interval_seconds.to_string(),
                ANN_MISSED: pair.spec.heartbeat.missed_threshold.to_string(),
            }}});
            leases.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        None => {}
    }
    if let Some(m) = outcome.promoted {
        // Before the other writes (under load they took 280 of 322 ms of a
        // failover at 1,000 pairs): a woken agent only reads the Lease now
        // and acts on what it reads. The member the Lease left renews, fails
        // the epoch test and stands down.
        wake_agent(pair, obs, m, client_tls.clone());
        wake_agent(pair, obs, m.peer(), client_tls);
    }

    // The VIP follows the Lease in the very next write: its EndpointSlice
    // names the new active's pod. A hand edit of the slice, or of the
    // Service's type, ports or selector, is put back the same way.
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    if routing::write_slice(&slices, pair, &name, plan.vip, obs, obs.vip_slice.as_ref()).await? {
        step("vip-written");
    }
    if obs.foreign_slices {
        routing::sweep_pair_slices(ctx, pair).await?;
        outcome.foreign_routes_removed = true;
    }
    if routing::write_service(&ctx.client, &ns, &services, &name, &build::vip_service(pair), obs.vip_shape.as_ref())
        .await?
    {
        outcome.foreign_routes_removed |= obs.vip_shape.as_ref().is_some_and(|s| !s.selector.is_empty());
        step("vip-written");
    }
    // The decision recorded the transition in the history; the time from
    // the commit point to the selector move is known only now.
    if let (Some(t0), Some(t)) = (committed_at, plan.status.history.first_mut()) {
        let ms = t0.elapsed().as_millis() as i64;
        t.lease_to_selector_millis = Some(ms);
        plan.status.last_transition = Some(t.clone());
        let total = failure_started.map_or(t0.elapsed(), |f| f.elapsed());
        ctx.metrics.failover_duration.observe(total.as_secs_f64());
    }
    let standby_name = build::standby_service_name(&name);
    if pair.spec.service.standby {
        let written =
            routing::write_slice(&slices, pair, &standby_name, plan.standby, obs, obs.standby_slice.as_ref()).await?;
        let svc = build::standby_service(pair);
        if routing::write_service(&ctx.client, &ns, &services, &standby_name, &svc, obs.standby_shape.as_ref()).await?
            || written
        {
            outcome.foreign_routes_removed |= obs.standby_shape.as_ref().is_some_and(|s| !s.selector.is_empty());
            step("standby-service-written");
        }
    } else {
        if obs.standby_exists {
            services.delete(&standby_name, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
        }
        if obs.standby_slice.is_some() {
            let slice = build::slice_name(&standby_name);
            slices.delete(&slice, &DeleteParams::default()).await.map(|_| ()).or_else(not_found)?;
        }
    }

    // Role labels, for people and for selectors of their own.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for m in Member::BOTH {
        let Some(p) = &obs.member(m).pod else { continue };
        let role = plan.status.members.iter().find(|s| s.name == m).map(|s| s.role);
        let word = match role {
            Some(Role::Active) => "active",
            Some(Role::Fenced) => "fenced",
            _ => "standby",
        };
        if p.role_label.as_deref() != Some(word) && !p.deleting {
            let patch = json!({"metadata": {"labels": {LABEL_ROLE: word}}});
            pods.patch(&p.name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ()).or_else(not_found)?;
            step("role-labelled");
        }
    }

    if current != Some(&plan.status) {
        let api: Api<HighAvailabilityPair> = Api::namespaced(ctx.client.clone(), &ns);
        // Server-side apply: fields the operator stops setting are removed.
        let patch = json!({"apiVersion": "hapair.dev/v1alpha1", "kind": "HighAvailabilityPair", "status": plan.status});
        api.patch_status(&name, &apply_params(), &Patch::Apply(&patch)).await?;
        step("status-written");
    }
    super::publish::publish(&ctx.metrics, pair, &plan.status, obs);
    outcome.status = Some(plan.status.clone());
    for e in &plan.events {
        let ev = Event {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.clone(),
            note: Some(e.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &pair.object_ref(&())).await {
            warn!(error = %err, "cannot publish event");
        }
    }
    if !plan.events.is_empty() {
        step("events-published");
    }
    Ok(outcome)
}

/// Logs a pair object that does not deserialize and tells it on the object
/// as a Warning Event, once per resourceVersion.
pub async fn report_invalid(ctx: &Context, bad: &kube::core::error_boundary::InvalidObject, told: &mut Option<String>) {
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
