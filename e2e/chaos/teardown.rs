//! What a deleted pair leaves behind: every object it owned must be gone
//! within a bound (the garbage collector follows the owner references), and
//! stay gone — an operator acting on what it knew before the deletion must
//! not create any of them again.

use std::time::{Duration, Instant};

use hapair::api::LABEL_PAIR;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ListParams;
use kube::{Api, Resource, ResourceExt};

use crate::harness::Harness;

/// How long the garbage collector may take.
const GONE: Duration = Duration::from_secs(90);
/// How long nothing may come back after that.
const STAYS_GONE: Duration = Duration::from_secs(5);

async fn names<K>(h: &Harness, pair: &str) -> Vec<String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(h.client.clone(), &h.ns.name);
    let kind = K::kind(&K::DynamicType::default()).to_string();
    // The pair's own label, or named after it (the Lease and the Services
    // carry the name; a Job or a pod carries the label).
    let all = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    all.iter()
        .filter(|o| {
            o.labels().get(LABEL_PAIR).is_some_and(|p| p == pair)
                || o.name_any() == pair
                || o.name_any().starts_with(&format!("{pair}-"))
        })
        .map(|o| format!("{kind}/{}", o.name_any()))
        .collect()
}

async fn owned(h: &Harness, pair: &str) -> Vec<String> {
    let mut out = Vec::new();
    if h.pairs().get_opt(pair).await.ok().flatten().is_some() {
        out.push(format!("HighAvailabilityPair/{pair}"));
    }
    out.extend(names::<Pod>(h, pair).await);
    out.extend(names::<Service>(h, pair).await);
    out.extend(names::<Lease>(h, pair).await);
    out.extend(names::<Secret>(h, pair).await);
    out.extend(names::<ServiceAccount>(h, pair).await);
    out.extend(names::<Role>(h, pair).await);
    out.extend(names::<RoleBinding>(h, pair).await);
    out.extend(names::<Job>(h, pair).await);
    out.extend(names::<NetworkPolicy>(h, pair).await);
    out.extend(names::<PersistentVolumeClaim>(h, pair).await);
    out
}

/// Waits until nothing of the deleted pair is left, then watches a while
/// longer; returns what was still there or came back (empty: clean).
pub async fn left_behind(h: &Harness, pair: &str) -> Vec<String> {
    let start = Instant::now();
    let mut left = owned(h, pair).await;
    while !left.is_empty() && start.elapsed() < GONE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = owned(h, pair).await;
    }
    if !left.is_empty() {
        return left.into_iter().map(|o| format!("{o} still there after {GONE:?}")).collect();
    }
    let gone = Instant::now();
    while gone.elapsed() < STAYS_GONE {
        let back = owned(h, pair).await;
        if !back.is_empty() {
            return back.into_iter().map(|o| format!("{o} created again after the deletion")).collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Vec::new()
}
