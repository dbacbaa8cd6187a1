//! Observe, the worker's half: read one pair's objects from the watch
//! caches and its agents from the poller into an [`Observed`], with what
//! the worker remembers between rounds (when the Lease last changed, how
//! long a failure has lasted). Reads only; writes nothing.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use kube::ResourceExt;

use super::context::Context;
use super::model::{Usable, usable};
use super::observe::{JobObs, LeaseObs, MemberObs, Observed, PodObs, ServiceShape, SliceShape};
use super::poller::{Endpoint, PollState};
use crate::api::{HighAvailabilityPair, Member};

/// What the worker remembers between rounds. Lost on restart, and every
/// default is the cautious one (a fresh worker waits a full lease duration
/// before calling a silent active failed).
pub struct Memory {
    /// Generation whose supporting objects (RBAC, claims) were last ensured,
    /// and when: re-checked on a new generation and every few minutes (they
    /// are not watched, and someone may delete them).
    pub supporting: Option<(Option<i64>, Instant)>,
    pub lease_rv: Option<String>,
    pub lease_seen: Instant,
    /// Since when there has been no Lease (as this worker saw it).
    pub lease_gone: Option<Instant>,
    pub failure: Option<(String, Instant)>,
    /// Since when the primary has been able to serve without a break.
    pub primary_usable_since: Option<Instant>,
    /// The status this worker last wrote. The watch cache can lag a write by
    /// a moment; deciding from a stale status would undo what the last round
    /// recorded (a transition, an acknowledged operation). The operator is the
    /// status's only writer, so its own last write is the truth.
    pub status: Option<crate::api::HighAvailabilityPairStatus>,
    /// Per member (primary, secondary): the time of the latest pruned
    /// quarantine already told as an Event.
    pub pruned_told: [Option<chrono::DateTime<chrono::Utc>>; 2],
    /// The supporting objects' resource versions when they last matched
    /// what the operator builds (see `drift::versions`).
    pub supporting_matched: Option<[Option<String>; 3]>,
    /// Until then, slices kube-controller-manager made for a selector the
    /// operator removed are looked for and deleted every round.
    pub sweep_slices_until: Option<Instant>,
    /// The expiry of the certificates in the pair's TLS Secret, as read.
    pub certificates: Option<crate::tls::Expiry>,
    /// The operator's TLS material towards this pair's agents.
    pub tls: Option<std::sync::Arc<crate::tls::Material>>,
    /// The pair's TLS Secret as last read or written.
    pub secret: Option<k8s_openapi::api::core::v1::Secret>,
    /// What the Secret records of CA rotations, and whose agents the one
    /// under way waits for.
    pub rotation: super::observe::RotationObs,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            supporting: None,
            lease_rv: None,
            lease_seen: Instant::now(),
            lease_gone: None,
            failure: None,
            primary_usable_since: None,
            status: None,
            pruned_told: [None, None],
            supporting_matched: None,
            sweep_slices_until: None,
            certificates: None,
            tls: None,
            secret: None,
            rotation: Default::default(),
        }
    }
}

/// Observe: the pair's objects from the watch caches, agents from the poller.
pub fn gather(ctx: &Context, pair: &HighAvailabilityPair, poll: &Mutex<PollState>, mem: &mut Memory) -> Observed {
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    let uid = pair.uid();
    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.iter().flatten().any(|o| Some(&o.uid) == uid.as_ref())
    };
    let agent_port = pair.spec.agent.port as u16;
    let mut obs = Observed { certificates: mem.certificates, rotation: mem.rotation.clone(), ..Default::default() };
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
        obs.lease = Some(LeaseObs::of(&lease, mem.lease_seen.elapsed(), crate::clock::now()));
    } else {
        mem.lease_rv = None;
    }
    if obs.lease.is_none() {
        obs.without_lease_for = mem.lease_gone.get_or_insert_with(Instant::now).elapsed();
    } else {
        mem.lease_gone = None;
    }
    if let Some(vip) = ctx.service(&ns, &name).filter(|s| owned(&s.metadata)) {
        obs.vip_exists = true;
        obs.vip_shape = Some(ServiceShape::of(&vip));
    }
    let standby_name = super::build::standby_service_name(&name);
    if let Some(sb) = ctx.service(&ns, &standby_name).filter(|s| owned(&s.metadata)) {
        obs.standby_exists = true;
        obs.standby_shape = Some(ServiceShape::of(&sb));
    }
    let slice = |service: &str| {
        ctx.endpoint_slice(&ns, &super::build::slice_name(service))
            .filter(|s| owned(&s.metadata))
            .map(|s| SliceShape::of(&s))
    };
    obs.vip_slice = slice(&name);
    obs.standby_slice = slice(&standby_name);
    // Slices copy their Service's labels, so the watch (on the pair label)
    // sees those other controllers make too.
    obs.foreign_slices = ctx.endpoint_slices.any_in_namespace(&ns, |s| {
        let labels = s.labels();
        labels.get(crate::api::LABEL_SERVICE_NAME).is_some_and(|svc| *svc == name || *svc == standby_name)
            && labels.get(crate::api::LABEL_SLICE_MANAGED_BY).map(String::as_str) != Some(crate::api::SLICE_MANAGER)
    });
    obs.resync_jobs =
        ctx.jobs.in_namespace_where(&ns, |j| owned(&j.metadata)).iter().filter_map(|j| JobObs::of(j)).collect();
    obs.resync_jobs.sort_by_key(|j| (j.created, j.name.clone()));
    obs.failure_for = mem.failure.as_ref().map(|(_, t)| t.elapsed());
    let missed = pair.spec.heartbeat.missed_threshold as u32;
    if usable(obs.member(Member::Primary), missed) == Usable::Yes {
        mem.primary_usable_since.get_or_insert_with(Instant::now);
    } else {
        mem.primary_usable_since = None;
    }
    obs.primary_usable_for = mem.primary_usable_since.map(|t| t.elapsed());
    obs
}
