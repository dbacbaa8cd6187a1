//! The failover bench's second peer: client-go's leader election
//! (`e2e/peers/leaderelect`, built from the client-go module of the
//! testbed's Kubernetes) as a sidecar — the do-it-yourself pattern. Two pods
//! on the testbed's two nodes, each the same test application hapair's
//! members run plus the sidecar, which wins a Lease, labels its pod
//! `role=active` and writes the role files; a Service selects
//! `role=active`, so kube-controller-manager's EndpointSlice controller
//! and kube-proxy route to the winner. The application has a readiness
//! probe, as such a deployment would.
//!
//! Same client, same clock, same faults as hapair's series. The pattern
//! has no epoch to wait for (a killed application comes back in the same
//! pod), so the outage is the client's longest silence from its last
//! acknowledgement before the fault until it has been served steadily
//! (no 250 ms break) for 2 s.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

use crate::harness::nodes::{self, NodeFault, NodeFaultLock};
use crate::harness::probe::Probe;
use crate::harness::{APP_IMAGE, Harness};

pub const IMAGE: &str = "hapair.dev/e2e/leaderelect:1";

/// client-go's lease duration, renew deadline and retry period.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub name: &'static str,
    pub lease: Duration,
    pub renew: Duration,
    pub retry: Duration,
}

/// client-go's usual settings, and the same tuned to hapair's 1 s × 3.
pub const TIMINGS: [Timing; 2] = [
    Timing {
        name: "defaults",
        lease: Duration::from_secs(15),
        renew: Duration::from_secs(10),
        retry: Duration::from_secs(2),
    },
    Timing {
        name: "tuned_3s",
        lease: Duration::from_secs(3),
        renew: Duration::from_secs(2),
        retry: Duration::from_secs(1),
    },
];

const PODS: [&str; 2] = ["diy-a", "diy-b"];

async fn create<K>(h: &Harness, v: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(h.client.clone(), &h.ns.name);
    api.create(&PostParams::default(), &serde_json::from_value(v).expect("a valid object")).await.expect("created");
}

async fn objects(h: &Harness) {
    create::<ServiceAccount>(h, json!({"metadata": {"name": "diy"}})).await;
    create::<Role>(
        h,
        json!({"metadata": {"name": "diy"}, "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}
        ]}),
    )
    .await;
    create::<RoleBinding>(
        h,
        json!({"metadata": {"name": "diy"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "diy"},
        "subjects": [{"kind": "ServiceAccount", "name": "diy"}]}),
    )
    .await;
    create::<Service>(
        h,
        json!({"metadata": {"name": "diy"},
        "spec": {"selector": {"app": "diy", "role": "active"}, "ports": [{"port": 8080, "targetPort": 8080}]}}),
    )
    .await;
}

async fn node_names(h: &Harness) -> Vec<String> {
    let nodes: Api<Node> = Api::all(h.client.clone());
    let mut names: Vec<String> =
        nodes.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|n| n.metadata.name).collect();
    names.sort();
    names
}

fn pod(name: &str, node: &str, t: Timing) -> Pod {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "diy", "role": "standby"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "diy",
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "run", "emptyDir": {}}],
            "containers": [
                {"name": "app", "image": APP_IMAGE, "imagePullPolicy": "Never",
                 "args": ["--listen", "0.0.0.0:8080", "--run-dir", "/var/run/hapair"],
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1},
                 "volumeMounts": [{"name": "run", "mountPath": "/var/run/hapair"}]},
                {"name": "elect", "image": IMAGE, "imagePullPolicy": "Never",
                 "args": ["-lease", "diy", "-run-dir", "/var/run/hapair", "-lease-duration", secs(t.lease),
                          "-renew-deadline", secs(t.renew), "-retry-period", secs(t.retry)],
                 "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                 ],
                 "volumeMounts": [{"name": "run", "mountPath": "/var/run/hapair"}]}
            ]
        }
    }))
    .unwrap()
}

