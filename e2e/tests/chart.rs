//! The Helm chart and what ships with it: lint, values schema, a
//! server-side dry run of everything it renders, Pod Security `restricted`
//! for every pod hapair creates, the alerts under promtool, and a dashboard
//! that only queries metrics hapair exports.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Command;

use hapair::api::{HighAvailabilityPair, Member};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use serde_json::{Value, json};

use common::{run, tool};

use harness::helm::{chart, helm, render, repo, wait_operator};

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_chart_lints_and_bad_values_fail_with_a_message_naming_the_value() {
    let helm = tool("helm");
    for sets in [
        "",
        "prometheusRule.enabled=true,grafanaDashboard.enabled=true,metrics.serviceMonitor.enabled=true,\
         metrics.podMonitor.enabled=true,networkPolicy.operator.enabled=true,podAntiAffinity=hard",
        "watchNamespaces={shop,billing},serviceAccount.name=ops,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict"]).arg(chart());
        if !sets.is_empty() {
            cmd.args(["--set", sets]);
        }
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "helm lint --set {sets}: {out}{err}");
    }
    for (set, says) in [
        ("replicas=0", "/replicas"),
        ("replica=2", "'replica' not allowed"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("metrics.serviceMonitor.interval=often", "/metrics/serviceMonitor/interval"),
        ("logLevel=loud!", "/logLevel"),
        ("metrics.port=8081", "metrics.port and health.port must differ"),
        ("serviceAccount.create=false", "serviceAccount.name is required"),
    ] {
        let (ok, _, err) = run(Command::new(&helm).args(["template", "x"]).arg(chart()).args(["--set", set]));
        assert!(!ok, "{set} was accepted");
        assert!(err.contains(says), "{set}: the error does not say {says:?}: {err}");
    }
}

#[test]
fn the_chart_carries_the_generated_crd_and_defaults_to_the_image_make_image_builds() {
    let generated = std::fs::read_to_string(repo().join("crds/hapair.dev_highavailabilitypairs.yaml")).unwrap();
    let in_chart = std::fs::read_to_string(chart().join("crds/hapair.dev_highavailabilitypairs.yaml")).unwrap();
    assert_eq!(in_chart, generated, "charts/hapair/crds is stale: run `make generate`");
    let docs = render("hapair-system", &[]);
    let image = kind(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    let built = Command::new("make").args(["-s", "image-ref"]).current_dir(repo()).output().unwrap();
    assert_eq!(image, String::from_utf8_lossy(&built.stdout).trim(), "chart default vs `make image`");
}

#[test]
fn the_rbac_names_every_verb_and_never_a_wildcard() {
    for sets in [&[][..], &["watchNamespaces={shop,billing}"][..]] {
        let docs = render("hapair-system", sets);
        let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role").collect();
        assert!(!roles.is_empty());
        for r in &roles {
            for rule in r["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs"] {
                    let vals = rule[field].as_array().unwrap();
                    assert!(!vals.is_empty() && vals.iter().all(|v| v != "*"), "{field} in {rule}");
                }
                assert!(!rule["verbs"].as_array().unwrap().iter().any(|v| v == "escalate" || v == "bind"), "{rule}");
            }
        }
        if sets.is_empty() {
            assert_eq!(kind(&docs, "ClusterRole").len(), 1);
        } else {
            assert!(kind(&docs, "ClusterRole").is_empty(), "watching namespaces needs no cluster-wide grant");
            let ns: Vec<&str> =
                kind(&docs, "RoleBinding").iter().map(|b| b["metadata"]["namespace"].as_str().unwrap()).collect();
            assert!(ns.contains(&"shop") && ns.contains(&"billing"), "{ns:?}");
        }
    }
}

