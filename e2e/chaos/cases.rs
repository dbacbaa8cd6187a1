//! The named fault cases of the chaos suite, and how each is injected.
//!
//! Every case starts from a converged pair (one member active, the other a
//! synced standby) and is placed at a random phase of the renewal cycle: the
//! runner sleeps a random part of the heartbeat interval first. `inject`
//! returns once the fault is over (undone, healed, thawed); the runner then
//! waits for the pair to converge again.

use std::time::Duration;

use hapair::api::{AGENT_CONTAINER, LABEL_MEMBER, LABEL_PAIR, Member};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::nodes::{self, ApiServerFrozen, NodeFault};
use crate::harness::{Harness, Kill};

/// The renewal interval of the chaos pair (`heartbeat 1 s × 3`).
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Its lease: interval × missed threshold.
pub const LEASE: Duration = Duration::from_secs(3);

macro_rules! cases {
    ($($case:ident = $name:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Case { $($case,)* }
        impl Case {
            pub const ALL: &[Case] = &[$(Case::$case,)*];
            pub fn name(self) -> &'static str {
                match self { $(Case::$case => $name,)* }
            }
        }
    };
}

cases! {
    KillApp = "kill-app",
    KillAgent = "kill-agent",
    KillPod = "kill-pod",
    StopAgent = "stop-agent",
    FreezePod = "freeze-pod",
    FreezeNode = "freeze-node",
    PartitionNode = "partition-node",
    CutApi = "cut-agent-from-api",
    CutPeer = "cut-agents-apart",
    CutApiAndPeer = "cut-agent-from-api-and-peer",
    ApiServerDown = "api-server-down-60s",
    ApiServerDownPeerCut = "api-server-down-and-peers-cut",
    LeaseDeleted = "lease-deleted",
    LeaseHolderEdited = "lease-holder-edited",
    VipSelectorEdited = "vip-selector-edited",
    VipSliceEdited = "vip-slice-edited",
    OperatorKilledInFailover = "operator-killed-in-failover",
    OperatorKilledInSwitchover = "operator-killed-in-switchover",
    OperatorLeaderFrozen = "operator-leader-frozen-30s",
    Switchover = "switchover",
    SwitchoverAtHold = "switchover-given-up-at-the-hold",
    RequestsTogether = "switchover-failover-heartbeat-together",
    OperatorCut = "operator-cut-from-agents",
    ApiResponsesDelayed = "api-responses-delayed",
    PairDeletedInFailover = "pair-deleted-in-failover",
    CrashInFailover = "operator-crash-in-failover",
    CrashInSwitchover = "operator-crash-in-switchover",
    CrashInFailback = "operator-crash-in-failback",
    CrashInRepair = "operator-crash-in-split-brain-repair",
    CrashInResync = "operator-crash-in-resync",
    CrashInLeaseRepair = "operator-crash-in-lease-repair",
    ResyncJobKilled = "resync-job-killed",
    ClockStep = "clock-step-60s",
    VolumeFull = "standby-volume-full",
}

impl Case {
    /// Faults that touch a whole node or the control plane: no other pair
    /// may be mid-case while one runs.
    pub fn exclusive(self) -> bool {
        matches!(self, Case::FreezeNode | Case::PartitionNode | Case::ApiServerDown | Case::ApiServerDownPeerCut)
    }

    /// Cases too long for `make test`'s single round (the soak runs them).
    pub fn soak_only(self) -> bool {
        matches!(self, Case::ApiServerDown | Case::OperatorLeaderFrozen)
    }

    /// Cases after which the role must have moved: the active was lost for
    /// longer than a lease (or asked to hand over), or its Lease was
    /// rewritten (which always takes a new epoch). The others may or may not
    /// move it (a killed application restarts within the back-off and may
    /// take its role back first; an operator killed mid-way may leave a
    /// switchover to fail) or must not (the agents hear each other).
    pub fn must_fail_over(self) -> bool {
        matches!(
            self,
            Case::StopAgent
                | Case::FreezePod
                | Case::FreezeNode
                | Case::PartitionNode
                | Case::CutApiAndPeer
                | Case::LeaseDeleted
                | Case::LeaseHolderEdited
                | Case::Switchover
                | Case::OperatorLeaderFrozen
                | Case::CrashInFailover
                | Case::CrashInLeaseRepair
        )
    }

