//! The end-to-end harness on the testbed's real Kubernetes: the real
//! operator binary, member pods run by real kubelets and containerd on two
//! nodes (the agent from hapair's image, the test application from its own),
//! a client that reaches the pair only through its Service's ClusterIP and
//! kube-proxy's rules, the faults a test injects, and the safety checker.
#![allow(dead_code)]

pub mod checker;
pub mod client;
pub mod delay;
pub mod helm;
pub mod history;
pub mod loopback;
pub mod monitoring;
pub mod nodes;
pub mod observer;
pub mod operators;
pub mod probe;
pub mod routes;
pub mod scrape;
pub mod states;
pub mod views;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hapair::api::{HighAvailabilityPair, Member, Mode};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::Value;

use crate::common::{self, TestNamespace};
pub use client::Answer;

/// How a test stops a member.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kill {
    /// kill -9 of the application container: the kubelet reports it
    /// terminated (a confirmed failure) and restarts it.
    App,
    /// The member's pod frozen, agent and application alike, while its node
    /// and kubelet run on: nothing confirms the failure, heartbeats just stop.
    Freeze,
}

pub struct Harness {
    pub client: Client,
    pub ns: TestNamespace,
    pub dir: PathBuf,
    operators: Vec<operators::OperatorReplica>,
    /// Faults to undo when the test ends, pass or fail: frozen pods' cgroups
    /// and pods cut from the API server.
    frozen: Mutex<Vec<PathBuf>>,
    cut: Mutex<Vec<Pod>>,
    /// Pairs of pods cut off from each other.
    apart: Mutex<Vec<(Pod, Pod)>>,
    /// Pod addresses the operator replicas are cut off from.
    operator_cut: Mutex<Vec<String>>,
    /// The image of the member pods' agent sidecars.
    agent_image: String,
}

pub fn hapair_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hapair"))
}

/// The hapair image the nodes hold (`make testbed-images` imports it): the
/// agent sidecar of every member pod, and the operator's image in the chart
/// tests.
pub fn hapair_image() -> String {
    std::env::var("HAPAIR_IMAGE_REF").unwrap_or_else(|_| format!("ghcr.io/hapair/hapair:{}", env!("CARGO_PKG_VERSION")))
}

/// The e2e test application's image (`e2e/app`, static, on an empty base).
pub const APP_IMAGE: &str = "hapair.dev/e2e/app:1";

