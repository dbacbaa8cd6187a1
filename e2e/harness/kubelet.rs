//! The harness's kubelet: for every member pod of the pairs under test it
//! binds the pod to a node, lays out its volumes as directories, resolves the
//! containers' environment as a kubelet would, runs the agent (the real
//! `hapair agent`) and the test application as processes on the pod's own
//! loopback address, and reports phase, IP, container states and readiness
//! back to the API server — so the real kube-controller-manager fills the
//! Services' EndpointSlices.
//!
//! Each agent reaches the API server through its own [`ApiProxy`] with a
//! token issued for the pod's ServiceAccount, so RBAC is the real thing and
//! a test can partition one member from the API server.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Container, Node, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};

use super::netns;
#[path = "kubelet_jobs.rs"]
mod jobs;
use super::proxy::ApiProxy;
use jobs::JobRun;

/// How a test stops a member's processes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kill {
    /// kill -9 the application; the kubelet reports it terminated and restarts it.
    App,
    /// kill -9 agent and application and stop reporting: a lost node.
    Node,
}

struct Container_ {
    child: Option<Child>,
    restarts: i32,
    exited_at: Option<Instant>,
    last_exit: Option<i32>,
}

struct PodRun {
    uid: String,
    ip: Ipv4Addr,
    netns: String,
    agent: Container_,
    apps: Vec<(String, Container_, Vec<String>)>,
    agent_cmd: Option<(Vec<String>, BTreeMap<String, String>)>,
    proxy: ApiProxy,
    probe_port: u16,
    ready: Option<bool>,
    frozen: bool,
    reported: Option<serde_json::Value>,
}

pub struct Kubelet {
    client: Client,
    ns: String,
    node: String,
    root: PathBuf,
    hapair_bin: PathBuf,
    app_bin: PathBuf,
    api_upstream: SocketAddr,
    api_ca: String,
    pods: Mutex<HashMap<String, PodRun>>,
    jobs: Mutex<HashMap<String, JobRun>>,
    next_ip: AtomicU32,
}