    /// Cases after which the role must not have moved: the pair's agents
    /// still hear each other, or only the Service was touched.
    pub fn must_not_fail_over(self) -> bool {
        matches!(
            self,
            Case::CutApi
                | Case::CutPeer
                | Case::VipSelectorEdited
                | Case::VipSliceEdited
                | Case::ApiServerDown
                | Case::OperatorCut
                | Case::ApiResponsesDelayed
                | Case::CrashInRepair
                | Case::CrashInResync
                | Case::ResyncJobKilled
                | Case::ClockStep
                | Case::VolumeFull
        )
    }

    pub fn parse(name: &str) -> Option<Case> {
        Case::ALL.iter().copied().find(|c| c.name() == name)
    }
}

/// What the runner knows when it injects: the pair, its active member, and
/// a random source.
pub struct Target<'a> {
    pub h: &'a Harness,
    pub pair: &'a str,
    pub active: Member,
    /// This pair's fault number, unique: operation ids are made from it.
    pub serial: u64,
    pub rng: &'a mut fastrand::Rng,
}

fn millis(rng: &mut fastrand::Rng, max: u64) -> Duration {
    Duration::from_millis(rng.u64(0..max.max(1)))
}

/// Beyond a lease, so an unconfirmed failover must happen during the fault.
pub fn past_lease(rng: &mut fastrand::Rng) -> Duration {
    LEASE + Duration::from_millis(1500) + millis(rng, 1000)
}

impl Target<'_> {
    pub async fn pod(&self, m: Member) -> k8s_openapi::api::core::v1::Pod {
        self.h.member_pod(self.pair, m).await
    }

    /// Submits an operation (a merge patch that replaces any earlier one).
    /// The API server refuses a new request while another is pending: that
    /// refusal is the answer, not an error of the test.
    pub async fn request(&self, id: String, action: serde_json::Value) -> Result<(), String> {
        // Null every other action: a merge patch keeps the previous request's.
        let mut op = json!({"id": id, "switchover": null, "failover": null, "failback": null,
            "goStandby": null, "resolveSplitBrain": null, "resync": null});
        crate::common::merge(&mut op, &action);
        let patch = Patch::Merge(json!({"spec": {"operation": op}}));
        match self.h.pairs().patch(self.pair, &PatchParams::default(), &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("still pending") => Err(e.message),
            Err(e) => panic!("operation {op} not submitted: {e}"),
        }
    }

    /// The operator replica that leads now (waiting for one to).
    async fn leader(&self) -> usize {
        for _ in 0..200 {
            if let Some(i) = self.h.leader().await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no operator replica leads");
    }
}