#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() {
    let docs = render("hapair-system", &["prometheusRule.enabled=true"]);
    let rule = kind(&docs, "PrometheusRule")[0];
    let dir = std::env::temp_dir().join(format!("hapair-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rules.yaml"), serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    std::fs::copy(repo().join("e2e/alerts/alerts_test.yaml"), dir.join("alerts_test.yaml")).unwrap();
    let promtool = tool("promtool");
    let (ok, out, err) = run(Command::new(&promtool).args(["check", "rules"]).arg(dir.join("rules.yaml")));
    assert!(ok, "promtool check rules: {out}{err}");
    let (ok, out, err) = run(Command::new(&promtool).args(["test", "rules"]).arg(dir.join("alerts_test.yaml")));
    assert!(ok, "promtool test rules: {out}{err}");
    // Every alert is unit-tested and has a runbook in the README.
    let tests = std::fs::read_to_string(dir.join("alerts_test.yaml")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap().to_lowercase();
    let names: Vec<String> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().map(|r| r["alert"].as_str().unwrap().to_string()))
        .collect();
    assert!(names.len() >= 13, "{names:?}");
    for n in &names {
        assert!(tests.contains(&format!("alertname: {n}")), "{n} has no promtool test");
        let anchor = rule_anchor(&rule["spec"], n);
        assert!(
            readme.contains(&format!("### {anchor}")) || readme.contains(&format!("id=\"{anchor}\"")),
            "{n}: no runbook `### {anchor}` in the README"
        );
    }
    metrics_exist(&rule["spec"].to_string(), "the alerts");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The README heading an alert's runbook_url points to.
fn rule_anchor(spec: &Value, alert: &str) -> String {
    let url = spec["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == alert)
        .unwrap()["annotations"]["runbook_url"]
        .as_str()
        .unwrap()
        .to_string();
    url.rsplit('#').next().unwrap().to_string()
}

/// Fails when `text` names a `hapair_*` metric that hapair does not export.
fn metrics_exist(text: &str, what: &str) {
    let known = hapair::metrics::metric_names();
    let mut found = 0;
    for (i, _) in text.match_indices("hapair_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.clone(), |n, s| n.strip_suffix(s).map_or(n.clone(), str::to_string));
        if name.starts_with("hapair_dev") {
            continue; // the label hapair.dev/pair, relabelled
        }
        assert!(known.contains(&base), "{what} use {name}, which hapair does not export (it has {known:?})");
        found += 1;
    }
    assert!(found > 0, "{what} use no hapair metric at all");
}

#[test]
fn the_dashboard_queries_only_metrics_hapair_exports_for_the_chosen_pair() {
    let text = std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let vars: Vec<&str> =
        d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vars, ["datasource", "namespace", "pair"]);
    let panels = d["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for want in ["Active member", "Mode", "Failovers", "Heartbeat age", "Sync lag", "Clock skew", "Resync"] {
        assert!(titles.iter().any(|t| t.starts_with(want)), "no panel for {want}: {titles:?}");
    }
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            metrics_exist(expr, &format!("panel {:?}", p["title"]));
            if !expr.contains("hapair_failover_duration_seconds") {
                assert!(expr.contains("namespace=\"$namespace\", pair=\"$pair\""), "{expr} is not per pair");
            }
        }
    }
    // The ConfigMap carries the same JSON.
    let docs = render("hapair-system", &["grafanaDashboard.enabled=true"]);
    let cm = kind(&docs, "ConfigMap")[0];
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(cm["data"]["hapair-pairs.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, d);
}

/// Server-side dry run of every rendered object (without the Prometheus
/// Operator's kinds, which the testbed does not serve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_everything_the_chart_renders() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let ns = common::TestNamespace::new(&client, "chart-dry").await;
    let watched = common::TestNamespace::new(&client, "chart-watched").await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for sets in [
        vec!["networkPolicy.operator.enabled=true", "grafanaDashboard.enabled=true"],
        vec![&*Box::leak(format!("watchNamespaces={{{}}}", watched.name).into_boxed_str())],
    ] {
        let docs = render(&ns.name, &sets);
        assert!(docs.len() >= 8, "{sets:?}: {} objects", docs.len());
        for doc in docs {
            let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
            let tm = obj.types.clone().unwrap();
            let (group, version) = tm.api_version.split_once('/').unwrap_or(("", &tm.api_version));
            let (ar, caps) = discovery
                .resolve_gvk(&kube::api::GroupVersionKind::gvk(group, version, &tm.kind))
                .unwrap_or_else(|| panic!("{} is not served", tm.kind));
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    Api::namespaced_with(client.clone(), obj.metadata.namespace.as_deref().unwrap_or(&ns.name), &ar)
                }
                Scope::Cluster => Api::all_with(client.clone(), &ar),
            };
            let name = obj.metadata.name.clone().unwrap();
            let pp = PatchParams {
                dry_run: true,
                field_manager: Some("hapair-chart-test".into()),
                force: true,
                ..Default::default()
            };
            api.patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .unwrap_or_else(|e| panic!("{} {name} refused: {e}", tm.kind));
        }
    }
}

