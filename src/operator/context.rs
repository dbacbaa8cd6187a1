//! What every worker shares: the API client, the watch caches, the
//! builders' settings, the metrics and the Event recorder.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;

use super::build::BuildContext;
use super::stores::Stores;
use crate::api::HighAvailabilityPair;
use crate::metrics::OperatorMetrics;

/// How many pairs may run their supporting-objects pass at once (agent
/// RBAC, claims, stray EndpointSlices, the TLS Secret: reads, and writes
/// where something drifted). A new leader runs it for every pair at once,
/// and so would every pair again each period: with 1,000 pairs, thousands
/// of requests in one burst, which saturated the API server until the
/// operator's own leader renewal came too late and it stepped down (seen in
/// `make bench-scale`). A pair that finds no slot does not wait — its
/// failover decision comes first — and tries again shortly; only a new
/// pair (never had a Lease, so no decision to take) queues for its slot,
/// in order: before, each of 800 pairs created at once retried every
/// 500 ms and some waited minutes by the luck of the draw.
pub const SUPPORTING_AT_ONCE: usize = 16;

/// How many of those slots new pairs may hold at once: the rest stay free
/// for the running pairs, whose pass repairs a hand edit (an agent's Role,
/// a claim) and must not wait behind a creation burst. Had new pairs queued
/// on the shared slots alone, a running pair would have found none until
/// the whole burst was through (a queued waiter takes every freed slot).
pub const NEW_PAIRS_AT_ONCE: usize = 12;

/// How many workers may read their pair's TLS Secret for the first time at
/// once. A new leader starts a worker for every pair together, and each
/// reads its Secret before anything else: 1,000 reads in flight at once on
/// an API server also serving the leader's renewal. Queued, they take no
/// longer in all (the API server's work is the same), and a renewal waits
/// behind at most this many — twice this many when pairs whose holder
/// surely failed take their own turns (`Context::urgent_looks`) at once.
pub const FIRST_LOOKS_AT_ONCE: usize = 16;

/// What every worker shares.
pub struct Context {
    pub client: Client,
    /// Pairs as stored: one that no longer deserializes is kept as what it
    /// is, so it stalls nothing (see [`Context::pair`]).
    pub pairs: Stores<DeserializeGuard<HighAvailabilityPair>>,
    pub pods: Stores<Pod>,
    pub services: Stores<Service>,
    /// The EndpointSlices the operator writes for the pairs' Services.
    pub endpoint_slices: Stores<EndpointSlice>,
    pub leases: Stores<Lease>,
    pub jobs: Stores<Job>,
    /// The members' claims (`spec.storage`): one deleted or whose volume is
    /// lost wakes its pair at once.
    pub claims: Stores<PersistentVolumeClaim>,
    /// The agents' Roles and RoleBindings, and the NetworkPolicies when the
    /// operator makes them (`None`: not watched).
    pub roles: Stores<Role>,
    pub role_bindings: Stores<RoleBinding>,
    pub network_policies: Option<Stores<NetworkPolicy>>,
    pub build: BuildContext,
    pub metrics: OperatorMetrics,
    pub recorder: Recorder,
    /// Slots for the pairs' supporting-objects passes (see
    /// [`SUPPORTING_AT_ONCE`]).
    pub supporting_passes: SupportingSlots,
    /// Turns for a worker's first read of its pair's TLS Secret (see
    /// [`FIRST_LOOKS_AT_ONCE`]), first come first served.
    pub first_looks: tokio::sync::Semaphore,
    /// The same turns for pairs whose holder the caches already show
    /// failed for sure: they do not queue behind every other pair's.
    pub urgent_looks: tokio::sync::Semaphore,
}

