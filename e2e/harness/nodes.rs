//! The testbed's real nodes as a test sees them: which node a pod runs on,
//! and the faults a test injects through `e2e/testbed/testbed.sh`.
//!
//! Pod-level faults (a container killed, a pod frozen, a pod cut off from the
//! API server) touch one pod and may run beside other tests. Node-level
//! faults (a whole node frozen, partitioned or killed) touch every pod on the
//! node, so the tests that use them hold [`NodeFaultLock`] and bring the node
//! back before they let go.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Pod;

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/testbed/testbed.sh")
}

/// Runs `testbed.sh ARGS…`, returning its standard output.
pub fn testbed(args: &[&str]) -> Result<String, String> {
    let out = Command::new(script()).args(args).output().map_err(|e| format!("testbed.sh {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("testbed.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The testbed's number for the node a pod was scheduled to (`hapair-node-N`).
pub fn node_number(pod: &Pod) -> Option<u32> {
    pod.spec.as_ref()?.node_name.as_deref()?.strip_prefix("hapair-node-")?.parse().ok()
}

fn node_of(pod: &Pod) -> String {
    node_number(pod).unwrap_or_else(|| panic!("pod {:?} is not on a testbed node", pod.metadata.name)).to_string()
}

/// The containerd ID of one of a pod's containers, while it runs.
pub fn container_id(pod: &Pod, container: &str) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let s = statuses.iter().find(|s| s.name == container)?;
    s.state.as_ref()?.running.as_ref()?;
    Some(s.container_id.as_deref()?.trim_start_matches("containerd://").to_string())
}

/// kill -9 of a container's processes, through its node's containerd: the
/// kubelet sees the container exit and restarts it by the pod's policy.
pub fn kill_container(pod: &Pod, container: &str) -> Result<(), String> {
    let id = container_id(pod, container)
        .ok_or_else(|| format!("container {container} of {:?} is not running", pod.metadata.name))?;
    testbed(&["node", "ctr", &node_of(pod), "task", "kill", "--signal", "SIGKILL", &id]).map(|_| ())
}

/// The pod's freezer cgroup: the kubelet makes it `pod<uid>` under its QoS
/// class in the node's cgroup tree.
fn pod_freezer(pod: &Pod) -> PathBuf {
    let uid = pod.metadata.uid.as_deref().expect("pod uid");
    let root = PathBuf::from(format!("/sys/fs/cgroup/freezer/hapair-node-{}/kubepods", node_of(pod)));
    let wanted = format!("pod{uid}");
    for dir in [root.clone(), root.join("burstable"), root.join("besteffort")] {
        if dir.join(&wanted).is_dir() {
            return dir.join(&wanted);
        }
    }
    panic!("no freezer cgroup {wanted} under {}", root.display());
}

/// Freezes (or thaws) every container of a pod at once — agent and
/// application stop dead, as in a stopped VM, while the node and its kubelet
/// run on. Returns the cgroup, so the caller can thaw it for sure later.
pub fn freeze_pod(pod: &Pod, frozen: bool) -> PathBuf {
    let cg = pod_freezer(pod);
    set_freezer(&cg, frozen);
    cg
}

/// Freezes (or thaws) one container of a pod: its own cgroup under the
/// pod's (the kubelet's cgroupfs layout names it by container id).
pub fn freeze_container(pod: &Pod, container: &str, frozen: bool) -> Result<PathBuf, String> {
    let id = container_id(pod, container)
        .ok_or_else(|| format!("container {container} of {:?} is not running", pod.metadata.name))?;
    let cg = pod_freezer(pod).join(id);
    if !cg.is_dir() {
        return Err(format!("no freezer cgroup {}", cg.display()));
    }
    set_freezer(&cg, frozen);
    Ok(cg)
}

/// A running container's root file system as the host sees it
/// (`/proc/PID/root` of its first process): files written there land in the
/// container's own mounts, its emptyDir volumes too.
pub fn container_root(pod: &Pod, container: &str) -> Result<PathBuf, String> {
    let id = container_id(pod, container)
        .ok_or_else(|| format!("container {container} of {:?} is not running", pod.metadata.name))?;
    let procs = pod_freezer(pod).join(id).join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(|e| format!("{}: {e}", procs.display()))?;
    let pid = text.lines().next().ok_or_else(|| format!("no process in {}", procs.display()))?;
    Ok(PathBuf::from(format!("/proc/{}/root", pid.trim())))
}

pub fn set_freezer(cgroup: &Path, frozen: bool) {
    let want = if frozen { "FROZEN" } else { "THAWED" };
    let file = cgroup.join("freezer.state");
    if std::fs::write(&file, want).is_err() {
        return; // The pod is gone: nothing left to freeze or thaw.
    }
    for _ in 0..100 {
        if std::fs::read_to_string(&file).is_ok_and(|s| s.trim() == want) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} did not reach {want}", file.display());
}

/// Cuts (or restores) one pod's traffic with the API server, nothing else.
pub fn cut_pod_from_api(pod: &Pod, cut: bool) {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    testbed(&["node", "cut-api", &node_of(pod), &ip, if cut { "on" } else { "off" }]).expect("cut set");
}

/// Cuts (or restores) two pods' traffic with each other, nothing else.
pub fn cut_pods_apart(a: &Pod, b: &Pod, cut: bool) {
    let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    let on = if cut { "on" } else { "off" };
    testbed(&["node", "cut-peer", &node_of(a), &ip(a), &ip(b), on]).expect("cut set");
}

/// The API server frozen (every client's calls hang); thawed when dropped,
/// so a failing test leaves no control plane stopped.
pub struct ApiServerFrozen {
    thawed: bool,
}

impl ApiServerFrozen {
    pub fn freeze() -> Self {
        testbed(&["apiserver", "freeze"]).expect("API server frozen");
        ApiServerFrozen { thawed: false }
    }

    pub fn thaw(mut self) {
        self.thawed = true;
        testbed(&["apiserver", "thaw"]).expect("API server thawed");
    }
}

impl Drop for ApiServerFrozen {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = testbed(&["apiserver", "thaw"]);
        }
    }
}

/// A node-level fault: `freeze`, `thaw`, `partition`, `heal`, `kill`, `restart`.
pub fn node(action: &str, n: u32) {
    testbed(&["node", action, &n.to_string()]).unwrap_or_else(|e| panic!("node {n} {action}: {e}"));
}

/// A node-level fault in force: undone (the node thawed, healed or
/// restarted) when dropped, so a failing test leaves no node broken for the
/// tests after it.
pub struct NodeFault {
    n: u32,
    undo: &'static str,
    undone: bool,
}

impl NodeFault {
    /// Applies `fail` to node `n`; `undo` brings it back.
    pub fn apply(fail: &str, undo: &'static str, n: u32) -> Self {
        node(fail, n);
        NodeFault { n, undo, undone: false }
    }

    pub fn undo(mut self) {
        self.undone = true;
        node(self.undo, self.n);
    }
}

impl Drop for NodeFault {
    fn drop(&mut self) {
        if !self.undone {
            let _ = testbed(&["node", self.undo, &self.n.to_string()]);
        }
    }
}

/// Serializes the tests that fail whole nodes, across test binaries (a file
/// lock): a node frozen under one test would fail every other test's pods.
pub struct NodeFaultLock(std::fs::File);

impl NodeFaultLock {
    pub fn take() -> Self {
        let path = std::env::temp_dir().join("hapair-e2e-node-faults.lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).expect("node fault lock");
        NodeFaultLock(f)
    }
}