/// Every example in deploy/examples is a valid pair (server-side dry run
/// through the CRD's schema and CEL rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_every_example_pair() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let ns = common::TestNamespace::new(&client, "chart-examples").await;
    let api = common::dynamic_pairs(&client, &ns.name);
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("deploy/examples")).unwrap() {
        let path = e.unwrap().path();
        let pair: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let obj: DynamicObject = serde_json::from_value(pair).unwrap();
        let pp = PatchParams { dry_run: true, field_manager: Some("hapair-examples".into()), ..Default::default() };
        api.patch(obj.metadata.name.as_deref().unwrap(), &pp, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("{} refused: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 4, "{n} examples");
}

/// Pod Security `restricted`, enforced by the API server's admission: the
/// operator's pod, a member pod (agent sidecar beside a restricted app) and
/// the resync Job's pod are all admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_hapair_creates_is_admitted_under_pod_security_restricted() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client, "chart-psa").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                               "pod-security.kubernetes.io/enforce-version": "latest"}}});
    namespaces.patch(&ns.name, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let dry = PostParams { dry_run: true, ..Default::default() };
    let admit = |what: String, pod: Pod| {
        let pods = pods.clone();
        let dry = dry.clone();
        async move {
            let mut pod = pod;
            pod.metadata.namespace = None;
            pod.metadata.owner_references = None;
            // (Service accounts are not made here: only the pod's security is checked.)
            pod.spec.as_mut().unwrap().service_account_name = None;
            pods.create(&dry, &pod).await.unwrap_or_else(|e| panic!("{what} refused: {e}"));
        }
    };
    // A pod that is not restricted is refused: the namespace does enforce.
    let loose: Pod = serde_json::from_value(json!({"metadata": {"name": "loose"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}))
    .unwrap();
    assert!(pods.create(&dry, &loose).await.is_err(), "the namespace does not enforce restricted");

    let docs = render(&ns.name, &[]);
    let template = &kind(&docs, "Deployment")[0]["spec"]["template"];
    let operator: Pod =
        serde_json::from_value(json!({"metadata": {"name": "operator"}, "spec": template["spec"]})).unwrap();
    admit("the operator's pod".into(), operator).await;

    let yaml = r#"
apiVersion: hapair.dev/v1alpha1
kind: HighAvailabilityPair
metadata: {name: web, uid: 00000000-0000-0000-0000-000000000001}
spec:
  template:
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: app
          image: registry.example/app:1.0
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
  service: {ports: [{name: http, port: 80}]}
  storage: {size: 1Gi, mountPath: /data}
  fileSync: {paths: [{path: .}]}
"#;
    let mut pair: HighAvailabilityPair = serde_yaml::from_str(yaml).unwrap();
    pair.metadata.namespace = Some(ns.name.clone());
    let ctx = hapair::operator::build::BuildContext { agent_image: "hapair:test".into(), agent_network_policy: None };
    for m in Member::BOTH {
        admit(format!("member pod {m}"), hapair::operator::build::member_pod(&pair, m, &ctx)).await;
    }
    let order = hapair::proto::ResyncOrder {
        label: "resync-2".into(),
        only_on_target: Default::default(),
        conflict: Default::default(),
        clocks_agree: true,
        dry_run: false,
        full: false,
    };
    let job =
        hapair::operator::build::resync_job(&pair, Member::Primary, "10.0.0.1:7443".parse().unwrap(), &order, &ctx);
    let template = job.spec.unwrap().template;
    let pod = Pod {
        metadata: kube::api::ObjectMeta { name: Some("resync".into()), ..Default::default() },
        spec: template.spec,
        ..Default::default()
    };
    admit("the resync Job's pod".into(), pod).await;
}

/// The testbed's kubectl (built with the control plane).
fn kubectl() -> Command {
    let bin = PathBuf::from(std::env::var("HAPAIR_TESTBED_BIN").expect("HAPAIR_TESTBED_BIN")).join("kubectl");
    let mut c = Command::new(bin);
    c.env("KUBECONFIG", common::kubeconfig_path());
    c
}

/// An example pair adapted to the test application (its image is on the nodes).
fn example_pair() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/examples/minimal.yaml")).unwrap();
    let mut pair: Value = serde_yaml::from_str(&text).unwrap();
    pair["spec"]["template"]["spec"]["containers"][0]["image"] = json!(harness::APP_IMAGE);
    pair["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["--listen", "0.0.0.0:8080"]);
    // Pod Security `restricted` (the kustomize test's namespace enforces it).
    pair["spec"]["template"]["spec"]["securityContext"] =
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
    pair["spec"]["template"]["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_uninstalls_an_operator_that_brings_a_pair_to_enabled() {
    let h = harness::Harness::without_operator("chart-helm").await;
    common::install_crd(&h.client).await;
    let ns = h.ns.name.clone();
    let watch = format!("watchNamespaces={{{ns}}}");
    // The operator runs with the chart's own RBAC (Roles in just this namespace).
    let np = "networkPolicy.agent.enabled=true";
    let (ok, out, err) = run(helm(&ns).args(["install", "hapair"]).arg(chart()).args([
        "--set",
        &watch,
        "--set",
        "logLevel=info",
        "--set",
        np,
    ]));
    assert!(ok, "helm install: {out}{err}");
    wait_operator(&h, "hapair").await;
    h.apply(&example_pair()).await;
    h.wait_enabled("web", std::time::Duration::from_secs(90)).await;
    // The operator made the pair's NetworkPolicy (the chart granted it that),
    // admitting this release's operator pods to the agent port.
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(h.client.clone(), &ns);
    let policy = policies.get("web-hapair-agent").await.expect("the pair's agent NetworkPolicy");
    let rule = &policy.spec.unwrap().ingress.unwrap()[0];
    let op = rule.from.as_ref().unwrap()[1].pod_selector.as_ref().unwrap().match_labels.clone().unwrap();
    assert_eq!(op["app.kubernetes.io/instance"], "hapair");
    leader_election_is_classified_by_the_charts_flow_schema(&h, &ns).await;

    // Upgrade: a new setting rolls the Deployment; the pair stays served.
    let (ok, out, err) = run(helm(&ns).args(["upgrade", "hapair"]).arg(chart()).args([
        "--set",
        &watch,
        "--set",
        "logLevel=debug",
        "--set",
        np,
    ]));
    assert!(ok, "helm upgrade: {out}{err}");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(h.client.clone(), &ns);
    let d = deployments.get("hapair").await.unwrap();
    let env = &d.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")));
    h.wait_enabled("web", std::time::Duration::from_secs(90)).await;
    let (ok, out, _) = run(helm(&ns).args(["status", "hapair"]));
    assert!(ok && out.contains("REVISION: 2"), "{out}");

    // Uninstall removes what the chart made; the CRD (and so every pair) stays.
    let (ok, out, err) = run(helm(&ns).args(["uninstall", "hapair", "--wait"]));
    assert!(ok, "helm uninstall: {out}{err}");
    assert!(deployments.get_opt("hapair").await.unwrap().is_none());
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(h.client.clone(), &ns);
    let chart_roles = kube::api::ListParams::default().labels("app.kubernetes.io/instance=hapair");
    assert!(roles.list(&chart_roles).await.unwrap().items.is_empty(), "the chart's Roles left behind");
    assert!(h.pairs().get_opt("web").await.unwrap().is_some(), "uninstalling the operator deletes no pair");
}

/// The API server says which FlowSchema and priority level classified a
/// request (`X-Kubernetes-PF-*` answer headers): a read of the leader Lease
/// as the operator's service account goes by the chart's FlowSchema to the
/// `leader-election` level, not to `workload-low` with every other service
/// account.
async fn leader_election_is_classified_by_the_charts_flow_schema(h: &harness::Harness, ns: &str) {
    use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
    let schema = Api::<FlowSchema>::all(h.client.clone())
        .get(&format!("hapair-{ns}-leader-election"))
        .await
        .expect("the chart's FlowSchema");
    let level = Api::<PriorityLevelConfiguration>::all(h.client.clone())
        .get("leader-election")
        .await
        .expect("the cluster's leader-election priority level");
    let mut config = common::config().await;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:hapair"));
    let as_operator = kube::Client::try_from(config).unwrap();
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/hapair");
    let request = hyper::Request::get(path).body(kube::client::Body::empty()).unwrap();
    let answer = as_operator.send(request).await.expect("the leader Lease read as the operator");
    assert_eq!(answer.status(), 200, "the operator's service account reads its leader Lease");
    let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    assert_eq!(header("X-Kubernetes-PF-FlowSchema-UID"), schema.metadata.uid, "classified by the chart's FlowSchema");
    assert_eq!(header("X-Kubernetes-PF-PriorityLevel-UID"), level.metadata.uid, "at the leader-election level");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_the_plain_manifests_is_idempotent_and_the_operator_never_makes_gitops_drift() {
    let h = harness::Harness::without_operator("chart-kustomize").await;
    let ns = h.ns.name.clone();
    // The `namespaced` overlay, pointed at this test's namespace (as a user's
    // own overlay on top of it would).
    // (Kustomize takes resources by relative path only.)
    let dir = repo().join("target").join(format!("kustomize-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let overlay = "../../deploy/overlays/namespaced";
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\nresources:\n  - {}\n\
             patches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n      metadata: {{name: hapair, namespace: hapair-system}}\n      spec: {{template: {{spec: {{containers: [{{name: operator, env: [{{name: HAPAIR_WATCH_NAMESPACES, value: {ns}}}]}}]}}}}}}\n",
            overlay
        ),
    )
    .unwrap();
    let apply = || {
        let mut c = kubectl();
        c.args(["apply", "--server-side", "--field-manager=gitops", "-k"]).arg(&dir);
        run(&mut c)
    };
    let (ok, out, err) = apply();
    assert!(ok, "kubectl apply -k: {out}{err}");
    let (ok, again, err) = apply();
    assert!(ok, "{err}");
    // Server-side apply reports every object, changed or not: compare what the
    // API server stored instead, namespaced and cluster-wide objects alike —
    // for the Deployment its generation, since its controller writes its
    // status (a new resourceVersion) as the pods become ready.
    let versions = || {
        let rv = "jsonpath={.items[*].metadata.resourceVersion}";
        let (ok0, generation, e0) =
            run(kubectl().args(["get", "deployment", "-n", &ns, "-o", "jsonpath={.items[*].metadata.generation}"]));
        assert!(ok0, "{e0}");
        let (ok1, mine, e1) = run(kubectl().args(["get", "serviceaccount,rolebinding,service", "-n", &ns, "-o", rv]));
        let (ok2, cluster, e2) = run(kubectl().args([
            "get",
            "clusterrole/hapair",
            "customresourcedefinition/highavailabilitypairs.hapair.dev",
            "-o",
            rv,
        ]));
        assert!(ok1 && ok2, "{e1}{e2}");
        format!("{generation} {mine} {cluster}")
    };
    let before = versions();
    let (ok, _, _) = apply();
    assert!(ok);
    let after = versions();
    assert_eq!(before, after, "a second apply changed something: {again}");

    wait_operator(&h, "hapair").await;
    let pair_file = dir.join("pair.yaml");
    std::fs::write(&pair_file, serde_yaml::to_string(&example_pair()).unwrap()).unwrap();
    let (ok, out, err) =
        run(kubectl().args(["apply", "--server-side", "--field-manager=gitops", "-n", &ns, "-f"]).arg(&pair_file));
    assert!(ok, "{out}{err}");
    h.wait_enabled("web", std::time::Duration::from_secs(90)).await;
    // The operator wrote status, labels, Leases and Services, never the spec:
    // a GitOps tool diffing the same file sees nothing to do.
    let (ok, diff, err) =
        run(kubectl().args(["diff", "--server-side", "--field-manager=gitops", "-n", &ns, "-f"]).arg(&pair_file));
    assert!(ok && diff.trim().is_empty(), "drift after the operator worked: {diff}{err}");
    let (ok, diff, err) = run(kubectl().args(["diff", "--server-side", "--field-manager=gitops", "-k"]).arg(&dir));
    assert!(ok && diff.trim().is_empty(), "the manifests drifted: {diff}{err}");

    // This namespace enforces Pod Security `restricted` (the base's Namespace,
    // renamed by the overlay): a pair whose template breaks it cannot get its
    // pods, and the pair says so in a Warning Event quoting the API server.
    let mut loose = example_pair();
    loose["metadata"]["name"] = json!("loose");
    loose["spec"]["template"]["spec"].as_object_mut().unwrap().remove("securityContext");
    h.apply(&loose).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), &ns);
    let start = std::time::Instant::now();
    loop {
        let found = events.list(&Default::default()).await.unwrap().items.into_iter().find(|e| {
            e.reason.as_deref() == Some("ReconcileFailed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("loose")
        });
        if let Some(e) = found {
            let note = e.note.unwrap_or_default();
            assert!(note.contains("PodSecurity") && note.contains("in a row failed"), "{note}");
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "no ReconcileFailed Event for the refused pair");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