/// What an injection leaves for the runner to check once the pair has
/// converged again.
#[derive(Default)]
pub struct Injected {
    /// A fault that must land at a named point (an operator crash point,
    /// a Job's pod killed mid-run), and whether it did.
    pub crash: Option<(&'static str, bool)>,
    /// The crash point was not reached because the procedure took a path
    /// without it (see [`Case::optional_points`]); it tested nothing, and
    /// is counted apart rather than as a fault that did not land.
    pub off_path: bool,
    /// The bulk tree was taken from the standby: it must be whole again.
    pub tree_restored: bool,
    /// The pair was deleted: the runner applies it anew, with new clients
    /// and checkers (a new pair is a new history). What the deletion left
    /// behind, if anything.
    pub deleted: Option<Vec<String>>,
    /// Breaches the case itself saw while the fault lasted: kind, example.
    pub breaches: Vec<(&'static str, String)>,
}

pub async fn inject(case: Case, t: &mut Target<'_>) -> Injected {
    let (h, pair, active) = (t.h, t.pair, t.active);
    let mut out = Injected::default();
    match case {
        Case::KillApp => h.kill(pair, active, Kill::App).await,
        Case::KillAgent => kill_until_gone(t, active, &[AGENT_CONTAINER]).await,
        Case::KillPod => kill_until_gone(t, active, &["app", AGENT_CONTAINER]).await,
        Case::StopAgent => {
            h.freeze_agent(pair, active).await;
            tokio::time::sleep(past_lease(t.rng)).await;
            h.thaw_all();
        }
        Case::FreezePod => {
            h.kill(pair, active, Kill::Freeze).await;
            tokio::time::sleep(past_lease(t.rng)).await;
            h.thaw_all();
        }
        Case::FreezeNode | Case::PartitionNode => {
            let n = nodes::node_number(&t.pod(active).await).expect("a testbed node");
            let (fail, undo) = if case == Case::FreezeNode { ("freeze", "thaw") } else { ("partition", "heal") };
            let fault = NodeFault::apply(fail, undo, n);
            tokio::time::sleep(past_lease(t.rng)).await;
            fault.undo();
        }
        Case::CutApi => {
            h.partition(pair, active, true).await;
            tokio::time::sleep(LEASE * 2 + millis(t.rng, 2000)).await;
            h.partition(pair, active, false).await;
        }
        Case::CutPeer => {
            h.cut_members_apart(pair, true).await;
            tokio::time::sleep(LEASE * 2 + millis(t.rng, 2000)).await;
            h.cut_members_apart(pair, false).await;
        }
        Case::CutApiAndPeer => {
            h.cut_members_apart(pair, true).await;
            h.partition(pair, active, true).await;
            tokio::time::sleep(past_lease(t.rng)).await;
            h.partition(pair, active, false).await;
            h.cut_members_apart(pair, false).await;
        }
        Case::ApiServerDown => {
            let frozen = ApiServerFrozen::freeze();
            tokio::time::sleep(Duration::from_secs(60)).await;
            frozen.thaw();
        }
        Case::ApiServerDownPeerCut => {
            h.cut_members_apart(pair, true).await;
            let frozen = ApiServerFrozen::freeze();
            tokio::time::sleep(past_lease(t.rng)).await;
            frozen.thaw();
            h.cut_members_apart(pair, false).await;
        }
        Case::LeaseDeleted => {
            let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
            leases.delete(pair, &DeleteParams::default()).await.expect("Lease deleted");
        }
        Case::LeaseHolderEdited => {
            let standby = t.pod(active.peer()).await;
            let identity = format!("{}/{}", active.peer(), standby.metadata.uid.unwrap_or_default());
            let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
            let edit = json!({"spec": {"holderIdentity": identity}});
            leases.patch(pair, &PatchParams::default(), &Patch::Merge(&edit)).await.expect("Lease edited");
        }
        Case::VipSelectorEdited => {
            // A selector naming the standby: kube-controller-manager then
            // makes a slice routing to it beside the operator's.
            let services: Api<Service> = Api::namespaced(h.client.clone(), &h.ns.name);
            let edit = json!({"spec": {"selector": {LABEL_PAIR: pair, LABEL_MEMBER: active.peer().to_string()}}});
            services.patch(pair, &PatchParams::default(), &Patch::Merge(&edit)).await.expect("selector edited");
        }
        Case::VipSliceEdited => {
            // The operator's own slice pointed at the standby's pod.
            let standby = t.pod(active.peer()).await;
            let ip = standby.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
            let slices: Api<EndpointSlice> = Api::namespaced(h.client.clone(), &h.ns.name);
            let edit = json!({"endpoints": [{"addresses": [ip], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": standby.metadata.name, "uid": standby.metadata.uid}}]});
            slices
                .patch(&format!("{pair}-hapair"), &PatchParams::default(), &Patch::Merge(&edit))
                .await
                .expect("slice edited");
        }
        Case::OperatorKilledInFailover => {
            let leader = t.leader().await;
            h.kill(pair, active, Kill::App).await;
            // Anywhere in the failover: detection, the Lease's move, the
            // selector's, the history's write.
            tokio::time::sleep(millis(t.rng, 2000)).await;
            h.signal_operator(leader, "KILL").expect("operator killed");
        }
        Case::OperatorKilledInSwitchover => {
            let leader = t.leader().await;
            t.request(format!("chaos-killed-sw-{}", t.serial), json!({"switchover": {}}))
                .await
                .expect("nothing pending");
            tokio::time::sleep(millis(t.rng, 1500)).await;
            h.signal_operator(leader, "KILL").expect("operator killed");
        }
        Case::OperatorLeaderFrozen => {
            // A failure that lasts (the active's pod frozen) while the
            // leading operator is stopped: the other replica must take the
            // lead (its leader lease is 4 s) and fail over, and the old
            // leader, let go 30 s later, must not act on what it knew.
            let leader = t.leader().await;
            let start = std::time::Instant::now();
            h.signal_operator(leader, "STOP").expect("operator frozen");
            h.kill(pair, active, Kill::Freeze).await;
            tokio::time::sleep(past_lease(t.rng) + Duration::from_secs(6)).await;
            h.thaw_all();
            tokio::time::sleep(Duration::from_secs(30).saturating_sub(start.elapsed())).await;
            h.signal_operator(leader, "CONT").expect("operator thawed");
        }
        Case::Switchover => {
            t.request(format!("chaos-sw-{}", t.serial), json!({"switchover": {}})).await.expect("nothing pending")
        }
        Case::SwitchoverAtHold => {
            // The standby cannot pull the drained member's final files (the
            // members are cut apart), so the handover waits; the link comes
            // back around the moment the drained member gives the handover up
            // and serves again (its hold). The operator's move, on a drained
            // report it read before, races the member's resumption: one of
            // them wins, and no acknowledged write may be lost either way.
            h.cut_members_apart(pair, true).await;
            t.request(format!("chaos-hold-{}", t.serial), json!({"switchover": {}})).await.expect("nothing pending");
            let hold = hapair::proto::handover_hold(1, 3, Some(1));
            tokio::time::sleep(hold - Duration::from_millis(2000) + millis(t.rng, 3000)).await;
            h.cut_members_apart(pair, false).await;
        }
        Case::RequestsTogether => {
            // The second request is refused at the API while the first is
            // pending, or accepted if the first already finished.
            t.request(format!("chaos-tog-sw-{}", t.serial), json!({"switchover": {}})).await.expect("nothing pending");
            let _ = t.request(format!("chaos-tog-fo-{}", t.serial), json!({"failover": {}})).await;
            h.merge_spec(pair, json!({"heartbeat": {"intervalSeconds": 2}})).await;
            tokio::time::sleep(millis(t.rng, 3000)).await;
            h.merge_spec(pair, json!({"heartbeat": {"intervalSeconds": 1}})).await;
        }
        Case::ApiResponsesDelayed => {
            // Every answer of the API server to the active (its renewals',
            // its watches') held most of an interval, nothing dropped.
            let delay = INTERVAL.mul_f64(0.6 + 0.3 * t.rng.f64());
            let pod = t.pod(active).await;
            let failed_before = renewals_failed(&pod);
            let proxy = crate::harness::delay::DelayedApi::start(pod.clone(), delay).await;
            tokio::time::sleep(LEASE * 2 + millis(t.rng, 2000)).await;
            // Landed once renewal answers went through it.
            let bytes = proxy.end();
            eprintln!(
                "chaos: {} KiB of API answers to the {active} held {delay:?}; renewals failed meanwhile: {}",
                bytes / 1024,
                renewals_failed(&pod) - failed_before
            );
            out.crash = Some(("api-responses-delayed", bytes > 1024));
        }
        Case::PairDeletedInFailover => {
            // The active lost, and the pair deleted anywhere from before the
            // Lease moves to after: the operator must not recreate what the
            // garbage collector removes, and nothing may be left.
            h.kill(pair, active, Kill::Freeze).await;
            tokio::time::sleep(LEASE + millis(t.rng, 2500)).await;
            h.pairs().delete(pair, &DeleteParams::default()).await.expect("pair deleted");
            h.thaw_all();
            out.deleted = Some(super::teardown::left_behind(h, pair).await);
        }
        Case::OperatorCut => {
            h.cut_operator_from_members(pair, true).await;
            tokio::time::sleep(LEASE * 2 + millis(t.rng, 2000)).await;
            // Landed if the operator saw both agents miss their heartbeats.
            let s = h.pair(pair).await.status.unwrap_or_default();
            let deaf = s.members.len() == 2 && s.members.iter().all(|m| m.missed_heartbeats >= 3);
            h.cut_operator_from_members(pair, false).await;
            out.crash = Some(("operator-missed-both-agents", deaf));
        }
        Case::CrashInFailover
        | Case::CrashInSwitchover
        | Case::CrashInFailback
        | Case::CrashInRepair
        | Case::CrashInResync
        | Case::CrashInLeaseRepair => {
            let (point, hit) = super::crash::crash_in(case, t).await;
            // Not reached, yet the procedure went past it to the Lease: it
            // took the path without that step.
            out.off_path = !hit
                && Case::optional_points().contains(&point)
                && t.h.steps_reached().iter().any(|s| s == "lease-moved");
            out.crash = Some((point, hit));
        }
        Case::ResyncJobKilled => {
            // The standby loses the bulk tree behind the pair's back: a
            // split brain, repaired by a resync Job copying it all back.
            // Pods of the round's earlier Jobs may still read as running
            // for a moment after they finished: only the repair's own counts.
            let earlier = h.job_pod_uids().await;
            take_bulk_from_standby(t).await;
            out.tree_restored = true;
            let start = std::time::Instant::now();
            while !h.job_pod_running(&earlier).await && start.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Anywhere in its copy (about 3 s; the API reports the start late).
            tokio::time::sleep(millis(t.rng, 1000)).await;
            let mut killed = h.kill_job_pods(&earlier).await;
            // The status may lag the container's start: try briefly again.
            let start = std::time::Instant::now();
            while killed == 0 && start.elapsed() < Duration::from_millis(500) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                killed = h.kill_job_pods(&earlier).await;
            }
            out.crash = Some(("resync-job-pod-killed", killed > 0));
        }
        Case::ClockStep => out = super::clock::step(t).await,
        Case::VolumeFull => out = super::volume::fill_standby(t).await,
    }
    out
}

/// How many renewals the pod's agent has logged as failed so far.
fn renewals_failed(pod: &k8s_openapi::api::core::v1::Pod) -> usize {
    let (ns, name) =
        (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
    let dir = format!("{ns}_{name}_{}", pod.metadata.uid.clone().unwrap_or_default());
    crate::harness::views::pod_log_dirs()
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d.join(&dir).join(AGENT_CONTAINER)).into_iter().flatten().flatten())
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .map(|text| text.matches("lease renewal failed").count())
        .sum()
}

/// The tree the chaos pair keeps on its active for the resync cases.
pub const BULK: &str = "bulk";
/// Its size: enough files that copying it takes a few seconds.
pub const BULK_FILES: usize = 3000;

/// Writes the bulk tree on the active, owned like the volume (the agent
/// runs as that user and must be able to move the files), and waits until
/// the standby holds all of it.
pub async fn ensure_bulk(h: &Harness, pair: &str, active: Member) {
    use std::os::unix::fs::MetadataExt;
    let root = h.data_dir(pair, active).await;
    let dir = root.join(BULK);
    if !dir.is_dir() {
        let meta = std::fs::metadata(&root).unwrap();
        let own = |p: &std::path::Path| std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid())).unwrap();
        let tmp = dir.with_extension("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        own(&tmp);
        for i in 0..BULK_FILES {
            let sub = tmp.join(format!("{:02}", i % 30));
            if !sub.is_dir() {
                std::fs::create_dir(&sub).unwrap();
                own(&sub);
            }
            let body: Vec<u8> = (0..8192).map(|b| ((b * 7 + i) % 251) as u8).collect();
            let file = sub.join(format!("f{i:05}"));
            std::fs::write(&file, body).unwrap();
            own(&file);
        }
        std::fs::rename(&tmp, &dir).unwrap();
    }
    let want = bulk_size(h, pair, active).await;
    let start = std::time::Instant::now();
    while bulk_size(h, pair, active.peer()).await != want {
        assert!(start.elapsed() < Duration::from_secs(120), "the standby never got the bulk tree");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn take_bulk_from_standby(t: &Target<'_>) {
    let dir = t.h.data_dir(t.pair, t.active.peer()).await.join(BULK);
    std::fs::remove_dir_all(&dir).expect("the standby has the bulk tree");
}

/// Files under the bulk tree of a member: (count, bytes).
pub async fn bulk_size(h: &Harness, pair: &str, m: Member) -> (usize, u64) {
    fn walk(d: &std::path::Path, acc: &mut (usize, u64)) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                walk(&e.path(), acc);
            } else {
                acc.0 += 1;
                acc.1 += meta.len();
            }
        }
    }
    let mut acc = (0, 0);
    walk(&h.data_dir(pair, m).await.join(BULK), &mut acc);
    acc
}

/// kill -9 of the named containers of a member's pod, each retried until
/// the one the kubelet reports running is the one killed.
async fn kill_until_gone(t: &Target<'_>, m: Member, containers: &[&str]) {
    for c in containers {
        let mut tries = 0;
        loop {
            let pod = t.pod(m).await;
            match nodes::kill_container(&pod, c) {
                Ok(()) => break,
                Err(e) if tries > 100 => panic!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            tries += 1;
        }
    }
}