impl Kubelet {
    pub async fn start(
        client: Client,
        ns: &str,
        root: PathBuf,
        hapair_bin: PathBuf,
        app_bin: PathBuf,
        api_upstream: SocketAddr,
        api_ca: String,
    ) -> Arc<Self> {
        static SLOT: AtomicU32 = AtomicU32::new(0);
        netns::ensure_bridge().expect("pod network bridge");
        let node = format!("node-{ns}");
        let nodes: Api<Node> = Api::all(client.clone());
        let n: Node =
            serde_json::from_value(json!({"metadata": {"name": node, "labels": {"hapair.dev/e2e": "true"}}})).unwrap();
        let _ = nodes.create(&PostParams::default(), &n).await;
        let slot = SLOT.fetch_add(1, Ordering::SeqCst);
        let k = Arc::new(Kubelet {
            client,
            ns: ns.to_string(),
            node,
            root,
            hapair_bin,
            app_bin,
            api_upstream,
            api_ca,
            pods: Mutex::default(),
            jobs: Mutex::default(),
            next_ip: AtomicU32::new(slot * 24),
        });
        let weak = Arc::downgrade(&k);
        tokio::spawn(async move {
            while let Some(k) = weak.upgrade() {
                if let Err(e) = k.sync().await {
                    eprintln!("kubelet: {e}");
                }
                drop(k);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        k
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The IP the kubelet gave a pod.
    pub fn pod_ip(&self, pod: &str) -> Option<Ipv4Addr> {
        self.pods.lock().unwrap().get(pod).map(|r| r.ip)
    }

    pub fn kill(&self, pod: &str, how: Kill) {
        let mut pods = self.pods.lock().unwrap();
        let Some(run) = pods.get_mut(pod) else { panic!("no running pod {pod}") };
        for (_, c, _) in &mut run.apps {
            if let Some(child) = c.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        if how == Kill::Node {
            if let Some(child) = run.agent.child.as_mut() {
                let _ = child.start_kill();
            }
            run.frozen = true;
        }
    }

    /// Cuts (or restores) the pod's agent from the API server.
    pub fn partition_from_api(&self, pod: &str, cut: bool) {
        let pods = self.pods.lock().unwrap();
        pods.get(pod).expect("pod running").proxy.set_blocked(cut);
    }

    async fn sync(&self) -> Result<(), kube::Error> {
        let mut items = self.pods_api().list(&ListParams::default().labels("hapair.dev/pair")).await?.items;
        // The operator's own pods, when a test installs it with its chart or
        // manifests (its Deployment's pods, run as `hapair operator`).
        items.extend(self.pods_api().list(&ListParams::default().labels(OPERATOR_POD_LABELS)).await?.items);
        let present: Vec<String> = items.iter().map(|p| p.name_any()).collect();
        for pod in items {
            let name = pod.name_any();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            // Run-to-completion pods: the resync Job's (`hapair resync`) and a
            // split-brain repair Job's (run here as `hapair` with its args).
            if matches!(pod.labels().get("app.kubernetes.io/component").map(String::as_str), Some("resync" | "repair"))
            {
                if let Err(e) = self.tend_job(&pod).await {
                    eprintln!("kubelet: job pod {name}: {e}");
                }
                continue;
            }
            let known = self.pods.lock().unwrap().get(&name).map(|r| r.uid.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                self.stop(&name).await;
                let _ = self
                    .pods_api()
                    .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                    .await;
                continue;
            }
            match known {
                Some(u) if u == uid => self.tend(&pod).await?,
                Some(_) => {
                    self.stop(&name).await;
                }
                None => {
                    if let Err(e) = self.launch(&pod).await {
                        eprintln!("kubelet: cannot start {name}: {e}");
                    }
                }
            }
        }
        let gone: Vec<String> = self.pods.lock().unwrap().keys().filter(|k| !present.contains(k)).cloned().collect();
        for name in gone {
            self.stop(&name).await;
        }
        Ok(())
    }

    async fn stop(&self, name: &str) {
        let run = self.pods.lock().unwrap().remove(name);
        if let Some(mut run) = run {
            for (_, c, _) in &mut run.apps {
                if let Some(mut child) = c.child.take() {
                    let _ = child.kill().await;
                }
            }
            if let Some(mut child) = run.agent.child.take() {
                let _ = child.kill().await;
            }
            netns::delete(&run.netns);
        }
    }

    async fn launch(&self, pod: &Pod) -> Result<(), Box<dyn std::error::Error>> {
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        // Bind to our node, as the scheduler would.
        if spec.node_name.is_none() {
            let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                                 "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}});
            let _: Result<serde_json::Value, _> =
                self.pods_api().create_subresource("binding", &name, &PostParams::default(), &binding).await;
        }
        let ip = netns::pod_ip(self.next_ip.fetch_add(1, Ordering::SeqCst));
        let ns_name = netns::create(ip)?;
        let dir = self.root.join(&name).join(&uid);
        let volumes = self.volumes(&spec, &dir).await?;
        let proxy = ApiProxy::start(netns::HOST_IP, self.api_upstream).await?;
        let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
        let token = self.token(&sa, &name, &uid).await?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, self.kubeconfig(proxy.addr, &token))?;

        let mut apps = Vec::new();
        let mut agent_cmd = None;
        let mut probe_port = 0;
        for c in &spec.containers {
            let mounts = mounts(c, &volumes);
            let env = self.env(c, pod, ip, &mounts);
            if is_operator(c) {
                let mut env = env;
                env.insert("KUBECONFIG".into(), kubeconfig.display().to_string());
                probe_port =
                    env.get("HAPAIR_HEALTH_ADDR").and_then(|a| a.parse::<SocketAddr>().ok()).map_or(8081, |a| a.port());
                agent_cmd = Some((c.args.clone().unwrap_or_default(), env));
            } else if c.name == hapair::api::AGENT_CONTAINER {
                let mut env = env;
                env.insert("KUBECONFIG".into(), kubeconfig.display().to_string());
                env.insert("RUST_LOG".into(), std::env::var("HAPAIR_E2E_AGENT_LOG").unwrap_or_else(|_| "warn".into()));
                probe_port = env.get("HAPAIR_PROBE_PORT").and_then(|p| p.parse().ok()).unwrap_or(7444);
                agent_cmd = Some((c.args.clone().unwrap_or_default(), env));
            } else {
                let port = c.ports.iter().flatten().next().map_or(8080, |p| p.container_port);
                let mut args = vec!["--listen".to_string(), format!("{ip}:{port}")];
                if let Some(run) = mounts.get(hapair::operator::build::RUN_DIR) {
                    args.extend(["--run-dir".into(), run.display().to_string()]);
                }
                if let Some(data) = mounts.iter().find(|(p, _)| !p.starts_with("/var/run")).map(|(_, h)| h) {
                    args.extend(["--data-dir".into(), data.display().to_string()]);
                }
                apps.push((
                    c.name.clone(),
                    Container_ { child: None, restarts: 0, exited_at: None, last_exit: None },
                    args,
                ));
            }
        }
        let mut run = PodRun {
            uid,
            ip,
            netns: ns_name,
            agent: Container_ { child: None, restarts: 0, exited_at: None, last_exit: None },
            apps,
            agent_cmd,
            proxy,
            probe_port,
            ready: None,
            frozen: false,
            reported: None,
        };
        self.spawn_all(&mut run, &dir)?;
        self.pods.lock().unwrap().insert(name, run);
        self.tend(pod).await?;
        Ok(())
    }

    fn spawn_all(&self, run: &mut PodRun, dir: &Path) -> std::io::Result<()> {
        if let Some((args, env)) = &run.agent_cmd
            && run.agent.child.is_none()
            && run.agent.exited_at.is_none()
        {
            let log = std::fs::File::create(dir.join(format!("agent.{}.log", run.agent.restarts)))?;
            run.agent.child = Some(
                Command::new("ip")
                    .args(["netns", "exec", &run.netns])
                    .arg(&self.hapair_bin)
                    .args(args)
                    .env_clear()
                    .envs(env)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()?,
            );
        }
        for (_, c, args) in &mut run.apps {
            // Not while a crashed container waits out its back-off.
            if c.child.is_none() && c.exited_at.is_none() {
                c.child = Some(
                    Command::new("ip")
                        .args(["netns", "exec", &run.netns])
                        .arg(&self.app_bin)
                        .args(args.iter())
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .kill_on_drop(true)
                        .spawn()?,
                );
            }
        }
        Ok(())
    }

    async fn token(&self, sa: &str, pod: &str, uid: &str) -> Result<String, kube::Error> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns);
        let req: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}
        }))
        .unwrap();
        // The operator creates the ServiceAccount just before the pod; allow it a moment.
        for _ in 0..50 {
            match api.create_token_request(sa, &PostParams::default(), &req).await {
                Ok(t) => return Ok(t.status.map(|s| s.token).unwrap_or_default()),
                Err(kube::Error::Api(s)) if s.code == 404 => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e),
            }
        }
        api.create_token_request(sa, &PostParams::default(), &req)
            .await
            .map(|t| t.status.map(|s| s.token).unwrap_or_default())
    }

    fn kubeconfig(&self, server: SocketAddr, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{server}\n    tls-server-name: localhost\n    certificate-authority-data: {}\n\
             users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {}}}\ncurrent-context: c\n",
            self.api_ca, self.ns
        )
    }

    fn env(
        &self,
        c: &Container,
        pod: &Pod,
        ip: Ipv4Addr,
        mounts: &BTreeMap<String, PathBuf>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                // A path inside a mount is the mount's directory here.
                mounts.get(v).map_or_else(|| v.clone(), |h| h.display().to_string())
            } else if let Some(f) = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
                match f.field_path.as_str() {
                    "metadata.namespace" => self.ns.clone(),
                    "metadata.name" => pod.name_any(),
                    "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                    "status.podIP" => ip.to_string(),
                    other => panic!("kubelet: unsupported fieldRef {other}"),
                }
            } else {
                continue;
            };
            out.insert(e.name.clone(), value);
        }
        out.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        out
    }

    /// Lays out a pod's volumes as directories under `dir` (claims under the
    /// shared `pvc/`), with the listed items of Secret volumes written in.
    async fn volumes(
        &self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        dir: &Path,
    ) -> Result<HashMap<String, PathBuf>, Box<dyn std::error::Error>> {
        std::fs::create_dir_all(dir)?;
        let mut volumes = HashMap::new();
        for v in spec.volumes.iter().flatten() {
            let path = match &v.persistent_volume_claim {
                Some(pvc) => self.root.join("pvc").join(&pvc.claim_name),
                None => dir.join("volumes").join(&v.name),
            };
            std::fs::create_dir_all(&path)?;
            if let Some(secret) = &v.secret {
                let sname = secret.secret_name.clone().unwrap_or_default();
                let s: Secret = Api::namespaced(self.client.clone(), &self.ns).get(&sname).await?;
                let data = s.data.unwrap_or_default();
                for item in secret.items.iter().flatten() {
                    std::fs::write(
                        path.join(&item.path),
                        data.get(&item.key).map(|b| b.0.clone()).unwrap_or_default(),
                    )?;
                }
            }
            volumes.insert(v.name.clone(), path);
        }
        Ok(volumes)
    }

    /// Keeps a running pod's processes and status current.
    async fn tend(&self, pod: &Pod) -> Result<(), kube::Error> {
        let name = pod.name_any();
        let (status, probe) = {
            let mut pods = self.pods.lock().unwrap();
            let Some(run) = pods.get_mut(&name) else { return Ok(()) };
            if run.frozen {
                return Ok(());
            }
            let dir = self.root.join(&name).join(&run.uid);
            let mut changed = false;
            for c in std::iter::once(&mut run.agent).chain(run.apps.iter_mut().map(|(_, c, _)| c)) {
                if let Some(child) = c.child.as_mut()
                    && let Ok(Some(exit)) = child.try_wait()
                {
                    c.child = None;
                    c.exited_at = Some(Instant::now());
                    c.last_exit = Some(exit.code().unwrap_or(137));
                    changed = true;
                }
                // restartPolicy Always, with a short back-off.
                if c.child.is_none() && c.exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                    c.restarts += 1;
                    c.exited_at = None;
                    changed = true;
                }
            }
            if changed {
                let _ = self.spawn_all(run, &dir);
            }
            (self.status_of(run, pod), SocketAddr::new(IpAddr::V4(run.ip), run.probe_port))
        };
        let ready = probe_ready(probe).await;
        let patch = {
            let mut pods = self.pods.lock().unwrap();
            let Some(run) = pods.get_mut(&name) else { return Ok(()) };
            run.ready = Some(ready);
            let mut status = status;
            set_ready(
                &mut status,
                ready && run.agent.child.is_some() && run.apps.iter().all(|(_, c, _)| c.child.is_some()),
            );
            if run.reported.as_ref() == Some(&status) {
                None
            } else {
                run.reported = Some(status.clone());
                Some(status)
            }
        };
        if let Some(status) = patch {
            self.pods_api()
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                .await?;
        }
        Ok(())
    }

    fn status_of(&self, run: &PodRun, pod: &Pod) -> serde_json::Value {
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                let cont = if c.name == hapair::api::AGENT_CONTAINER {
                    Some(&run.agent)
                } else {
                    run.apps.iter().find(|(n, _, _)| *n == c.name).map(|(_, c, _)| c)
                };
                let (state, restarts) = match cont {
                    Some(k) if k.child.is_some() => {
                        (json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}), k.restarts)
                    }
                    Some(k) => (
                        json!({"terminated": {"exitCode": k.last_exit.unwrap_or(137), "reason": "Error",
                               "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:00Z"}}),
                        k.restarts,
                    ),
                    None => (json!({"waiting": {"reason": "ContainerCreating"}}), 0),
                };
                json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": false,
                       "restartCount": restarts, "started": true, "state": state})
            })
            .collect();
        json!({
            "phase": "Running",
            "podIP": run.ip.to_string(),
            "podIPs": [{"ip": run.ip.to_string()}],
            "hostIP": "127.0.0.1",
            "startTime": "2026-01-01T00:00:00Z",
            "containerStatuses": statuses,
        })
    }
}

