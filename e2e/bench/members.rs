//! Many pairs' members in this one process, for `make bench-scale`.
//!
//! Two thousand member pods do not fit on the testbed's two real nodes, so
//! the scale benchmark's pairs are scheduled — by the real scheduler, from
//! the pods the operator creates — onto two virtual nodes, and this module
//! does for those nodes what a kubelet would, and no more:
//!
//! - keeps each virtual Node `Ready` (its Lease in `kube-node-lease`
//!   renewed every 10 s, as a kubelet does; the node lifecycle controller
//!   would otherwise taint it and evict the pods);
//! - for every pod bound to one: gives it an address of its own in
//!   [`NET`] (routed to this machine's loopback, so the operator reaches it
//!   like a pod IP), mounts its Secret volume as files, and starts what the
//!   pod runs — **the real agent** (`hapair::agent::run_with`: its Lease
//!   renewals, mTLS server, health checks, role files, peer link, all as in
//!   a member pod) and, for the application, a listener that answers the
//!   health check; then writes the pod's status as the kubelet would
//!   (`Running`, ready, the pod IP);
//! - on a pod's deletion, stops both and removes the pod (a kubelet's
//!   termination, without the grace period);
//! - on request, kills a member's application ([`Members::kill_app`]): its
//!   listener closes and the status reports the container terminated, as
//!   the kubelet reports a container that died; [`Members::restart_app`]
//!   plays the kubelet's restart.
//!
//! What differs from a member pod: the agents share this process, its
//! runtime and one API client (the admin's credentials, not each pod's
//! service account), and a Secret updated later is not projected again —
//! none of which the operator can see. No container runtime, no network
//! namespace: the operator's view of a member (its pod, status, Lease,
//! agent) is what it is on a real node.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hapair::api::{AGENT_CONTAINER, Member};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// The virtual nodes.
pub const NODES: [&str; 2] = ["hapair-scale-a", "hapair-scale-b"];
/// Their label and taint: only the benchmark's pairs select and tolerate them.
pub const NODE_LABEL: &str = "hapair.dev/scale-node";
/// The members' addresses: a local route sends the whole range to this
/// machine, so any address in it can be bound and reached. Outside the
/// testbed's pod (10.244/16) and service (10.96/16) ranges.
pub const NET: &str = "10.250.0.0/16";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn ip_route(action: &str) -> std::io::Result<std::process::Output> {
    std::process::Command::new("ip").args(["route", action, "local", NET, "dev", "lo"]).output()
}

/// Pods started side by side, as a kubelet's pod workers do; bounded so
/// that a thousand pods bound at once do not starve the agents already
/// running in this process while their Secrets are read.
const START_AT_ONCE: usize = 16;

/// One member pod this process runs.
struct Running {
    ip: Ipv4Addr,
    run_dir: PathBuf,
    app_port: u16,
    /// Ends the agent (and, dropped, everything it started).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    app: Option<tokio::task::AbortHandle>,
    restarts: i32,
    /// The pod's containers, name and image, in order.
    containers: Vec<(String, String)>,
}

/// The virtual nodes and the members on them.
pub struct Members {
    client: Client,
    ns: String,
    dir: PathBuf,
    pods: Mutex<HashMap<String, Running>>,
    next_ip: AtomicU32,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Pods being started now, and how many may start at once.
    starting: Mutex<std::collections::HashSet<String>>,
    start_slots: Arc<tokio::sync::Semaphore>,
    /// Agents that failed to start, with why: printed by the benchmark,
    /// never hidden.
    pub failures: Mutex<Vec<String>>,
}

