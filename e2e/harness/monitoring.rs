//! A real Prometheus and Alertmanager for one test, built from their pinned
//! modules (`e2e/tools/prometheus`), run on the host next to the testbed.
//!
//! The Prometheus Operator is not installed, so its three resources the
//! chart ships are turned into what that operator would have generated from
//! them: a `ServiceMonitor` into a scrape job on Kubernetes endpoints
//! discovery, a `PodMonitor` into one on pod discovery (both keeping only
//! the targets their selectors and port names pick, with their relabelings),
//! and a `PrometheusRule`'s groups into a rule file. Discovery reads the
//! testbed's API server; the host routes to every pod address, so the
//! targets are scraped where they run. Alertmanager routes every alert to a
//! webhook served by the test, which records each notification with the
//! moment it arrived.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::loopback::{self, free_port};

/// How often Prometheus evaluates the rules, and Alertmanager's wait before
/// it sends a new group: short, so that a test measures the pipeline, not
/// the defaults.
pub const EVALUATION: Duration = Duration::from_secs(5);
pub const GROUP_WAIT: Duration = Duration::from_secs(1);

/// One alert as Alertmanager's webhook delivered it.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub at: Instant,
    /// `firing` or `resolved`.
    pub status: String,
    pub labels: Value,
    pub annotations: Value,
}

impl Delivered {
    pub fn name(&self) -> &str {
        self.labels["alertname"].as_str().unwrap_or_default()
    }
}

pub struct Monitoring {
    dir: PathBuf,
    prometheus: Child,
    alertmanager: Child,
    pub prometheus_url: String,
    delivered: Arc<Mutex<Vec<Delivered>>>,
    webhook: tokio::task::AbortHandle,
}

