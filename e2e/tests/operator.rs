//! The operator itself on the testbed: a pair it cannot read holds only
//! that pair, a deleted pair leaves no metric series behind, hand edits of
//! what it owns are put back, the Lease's epoch never goes backwards, the
//! application holds no API credential, and the quarantine is bounded.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Harness, test_pair};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(90);

/// Series of `metric` for `pair` in a Prometheus text page, with their values.
fn series<'a>(page: &'a str, metric: &str, pair: &str) -> Vec<&'a str> {
    let label = format!("pair=\"{pair}\"");
    page.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .filter(|l| metric.is_empty() || l.starts_with(&format!("{metric}{{")))
        .collect()
}

/// A harness with the pair `web` (heartbeat `interval` s x 3) Enabled: its
/// active member and epoch.
async fn up(name: &str, interval: i32) -> (Harness, hapair::api::Member, i64) {
    let h = Harness::new(name).await;
    h.apply(&test_pair("web", interval, json!({}))).await;
    let s = h.wait_enabled("web", BOOT).await.status.unwrap();
    let active = s.active_member.unwrap();
    (h, active, s.epoch)
}

impl Harness {
    /// Waits until the leader's metrics page satisfies `check`.
    async fn wait_metrics(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let page = self.operator_metrics(0).await;
            if let Ok(p) = &page
                && check(p)
            {
                return p.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}; metrics: {page:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn a_pair_the_operator_cannot_read_is_reported_and_held_while_every_other_pair_runs() {
    common::install_crd(&common::client().await).await;
    let mut h = Harness::without_operator("unreadable").await;
    h.apply(&test_pair("good", 1, json!({}))).await;
    h.apply(&test_pair("bad", 1, json!({}))).await;
    // A status an old client wrote: valid to the schema (int32 is not range
    // checked by the API server), out of range for the operator's types.
    let dynamic = common::dynamic_pairs(&h.client, &h.ns.name);
    let garbage = json!({"status": {"members": [{"name": "primary", "pod": "bad-primary", "role": "Standby",
                                                  "state": "Down", "missedHeartbeats": 99_999_999_999_i64}]}});
    dynamic
        .patch_status("bad", &PatchParams::default(), &Patch::Merge(&garbage))
        .await
        .expect("the API server stores it");
    let unreadable = h.pairs().get("bad").await.expect_err("the stored pair does not deserialize");
    assert!(
        unreadable.to_string().contains("missedHeartbeats") || unreadable.to_string().contains("invalid value"),
        "{unreadable}"
    );

    // The operator starts with the unreadable pair already stored: its first
    // list must not fail, the good pair comes up.
    h.start_operator();
    h.wait_enabled("good", BOOT).await;
    let events: Api<Event> = Api::namespaced(h.client.clone(), &h.ns.name);
    let start = Instant::now();
    let told = loop {
        let list = events.list(&ListParams::default().fields("involvedObject.name=bad")).await.unwrap();
        if let Some(e) = list.items.into_iter().find(|e| e.reason.as_deref() == Some("InvalidObject")) {
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no InvalidObject event on the unreadable pair");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(told.type_.as_deref(), Some("Warning"));
    let note = told.message.unwrap_or_default();
    assert!(note.contains("held") && note.contains("99999999999"), "the event says what is wrong: {note}");
    h.wait_metrics("hapair_pair_invalid 1 for the bad pair", |p| {
        series(p, "hapair_pair_invalid", "bad").iter().any(|l| l.ends_with(" 1"))
    })
    .await;
    let held = h.pods().list(&ListParams::default().labels("hapair.dev/pair=bad")).await.unwrap();
    assert!(held.items.is_empty(), "nothing is done for a pair whose spec cannot be read");

    // Fixed by hand: the pair is picked up like any other.
    dynamic.patch_status("bad", &PatchParams::default(), &Patch::Merge(&json!({"status": null}))).await.unwrap();
    h.wait_enabled("bad", BOOT).await;
    h.wait_metrics("hapair_pair_invalid 0 once fixed", |p| {
        series(p, "hapair_pair_invalid", "bad").iter().any(|l| l.ends_with(" 0"))
    })
    .await;
    h.kill_operator(0).await;
}

#[tokio::test]
async fn a_deleted_pair_leaves_no_metric_series_and_its_neighbour_keeps_its_own() {
    let h = Harness::new("metrics").await;
    h.apply(&test_pair("kept", 1, json!({}))).await;
    h.apply(&test_pair("gone", 1, json!({}))).await;
    h.wait_enabled("kept", BOOT).await;
    h.wait_enabled("gone", BOOT).await;
    let before = h
        .wait_metrics("series of both pairs", |p| {
            ["kept", "gone"].iter().all(|pair| {
                ["hapair_mode", "hapair_active_member", "hapair_missed_heartbeats", "hapair_heartbeat_age_seconds"]
                    .iter()
                    .all(|m| !series(p, m, pair).is_empty())
            })
        })
        .await;
    let kept_before = series(&before, "", "kept").len();
    h.pairs().delete("gone", &DeleteParams::default()).await.unwrap();
    let after = h.wait_metrics("no series of the deleted pair", |p| series(p, "", "gone").is_empty()).await;
    // Per-member series of a live pair may come and go with its members
    // (sync lag), but the pair's own are all still there.
    let kept_after = series(&after, "", "kept");
    for m in ["hapair_mode", "hapair_epoch", "hapair_active_member", "hapair_condition", "hapair_reconciles_total"] {
        assert!(!series(&after, m, "kept").is_empty(), "{m} of the kept pair is gone: {kept_after:?}");
    }
    assert!(kept_after.len() + 4 >= kept_before, "the kept pair lost series: {kept_before} -> {}", kept_after.len());
}

/// The VIP's routing edited by hand four ways: a selector given to the
/// Service (kube-controller-manager would then route it to whatever that
/// selects, beside the operator's slice), the operator's EndpointSlice
/// pointed at the standby, that slice deleted, and an Endpoints object
/// made for the Service. Each is undone at once,
/// and what the cluster routes — every slice of the Service — names the
/// active member alone.
#[tokio::test]
async fn hand_edits_of_the_vip_routing_are_put_back_at_once() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let (h, active, _) = up("drift", 1).await;
    let active_ip = h.member_pod("web", active).await.status.unwrap().pod_ip.unwrap();
    let standby_pod = h.member_pod("web", active.peer()).await;
    let standby_ip = standby_pod.status.clone().unwrap().pod_ip.unwrap();
    let services: Api<Service> = Api::namespaced(h.client.clone(), &h.ns.name);
    let slices: Api<EndpointSlice> = Api::namespaced(h.client.clone(), &h.ns.name);
    // Every ready address any slice of the Service names, and the count of
    // slices: what kube-proxy routes.
    let routed = || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.unwrap();
        let ready: Vec<String> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| e.addresses.clone())
            .collect();
        (ready, list.items.len())
    };
    let settled = |what: &'static str| {
        let routed = &routed;
        let services = &services;
        let active_ip = active_ip.clone();
        async move {
            let start = Instant::now();
            loop {
                let (ready, n) = routed().await;
                let selector = services.get("web").await.unwrap().spec.unwrap().selector;
                if ready == [active_ip.clone()] && n == 1 && selector.is_none() {
                    eprintln!("{what}: put back after {:?}", start.elapsed());
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{what}: the VIP routes to {ready:?} over {n} slices with selector {selector:?}, not only {active_ip}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // `Enabled` comes with the active's role, not with its readiness probe:
    // the slice names the active as ready once the kubelet says it is.
    settled("the pair's start").await;

    // A selector naming the standby: the endpoint controller adds a slice
    // for it until the operator removes the selector and that slice.
    let edit =
        json!({"spec": {"selector": {"hapair.dev/pair": "web", hapair::api::LABEL_MEMBER: active.peer().to_string()}}});
    services.patch("web", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let start = Instant::now();
    let mut saw_controller = false;
    while start.elapsed() < Duration::from_secs(2) && !saw_controller {
        saw_controller = routed().await.0.contains(&standby_ip);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "the endpoint controller's slice for the standby {}",
        if saw_controller { "was seen" } else { "was never seen" }
    );
    settled("a selector added to the Service").await;
    // The operator's own slice pointed at the standby.
    let edit = json!({"endpoints": [{"addresses": [standby_ip], "conditions": {"ready": true},
        "targetRef": {"kind": "Pod", "name": standby_pod.metadata.name, "uid": standby_pod.metadata.uid}}]});
    slices.patch("web-hapair", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    settled("the slice pointed at the standby").await;
    // The slice deleted.
    slices.delete("web-hapair", &Default::default()).await.unwrap();
    settled("the slice deleted").await;
    // A hand-made Endpoints object for the Service: kube-controller-manager
    // mirrors it into a slice of its own (labels copied), which routes to
    // the standby until the operator removes both — the object first, or
    // the mirroring makes the slice again.
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(h.client.clone(), &h.ns.name);
    let legacy = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "labels": {"hapair.dev/pair": "web"}},
        "subsets": [{"addresses": [{"ip": standby_ip}], "ports": [{"name": "http", "port": 8080}]}]});
    endpoints.create(&Default::default(), &serde_json::from_value(legacy).unwrap()).await.unwrap();
    let start = Instant::now();
    let mut mirrored = false;
    while start.elapsed() < Duration::from_secs(2) && !mirrored {
        mirrored = routed().await.1 > 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the mirrored slice {}", if mirrored { "was seen" } else { "was never seen" });
    settled("an Endpoints object made by hand").await;
    let start = Instant::now();
    while endpoints.get_opt("web").await.unwrap().is_some() {
        assert!(start.elapsed() < Duration::from_secs(10), "the hand-made Endpoints object is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Left alone after: nothing rewrites a slice that is right.
    let rv = slices.get("web-hapair").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        slices.get("web-hapair").await.unwrap().metadata.resource_version,
        rv,
        "a slice that is right is not written"
    );
    // The status and the plugin's screen say what the cluster routes.
    let p = h
        .wait_for("web", "the routing in the status", Duration::from_secs(10), |p| {
            p.status.as_ref().and_then(|s| s.routing.as_ref()).is_some_and(|r| r.member == Some(active))
        })
        .await;
    assert_eq!(p.status.unwrap().routing.unwrap().addresses, [active_ip]);
}

#[tokio::test]
async fn a_deleted_lease_comes_back_past_the_highest_epoch_for_the_member_that_served() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (h, active, epoch) = up("lease-gone", 1).await;
    let writer = h.writer("web").await;
    writer.wait_epoch(epoch, Duration::from_secs(30)).await;
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
    leases.delete("web", &DeleteParams::default()).await.unwrap();
    let p = h
        .wait_for("web", "the Lease back past the highest epoch", Duration::from_secs(30), |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.epoch > epoch && s.history.first().is_some_and(|t| t.reason == "LeaseRecreated"))
        })
        .await;
    let s = p.status.unwrap();
    assert_eq!((s.epoch, s.active_member), (epoch + 1, Some(active)), "the member that served keeps serving");
    let lease = leases.get("web").await.unwrap().spec.unwrap();
    assert_eq!(lease.lease_transitions, Some(epoch as i32 + 1), "the fencing token did not go backwards");
    assert!(lease.holder_identity.unwrap().starts_with(&format!("{active}/")));
    writer.wait_epoch(epoch + 1, Duration::from_secs(30)).await;
    let log = writer.stop().await;
    let epochs: Vec<i64> = log.acknowledged.iter().map(|(_, e)| *e).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "acknowledged epochs went backwards: {epochs:?}");
    let members: std::collections::BTreeSet<&str> = log.answered_by.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(members.len(), 1, "only the member that served answered: {members:?}");
}

/// The Lease edited by hand twice under writes: its holder moved to the
/// standby at the same epoch, then its epoch set back to 0. Each time it is
/// written again past the highest epoch for the member that served; the
/// standby never claims the epoch it saw the active hold (two members
/// active at one epoch is what the checker flags), and no acknowledged
/// write carries an epoch below an earlier one.
#[tokio::test]
async fn a_hand_edited_lease_is_written_again_past_the_highest_epoch_for_the_member_that_served() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (h, active, mut epoch) = up("lease-edit", 1).await;
    let checker = h.checker("web").await;
    let clients = h.clients("web", 3).await;
    let writer = h.writer("web").await;
    writer.wait_epoch(epoch, Duration::from_secs(30)).await;
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
    let standby_pod = h.member_pod("web", active.peer()).await;
    let standby_identity = format!("{}/{}", active.peer(), standby_pod.metadata.uid.unwrap());
    let edits = [json!({"spec": {"holderIdentity": standby_identity}}), json!({"spec": {"leaseTransitions": 0}})];
    for edit in edits {
        if edit["spec"].get("leaseTransitions").is_some() {
            // The test itself sets the epoch back: that write is the fault,
            // and only what hapair writes after it must be past the highest.
            checker.expect_lease_edit();
        }
        leases.patch("web", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
        let p = h
            .wait_for("web", "the Lease written again", Duration::from_secs(30), |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.epoch > epoch && s.history.first().is_some_and(|t| t.reason == "LeaseRestored"))
            })
            .await;
        let s = p.status.unwrap();
        assert_eq!((s.epoch, s.active_member), (epoch + 1, Some(active)), "after {edit}");
        let lease = leases.get("web").await.unwrap().spec.unwrap();
        assert_eq!(lease.lease_transitions, Some(epoch as i32 + 1), "after {edit}");
        assert!(lease.holder_identity.unwrap().starts_with(&format!("{active}/")), "after {edit}");
        epoch += 1;
        writer.wait_epoch(epoch, Duration::from_secs(30)).await;
    }
    let log = writer.stop().await;
    let epochs: Vec<i64> = log.acknowledged.iter().map(|(_, e)| *e).collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "acknowledged epochs went backwards: {epochs:?}");
    let members: std::collections::BTreeSet<&str> = log.answered_by.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(members.len(), 1, "only the member that served answered: {members:?}");
    harness::history::assert_sound(&clients.stop().await);
    checker.assert_clean();
}