impl Members {
    /// The route, the nodes (Ready, their Leases renewed) and the pod
    /// watch; members start as the scheduler binds their pods.
    pub async fn start(client: Client, ns: &str, dir: PathBuf) -> Arc<Self> {
        let out = ip_route("replace").expect("ip runs");
        assert!(out.status.success(), "cannot route {NET} locally: {}", String::from_utf8_lossy(&out.stderr));
        let m = Arc::new(Members {
            client: client.clone(),
            ns: ns.to_string(),
            dir,
            pods: Mutex::default(),
            next_ip: AtomicU32::new(1),
            tasks: Mutex::default(),
            starting: Mutex::default(),
            start_slots: Arc::new(tokio::sync::Semaphore::new(START_AT_ONCE)),
            failures: Mutex::default(),
        });
        for (i, name) in NODES.iter().enumerate() {
            create_node(&client, name, i).await;
            // Left by a run that was stopped: no kubelet will ever finish them.
            let all: Api<Pod> = Api::all(client.clone());
            let params = kube::api::ListParams::default().fields(&format!("spec.nodeName={name}"));
            for p in all.list(&params).await.map(|l| l.items).unwrap_or_default() {
                let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
                let _ = api
                    .delete(&p.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                    .await;
            }
        }
        let renew = tokio::spawn(renew_nodes(client.clone()));
        let watch = tokio::spawn(m.clone().watch_pods());
        m.tasks.lock().unwrap().extend([renew, watch]);
        m
    }

    /// Stops every member, removes the nodes and the route.
    pub async fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        for (_, mut r) in self.pods.lock().unwrap().drain() {
            r.stop.take();
            if let Some(a) = r.app.take() {
                a.abort();
            }
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        for name in NODES {
            let _ = nodes.delete(name, &DeleteParams::default()).await;
            let _ = leases.delete(name, &DeleteParams::default()).await;
        }
        let _ = ip_route("del");
    }

    /// How many member pods run here now.
    pub fn running(&self) -> usize {
        self.pods.lock().unwrap().len()
    }

    /// The role files of a member's agent (`role`, `epoch`, `deadline`).
    pub fn run_dir(&self, pod: &str) -> Option<PathBuf> {
        self.pods.lock().unwrap().get(pod).map(|r| r.run_dir.clone())
    }

    /// The role and epoch a member's application would read.
    pub fn role(&self, pod: &str) -> Option<(String, i64)> {
        let dir = self.run_dir(pod)?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok().map(|s| s.trim().to_string());
        Some((read("role")?, read("epoch")?.parse().ok()?))
    }

    /// The application of `pod` dies: its listener closes (the health check
    /// is refused) and the kubelet's report follows, the container
    /// terminated.
    pub async fn kill_app(&self, pod: &str) {
        let status = {
            let mut pods = self.pods.lock().unwrap();
            let Some(r) = pods.get_mut(pod) else { return };
            if let Some(a) = r.app.take() {
                a.abort();
            }
            app_status(&r.containers, false, r.restarts)
        };
        self.patch_status(pod, status).await;
    }

    /// The kubelet restarts the application of `pod`.
    pub async fn restart_app(&self, pod: &str) {
        let status = {
            let mut pods = self.pods.lock().unwrap();
            let Some(r) = pods.get_mut(pod) else { return };
            r.restarts += 1;
            r.app = Some(serve_app(SocketAddr::new(IpAddr::V4(r.ip), r.app_port)));
            app_status(&r.containers, true, r.restarts)
        };
        self.patch_status(pod, status).await;
    }

    async fn patch_status(&self, pod: &str, status: Value) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let patch = json!({"status": status});
        if let Err(e) = pods.patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            self.failures.lock().unwrap().push(format!("{pod}: status not written: {e}"));
        }
    }

    async fn watch_pods(self: Arc<Self>) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
        while let Some(ev) = events.next().await {
            let list = match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                Ok(watcher::Event::Delete(p)) => {
                    self.forget(&p.name_any());
                    continue;
                }
                _ => continue,
            };
            for pod in list {
                let name = pod.name_any();
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                if !NODES.contains(&node.as_str()) {
                    continue;
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    self.forget(&name);
                    let _ =
                        pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                    continue;
                }
                let known = self.pods.lock().unwrap().contains_key(&name);
                if !known && self.starting.lock().unwrap().insert(name.clone()) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let slot = me.start_slots.clone().acquire_owned().await;
                        if let Err(e) = me.clone().run_pod(&pod, &node).await {
                            me.failures.lock().unwrap().push(format!("{name}: {e}"));
                        }
                        drop(slot);
                        me.starting.lock().unwrap().remove(&name);
                        // Deleted while it started (the delete was seen
                        // before it was known): stopped now.
                        let api: Api<Pod> = Api::namespaced(me.client.clone(), &me.ns);
                        let now = api.get_opt(&name).await;
                        let same =
                            |p: &Pod| p.metadata.uid == pod.metadata.uid && p.metadata.deletion_timestamp.is_none();
                        if matches!(now, Ok(None)) || matches!(&now, Ok(Some(p)) if !same(p)) {
                            me.forget(&name);
                        }
                    });
                }
            }
        }
    }

    fn forget(&self, pod: &str) {
        if let Some(mut r) = self.pods.lock().unwrap().remove(pod) {
            r.stop.take();
            if let Some(a) = r.app.take() {
                a.abort();
            }
        }
    }

    /// Starts a bound pod's agent and application, then reports it running.
    async fn run_pod(self: Arc<Self>, pod: &Pod, node: &str) -> Result<(), String> {
        let name = pod.name_any();
        let spec = pod.spec.clone().ok_or("no spec")?;
        let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
        let ip = Ipv4Addr::new(10, 250, (n >> 8) as u8, (n & 0xff) as u8);
        let agent = spec.containers.iter().find(|c| c.name == AGENT_CONTAINER).ok_or("no agent container")?;
        let app = spec.containers.iter().find(|c| c.name != AGENT_CONTAINER).ok_or("no application container")?;
        let app_port = app.ports.iter().flatten().next().map_or(8080, |p| p.container_port as u16);
        // The agent's environment as the kubelet resolves it.
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for e in agent.env.iter().flatten() {
            let value = match (&e.value, e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())) {
                (Some(v), _) => v.clone(),
                (None, Some(f)) => match f.field_path.as_str() {
                    "metadata.namespace" => self.ns.clone(),
                    "metadata.name" => name.clone(),
                    "metadata.uid" => uid.clone(),
                    "status.podIP" => ip.to_string(),
                    other => return Err(format!("field {other} not resolved here")),
                },
                _ => continue,
            };
            env.insert(e.name.clone(), value);
        }
        let get = |k: &str| env.get(k).cloned().ok_or(format!("the agent has no {k}"));
        let root = self.dir.join(&name);
        let (run_dir, tls_dir) = (root.join("run"), root.join("tls"));
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        self.mount_secret(&spec, agent, &get("HAPAIR_TLS_DIR")?, &tls_dir).await?;
        let config = hapair::agent::Config {
            pair: get("HAPAIR_PAIR")?,
            namespace: get("HAPAIR_NAMESPACE")?,
            member: get("HAPAIR_MEMBER")?.parse::<Member>().map_err(|e| format!("member: {e:?}"))?,
            pod_uid: get("HAPAIR_POD_UID")?,
            bind: IpAddr::V4(ip),
            port: get("HAPAIR_AGENT_PORT")?.parse().map_err(|_| "agent port")?,
            probe_port: get("HAPAIR_PROBE_PORT")?.parse().map_err(|_| "probe port")?,
            app_host: ip.to_string(),
            health_check: env.get("HAPAIR_HEALTH_CHECK").cloned(),
            interval_seconds: get("HAPAIR_INTERVAL_SECONDS")?.parse().map_err(|_| "interval")?,
            missed_threshold: get("HAPAIR_MISSED_THRESHOLD")?.parse().map_err(|_| "threshold")?,
            run_dir: run_dir.clone(),
            tls_dir,
            data_dir: None,
            file_sync: None,
        };
        let app_task = serve_app(SocketAddr::new(IpAddr::V4(ip), app_port));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The agent's own credentials: its pod's ServiceAccount, not the
        // admin's with which this process plays the kubelet.
        let account = spec.service_account_name.clone().ok_or("the pod names no ServiceAccount")?;
        let client = crate::credentials::client(&self.client, &self.ns, &account).await?;
        let (me, pod_name) = (self.clone(), name.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.await;
            };
            let span = tracing::info_span!("member", pod = %pod_name);
            if let Err(e) = tracing::Instrument::instrument(hapair::agent::run_with(config, client, stop), span).await {
                me.failures.lock().unwrap().push(format!("{pod_name}: the agent ended: {e}"));
            }
        });
        let containers: Vec<(String, String)> =
            spec.containers.iter().map(|c| (c.name.clone(), c.image.clone().unwrap_or_default())).collect();
        let mut status = app_status(&containers, true, 0);
        status["phase"] = json!("Running");
        status["hostIP"] = json!(node_ip(node));
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
        status["startTime"] = json!(now());
        self.pods.lock().unwrap().insert(
            name.clone(),
            Running { ip, run_dir, app_port, stop: Some(stop), app: Some(app_task), restarts: 0, containers },
        );
        self.patch_status(&name, status).await;
        Ok(())
    }

    /// Writes the agent's Secret volume as files, as the kubelet mounts it.
    async fn mount_secret(
        &self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        agent: &k8s_openapi::api::core::v1::Container,
        path: &str,
        into: &std::path::Path,
    ) -> Result<(), String> {
        let mount = agent.volume_mounts.iter().flatten().find(|m| m.mount_path == path).ok_or("no TLS mount")?;
        let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).ok_or("no TLS volume")?;
        let source = volume.secret.as_ref().ok_or("the TLS volume is not a Secret")?;
        let secret_name = source.secret_name.clone().ok_or("no Secret named")?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        // The operator writes the Secret before the pods; a moment's wait
        // covers a watch that is behind.
        let mut secret = None;
        for _ in 0..50 {
            if let Ok(Some(s)) = secrets.get_opt(&secret_name).await {
                secret = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let data = secret.and_then(|s| s.data).ok_or(format!("Secret {secret_name} not found"))?;
        std::fs::create_dir_all(into).map_err(|e| e.to_string())?;
        let items: Vec<(String, String)> = match &source.items {
            Some(items) => items.iter().map(|i| (i.key.clone(), i.path.clone())).collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, file) in items {
            let value = data.get(&key).ok_or(format!("Secret {secret_name} has no {key}"))?;
            std::fs::write(into.join(file), &value.0).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The application: answers every request with 200 until aborted (then the
/// address refuses connections, as a dead process's would).
fn serve_app(addr: SocketAddr) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let Some(listener) = bind_retrying(addr).await else {
            eprintln!("scale: the application at {addr} cannot listen");
            return;
        };
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            conns.spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from_static(b"ok"),
                    )))
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
            while conns.try_join_next().is_some() {}
        }
    })
    .abort_handle()
}