impl Context {
    /// The pair as stored (shared with the cache, not copied): `.0` is
    /// `Err` when its object no longer deserializes (a CRD change, a hand
    /// edit through an old client); `None` when gone.
    pub fn pair(&self, ns: &str, name: &str) -> Option<Arc<DeserializeGuard<HighAvailabilityPair>>> {
        self.pairs.get(&ObjectRef::new(name).within(ns))
    }
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(ns))
    }
    pub fn lease(&self, ns: &str, name: &str) -> Option<Lease> {
        self.leases.get(&ObjectRef::new(name).within(ns)).map(|l| (*l).clone())
    }
    pub fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }
    pub fn endpoint_slice(&self, ns: &str, name: &str) -> Option<Arc<EndpointSlice>> {
        self.endpoint_slices.get(&ObjectRef::new(name).within(ns))
    }
    pub fn claim(&self, ns: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(ns))
    }
    pub fn role(&self, ns: &str, name: &str) -> Option<Arc<Role>> {
        self.roles.get(&ObjectRef::new(name).within(ns))
    }
    pub fn role_binding(&self, ns: &str, name: &str) -> Option<Arc<RoleBinding>> {
        self.role_bindings.get(&ObjectRef::new(name).within(ns))
    }
    pub fn network_policy(&self, ns: &str, name: &str) -> Option<Arc<NetworkPolicy>> {
        self.network_policies.as_ref()?.get(&ObjectRef::new(name).within(ns))
    }
    pub fn pod_finished(&self, ns: &str, name: &str) -> bool {
        self.pod(ns, name)
            .and_then(|p| p.status.clone())
            .and_then(|s| s.phase)
            .is_some_and(|p| p == "Failed" || p == "Succeeded")
    }

    /// Drops every metric series of a pair that is gone.
    pub fn forget(&self, ns: &str, name: &str) {
        self.metrics.forget_pair(ns, name);
    }
}

/// Slots for the pairs' supporting-objects passes: at most
/// [`SUPPORTING_AT_ONCE`] at once, of which new pairs, queued first come
/// first served, hold at most [`NEW_PAIRS_AT_ONCE`].
pub struct SupportingSlots {
    passes: tokio::sync::Semaphore,
    new_pair_turns: tokio::sync::Semaphore,
}

/// A pass's slot; given back when dropped.
pub type SupportingSlot<'a> = (tokio::sync::SemaphorePermit<'a>, Option<tokio::sync::SemaphorePermit<'a>>);

impl Default for SupportingSlots {
    fn default() -> Self {
        SupportingSlots {
            passes: tokio::sync::Semaphore::new(SUPPORTING_AT_ONCE),
            new_pair_turns: tokio::sync::Semaphore::new(NEW_PAIRS_AT_ONCE),
        }
    }
}

impl SupportingSlots {
    /// A new pair waits its turn; any other gets a slot now or `None`.
    pub async fn take(&self, new_pair: bool) -> Option<SupportingSlot<'_>> {
        if new_pair {
            let turn = self.new_pair_turns.acquire().await.ok()?;
            Some((self.passes.acquire().await.ok()?, Some(turn)))
        } else {
            Some((self.passes.try_acquire().ok()?, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn running_pairs_find_slots_while_a_creation_burst_queues() {
        let slots = SupportingSlots::default();
        let mut held = Vec::new();
        for _ in 0..NEW_PAIRS_AT_ONCE {
            held.push(slots.take(true).await.expect("a new pair's turn"));
        }
        // More new pairs queue behind those.
        let queued = tokio::time::timeout(std::time::Duration::from_millis(50), slots.take(true)).await;
        assert!(queued.is_err(), "a new pair past the new pairs' share waits");
        let mut running = Vec::new();
        for _ in NEW_PAIRS_AT_ONCE..SUPPORTING_AT_ONCE {
            running.push(slots.take(false).await.expect("a running pair finds a slot during the burst"));
        }
        assert!(slots.take(false).await.is_none(), "never more than SUPPORTING_AT_ONCE at once");
        // A new pair given back its slot lets the next one in, in order.
        held.pop();
        assert!(slots.take(true).await.is_some());
    }
}
