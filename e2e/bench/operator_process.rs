//! The operator under `make bench-scale`: the release binary in a process
//! of its own, restarted whenever it exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::credentials;
use crate::probe::proc_usage;

/// The operator under test: the release binary, its own process, started
/// again whenever it exits, as its Deployment would (an operator that loses
/// its leader Lease stops on purpose). Every exit is counted and printed.
pub struct Operator {
    pid: Arc<AtomicU32>,
    exits: Arc<AtomicU32>,
    /// Exits this bench caused ([`Operator::kill`]); the rest are the
    /// operator's own (a lost lead, a crash).
    kills: AtomicU32,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// Runs as the chart deploys it: `kubeconfig` authenticates as the
    /// chart's ServiceAccount ([`credentials::operator`]), its leader Lease
    /// is the one the chart's Role and FlowSchema name.
    pub fn start(ns: &str, kubeconfig: &std::path::Path, log: &std::path::Path) -> Self {
        let (pid, exits) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (ns, log, pid_now, exits_now) = (ns.to_string(), log.to_path_buf(), pid.clone(), exits.clone());
        let kubeconfig = kubeconfig.to_path_buf();
        let task = tokio::spawn(async move {
            loop {
                let log = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("operator log");
                // `HAPAIR_BENCH_OPERATOR_WRAP` runs the operator under a
                // profiler (say `heaptrack -o target/operator`); its figures
                // are then the profiler's, not the operator's.
                let wrap = std::env::var("HAPAIR_BENCH_OPERATOR_WRAP").unwrap_or_default();
                let mut argv: Vec<String> = wrap.split_whitespace().map(String::from).collect();
                argv.push(env!("CARGO_BIN_EXE_hapair").into());
                let mut child = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .arg("operator")
                    .env("KUBECONFIG", &kubeconfig)
                    .env("HAPAIR_LEADER_LEASE", credentials::RELEASE)
                    .env("HAPAIR_WATCH_NAMESPACES", &ns)
                    .env("POD_NAMESPACE", &ns)
                    .env("POD_NAME", "operator-0")
                    .env("HAPAIR_METRICS_ADDR", "127.0.0.1:0")
                    .env("HAPAIR_HEALTH_ADDR", "127.0.0.1:0")
                    .env("HAPAIR_AGENT_IMAGE", "hapair.dev/scale/agent:1")
                    .env("RUST_LOG", "info")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()
                    .expect("the operator starts");
                pid_now.store(child.id().unwrap_or(0), Ordering::SeqCst);
                let status = child.wait().await;
                let n = exits_now.fetch_add(1, Ordering::SeqCst) + 1;
                eprintln!("scale: the operator exited ({status:?}), {n} time(s) so far; starting it again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Operator { pid, exits, kills: AtomicU32::new(0), task }
    }

    /// Kills the current process at once (SIGKILL: an OOM kill, a lost
    /// node): it hands nothing over, so the next one waits out its Lease.
    pub fn kill(&self) {
        let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) else { return };
        if rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok() {
            self.kills.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Exits the operator took itself, not counting the bench's kills.
    pub fn own_exits(&self) -> u32 {
        self.exits().saturating_sub(self.kills.load(Ordering::SeqCst))
    }

    fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    pub fn exits(&self) -> u32 {
        self.exits.load(Ordering::SeqCst)
    }

    /// CPU seconds used so far, and resident and peak resident memory (MiB),
    /// of the current process.
    pub fn usage(&self) -> (f64, f64, f64) {
        proc_usage(self.pid())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // Dropping the task drops its child, which kills it.
        self.task.abort();
    }
}