impl Monitoring {
    /// Starts Alertmanager, the webhook and Prometheus for the chart's
    /// rendered monitoring resources (`docs`: at least the ServiceMonitor,
    /// the PodMonitor and the PrometheusRule), and waits until both answer.
    pub async fn start(dir: &Path, kubeconfig: &str, docs: &[Value]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let delivered: Arc<Mutex<Vec<Delivered>>> = Arc::default();
        let (webhook_addr, webhook) = serve_webhook(delivered.clone()).await;

        let am_port = free_port();
        let am_config = json!({
            "route": {
                "receiver": "test",
                "group_by": ["alertname", "namespace", "pair"],
                "group_wait": format!("{}s", GROUP_WAIT.as_secs()),
                "group_interval": "5s",
                "repeat_interval": "1h"
            },
            "receivers": [{"name": "test", "webhook_configs": [
                {"url": format!("http://{webhook_addr}/alerts"), "send_resolved": true}
            ]}]
        });
        // JSON is YAML: both programs read these files as YAML.
        let alertmanager = spawn_alertmanager(dir, &am_config.to_string(), am_port);

        let rules = prometheus_rules(docs);
        assert!(!rules["groups"].as_array().unwrap().is_empty(), "no PrometheusRule among the chart's documents");
        std::fs::write(dir.join("rules.yml"), rules.to_string()).unwrap();
        let scrape = scrape_configs(docs, kubeconfig);
        assert!(scrape.len() >= 2, "the chart's ServiceMonitor and PodMonitor: {scrape:?}");
        let prom_config = json!({
            "global": {
                "scrape_interval": "15s",
                "evaluation_interval": format!("{}s", EVALUATION.as_secs())
            },
            "rule_files": [dir.join("rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [format!("127.0.0.1:{am_port}")]}]}]},
            "scrape_configs": scrape
        });
        std::fs::write(dir.join("prometheus.yml"), prom_config.to_string()).unwrap();
        let prom_port = free_port();
        let prometheus = spawn(
            "prometheus",
            dir,
            &[
                &format!("--config.file={}", dir.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()),
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ],
        );
        let m = Monitoring {
            dir: dir.to_path_buf(),
            prometheus,
            alertmanager,
            prometheus_url: format!("http://127.0.0.1:{prom_port}"),
            delivered,
            webhook,
        };
        m.wait_ready(&format!("http://127.0.0.1:{am_port}/-/ready"), "alertmanager").await;
        m.wait_ready(&format!("{}/-/ready", m.prometheus_url), "prometheus").await;
        m
    }

    async fn wait_ready(&self, url: &str, what: &str) {
        let start = Instant::now();
        while local_http_get(url).await.map(|(code, _)| code) != Ok(200) {
            assert!(start.elapsed() < Duration::from_secs(60), "{what} not ready: {}", self.log(what));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The tail of a program's log.
    pub fn log(&self, what: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{what}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// An instant query: the result vector (each `{metric, value}`).
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let url = format!("{}/api/v1/query?query={}", self.prometheus_url, urlencode(promql));
        let (code, body) = local_http_get(&url).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("{promql}: {code} {v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Every scrape target with its health, as `job → [health…]`.
    pub async fn targets(&self) -> Vec<(String, String, String)> {
        let url = format!("{}/api/v1/targets?state=active", self.prometheus_url);
        let Ok((200, body)) = local_http_get(&url).await else { return Vec::new() };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        v["data"]["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        (
                            t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                            t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                            t["health"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Prometheus's own view of its alerts now (pending and firing).
    pub async fn alerts(&self) -> Vec<Value> {
        let url = format!("{}/api/v1/alerts", self.prometheus_url);
        let Ok((200, body)) = local_http_get(&url).await else { return Vec::new() };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Every notification the webhook received so far.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().unwrap().clone()
    }

    /// Waits for a notification of `alertname` in `status` whose labels
    /// include `labels`, delivered after `since`.
    pub async fn wait_delivered(
        &self,
        alertname: &str,
        status: &str,
        labels: &[(&str, &str)],
        since: Instant,
        within: Duration,
    ) -> Delivered {
        let start = Instant::now();
        loop {
            let found = self.delivered().into_iter().find(|d| {
                d.at >= since
                    && d.name() == alertname
                    && d.status == status
                    && labels.iter().all(|(k, v)| d.labels[*k].as_str() == Some(*v))
            });
            if let Some(d) = found {
                return d;
            }
            assert!(
                start.elapsed() < within,
                "no {status} {alertname} {labels:?} delivered within {within:?}; delivered: {:?}; Prometheus's alerts: {:?}",
                self.delivered().iter().map(|d| (d.name().to_string(), d.status.clone())).collect::<Vec<_>>(),
                self.alerts().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Monitoring {
    fn drop(&mut self) {
        self.webhook.abort();
        for child in [&mut self.prometheus, &mut self.alertmanager] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts Alertmanager alone with `config` (YAML) and returns its
/// `/api/v2/status` once it serves, or why it would not start.
pub async fn alertmanager_loads(dir: &Path, config: &str) -> Result<Value, String> {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let mut child = spawn_alertmanager(dir, config, port);
    let log = || std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default();
    let start = Instant::now();
    let result = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("alertmanager exited ({status}): {}", log()));
        }
        if let Ok((200, body)) = local_http_get(&format!("http://127.0.0.1:{port}/api/v2/status")).await {
            break serde_json::from_slice(&body).map_err(|e| e.to_string());
        }
        if start.elapsed() > Duration::from_secs(30) {
            break Err(format!("alertmanager did not start: {}", log()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Alertmanager with `config` (YAML) on 127.0.0.1:`port`, its state in `dir`.
fn spawn_alertmanager(dir: &Path, config: &str, port: u16) -> Child {
    std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
    spawn(
        "alertmanager",
        dir,
        &[
            &format!("--config.file={}", dir.join("alertmanager.yml").display()),
            &format!("--storage.path={}", dir.join("alertmanager-data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            // One Alertmanager: no gossip, no wait for peers to settle.
            "--cluster.listen-address=",
        ],
    )
}

fn spawn(name: &str, dir: &Path, args: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(crate::common::tool(name))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The webhook receiver: every alert of every notification, stamped on
/// arrival.
async fn serve_webhook(delivered: Arc<Mutex<Vec<Delivered>>>) -> (SocketAddr, tokio::task::AbortHandle) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let delivered = delivered.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let delivered = delivered.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let at = Instant::now();
                        let code = match serde_json::from_slice::<Value>(&body) {
                            Ok(v) => {
                                let mut list = delivered.lock().unwrap();
                                for a in v["alerts"].as_array().into_iter().flatten() {
                                    list.push(Delivered {
                                        at,
                                        status: a["status"].as_str().unwrap_or_default().to_string(),
                                        labels: a["labels"].clone(),
                                        annotations: a["annotations"].clone(),
                                    });
                                }
                                200
                            }
                            Err(_) => 400,
                        };
                        let mut resp = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::new()));
                        *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    (addr, task.abort_handle())
}

/// Prometheus's label name for a Kubernetes label or annotation name.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The relabelings that keep a target whose object (`service` or `pod`)
/// carries the labels a monitor's `selector` asks for.
fn selector_relabelings(object: &str, selector: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        let k = sanitize(k);
        out.push(json!({
            "action": "keep",
            "source_labels": [format!("__meta_kubernetes_{object}_label_{k}"), format!("__meta_kubernetes_{object}_labelpresent_{k}")],
            "regex": format!("({});true", v.as_str().unwrap())
        }));
    }
    for e in selector["matchExpressions"].as_array().into_iter().flatten() {
        let k = sanitize(e["key"].as_str().unwrap());
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        let (action, labels, regex) = match e["operator"].as_str().unwrap() {
            "Exists" => ("keep", vec![format!("__meta_kubernetes_{object}_labelpresent_{k}")], "true".to_string()),
            "DoesNotExist" => {
                ("drop", vec![format!("__meta_kubernetes_{object}_labelpresent_{k}")], "true".to_string())
            }
            "In" => (
                "keep",
                vec![
                    format!("__meta_kubernetes_{object}_label_{k}"),
                    format!("__meta_kubernetes_{object}_labelpresent_{k}"),
                ],
                format!("({});true", values.join("|")),
            ),
            "NotIn" => {
                ("drop", vec![format!("__meta_kubernetes_{object}_label_{k}")], format!("({})", values.join("|")))
            }
            other => panic!("selector operator {other}"),
        };
        out.push(json!({"action": action, "source_labels": labels, "regex": regex}));
    }
    out
}

/// A monitor's own relabelings (camelCase, as in the resource) in
/// Prometheus's spelling.
fn user_relabelings(list: &Value) -> Vec<Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let mut out = json!({});
            for (from, to) in [
                ("sourceLabels", "source_labels"),
                ("targetLabel", "target_label"),
                ("regex", "regex"),
                ("replacement", "replacement"),
                ("separator", "separator"),
                ("action", "action"),
            ] {
                if !r[from].is_null() {
                    out[to] = r[from].clone();
                }
            }
            out
        })
        .collect()
}

fn namespaces(monitor: &Value) -> Value {
    let sel = &monitor["spec"]["namespaceSelector"];
    if sel["any"] == true {
        json!({})
    } else if let Some(names) = sel["matchNames"].as_array() {
        json!({"names": names})
    } else {
        // A monitor without a namespace selector watches its own namespace.
        json!({"names": [monitor["metadata"]["namespace"]]})
    }
}

/// The scrape jobs the Prometheus Operator generates for the chart's
/// ServiceMonitors and PodMonitors (one per endpoint), with
/// discovery through `kubeconfig`.
pub fn scrape_configs(docs: &[Value], kubeconfig: &str) -> Vec<Value> {
    let mut jobs = Vec::new();
    for m in docs {
        let kind = m["kind"].as_str().unwrap_or_default();
        let (object, role, endpoints) = match kind {
            "ServiceMonitor" => ("service", "endpoints", &m["spec"]["endpoints"]),
            "PodMonitor" => ("pod", "pod", &m["spec"]["podMetricsEndpoints"]),
            _ => continue,
        };
        let (ns, name) = (m["metadata"]["namespace"].as_str().unwrap(), m["metadata"]["name"].as_str().unwrap());
        let prefix = if kind == "ServiceMonitor" { "serviceMonitor" } else { "podMonitor" };
        for (i, ep) in endpoints.as_array().into_iter().flatten().enumerate() {
            let mut relabel = selector_relabelings(object, &m["spec"]["selector"]);
            let port = ep["port"].as_str().expect("endpoints by port name");
            if kind == "ServiceMonitor" {
                relabel.push(
                    json!({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": port}),
                );
            } else {
                relabel.push(json!({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": port}));
                relabel.push(json!({"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}));
            }
            relabel.push(json!({"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"}));
            relabel.push(json!({"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}));
            relabel
                .push(json!({"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"}));
            if kind == "ServiceMonitor" {
                relabel.push(json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"}));
                relabel.push(json!({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"}));
            } else {
                relabel.push(json!({"target_label": "job", "replacement": format!("{ns}/{name}")}));
            }
            relabel.push(json!({"target_label": "endpoint", "replacement": port}));
            relabel.extend(user_relabelings(&ep["relabelings"]));
            let mut job = json!({
                "job_name": format!("{prefix}/{ns}/{name}/{i}"),
                "honor_labels": ep["honorLabels"].as_bool().unwrap_or(false),
                "metrics_path": ep["path"].as_str().unwrap_or("/metrics"),
                "scheme": ep["scheme"].as_str().unwrap_or("http"),
                "kubernetes_sd_configs": [{"role": role, "kubeconfig_file": kubeconfig, "namespaces": namespaces(m)}],
                "relabel_configs": relabel
            });
            if let Some(interval) = ep["interval"].as_str() {
                job["scrape_interval"] = json!(interval);
            }
            jobs.push(job);
        }
    }
    jobs
}

/// The rule groups of the chart's PrometheusRules, as one rule file.
pub fn prometheus_rules(docs: &[Value]) -> Value {
    let groups: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .flat_map(|d| d["spec"]["groups"].as_array().cloned().unwrap_or_default())
        .collect();
    json!({ "groups": groups })
}

/// The two programs' local APIs answer at once or not at all.
async fn local_http_get(url: &str) -> Result<(u16, Vec<u8>), String> {
    loopback::get(url, Duration::from_secs(10)).await.map(|(code, body)| (code, body.to_vec()))
}