/// A restarted application binds the address its predecessor just left.
async fn bind_retrying(addr: SocketAddr) -> Option<tokio::net::TcpListener> {
    for _ in 0..50 {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        let _ = socket.set_reuseaddr(true);
        if socket.bind(addr).is_ok() {
            return socket.listen(128).ok();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn node_ip(node: &str) -> String {
    let i = NODES.iter().position(|n| *n == node).unwrap_or(0);
    format!("10.250.255.{}", i + 1)
}

fn conditions(ready: bool) -> Value {
    let t = now();
    let s = if ready { "True" } else { "False" };
    json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
        {"type": "Initialized", "status": "True", "lastTransitionTime": t},
        {"type": "ContainersReady", "status": s, "lastTransitionTime": t},
        {"type": "Ready", "status": s, "lastTransitionTime": t},
    ])
}

fn container_status(name: &str, image: &str, running: bool, restarts: i32) -> Value {
    let state = if running {
        json!({"running": {"startedAt": now()}})
    } else {
        json!({"terminated": {"exitCode": 137, "reason": "Error", "startedAt": now(), "finishedAt": now()}})
    };
    json!({
        "name": name, "image": image, "imageID": image, "ready": running, "started": running,
        "restartCount": restarts, "containerID": format!("containerd://{name}-{restarts}"), "state": state,
    })
}

/// The pod's conditions and containers, the agent's running and the
/// application's running (`up`) or terminated, after `restarts` restarts.
/// The whole list every time: container statuses are replaced, not merged.
fn app_status(containers: &[(String, String)], up: bool, restarts: i32) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, image)| match name.as_str() {
            AGENT_CONTAINER => container_status(name, image, true, 0),
            _ => container_status(name, image, up, restarts),
        })
        .collect();
    json!({"conditions": conditions(up), "containerStatuses": statuses})
}