/// The agent's Role widened, its RoleBinding given to another account, the
/// pair's NetworkPolicy opened to everyone and a member's role label
/// flipped, all by hand: each is put back within a reconcile (the watch
/// wakes the pair), and nothing is written again once it is back.
#[tokio::test]
async fn hand_edits_of_rbac_the_network_policy_and_role_labels_are_put_back() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let h = Harness::new_with("rbac-drift", &[("HAPAIR_AGENT_NETWORK_POLICY", "true")]).await;
    h.apply(&test_pair("web", 1, json!({}))).await;
    let s = h.wait_enabled("web", BOOT).await.status.unwrap();
    let active = s.active_member.unwrap();
    let roles: Api<Role> = Api::namespaced(h.client.clone(), &h.ns.name);
    let bindings: Api<RoleBinding> = Api::namespaced(h.client.clone(), &h.ns.name);
    let policies: Api<NetworkPolicy> = Api::namespaced(h.client.clone(), &h.ns.name);
    let pods = h.pods();
    let name = "web-hapair-agent";
    let (role0, binding0, policy0) =
        (roles.get(name).await.unwrap(), bindings.get(name).await.unwrap(), policies.get(name).await.unwrap());
    let merge = |v: serde_json::Value| Patch::Merge(v);
    roles
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "add", "path": "/rules/0/verbs/-", "value": "update"},
                    {"op": "remove", "path": "/rules/0/resourceNames"}
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    bindings
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(json!([
            {"op": "add", "path": "/subjects/-", "value": {"kind": "ServiceAccount", "name": "default", "namespace": h.ns.name}}
        ])).unwrap()))
        .await
        .unwrap();
    policies.patch(name, &PatchParams::default(), &merge(json!({"spec": {"ingress": [{}]}}))).await.unwrap();
    let pod = active.pod_name("web");
    pods.patch(
        &pod,
        &PatchParams::default(),
        &merge(json!({"metadata": {"labels": {hapair::api::LABEL_ROLE: "standby"}}})),
    )
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let (r, b, p) =
            (roles.get(name).await.unwrap(), bindings.get(name).await.unwrap(), policies.get(name).await.unwrap());
        let label =
            pods.get(&pod).await.unwrap().metadata.labels.unwrap_or_default().get(hapair::api::LABEL_ROLE).cloned();
        if r.rules == role0.rules
            && b.subjects == binding0.subjects
            && p.spec == policy0.spec
            && label.as_deref() == Some("active")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not put back: role {:?}, subjects {:?}, ingress {:?}, label {label:?}",
            r.rules,
            b.subjects,
            p.spec.and_then(|s| s.ingress)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("hand edits put back in {:?}", start.elapsed());
    // Back as built: left alone from now on.
    let versions = |r: Role, b: RoleBinding, p: NetworkPolicy| {
        (r.metadata.resource_version, b.metadata.resource_version, p.metadata.resource_version)
    };
    let before =
        versions(roles.get(name).await.unwrap(), bindings.get(name).await.unwrap(), policies.get(name).await.unwrap());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after =
        versions(roles.get(name).await.unwrap(), bindings.get(name).await.unwrap(), policies.get(name).await.unwrap());
    assert_eq!(before, after, "written again although nothing changed");
}