/// (Re)creates pod `i` fresh, waiting until it runs.
async fn fresh(h: &Harness, i: usize, node: &str, t: Timing) -> Result<(), String> {
    let pods = h.pods();
    let _ = pods.delete(PODS[i], &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
    let start = Instant::now();
    while pods.get_opt(PODS[i]).await.ok().flatten().is_some() {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("{} not deleted in 60 s", PODS[i]));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pods.create(&PostParams::default(), &pod(PODS[i], node, t)).await.map_err(|e| e.to_string())?;
    while pods.get_opt(PODS[i]).await.ok().flatten().is_none_or(|p| nodes::container_id(&p, "elect").is_none()) {
        if start.elapsed() > Duration::from_secs(90) {
            return Err(format!("{} not running in 90 s", PODS[i]));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn leader(h: &Harness) -> Option<usize> {
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
    let holder = leases.get_opt("diy").await.ok().flatten()?.spec?.holder_identity?;
    PODS.iter().position(|p| *p == holder)
}

/// One series of `runs` faults on the sidecar pattern at `t`: each run's
/// client outage (ms), and the runs that did not complete.
pub async fn series(fault: super::Fault, t: Timing, runs: usize, rng: &mut fastrand::Rng) -> (Vec<f64>, Vec<String>) {
    let _lock = fault.node().then(NodeFaultLock::take);
    let h = Harness::without_operator(&format!("bench-diy-{}", fault.name())).await;
    let (mut outages, mut failed) = (Vec::new(), Vec::new());
    objects(&h).await;
    let names = node_names(&h).await;
    for (i, node) in names.iter().enumerate().take(2) {
        if let Err(e) = fresh(&h, i, node, t).await {
            failed.push(e);
            return (outages, failed);
        }
    }
    let client = Probe::start(h.cluster_ip("diy").await);
    for run in 0..runs {
        let start = Instant::now();
        let mut lead = None;
        while start.elapsed() < Duration::from_secs(120) && lead.is_none() {
            if let Some(l) = leader(&h).await
                && client.wait_for(Instant::now(), Duration::from_millis(500), |a| a.member == PODS[l]).await.is_some()
            {
                lead = Some(l);
            }
        }
        let Some(l) = lead else {
            failed.push(format!("run {run}: no leader serving within 120 s"));
            break;
        };
        // A random phase of the renewal cycle (the retry period).
        tokio::time::sleep(Duration::from_millis(rng.u64(0..t.retry.as_millis() as u64))).await;
        let victim = h.pods().get(PODS[l]).await.unwrap();
        let n = nodes::node_number(&victim).expect("on a testbed node");
        let at = Instant::now();
        let held = match fault {
            super::Fault::Confirmed => {
                if let Err(e) = nodes::kill_container(&victim, "app") {
                    failed.push(format!("run {run}: kill: {e}"));
                }
                None
            }
            super::Fault::Frozen => Some(NodeFault::apply("freeze", "thaw", n)),
            super::Fault::Partitioned => Some(NodeFault::apply("partition", "heal", n)),
            _ => unreachable!("no switchover in the pattern"),
        };
        match client
            .outage_after(at, Duration::from_millis(250), Duration::from_secs(2), Duration::from_secs(120))
            .await
        {
            Some(ms) => {
                eprintln!("client-go {} {} run {run}: {} faulted, outage {ms:.0} ms", t.name, fault.name(), PODS[l]);
                outages.push(ms);
            }
            None => failed.push(format!("run {run}: not served steadily again within 120 s")),
        }
        if let Some(f) = held {
            f.undo();
        }
        // The old leader fresh (a killed container's restart back-off, a
        // sidecar that exits on losing the lead: both grow run by run).
        if let Err(e) = fresh(&h, l, &names[l], t).await {
            failed.push(format!("run {run}: {e}"));
            break;
        }
    }
    client.stop().await;
    (outages, failed)
}
