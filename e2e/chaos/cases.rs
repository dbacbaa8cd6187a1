//! The named fault cases of the chaos suite, and how each is injected.
//!
//! Every case starts from a converged pair (one member active, the other a
//! synced standby) and is placed at a random phase of the renewal cycle: the
//! runner sleeps a random part of the heartbeat interval first. `inject`
//! returns once the fault is over (undone, healed, thawed); the runner then
//! waits for the pair to converge again.

use std::time::Duration;

use hapair::api::{AGENT_CONTAINER, LABEL_MEMBER, Member};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
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
    OperatorKilledInFailover = "operator-killed-in-failover",
    OperatorKilledInSwitchover = "operator-killed-in-switchover",
    OperatorLeaderFrozen = "operator-leader-frozen-30s",
    Switchover = "switchover",
    RequestsTogether = "switchover-failover-heartbeat-together",
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
        )
    }

    /// Cases after which the role must not have moved: the pair's agents
    /// still hear each other, or only the Service was touched.
    pub fn must_not_fail_over(self) -> bool {
        matches!(self, Case::CutApi | Case::CutPeer | Case::VipSelectorEdited | Case::ApiServerDown)
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
fn past_lease(rng: &mut fastrand::Rng) -> Duration {
    LEASE + Duration::from_millis(1500) + millis(rng, 1000)
}

impl Target<'_> {
    async fn pod(&self, m: Member) -> k8s_openapi::api::core::v1::Pod {
        self.h.member_pod(self.pair, m).await
    }

    /// Submits an operation (a merge patch that replaces any earlier one).
    /// The API server refuses a new request while another is pending: that
    /// refusal is the answer, not an error of the test.
    async fn request(&self, id: String, action: serde_json::Value) -> Result<(), String> {
        let mut op = json!({"id": id, "switchover": null, "failover": null});
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

pub async fn inject(case: Case, t: &mut Target<'_>) {
    let (h, pair, active) = (t.h, t.pair, t.active);
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
            let services: Api<Service> = Api::namespaced(h.client.clone(), &h.ns.name);
            let edit = json!({"spec": {"selector": {LABEL_MEMBER: active.peer().to_string()}}});
            services.patch(pair, &PatchParams::default(), &Patch::Merge(&edit)).await.expect("selector edited");
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
        Case::RequestsTogether => {
            // The second request is refused at the API while the first is
            // pending, or accepted if the first already finished.
            t.request(format!("chaos-tog-sw-{}", t.serial), json!({"switchover": {}})).await.expect("nothing pending");
            let _ = t.request(format!("chaos-tog-fo-{}", t.serial), json!({"failover": {}})).await;
            h.merge_spec(pair, json!({"heartbeat": {"intervalSeconds": 2}})).await;
            tokio::time::sleep(millis(t.rng, 3000)).await;
            h.merge_spec(pair, json!({"heartbeat": {"intervalSeconds": 1}})).await;
        }
    }
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
