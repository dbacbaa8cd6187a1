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
/// failover decision comes first — and tries again shortly.
pub const SUPPORTING_AT_ONCE: usize = 16;

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
    pub supporting_passes: tokio::sync::Semaphore,
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