/// Labels of the pods of hapair's operator Deployment (chart and manifests).
const OPERATOR_POD_LABELS: &str = "app.kubernetes.io/name=hapair,app.kubernetes.io/component=operator";

/// The operator's container: the hapair image run as `hapair operator`.
fn is_operator(c: &Container) -> bool {
    c.args.as_ref().and_then(|a| a.first()).is_some_and(|a| a == "operator")
}

fn set_ready(status: &mut serde_json::Value, ready: bool) {
    let word = if ready { "True" } else { "False" };
    status["conditions"] = json!([
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": word},
        {"type": "Ready", "status": word},
    ]);
    if let Some(list) = status["containerStatuses"].as_array_mut() {
        for c in list {
            let running = c["state"].get("running").is_some();
            c["ready"] = json!(ready && running);
        }
    }
}

async fn probe_ready(addr: SocketAddr) -> bool {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n").await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_millis(500), get).await.ok().flatten().unwrap_or(false)
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for (_, run) in self.pods.lock().unwrap().drain() {
            netns::delete(&run.netns);
        }
    }
}

fn mounts(c: &Container, volumes: &HashMap<String, PathBuf>) -> BTreeMap<String, PathBuf> {
    c.volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| volumes.get(&m.name).map(|h| (m.mount_path.clone(), h.clone())))
        .collect()
}