/// hapair built with its fault hooks (`make testbed-images`): the chaos
/// suite's agents, whose wall clock a test can step.
pub const FAULT_AGENT_IMAGE: &str = "hapair.dev/e2e/hapair-fault:1";

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

    /// Like `new`, the member pods' agents running the fault-hook build.
    pub async fn with_fault_agents(name: &str) -> Self {
        common::install_crd(&common::client().await).await;
        let mut h = Self::without_operator(name).await;
        h.agent_image = FAULT_AGENT_IMAGE.into();
        h.start_operator();
        h
    }

    /// A namespace, but no operator: the test installs one (with the Helm
    /// chart or the plain manifests) and the nodes run it.
    pub async fn without_operator(name: &str) -> Self {
        let client = common::client().await;
        // Local volumes earlier tests released become Available again.
        nodes::testbed(&["recycle"]).expect("local volumes recycled");
        let ns = TestNamespace::new(&client, name).await;
        let dir = std::env::temp_dir().join(format!("hapair-e2e-{}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        Harness {
            client,
            ns,
            dir,
            operators: Vec::new(),
            frozen: Mutex::default(),
            cut: Mutex::default(),
            apart: Mutex::default(),
            operator_cut: Mutex::default(),
            agent_image: hapair_image(),
        }
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
        if let Some(p) = self.wait_for_opt(name, timeout, check).await {
            return p;
        }
        let p = self.pairs().get(name).await.ok();
        panic!(
            "timed out after {timeout:?} waiting for {what}; status: {}\nlogs in {}",
            serde_json::to_string_pretty(&p.and_then(|p| p.status)).unwrap(),
            self.dir.display()
        );
    }

    /// The pair once `check` holds for it; `None` after `timeout`.
    pub async fn wait_for_opt(
        &self,
        name: &str,
        timeout: Duration,
        check: impl Fn(&HighAvailabilityPair) -> bool,
    ) -> Option<HighAvailabilityPair> {
        let start = Instant::now();
        loop {
            if let Ok(p) = self.pairs().get(name).await
                && check(&p)
            {
                return Some(p);
            }
            if start.elapsed() > timeout {
                return None;
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

    /// Runs `kubectl hapair` on this namespace: success, stdout, stderr.
    pub fn plugin(&self, args: &[&str]) -> (bool, String, String) {
        self.plugin_command()(args)
    }

    /// [`Self::plugin`] as a function of its own, for a blocking task
    /// (a `--wait` that takes minutes must not hold a runtime thread).
    pub fn plugin_command(&self) -> impl Fn(&[&str]) -> (bool, String, String) + Send + 'static {
        let ns = self.ns.name.clone();
        move |args| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-hapair"))
                .args(["--kubeconfig", &common::kubeconfig_path(), "-n", &ns])
                .args(args)
                .output()
                .expect("plugin runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into(),
                String::from_utf8_lossy(&out.stderr).into(),
            )
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    pub async fn member_pod(&self, name: &str, member: Member) -> Pod {
        self.pods().get(&member.pod_name(name)).await.unwrap()
    }

    /// What a member's agent serves on /metrics (its probe port), or why not.
    pub async fn agent_metrics(&self, name: &str, member: Member) -> Result<String, String> {
        let pod = self.member_pod(name, member).await;
        let ip: std::net::IpAddr = pod.status.and_then(|s| s.pod_ip).ok_or("no pod IP")?.parse().unwrap();
        scrape::metrics_page(std::net::SocketAddr::new(ip, 7444)).await
    }

    pub async fn kill(&self, name: &str, member: Member, how: Kill) {
        let mut pod = self.member_pod(name, member).await;
        match how {
            Kill::App => {
                // The kubelet reports a restarted container a moment after
                // it runs, and a killed one a moment after it died: retry
                // until the container the status names is the one running.
                let start = Instant::now();
                loop {
                    match nodes::kill_container(&pod, "app") {
                        Ok(()) => break,
                        Err(e) if start.elapsed() > Duration::from_secs(60) => panic!("{e}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    pod = self.member_pod(name, member).await;
                }
            }
            Kill::Freeze => self.frozen.lock().unwrap().push(nodes::freeze_pod(&pod, true)),
        }
    }

    /// Freezes the agent container of a member (kill -STOP of the whole
    /// container): its application runs on, the agent neither renews nor
    /// rewrites the role files. `thaw_all` (or the end of the test) undoes it.
    pub async fn freeze_agent(&self, name: &str, member: Member) {
        let pod = self.member_pod(name, member).await;
        let cg = nodes::freeze_container(&pod, hapair::api::AGENT_CONTAINER, true).expect("agent frozen");
        self.frozen.lock().unwrap().push(cg);
    }

    /// Thaws every pod this test froze.
    pub fn thaw_all(&self) {
        for cg in self.frozen.lock().unwrap().drain(..) {
            nodes::set_freezer(&cg, false);
        }
    }

    /// Cuts (or restores) a member's pod from the API server only: its
    /// peer, the operator and clients still reach it.
    pub async fn partition(&self, name: &str, member: Member, cut: bool) {
        let pod = self.member_pod(name, member).await;
        nodes::cut_pod_from_api(&pod, cut);
        let mut list = self.cut.lock().unwrap();
        list.retain(|p| p.metadata.uid != pod.metadata.uid);
        if cut {
            list.push(pod);
        }
    }

    /// `n` clients writing through the pair's ClusterIP at once, their
    /// every operation recorded for [`history::check`].
    pub async fn clients(&self, name: &str, n: usize) -> history::Clients {
        history::Clients::start(self.cluster_ip(name).await, n)
    }

    /// Cuts (or restores) the two members' pods off from each other only:
    /// each still reaches the API server, the operator and its clients.
    pub async fn cut_members_apart(&self, name: &str, cut: bool) {
        let (a, b) = (self.member_pod(name, Member::Primary).await, self.member_pod(name, Member::Secondary).await);
        nodes::cut_pods_apart(&a, &b, cut);
        let mut list = self.apart.lock().unwrap();
        list.retain(|(x, _)| x.metadata.uid != a.metadata.uid);
        if cut {
            list.push((a, b));
        }
    }

    /// The resync Jobs' pods.
    async fn job_pods(&self) -> Vec<Pod> {
        let lp = ListParams::default().labels("app.kubernetes.io/component=resync");
        self.pods().list(&lp).await.map(|l| l.items).unwrap_or_default()
    }

    /// The UIDs of the pair's resync Job pods that exist now: a fault meant
    /// for the next Job passes them to the two calls below, so a pod of an
    /// earlier Job (finished, its status not yet saying so) never stands in
    /// for the one it waits for.
    pub async fn job_pod_uids(&self) -> std::collections::HashSet<String> {
        self.job_pods().await.into_iter().filter_map(|p| p.metadata.uid).collect()
    }

    /// Whether a resync Job's pod other than `besides` has a container
    /// running now.
    pub async fn job_pod_running(&self, besides: &std::collections::HashSet<String>) -> bool {
        self.job_pods()
            .await
            .iter()
            .filter(|p| !besides.contains(p.metadata.uid.as_deref().unwrap_or_default()))
            .any(|p| p.spec.iter().flat_map(|s| &s.containers).any(|c| nodes::container_id(p, &c.name).is_some()))
    }

    /// Kills the running containers of the pair's resync Job pods other
    /// than `besides` (a Job interrupted mid-copy); returns how many were
    /// killed.
    pub async fn kill_job_pods(&self, besides: &std::collections::HashSet<String>) -> usize {
        let mut killed = 0;
        for pod in self.job_pods().await {
            if besides.contains(pod.metadata.uid.as_deref().unwrap_or_default()) {
                continue;
            }
            for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                // Only what runs: a finished container has nothing to kill.
                if nodes::kill_container(&pod, &c.name).is_ok() {
                    killed += 1;
                }
            }
        }
        killed
    }

    pub async fn merge_spec(&self, name: &str, patch: Value) {
        self.pairs()
            .patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": patch})))
            .await
            .unwrap();
    }

    /// mTLS client config holding the pair's client certificate.
    pub async fn pair_tls(&self, name: &str) -> Arc<rustls::ClientConfig> {
        self.pair_material(name).await.client_config().unwrap()
    }

    /// The operator's identity towards the pair's agents, as the pair's
    /// Secret holds it now (see [`pair_identity`]).
    pub async fn pair_material(&self, name: &str) -> Arc<hapair::tls::Material> {
        let identity = pair_identity(&self.client, &self.ns.name, name).await.expect("the pair's TLS Secret");
        hapair::tls::Material::new(&identity).unwrap()
    }

    /// The directory on the node's disk behind a member's data volume: the
    /// local PersistentVolume its claim bound to. A pair without storage has
    /// none, and gets a path that does not exist.
    pub async fn data_dir(&self, pair: &str, member: Member) -> PathBuf {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns.name);
        let claim = format!("{pair}-{member}-data");
        if self.pair(pair).await.spec.storage.is_none() {
            return self.dir.join("no-storage").join(&claim);
        }
        let start = Instant::now();
        loop {
            match claims.get_opt(&claim).await.unwrap() {
                None => {}
                Some(c) => {
                    if let Some(pv) = c.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()) {
                        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
                        let pv = pvs.get(&pv).await.unwrap();
                        return PathBuf::from(pv.spec.unwrap().local.expect("a local volume").path);
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "claim {claim} did not bind");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let tls = self.pair_material(name).await;
        let dirs = [self.data_dir(name, Member::Primary).await, self.data_dir(name, Member::Secondary).await];
        checker::Checker::start(self.client.clone(), &self.ns.name, name, tls, 7443, grace, dirs)
    }
}

/// A pair for the scenarios: the test application behind the VIP on 8080,
/// with an HTTP health check on it.
/// Plain HTTP GET from the test process straight to a pod (the host
/// reaches pod IPs), past the Service: status code and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).await.expect("the pod answers")
}

/// [`http_get`], `None` when the pod does not answer.
pub async fn try_http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: app\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Some((code, body.to_string()))
}

/// The operator's client identity from the pair's TLS Secret as it is now
/// (it changes when the certificates are renewed or the CA rotated).
pub async fn pair_identity(client: &kube::Client, ns: &str, name: &str) -> Option<hapair::tls::Identity> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = secrets.get(&format!("{name}-tls")).await.ok()?;
    let data = s.data.as_ref()?;
    let get = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    Some(hapair::tls::Identity {
        ca: get(hapair::tls::CA_CERT)?,
        cert: get(hapair::tls::CLIENT_CERT)?,
        key: get(hapair::tls::CLIENT_KEY)?,
    })
}

pub fn test_pair(name: &str, interval: i32, extra: Value) -> Value {
    let mut p = serde_json::json!({
        "apiVersion": "hapair.dev/v1alpha1",
        "kind": "HighAvailabilityPair",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {
                // The claim's files belong to the image's user (65532) on the node's disk.
                "securityContext": {"fsGroup": 65532},
                // A CPU request, as a production application has: without
                // one its container gets the kernel's smallest weight, and on
                // this busy machine it then waits seconds for a CPU — an
                // application that cannot see its role file change for that
                // long reads to the checker as one that stayed active.
                "containers": [{"name": "app", "image": APP_IMAGE, "ports": [{"containerPort": 8080}],
                                "args": ["--listen", "0.0.0.0:8080", "--data-dir", "/data"],
                                "resources": {"requests": {"cpu": "50m", "memory": "16Mi"}},
                                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                    "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
                                                    "seccompProfile": {"type": "RuntimeDefault"}}}]}},
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
        // A frozen or cut pod would outlive its namespace's deletion.
        self.thaw_all();
        for pod in self.cut.lock().unwrap().drain(..) {
            nodes::cut_pod_from_api(&pod, false);
        }
        for (a, b) in self.apart.lock().unwrap().drain(..) {
            nodes::cut_pods_apart(&a, &b, false);
        }
        for ip in self.operator_cut.lock().unwrap().drain(..) {
            operators::cut_operator_from(&ip, false);
        }
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
    /// The epoch of the latest acknowledged write.
    epoch: Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<WriteLog>,
}

#[derive(Debug, Default, Clone)]
pub struct WriteLog {
    /// Write number and the epoch it was acknowledged at.
    pub acknowledged: Vec<(u64, i64)>,
    /// Who acknowledged each write, in order: (write number, member).
    pub answered_by: Vec<(u64, String)>,
    pub failed: u64,
    /// The longest time between two acknowledged writes with failed
    /// requests between them: from the last acknowledgement before a fault
    /// to the first after it, as the client lived it (a request that hangs
    /// until its deadline counts from when it was sent, not when it gave up).
    pub longest_outage: Duration,
    /// When that outage ended, counted from the writer's start.
    pub longest_outage_ended: Duration,
}

impl Harness {
    /// Writes through the VIP on one keep-alive connection (dialled again
    /// after a failure or a refusal), every 20 ms, until stopped.
    pub async fn writer(&self, name: &str) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let epoch = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let (addr, flag, latest) = (self.cluster_ip(name).await, stop.clone(), epoch.clone());
        let task = tokio::spawn(async move {
            let mut conn = client::VipConnection::new(addr);
            let mut log = WriteLog::default();
            // No outage before the first acknowledgement: nothing was served yet.
            let (mut last_ack, mut failing): (Option<Instant>, bool) = (None, false);
            let started = Instant::now();
            let mut n = 0u64;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match conn.request(&format!("/write?key=k{n}&value={n}")).await {
                    Ok(Answer { code: 200, body, member }) => {
                        let epoch = body.trim_start_matches("epoch=").parse().unwrap_or(0);
                        log.acknowledged.push((n, epoch));
                        log.answered_by.push((n, member));
                        latest.store(epoch, std::sync::atomic::Ordering::SeqCst);
                        if std::mem::take(&mut failing)
                            && let Some(t) = last_ack
                            && t.elapsed() > log.longest_outage
                        {
                            log.longest_outage = t.elapsed();
                            log.longest_outage_ended = started.elapsed();
                        }
                        last_ack = Some(Instant::now());
                    }
                    _ => {
                        log.failed += 1;
                        failing = true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log
        });
        Writer { stop, epoch, task }
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
    /// Waits until the writer itself (on its own connection, not a fresh
    /// one) has had a write acknowledged at `epoch` or later.
    pub async fn wait_epoch(&self, epoch: i64, timeout: Duration) {
        let start = Instant::now();
        while self.epoch.load(std::sync::atomic::Ordering::SeqCst) < epoch {
            assert!(start.elapsed() < timeout, "no write acknowledged at epoch {epoch} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> WriteLog {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}
