//! The end-to-end harness: a real control plane (the testbed), the real
//! operator binary, a kubelet stand-in running each member's agent and test
//! application as processes, a client that reaches the pair only through the
//! VIP Service's EndpointSlices (as kube-proxy would), and the safety checker.
#![allow(dead_code)]

pub mod checker;
pub mod kubelet;
pub mod netns;
pub mod proxy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hapair::api::{HighAvailabilityPair, Member, Mode};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::Value;
use tokio::process::Command;

use crate::common::{self, TestNamespace};
pub use kubelet::Kill;

pub struct Harness {
    pub client: Client,
    pub ns: TestNamespace,
    pub kubelet: Arc<kubelet::Kubelet>,
    pub dir: PathBuf,
    operators: Vec<OperatorReplica>,
}

/// One operator replica, restarted when it exits until told to stop.
struct OperatorReplica {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hapair")).parent().unwrap().to_path_buf()
}

pub fn hapair_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hapair"))
}

pub fn app_bin() -> PathBuf {
    let p = bin_dir().join("examples").join("hapair-e2e-app");
    assert!(p.exists(), "{} is missing: build it with `cargo build --examples` (make e2e does)", p.display());
    p
}

fn upstream_and_ca() -> (SocketAddr, String) {
    let text = std::fs::read_to_string(common::kubeconfig_path()).unwrap();
    let v: Value = serde_yaml::from_str(&text).unwrap();
    let cluster = &v["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().unwrap().trim_start_matches("https://").to_string();
    (server.parse().unwrap(), cluster["certificate-authority-data"].as_str().unwrap().to_string())
}

impl Harness {
    pub async fn new(name: &str) -> Self {
        Self::new_with(name, &[]).await
    }

    /// Like `new`, the first operator replica started with extra environment.
    pub async fn new_with(name: &str, operator_env: &[(&str, &str)]) -> Self {
        common::install_crd(&common::client().await).await;
        let mut h = Self::without_operator(name).await;
        h.start_operator_with(operator_env);
        h
    }

    /// A namespace and its kubelet, but no operator: the test installs one
    /// (with the Helm chart or the plain manifests) and the kubelet runs it.
    pub async fn without_operator(name: &str) -> Self {
        let client = common::client().await;
        let ns = TestNamespace::new(&client, name).await;
        let dir = std::env::temp_dir().join(format!("hapair-e2e-{}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        let (upstream, ca) = upstream_and_ca();
        let kubelet =
            kubelet::Kubelet::start(client.clone(), &ns.name, dir.clone(), hapair_bin(), app_bin(), upstream, ca).await;
        Harness { client, ns, kubelet, dir, operators: Vec::new() }
    }

    /// Starts one more operator replica; returns its index.
    pub fn start_operator(&mut self) -> usize {
        self.start_operator_with(&[])
    }

    /// Starts replica `operator-<i>` and, like its Deployment would,
    /// starts it again whenever it exits by itself (an operator that loses
    /// leadership stops on purpose); `kill_operator` ends it for good. A
    /// replica given extra environment (fault injection) is not restarted:
    /// its test plays the Deployment.
    pub fn start_operator_with(&mut self, env: &[(&str, &str)]) -> usize {
        let i = self.operators.len();
        let restart = env.is_empty();
        let log_path = self.dir.join(format!("operator.{i}.log"));
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ns = self.ns.name.clone();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
                let mut child = Command::new(hapair_bin())
                    .arg("operator")
                    .env("KUBECONFIG", common::kubeconfig_path())
                    .env("HAPAIR_WATCH_NAMESPACES", &ns)
                    .env("POD_NAMESPACE", &ns)
                    .env("POD_NAME", format!("operator-{i}"))
                    .env("HAPAIR_METRICS_ADDR", "127.0.0.1:0")
                    .env("HAPAIR_HEALTH_ADDR", "127.0.0.1:0")
                    .env("HAPAIR_LEADER_LEASE_SECONDS", "4")
                    .env("HAPAIR_AGENT_IMAGE", "hapair:e2e")
                    .env("RUST_LOG", std::env::var("HAPAIR_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .kill_on_drop(true)
                    .spawn()
                    .expect("operator starts");
                tokio::select! {
                    _ = child.wait() => {}
                    _ = stopped.changed() => {
                        let _ = child.kill().await;
                        return;
                    }
                }
                if !restart {
                    return;
                }
                // The kubelet's restart back-off, shortened.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        self.operators.push(OperatorReplica { stop, task });
        i
    }

    /// kill -9 of one operator replica; it is not restarted.
    pub async fn kill_operator(&mut self, i: usize) {
        let o = &mut self.operators[i];
        let _ = o.stop.send(true);
        let _ = (&mut o.task).await;
    }

    pub fn pairs(&self) -> Api<HighAvailabilityPair> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Applies a pair (server-side apply, as `kubectl apply --server-side`).
    pub async fn apply(&self, pair: &Value) {
        common::apply(&common::dynamic_pairs(&self.client, &self.ns.name), pair).await.expect("pair accepted");
    }

    pub async fn pair(&self, name: &str) -> HighAvailabilityPair {
        self.pairs().get(name).await.unwrap()
    }

    /// Waits until `check` holds for the pair, or fails with the last status.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&HighAvailabilityPair) -> bool,
    ) -> HighAvailabilityPair {
        let start = Instant::now();
        loop {
            if let Ok(p) = self.pairs().get(name).await
                && check(&p)
            {
                return p;
            }
            if start.elapsed() > timeout {
                let p = self.pairs().get(name).await.ok();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; status: {}\nlogs in {}",
                    serde_json::to_string_pretty(&p.and_then(|p| p.status)).unwrap(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_enabled(&self, name: &str, timeout: Duration) -> HighAvailabilityPair {
        self.wait_for(name, "mode Enabled", timeout, |p| {
            p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Enabled) && s.active_member.is_some())
        })
        .await
    }

    pub fn kill(&self, name: &str, member: Member, how: Kill) {
        self.kubelet.kill(&member.pod_name(name), how);
    }

    pub fn partition(&self, name: &str, member: Member, cut: bool) {
        self.kubelet.partition_from_api(&member.pod_name(name), cut);
    }

    pub async fn merge_spec(&self, name: &str, patch: Value) {
        self.pairs()
            .patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": patch})))
            .await
            .unwrap();
    }

    /// mTLS client config holding the pair's client certificate.
    pub async fn pair_tls(&self, name: &str) -> Arc<rustls::ClientConfig> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns.name);
        let s = secrets.get(&format!("{name}-tls")).await.unwrap();
        let get = |k: &str| String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap();
        hapair::tls::client_config(&hapair::tls::Identity {
            ca: get(hapair::tls::CA_CERT),
            cert: get(hapair::tls::CLIENT_CERT),
            key: get(hapair::tls::CLIENT_KEY),
        })
        .unwrap()
    }

    /// The host directory standing for a member's data volume (its PVC).
    pub fn data_dir(&self, pair: &str, member: Member) -> PathBuf {
        self.dir.join("pvc").join(format!("{pair}-{member}-data"))
    }

    /// How to reach a member's agent over mTLS, with the given client TLS.
    pub async fn agent_target(
        &self,
        pair: &str,
        member: Member,
        tls: Arc<rustls::ClientConfig>,
    ) -> hapair::http::Target {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let pod = pods.get(&member.pod_name(pair)).await.unwrap();
        let ip: std::net::IpAddr = pod.status.and_then(|s| s.pod_ip).expect("pod IP").parse().unwrap();
        let server_name =
            hapair::tls::server_name(&hapair::tls::member_server_name(member, pair, &self.ns.name)).unwrap();
        hapair::http::Target { addr: std::net::SocketAddr::new(ip, 7443), server_name, tls }
    }

    pub async fn checker(&self, name: &str) -> checker::Checker {
        self.checker_with_grace(name, Duration::from_secs(1)).await
    }

    /// A checker that allows the VIP to lag the Lease for `grace` (one
    /// reconcile of a live operator, or longer when a test kills it).
    pub async fn checker_with_grace(&self, name: &str, grace: Duration) -> checker::Checker {
        let tls = self.pair_tls(name).await;
        let dirs = [self.data_dir(name, Member::Primary), self.data_dir(name, Member::Secondary)];
        checker::Checker::start(self.client.clone(), &self.ns.name, name, tls, 7443, grace, dirs)
    }

    /// Index of the operator replica holding the operators' Lease.
    pub async fn leader(&self) -> Option<usize> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        let l = leases.get_opt("hapair-operator").await.ok()??;
        l.spec?.holder_identity?.strip_prefix("operator-")?.parse().ok()
    }

    /// One request through the VIP: the ready endpoints of the Service's
    /// EndpointSlices, as kube-proxy sees them.
    pub async fn vip(&self, service: &str, path: &str) -> Result<(u16, String), String> {
        VipClient { client: self.client.clone(), ns: self.ns.name.clone() }.request(service, path).await
    }
}

/// A minimal HTTP/1.1 request with a one-second deadline.
pub async fn http_request(target: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(target).await.map_err(|e| e.to_string())?;
        let method = if path.starts_with("/write") { "POST" } else { "GET" };
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nhost: vip\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let code = text.get(9..12).and_then(|c| c.parse().ok()).ok_or("bad response")?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(1), io).await.map_err(|_| "timeout".to_string())?
}

/// A pair for the scenarios: the test application behind the VIP on 8080,
/// with an HTTP health check on it.
pub fn test_pair(name: &str, interval: i32, extra: Value) -> Value {
    let mut p = serde_json::json!({
        "apiVersion": "hapair.dev/v1alpha1",
        "kind": "HighAvailabilityPair",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"containers": [{"name": "app", "image": "hapair-e2e-app", "ports": [{"containerPort": 8080}]}]}},
            "service": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            "heartbeat": {"intervalSeconds": interval, "missedThreshold": 3},
            "healthCheck": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}
        }
    });
    common::merge(&mut p, &extra);
    p
}