/// A member's quarantine holds a resync's files from 40 days ago and one
/// from now: with the default 30-day retention the old one is removed — after
/// a line recording it, and told as a `QuarantinePruned` Event — and the
/// recent one stays.
#[tokio::test]
async fn a_quarantine_past_its_retention_is_removed_with_a_record_and_an_event() {
    let h = Harness::new("quarantine").await;
    let synced = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2}
    }});
    h.apply(&test_pair("web", 1, synced)).await;
    let s = h.wait_enabled("web", BOOT).await.status.unwrap();
    let standby = s.active_member.unwrap().peer();
    let data = h.data_dir("web", standby).await;
    let quarantine = data.join(".hapair/quarantine");
    for (label, days) in [("resync-old", 40), ("resync-recent", 0)] {
        let files = quarantine.join(label).join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("kept.txt"), b"a version that lost a resync").unwrap();
        let at = chrono::Utc::now() - chrono::Duration::days(days);
        let record = json!({"path": "kept.txt", "reason": "onlyOnTarget", "member": standby.to_string(),
                            "size": 28, "hash": "x", "mtime": 0, "at": at});
        std::fs::write(quarantine.join(label).join("MANIFEST.jsonl"), format!("{record}\n")).unwrap();
    }
    // As the agent itself would have made them: owned by the owner of its
    // state directory.
    let state = std::fs::metadata(data.join(".hapair")).unwrap();
    let (owner, group) = (std::os::unix::fs::MetadataExt::uid(&state), std::os::unix::fs::MetadataExt::gid(&state));
    let mut stack = vec![quarantine.clone()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::chown(&p, Some(owner), Some(group)).unwrap();
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    let start = Instant::now();
    while quarantine.join("resync-old").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the quarantine past its retention is still there");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(quarantine.join("resync-recent/files/kept.txt").exists(), "the recent quarantine was removed");
    let record = std::fs::read_to_string(data.join(".hapair/quarantine-pruned.jsonl")).unwrap();
    assert!(record.contains("\"label\":\"resync-old\"") && record.contains("\"why\":\"retention\""), "{record}");
    let events: Api<Event> = Api::namespaced(h.client.clone(), &h.ns.name);
    let start = Instant::now();
    loop {
        let list = events.list(&ListParams::default().fields("involvedObject.name=web")).await.unwrap();
        if let Some(e) = list.items.into_iter().find(|e| e.reason.as_deref() == Some("QuarantinePruned")) {
            let note = e.message.unwrap_or_default();
            assert!(note.contains("resync-old") && note.contains(&standby.to_string()), "{note}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no QuarantinePruned event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn application_containers_hold_no_credential_that_can_touch_the_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    let h = Harness::new("privilege").await;
    h.apply(&test_pair("web", 1, json!({}))).await;
    // Enabled: the agents read and renew the Lease with their credential.
    h.wait_enabled("web", BOOT).await;
    for member in hapair::api::Member::BOTH {
        let pod = h.member_pod("web", member).await;
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        let (code, token) = harness::http_get(&format!("{ip}:8080"), "/api-credential").await;
        if code == 200 {
            // Show what such a credential allows before failing.
            let mut config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(common::kubeconfig_path()).unwrap(),
                &Default::default(),
            )
            .await
            .unwrap();
            config.auth_info =
                kube::config::AuthInfo { token: Some(token.trim().to_string().into()), ..Default::default() };
            let as_app: Api<Lease> = Api::namespaced(kube::Client::try_from(config).unwrap(), &h.ns.name);
            let forged = json!({"spec": {"holderIdentity": "forged"}});
            let r = as_app.patch("web", &PatchParams::default(), &Patch::Merge(&forged)).await;
            panic!("{member}'s application container holds an API token; patching the Lease with it: {r:?}");
        }
        assert_eq!(code, 404, "{member}: the app answers");
        let spec = pod.spec.unwrap();
        let mounts = |name: &str| {
            spec.containers.iter().find(|c| c.name == name).unwrap().volume_mounts.clone().unwrap_or_default()
        };
        let credential = "/var/run/secrets/kubernetes.io/serviceaccount";
        assert!(!mounts("app").iter().any(|m| m.mount_path == credential), "{member}: the app has no token mount");
        assert!(mounts(hapair::api::AGENT_CONTAINER).iter().any(|m| m.mount_path == credential), "the agent has one");
    }
}

#[tokio::test]
async fn the_member_a_forced_failover_leaves_stops_acting_as_active_at_once_not_at_its_next_renewal() {
    use k8s_openapi::api::coordination::v1::Lease;
    let h = Harness::new("told").await;
    // A long interval: without being told, the old active would go on
    // reading `active` for up to 10 s after the Lease moved.
    h.apply(&test_pair("web", 10, json!({}))).await;
    h.wait_enabled("web", BOOT).await;
    let tls = h.pair_tls("web").await;
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
    for round in 0..2 {
        let p = h.wait_enabled("web", BOOT).await;
        let (old, epoch) = p.status.map(|s| (s.active_member.unwrap(), s.epoch)).unwrap();
        let target = h.agent_target("web", old, tls.clone()).await;
        let op = json!({"operation": {"id": format!("forced-{round}"), "failover": {"force": true}}});
        h.merge_spec("web", op).await;
        // The moment the Lease moved, as the API server shows it.
        let start = Instant::now();
        let moved = loop {
            let l = leases.get("web").await.unwrap().spec.unwrap();
            if l.lease_transitions.unwrap_or(0) as i64 > epoch {
                break Instant::now();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the forced failover did not move the Lease");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let stood_down = loop {
            let s: hapair::proto::AgentStatus =
                hapair::http::get_json(&target, "/v1/status", Duration::from_secs(1)).await.unwrap();
            if s.role != hapair::api::Role::Active {
                break moved.elapsed();
            }
            assert!(moved.elapsed() < Duration::from_secs(15), "{old} still says active");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        eprintln!("round {round}: {old} stood down {stood_down:?} after the Lease moved");
        assert!(stood_down < Duration::from_millis(1500), "{old} was told only after {stood_down:?}");
        let id = format!("forced-{round}");
        h.wait_for("web", "the request to finish", Duration::from_secs(60), |p| {
            p.status.as_ref().is_some_and(|s| s.operations.iter().any(|o| o.id == id && o.phase.is_terminal()))
        })
        .await;
    }
}
