//! The chart's alerts delivered end to end: the operator installed by the
//! chart on the real nodes, a real Prometheus scraping it and the member
//! pods' agents through the chart's own ServiceMonitor and PodMonitor (as
//! the Prometheus Operator would configure it), evaluating the chart's
//! PrometheusRule, and a real Alertmanager delivering to a webhook. A
//! healthy pair raises nothing; a killed active, a lost standby and a split
//! brain each deliver their alert — with the pair, its namespace and its
//! runbook — within the alert's `for` plus one scrape and one evaluation.
//! The Grafana dashboard's queries are run against the same Prometheus.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use hapair::api::{ConditionStatus, HighAvailabilityPair, Mode, OperationPhase};
use harness::helm::{chart, helm, render, repo, wait_operator};
use harness::monitoring::{self, Monitoring};
use harness::{Harness, Kill, test_pair};
use serde_json::{Value, json};

use common::run;

/// The monitors' scrape interval and the standby-down alert's `for` here
/// (the chart's defaults are 15 s and 5 m).
const SCRAPE: Duration = Duration::from_secs(5);
const STANDBY_DOWN_FOR: Duration = Duration::from_secs(20);
/// What an alert may take past `for` + one scrape + one evaluation + the
/// Alertmanager's group wait: the operator's status write to its metric,
/// Prometheus's notifier queue, the webhook call.
const MARGIN: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(90);

fn condition(p: &HighAvailabilityPair, t: &str) -> Option<ConditionStatus> {
    p.status.as_ref()?.conditions.iter().find(|c| c.type_ == t).map(|c| c.status)
}

fn reason(p: &HighAvailabilityPair, t: &str) -> String {
    let c = p.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == t));
    c.map(|c| c.reason.clone()).unwrap_or_default()
}

/// How long a healthy pair is watched for any alert: a few minutes under
/// `make e2e`, one under `make test`.
fn quiet() -> Duration {
    Duration::from_secs(std::env::var("HAPAIR_ALERTS_QUIET_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(180))
}

/// Every alert in Prometheus (pending or firing) and every notification,
/// for this test's namespace.
async fn raised(m: &Monitoring, ns: &str) -> Vec<String> {
    let mut out: Vec<String> = m
        .alerts()
        .await
        .iter()
        .filter(|a| a["labels"]["namespace"] == ns)
        .map(|a| format!("{} {}", a["labels"]["alertname"], a["state"]))
        .collect();
    out.extend(
        m.delivered()
            .iter()
            .filter(|d| d.labels["namespace"] == ns)
            .map(|d| format!("{} delivered {}", d.name(), d.status)),
    );
    out
}

/// The alert as delivered says which pair, where, and how to respond.
fn assert_describes(d: &monitoring::Delivered, ns: &str, anchor: &str) {
    assert_eq!(d.labels["namespace"], ns, "{d:?}");
    assert_eq!(d.labels["pair"], "web", "{d:?}");
    let runbook = d.annotations["runbook_url"].as_str().unwrap_or_default();
    assert!(runbook.ends_with(&format!("README.md#{anchor}")), "runbook {runbook:?} in {d:?}");
    // Its templates filled in from the alert's labels.
    assert!(d.annotations["summary"].as_str().unwrap_or_default().contains(&format!("{ns}/web")), "{d:?}");
    // The runbook it links to is in the README.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap().to_lowercase();
    assert!(readme.contains(&format!("### {anchor}")), "no README heading for #{anchor}");
}

/// Runs every query of the chart's Grafana dashboard (its variables set to
/// this pair) against Prometheus; each must return data.
async fn dashboard_queries_return_data(m: &Monitoring, ns: &str) {
    let text = std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries: Vec<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["query"]["query"].as_str())
        .map(|q| {
            // `label_values(metric, label)` is Grafana's; the PromQL it runs.
            let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).unwrap();
            let (metric, label) = inner.rsplit_once(',').unwrap();
            format!("group by ({}) ({})", label.trim(), metric.trim())
        })
        .collect();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            queries.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");
    // What happened just now shows after the next scrape or two.
    let start = Instant::now();
    loop {
        let mut empty = Vec::new();
        for q in &queries {
            let q = q.replace("$namespace", ns).replace("$pair", "web").replace("$__rate_interval", "2m");
            let result = m.query(&q).await.unwrap_or_else(|e| panic!("dashboard query {q}: {e}"));
            if result.is_empty() {
                empty.push(q);
            }
        }
        if empty.is_empty() {
            return;
        }
        assert!(start.elapsed() < 3 * SCRAPE, "dashboard queries without data: {empty:#?}");
        tokio::time::sleep(SCRAPE).await;
    }
}