impl Drop for Harness {
    fn drop(&mut self) {
        for o in &self.operators {
            // Dropping the task drops its child, which kills it.
            o.task.abort();
        }
        if std::env::var_os("HAPAIR_E2E_KEEP").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes through the VIP in the background and records what was
/// acknowledged and the longest run of failed requests.
pub struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<WriteLog>,
}

#[derive(Debug, Default, Clone)]
pub struct WriteLog {
    pub acknowledged: Vec<(u64, i64)>,
    pub failed: u64,
    /// From the first failed request to the next successful one, the longest.
    pub longest_outage: Duration,
}

impl Harness {
    pub fn writer(&self, name: &str) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, ns, svc, flag) = (self.client.clone(), self.ns.name.clone(), name.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let h = VipClient { client, ns };
            let mut log = WriteLog::default();
            let mut failing_since: Option<Instant> = None;
            let mut n = 0u64;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match h.request(&svc, &format!("/write?key=k{n}&value={n}")).await {
                    Ok((200, body)) => {
                        let epoch = body.trim_start_matches("epoch=").parse().unwrap_or(0);
                        log.acknowledged.push((n, epoch));
                        if let Some(t) = failing_since.take() {
                            log.longest_outage = log.longest_outage.max(t.elapsed());
                        }
                    }
                    _ => {
                        log.failed += 1;
                        failing_since.get_or_insert_with(Instant::now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log
        });
        Writer { stop, task }
    }
}

impl WriteLog {
    /// Acknowledged writes missing from a member's `writes.log` (the test
    /// application appends `EPOCH kN N` and fsyncs before it answers).
    pub fn missing_from(&self, data_dir: &std::path::Path) -> Vec<u64> {
        let text = std::fs::read_to_string(data_dir.join("writes.log")).unwrap_or_default();
        let held: std::collections::HashSet<u64> =
            text.lines().filter_map(|l| l.split(' ').nth(2)).filter_map(|n| n.parse().ok()).collect();
        self.acknowledged.iter().map(|(n, _)| *n).filter(|n| !held.contains(n)).collect()
    }
}

impl Writer {
    pub async fn stop(self) -> WriteLog {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// The VIP client on its own, for background tasks.
struct VipClient {
    client: Client,
    ns: String,
}

impl VipClient {
    async fn request(&self, service: &str, path: &str) -> Result<(u16, String), String> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.ns);
        let list = slices
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await
            .map_err(|e| e.to_string())?;
        let target = list.items.iter().find_map(|s| {
            let port = s.ports.iter().flatten().find_map(|p| p.port).unwrap_or(8080);
            s.endpoints
                .iter()
                .find(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .and_then(|e| e.addresses.first())
                .map(|a| format!("{a}:{port}"))
        });
        match target {
            Some(t) => http_request(&t, path).await,
            None => Err("no ready endpoint".into()),
        }
    }
}