async fn create_node(client: &Client, name: &str, i: usize) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {NODE_LABEL: "true", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {"taints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}]},
    }))
    .expect("a node");
    if let Err(e) = nodes.create(&PostParams::default(), &node).await {
        assert!(matches!(&e, kube::Error::Api(a) if a.code == 409), "node {name} not created: {e}");
    }
    let t = now();
    let status = json!({"status": {
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "5000"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "5000"},
        "addresses": [{"type": "InternalIP", "address": format!("10.250.255.{}", i + 1)}, {"type": "Hostname", "address": name}],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": t, "lastTransitionTime": t},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": t, "lastTransitionTime": t},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "lastHeartbeatTime": t, "lastTransitionTime": t},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "lastHeartbeatTime": t, "lastTransitionTime": t},
        ],
        "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.33.0", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "hapair scale benchmark",
                     "containerRuntimeVersion": "none://", },
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("node status written");
}

/// Each node's Lease, renewed every 10 s (the kubelet's default), and its
/// Ready condition's heartbeat every minute.
async fn renew_nodes(client: Client) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let mut beats = 0u32;
    loop {
        for name in NODES {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()},
            });
            let _ = leases.patch(name, &PatchParams::apply("hapair-bench-scale").force(), &Patch::Apply(&lease)).await;
            if beats.is_multiple_of(6) {
                let t = now();
                let status = json!({"status": {"conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": t},
                ]}});
                let _ = nodes.patch_status(name, &PatchParams::default(), &Patch::Strategic(&status)).await;
            }
        }
        beats += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
