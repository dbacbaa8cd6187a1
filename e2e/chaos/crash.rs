//! The operator crash cases (`operator-crash-in-*`): which named steps of
//! each procedure a case may arm (`hapair::operator::fault`), and the round
//! that arms one, sets the procedure off and tells whether a replica died
//! there.

use std::time::Duration;

use hapair::api::Member;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::cases::{Case, Target, past_lease};
use crate::harness::Kill;

impl Case {
    /// The operator's crash points (`hapair::operator::fault::STEPS`) a
    /// procedure reaches, in its order; a crash case arms one at random each
    /// round.
    pub fn crash_points(self) -> &'static [&'static str] {
        const FAILOVER: &[&str] = &[
            "lease-moved",
            "vip-written",
            "standby-service-written",
            "role-labelled",
            "status-written",
            "events-published",
        ];
        const HANDOVER: &[&str] = &[
            "status-written",
            "drain-asked",
            "sync-asked",
            "lease-moved",
            "vip-written",
            "standby-service-written",
            "role-labelled",
            "events-published",
        ];
        const JOB: &[&str] = &["job-started", "status-written", "events-published"];
        // The Lease deleted (recreated) or its holder edited (written again).
        // (The holder stays the same member: no role label changes.)
        const LEASE: &[&str] = &["lease-created", "lease-restored", "status-written", "events-published"];
        match self {
            Case::CrashInFailover => FAILOVER,
            Case::CrashInSwitchover | Case::CrashInFailback => HANDOVER,
            Case::CrashInRepair | Case::CrashInResync => JOB,
            Case::CrashInLeaseRepair => LEASE,
            _ => &[],
        }
    }

    /// Crash points a procedure reaches only on some paths: a handover asks
    /// the standby to pull only when its last report does not hold the
    /// drained member's final generation yet.
    pub fn optional_points() -> &'static [&'static str] {
        &["sync-asked"]
    }
}

/// Arms this round's crash point, sets off the case's procedure, and waits
/// until a replica died there or the procedure is over; returns the point
/// and whether it was reached.
pub async fn crash_in(case: Case, t: &mut Target<'_>) -> (&'static str, bool) {
    let (h, pair, active) = (t.h, t.pair, t.active);
    let points = case.crash_points();
    // Random, so that brief runs too cover every point across runs (the
    // report counts each point's crashes).
    let point = points[t.rng.usize(..points.len())];
    if case == Case::CrashInFailback && active == Member::Primary {
        // Failback moves the role back to the primary: hand it to the
        // secondary first, unarmed.
        let id = format!("chaos-fb-pre-{}", t.serial);
        t.request(id.clone(), json!({"switchover": {}})).await.expect("nothing pending");
        wait_settled(t, &id).await;
    }
    h.arm_crash(point);
    let id = format!("chaos-crash-{}-{}", case.name(), t.serial);
    match case {
        Case::CrashInFailover => {
            // Past the lease and the operators' own leader lease (4 s): a
            // leader dead at the failure's first step is replaced, and its
            // successor must still find the active gone.
            h.kill(pair, active, Kill::Freeze).await;
            tokio::time::sleep(past_lease(t.rng) + Duration::from_secs(6)).await;
            h.thaw_all();
        }
        Case::CrashInSwitchover => t.request(id.clone(), json!({"switchover": {}})).await.expect("nothing pending"),
        Case::CrashInFailback => t.request(id.clone(), json!({"failback": {}})).await.expect("nothing pending"),
        Case::CrashInRepair => {
            let dir = h.data_dir(pair, active.peer()).await;
            std::fs::write(dir.join(format!("stray-{}.txt", t.serial)), b"written on the standby").unwrap();
        }
        Case::CrashInResync => {
            t.request(id.clone(), json!({"resync": {"dryRun": false}})).await.expect("nothing pending")
        }
        Case::CrashInLeaseRepair => {
            let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns.name);
            // `lease-created` follows a deletion, `lease-restored` an edit;
            // the later steps follow either.
            if point == "lease-created" || (point != "lease-restored" && t.rng.bool()) {
                leases.delete(pair, &DeleteParams::default()).await.expect("Lease deleted");
            } else {
                let standby = t.pod(active.peer()).await;
                let identity = format!("{}/{}", active.peer(), standby.metadata.uid.unwrap_or_default());
                let edit = json!({"spec": {"holderIdentity": identity}});
                leases.patch(pair, &PatchParams::default(), &Patch::Merge(&edit)).await.expect("Lease edited");
            }
        }
        _ => unreachable!("{case:?} has no crash points"),
    }
    let start = std::time::Instant::now();
    while h.crash_file().exists() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (point, h.disarm_crash())
}

/// Waits (bounded) until operation `id` is over and the pair is synced.
async fn wait_settled(t: &Target<'_>, id: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let p = t.h.pair(t.pair).await;
        let s = p.status.unwrap_or_default();
        let done = s.operations.iter().any(|o| o.id == id && o.phase.is_terminal());
        let synced = s.conditions.iter().any(|c| c.type_ == "Synced" && c.status == hapair::api::ConditionStatus::True);
        if done && synced {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