/// The dashboard's failovers panel, its range set to `range`: what it
/// plots for each transition type (one row per reason).
async fn failovers_panel(m: &Monitoring, ns: &str, range: &str) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(chart().join("files/dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let panel = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Failovers and switchovers")
        .expect("the dashboard's failovers panel");
    let q = panel["targets"][0]["expr"].as_str().unwrap();
    let q = q.replace("$namespace", ns).replace("$pair", "web").replace("$__rate_interval", range);
    let result = m.query(&q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    result
        .iter()
        .map(|s| {
            let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            (s["metric"]["type"].as_str().unwrap_or_default().to_string(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_alertmanager_for_a_failover_a_lost_standby_and_a_split_brain_and_never_for_a_healthy_pair() {
    let h = Harness::without_operator("alerts").await;
    common::install_crd(&h.client).await;
    let ns = h.ns.name.clone();
    let sets = [
        format!("watchNamespaces={{{ns}}}"),
        format!("metrics.serviceMonitor.interval={}s", SCRAPE.as_secs()),
        format!("metrics.podMonitor.interval={}s", SCRAPE.as_secs()),
        format!("prometheusRule.standbyDownFor={}s", STANDBY_DOWN_FOR.as_secs()),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let mut install = helm(&ns);
    install.args(["install", "hapair"]).arg(chart());
    for s in &sets {
        install.args(["--set", s]);
    }
    let (ok, out, err) = run(&mut install);
    assert!(ok, "helm install: {out}{err}");
    wait_operator(&h, "hapair").await;

    // The monitoring resources the same release renders when they are on.
    let mut with_monitoring = sets.clone();
    with_monitoring.extend([
        "metrics.serviceMonitor.enabled=true",
        "metrics.podMonitor.enabled=true",
        "prometheusRule.enabled=true",
    ]);
    let docs: Vec<Value> = render(&ns, &with_monitoring)
        .into_iter()
        .filter(|d| {
            ["ServiceMonitor", "PodMonitor", "PrometheusRule"].contains(&d["kind"].as_str().unwrap_or_default())
        })
        .collect();
    assert_eq!(docs.len(), 3, "{docs:?}");

    let spec = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2},
        "splitBrain": {"policy": "Manual"},
        // The shortest outage budget: 75 % after 45 s away, 90 % after 54 s.
        "standbyOutage": {"maxDurationSeconds": 60}
    }});
    h.apply(&test_pair("web", 1, spec)).await;
    h.wait_enabled("web", WAIT).await;
    h.wait_for("web", "Synced", WAIT, |p| condition(p, "Synced") == Some(ConditionStatus::True)).await;

    let m = Monitoring::start(&h.dir.join("monitoring"), &common::kubeconfig_path(), &docs).await;
    // Every target up: the operator's replicas through the Service, both
    // members' agents through their pods.
    let start = Instant::now();
    loop {
        let targets = m.targets().await;
        let up =
            |prefix: &str| targets.iter().filter(|(job, _, health)| job.starts_with(prefix) && health == "up").count();
        let (operators, agents) = (up("hapair"), up(&format!("{ns}/hapair-agents")));
        if operators >= 1 && agents == 2 {
            break;
        }
        assert!(start.elapsed() < WAIT, "targets not up: {targets:?}\n{}", m.log("prometheus"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let q = format!("hapair_active_member{{namespace=\"{ns}\", pair=\"web\"}}");
    let start = Instant::now();
    while m.query(&q).await.unwrap().is_empty() {
        assert!(start.elapsed() < WAIT, "no {q} scraped");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let agent_role = format!("hapair_agent_role{{namespace=\"{ns}\", pair=\"web\"}}");
    let roles = m.query(&agent_role).await.unwrap();
    assert!(!roles.is_empty(), "the agents' metrics carry the pair's labels: {roles:?}");

    // A healthy pair: nothing pending, firing or delivered.
    let start = Instant::now();
    while start.elapsed() < quiet() {
        let r = raised(&m, &ns).await;
        assert!(r.is_empty(), "a healthy pair raised {r:?} after {:?}", start.elapsed());
        tokio::time::sleep(SCRAPE).await;
    }
    eprintln!("alerts: a healthy pair raised nothing for {:?}", quiet());

    // The active killed: a confirmed failure, a failover, its alert.
    let p = h.pair("web").await;
    let (active, epoch) = (p.status.as_ref().unwrap().active_member.unwrap(), p.status.as_ref().unwrap().epoch);
    let killed = Instant::now();
    h.kill("web", active, Kill::App).await;
    h.wait_for("web", "the failover", WAIT, |p| p.status.as_ref().is_some_and(|s| s.epoch > epoch)).await;
    let moved = Instant::now();
    let bound = SCRAPE + monitoring::EVALUATION + monitoring::GROUP_WAIT + MARGIN;
    let d = m
        .wait_delivered("HapairFailoverHappened", "firing", &[("namespace", &ns), ("pair", "web")], killed, WAIT)
        .await;
    let took = d.at.saturating_duration_since(moved);
    eprintln!("alerts: HapairFailoverHappened delivered {took:?} after the failover was written (bound {bound:?})");
    assert!(took <= bound, "HapairFailoverHappened took {took:?}, more than {bound:?}");
    assert_describes(&d, &ns, "hapairfailoverhappened");
    // The dashboard counts it, though it is the pair's first failover: its
    // series is born with it, at 1, where increase() alone sees no rise.
    let start = Instant::now();
    loop {
        let plotted = failovers_panel(&m, &ns, "5m").await;
        let failovers: f64 = plotted.iter().filter(|(t, _)| t == "Failover").map(|(_, v)| v).sum();
        if failovers >= 0.5 {
            eprintln!("alerts: the failovers panel plots {plotted:?}");
            break;
        }
        assert!(start.elapsed() < 3 * SCRAPE, "the dashboard misses the first failover: {plotted:?}");
        tokio::time::sleep(SCRAPE).await;
    }
    h.wait_enabled("web", WAIT).await;
    h.wait_for("web", "Synced", WAIT, |p| condition(p, "Synced") == Some(ConditionStatus::True)).await;

    // The standby lost (its pod frozen): the pair runs Alone; the alert
    // waits its `for`, then comes; the outage budget's two alerts come as
    // it passes 75 % and 90 %; all resolve when the standby is back.
    let standby = h.pair("web").await.status.unwrap().active_member.unwrap().peer();
    let frozen = Instant::now();
    h.kill("web", standby, Kill::Freeze).await;
    h.wait_for("web", "Alone", WAIT, |p| p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Alone))).await;
    let alone = Instant::now();
    let bound = STANDBY_DOWN_FOR + SCRAPE + monitoring::EVALUATION + monitoring::GROUP_WAIT + MARGIN;
    let d = m.wait_delivered("HapairStandbyDown", "firing", &[("namespace", &ns), ("pair", "web")], frozen, WAIT).await;
    let took = d.at.saturating_duration_since(alone);
    eprintln!(
        "alerts: HapairStandbyDown delivered {took:?} after the pair ran Alone (for {STANDBY_DOWN_FOR:?}, bound {bound:?})"
    );
    assert!(took >= STANDBY_DOWN_FOR - Duration::from_secs(1), "HapairStandbyDown fired before its `for`: {took:?}");
    assert!(took <= bound, "HapairStandbyDown took {took:?}, more than {bound:?}");
    assert_describes(&d, &ns, "hapairstandbydown");
    let bound = SCRAPE + monitoring::EVALUATION + monitoring::GROUP_WAIT + MARGIN;
    for (why, alert) in
        [("Above75Percent", "HapairStandbyOutageBacklog75"), ("Above90Percent", "HapairStandbyOutageBacklog90")]
    {
        h.wait_for("web", why, WAIT, |p| reason(p, "StandbyOutage") == why).await;
        let crossed = Instant::now();
        let d = m.wait_delivered(alert, "firing", &[("namespace", &ns), ("pair", "web")], frozen, WAIT).await;
        let took = d.at.saturating_duration_since(crossed);
        eprintln!("alerts: {alert} delivered {took:?} after the condition said {why} (bound {bound:?})");
        assert!(took <= bound, "{alert} took {took:?}, more than {bound:?}");
        assert_describes(&d, &ns, "hapairstandbyoutagebacklog");
    }
    let thawed = Instant::now();
    h.thaw_all();
    h.wait_enabled("web", WAIT).await;
    for alert in ["HapairStandbyDown", "HapairStandbyOutageBacklog90"] {
        m.wait_delivered(alert, "resolved", &[("namespace", &ns), ("pair", "web")], thawed, WAIT).await;
    }

    // A split brain: files written on the standby behind the pair's back,
    // kept for the user to resolve (policy Manual).
    h.wait_for("web", "Synced", WAIT, |p| condition(p, "Synced") == Some(ConditionStatus::True)).await;
    // A resync the user asks for: its Job is what the resync panels show.
    h.merge_spec("web", json!({"operation": {"id": "rs-1", "resync": {"dryRun": false}}})).await;
    let p = h
        .wait_for("web", "resync rs-1", WAIT, |p| {
            p.status.as_ref().is_some_and(|s| s.operations.iter().any(|o| o.id == "rs-1" && o.phase.is_terminal()))
        })
        .await;
    let op = p.status.unwrap().operations.into_iter().find(|o| o.id == "rs-1").unwrap();
    assert_eq!(op.phase, OperationPhase::Succeeded, "{op:?}");
    // Every panel has something to show now: a failover and a resync Job.
    dashboard_queries_return_data(&m, &ns).await;
    let standby = h.pair("web").await.status.unwrap().active_member.unwrap().peer();
    let written = Instant::now();
    std::fs::write(h.data_dir("web", standby).await.join("stray.txt"), b"written on the standby").unwrap();
    h.wait_for("web", "SplitBrain", WAIT, |p| condition(p, "SplitBrain") == Some(ConditionStatus::True)).await;
    let split = Instant::now();
    let bound = SCRAPE + monitoring::EVALUATION + monitoring::GROUP_WAIT + MARGIN;
    let d = m.wait_delivered("HapairSplitBrain", "firing", &[("namespace", &ns), ("pair", "web")], written, WAIT).await;
    let took = d.at.saturating_duration_since(split);
    eprintln!("alerts: HapairSplitBrain delivered {took:?} after the condition was set (bound {bound:?})");
    assert!(took <= bound, "HapairSplitBrain took {took:?}, more than {bound:?}");
    assert_describes(&d, &ns, "hapairsplitbrain");

    let (ok, out, err) = run(helm(&ns).args(["uninstall", "hapair", "--wait"]));
    assert!(ok, "helm uninstall: {out}{err}");
}

/// The translation itself, on the chart's rendered resources: the jobs keep
/// only what the monitors select, under the names the Prometheus Operator
/// gives them.
#[test]
fn the_charts_monitors_become_the_scrape_jobs_the_prometheus_operator_would_make() {
    let docs = render(
        "ops",
        &[
            "watchNamespaces={shop}",
            "metrics.serviceMonitor.enabled=true",
            "metrics.podMonitor.enabled=true",
            "prometheusRule.enabled=true",
        ],
    );
    let jobs = monitoring::scrape_configs(&docs, "/k");
    let mut names: Vec<&str> = jobs.iter().map(|j| j["job_name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["podMonitor/ops/hapair-agents/0", "serviceMonitor/ops/hapair/0"]);
    let job = |name: &str| jobs.iter().find(|j| j["job_name"] == name).unwrap();
    let (svc, pods) = (job("serviceMonitor/ops/hapair/0"), job("podMonitor/ops/hapair-agents/0"));
    assert_eq!(svc["kubernetes_sd_configs"][0]["role"], "endpoints");
    assert_eq!(svc["kubernetes_sd_configs"][0]["namespaces"], json!({"names": ["ops"]}));
    assert_eq!(svc["honor_labels"], true);
    let keeps = |j: &Value| -> Vec<String> {
        j["relabel_configs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "keep")
            .map(|r| format!("{} {}", r["source_labels"], r["regex"]))
            .collect()
    };
    let svc_keeps = keeps(svc).join("\n");
    assert!(svc_keeps.contains("__meta_kubernetes_service_label_app_kubernetes_io_name"), "{svc_keeps}");
    assert!(svc_keeps.contains("__meta_kubernetes_endpoint_port_name\"] \"metrics\""), "{svc_keeps}");
    assert_eq!(pods["kubernetes_sd_configs"][0]["role"], "pod");
    assert_eq!(pods["kubernetes_sd_configs"][0]["namespaces"], json!({"names": ["shop"]}));
    let pod_keeps = keeps(pods).join("\n");
    for want in [
        "__meta_kubernetes_pod_labelpresent_hapair_dev_pair",
        "__meta_kubernetes_pod_labelpresent_hapair_dev_member",
        "__meta_kubernetes_pod_container_port_name\"] \"hapair-probe\"",
    ] {
        assert!(pod_keeps.contains(want), "{want} not in {pod_keeps}");
    }
    // The PodMonitor's own relabelings come last: the pair and member labels.
    let last: Vec<&Value> = pods["relabel_configs"].as_array().unwrap().iter().rev().take(2).collect();
    assert_eq!(last[0]["target_label"], "member");
    assert_eq!(last[1]["target_label"], "pair");
    let rules = monitoring::prometheus_rules(&docs);
    let alerts: Vec<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for want in ["HapairFailoverHappened", "HapairStandbyDown", "HapairSplitBrain"] {
        assert!(alerts.contains(&want), "{want} not in {alerts:?}");
    }
}

/// The README's Alertmanager route: Alertmanager starts with it as written,
/// and its matcher takes every alert the chart defines.
#[tokio::test]
async fn the_readmes_alertmanager_route_loads_and_takes_every_hapair_alert() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let (_, rest) = readme.split_once("<!-- alertmanager-route -->\n```yaml\n").expect("the route's marked block");
    let (block, _) = rest.split_once("```").unwrap();
    let dir = std::env::temp_dir().join(format!("hapair-am-route-{}", std::process::id()));
    let status = monitoring::alertmanager_loads(&dir, block).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(status["config"]["original"].as_str().unwrap_or_default().contains("ha-team"), "{status}");
    let _ = std::fs::remove_dir_all(&dir);

    let config: Value = serde_yaml::from_str(block).unwrap();
    let route = &config["route"]["routes"][0];
    assert_eq!(route["receiver"], "ha-team");
    let matcher = route["matchers"][0].as_str().unwrap();
    let pattern = matcher.strip_prefix("alertname=~\"").and_then(|m| m.strip_suffix('"')).expect(matcher);
    // Alertmanager anchors a matcher's expression at both ends.
    let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    let rules = monitoring::prometheus_rules(&render("ops", &["prometheusRule.enabled=true"]));
    let alerts: Vec<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    assert!(alerts.len() >= 15, "{alerts:?}");
    let missed: Vec<&String> = alerts.iter().filter(|a| !re.is_match(a)).collect();
    assert!(missed.is_empty(), "the route misses {missed:?}");
    assert!(!re.is_match("KubePodCrashLooping"), "the route takes other alerts too");
}
