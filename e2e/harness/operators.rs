//! The operator as the tests run it: replicas of the real binary started as
//! processes on the host (as its Deployment's pods would be), restarted when
//! they exit, and the faults a test injects into them: kill -9 (restarted,
//! as the kubelet would), SIGSTOP/SIGCONT of a replica, and which replica
//! leads.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kube::Api;
use tokio::process::Command;

use super::{Harness, hapair_bin};
use crate::common;

/// The group the operator replicas run as (the user stays root): what the
/// firewall rules that cut the operator off from the agents match on.
pub const OPERATOR_GID: u32 = 4242;

/// One operator replica, restarted when it exits until told to stop.
pub(super) struct OperatorReplica {
    pub(super) stop: tokio::sync::watch::Sender<bool>,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Its /metrics address (the same across its restarts).
    metrics: SocketAddr,
    /// The running process's id (0 between restarts).
    pid: Arc<AtomicU32>,
}

impl Harness {
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
        let crash_file = self.crash_file();
        let trace_file = self.trace_file();
        let agent_image = self.agent_image.clone();
        // A port free now, kept for every restart of this replica.
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let pid = Arc::new(AtomicU32::new(0));
        let pid_now = pid.clone();
        let task = tokio::spawn(async move {
            loop {
                let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
                let mut child = Command::new(hapair_bin())
                    .arg("operator")
                    .env("KUBECONFIG", common::kubeconfig_path())
                    .env("HAPAIR_WATCH_NAMESPACES", &ns)
                    .env("POD_NAMESPACE", &ns)
                    .env("POD_NAME", format!("operator-{i}"))
                    .env("HAPAIR_METRICS_ADDR", metrics.to_string())
                    .env("HAPAIR_HEALTH_ADDR", "127.0.0.1:0")
                    .env("HAPAIR_LEADER_LEASE_SECONDS", "4")
                    .env("HAPAIR_AGENT_IMAGE", &agent_image)
                    .env("HAPAIR_FAULT_CRASH_FILE", &crash_file)
                    .env("HAPAIR_FAULT_TRACE_FILE", &trace_file)
                    // Its own group: a test can cut the operator's traffic
                    // (and only the operator's) with an owner match.
                    .gid(OPERATOR_GID)
                    .env("RUST_LOG", std::env::var("HAPAIR_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .kill_on_drop(true)
                    .spawn()
                    .expect("operator starts");
                pid_now.store(child.id().unwrap_or(0), Ordering::SeqCst);
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
        self.operators.push(OperatorReplica { stop, task, metrics, pid });
        i
    }

    /// What replica `i` serves on /metrics (Prometheus text), or why not.
    pub async fn operator_metrics(&self, i: usize) -> Result<String, String> {
        super::scrape::metrics_page(self.operators[i].metrics).await
    }

    /// kill -9 of one operator replica; it is not restarted.
    pub async fn kill_operator(&mut self, i: usize) {
        let o = &mut self.operators[i];
        let _ = o.stop.send(true);
        let _ = (&mut o.task).await;
    }

    /// Index of the operator replica holding the operators' Lease.
    pub async fn leader(&self) -> Option<usize> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        let l = leases.get_opt("hapair-operator").await.ok()??;
        l.spec?.holder_identity?.strip_prefix("operator-")?.parse().ok()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to replica `i`'s running
    /// process. After `KILL` the replica is started again, as its
    /// Deployment's kubelet would; `STOP` freezes it (a stalled process whose
    /// leadership runs out under it) until `CONT`.
    pub fn signal_operator(&self, i: usize, signal: &str) -> Result<(), String> {
        let pid = self.operators[i].pid.load(Ordering::SeqCst);
        if pid == 0 {
            return Err(format!("operator replica {i} is not running"));
        }
        let out = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .output()
            .map_err(|e| format!("kill: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
    }

    /// The file that arms one crash point of the operator replicas
    /// (`hapair::operator::fault`): written with a step's name, removed by
    /// the replica that dies there.
    pub fn crash_file(&self) -> std::path::PathBuf {
        self.dir.join("crash-at")
    }

    /// The steps the operator replicas reached, one name a line, since the
    /// last [`arm_crash`](Self::arm_crash).
    pub fn trace_file(&self) -> std::path::PathBuf {
        self.dir.join("steps-reached")
    }

    /// Arms the crash point `step` (a name from `fault::STEPS`): the next
    /// replica to reach it dies there and is started again. The trace of
    /// steps reached starts anew.
    pub fn arm_crash(&self, step: &str) {
        std::fs::write(self.trace_file(), "").expect("step trace emptied");
        std::fs::write(self.crash_file(), step).expect("crash point armed");
    }

    /// The steps reached since the crash point was armed.
    pub fn steps_reached(&self) -> Vec<String> {
        std::fs::read_to_string(self.trace_file()).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Disarms it; true if a replica died there since it was armed.
    pub fn disarm_crash(&self) -> bool {
        match std::fs::remove_file(self.crash_file()) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => panic!("crash point not disarmed: {e}"),
        }
    }

    /// Cuts (or restores) every operator replica's traffic to and from
    /// the pods of pair `name` — the agents' API and sync ports, and the
    /// applications — while the operator still reaches the API server and
    /// the agents still reach each other and the API server.
    pub async fn cut_operator_from_members(&self, name: &str, cut: bool) {
        let mut ips = Vec::new();
        for m in hapair::api::Member::BOTH {
            let pod = self.member_pod(name, m).await;
            ips.extend(pod.status.and_then(|s| s.pod_ip));
        }
        for ip in &ips {
            cut_operator_from(ip, cut);
        }
        let mut list = self.operator_cut.lock().unwrap();
        list.retain(|i| !ips.contains(i));
        if cut {
            list.extend(ips);
        }
    }

    /// How many operator replicas were started.
    pub fn operator_count(&self) -> usize {
        self.operators.len()
    }
}

/// Drops (or stops dropping) the operator replicas' packets to `ip`.
pub(super) fn cut_operator_from(ip: &str, cut: bool) {
    let gid = OPERATOR_GID.to_string();
    let rule = ["-m", "owner", "--gid-owner", &gid, "-d", ip, "-j", "DROP"];
    let iptables = |action: &str| std::process::Command::new("iptables").args([action, "OUTPUT"]).args(rule).output();
    let present = iptables("-C").is_ok_and(|o| o.status.success());
    let action = match (cut, present) {
        (true, false) => "-I",
        (false, true) => "-D",
        _ => return,
    };
    let out = iptables(action).expect("iptables runs");
    assert!(out.status.success(), "iptables {action}: {}", String::from_utf8_lossy(&out.stderr));
}
