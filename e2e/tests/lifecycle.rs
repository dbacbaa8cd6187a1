//! A pair's life beyond failovers, on the real nodes: deleted and created
//! again over the members' kept claims (the manuals' "remove HA" without
//! losing data), the claims going with the pair when asked, and the Health
//! Monitor's disk check on volumes that really fill up.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hapair::api::{ConditionStatus, HighAvailabilityPair, LABEL_PAIR, Member, MemberState, Mode, OperationPhase};
use harness::{Harness, test_pair};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

/// How long the garbage collector and the kubelets may take to remove what
/// a deleted pair owned.
const GONE: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(60);

fn synced_pair(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2}
    }});
    common::merge(&mut spec, &json!({"spec": extra}));
    test_pair("web", 2, spec)
}

fn synced(p: &HighAvailabilityPair) -> bool {
    p.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Synced" && c.status == ConditionStatus::True))
}

/// The claims of pair `web`, by name: uid and the uids of their owners.
async fn claims(h: &Harness) -> BTreeMap<String, (String, Vec<String>)> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(h.client.clone(), &h.ns.name);
    let list = api.list(&ListParams::default().labels(&format!("{LABEL_PAIR}=web"))).await.unwrap();
    list.items
        .into_iter()
        .map(|c| {
            let owners = c.owner_references().iter().map(|o| o.uid.clone()).collect();
            (c.name_any(), (c.uid().unwrap_or_default(), owners))
        })
        .collect()
}

/// Waits until `check` holds for the claims, or fails saying what they were.
async fn wait_claims(h: &Harness, what: &str, check: impl Fn(&BTreeMap<String, (String, Vec<String>)>) -> bool) {
    let start = Instant::now();
    loop {
        let now = claims(h).await;
        if check(&now) {
            return;
        }
        assert!(start.elapsed() < GONE, "{what}: the claims are {now:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn delete_pair_and_wait_for_its_pods(h: &Harness) {
    h.pairs().delete("web", &DeleteParams::default()).await.unwrap();
    let pods: Api<Pod> = h.pods();
    let start = Instant::now();
    loop {
        let left = pods.list(&ListParams::default().labels(&format!("{LABEL_PAIR}=web"))).await.unwrap().items;
        if left.is_empty() && h.pairs().get_opt("web").await.unwrap().is_none() {
            return;
        }
        assert!(
            start.elapsed() < GONE,
            "the deleted pair's pods are still there: {:?}",
            left.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn until_file(path: &Path, content: &[u8]) {
    let start = Instant::now();
    while std::fs::read(path).ok().as_deref() != Some(content) {
        assert!(start.elapsed() < WAIT, "{} never held what was written", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pair_keeps_its_claims_and_the_same_pair_applied_again_serves_their_files() {
    let h = Harness::new("lifecycle-retain").await;
    let states = harness::states::StateLog::start(h.pairs(), "web");
    h.apply(&synced_pair(json!({}))).await;
    h.wait_enabled("web", WAIT).await;
    h.wait_for("web", "Synced", WAIT, synced).await;
    // The manual's registration: HA Initializing, then Primary Active and
    // Secondary Syncing.
    states.assert_in_order(Member::Primary, &[MemberState::HaInitializing, MemberState::PrimaryActive]).await;
    states.assert_in_order(Member::Secondary, &[MemberState::HaInitializing, MemberState::SecondarySyncing]).await;
    let first_uid = h.pair("web").await.uid().unwrap();
    // The certificates' expiry, read from the pair's Secret: the CA made
    // for ten years, the members' for five.
    let certs = h.pair("web").await.status.and_then(|s| s.certificates).expect("status.certificates");
    let years = |t: Option<chrono::DateTime<chrono::Utc>>| (t.unwrap() - chrono::Utc::now()).num_days() / 365;
    assert!((9..=10).contains(&years(certs.ca_not_after)), "{certs:?}");
    assert!((4..=5).contains(&years(certs.members_not_after)), "{certs:?}");
    let (primary, secondary) = (h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await);
    let kept: &[u8] = b"written before the pair was deleted";
    std::fs::write(primary.join("kept.txt"), kept).unwrap();
    until_file(&secondary.join("kept.txt"), kept).await;
    let before = claims(&h).await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.values().all(|(_, owners)| owners.is_empty()), "kept claims have no owner: {before:?}");

    // Deleted: the pods go, the claims stay as they were.
    delete_pair_and_wait_for_its_pods(&h).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(claims(&h).await, before, "the claims outlive the pair");

    // Applied again: the same claims, the same files, on both members.
    h.apply(&synced_pair(json!({}))).await;
    let p = h.wait_enabled("web", WAIT).await;
    assert_ne!(p.uid().unwrap(), first_uid, "a new pair");
    h.wait_for("web", "Synced", WAIT, synced).await;
    assert_eq!(claims(&h).await, before, "the new pair mounts the kept claims");
    assert_eq!(h.data_dir("web", Member::Primary).await, primary);
    assert_eq!(h.data_dir("web", Member::Secondary).await, secondary);
    for dir in [&primary, &secondary] {
        assert_eq!(std::fs::read(dir.join("kept.txt")).unwrap(), kept, "{}", dir.display());
    }
    // And it goes on syncing over them.
    let active = h.pair("web").await.status.and_then(|s| s.active_member).expect("an active member");
    let (from, to) = if active == Member::Primary { (&primary, &secondary) } else { (&secondary, &primary) };
    std::fs::write(from.join("after.txt"), b"written after").unwrap();
    until_file(&to.join("after.txt"), b"written after").await;

    // `whenDeleted: Delete`: the claims become the pair's, and go with it.
    let second_uid = h.pair("web").await.uid().unwrap();
    h.merge_spec("web", json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}})).await;
    wait_claims(&h, "owned by the pair", |c| c.len() == 2 && c.values().all(|(_, o)| o == &vec![second_uid.clone()]))
        .await;
    // Back to `Retain` releases them again.
    h.merge_spec("web", json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"}})).await;
    wait_claims(&h, "released", |c| c.len() == 2 && c.values().all(|(_, o)| o.is_empty())).await;
    h.merge_spec("web", json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}})).await;
    wait_claims(&h, "owned again", |c| c.len() == 2 && c.values().all(|(_, o)| o == &vec![second_uid.clone()])).await;
    delete_pair_and_wait_for_its_pods(&h).await;
    wait_claims(&h, "deleted with the pair", |c| c.is_empty()).await;
}

/// The pair's condition `type`, if it is True: its reason and message.
fn condition_on(p: &HighAvailabilityPair, type_: &str) -> Option<(String, String)> {
    let c = p.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_ && c.status == ConditionStatus::True)?;
    Some((c.reason.clone(), c.message.clone()))
}

async fn event_reasons(h: &Harness) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(h.client.clone(), &h.ns.name);
    let list = events.list(&ListParams::default().fields("involvedObject.name=web")).await.unwrap();
    list.items.into_iter().filter_map(|e| e.reason).collect()
}

/// Waits until the pair has been told each of `reasons` as an Event (the
/// operator publishes a round's Events after its status write).
async fn wait_events(h: &Harness, reasons: &[&str]) {
    let start = Instant::now();
    loop {
        let told = event_reasons(h).await;
        if reasons.iter().all(|r| told.iter().any(|t| t == r)) {
            return;
        }
        assert!(start.elapsed() < WAIT, "not all of {reasons:?} told as Events: {told:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes `bytes` of zeros to `path` (space really taken, not a hole).
fn take(path: &Path, bytes: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// Bytes to add to the volume behind `dir` so that it is `percent` full.
fn to_fill(dir: &Path, percent: u64) -> u64 {
    let v = hapair::agent::volume::measure(dir).unwrap();
    let usable = v.used_bytes + v.available_bytes;
    (usable * percent / 100).saturating_sub(v.used_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_volume_is_told_at_80_and_90_percent_and_a_standby_refuses_a_pull_that_would_fill_it() {
    let h = Harness::new("lifecycle-disk").await;
    // The testbed's small volumes are file systems of their own, which
    // really fill up.
    let small = json!({"storage": {"size": "400Mi", "mountPath": "/data", "storageClassName": "hapair-small"}});
    h.apply(&synced_pair(small)).await;
    h.wait_enabled("web", WAIT).await;
    h.wait_for("web", "Synced", WAIT, synced).await;
    let active = h.pair("web").await.status.and_then(|s| s.active_member).expect("an active member");
    let standby = active.peer();
    let (from, to) = (h.data_dir("web", active).await, h.data_dir("web", standby).await);
    let spot = |p: &HighAvailabilityPair, m: Member| {
        p.status.as_ref().and_then(|s| s.members.iter().find(|x| x.name == m)).and_then(|x| x.volume_used_percent)
    };
    let p = h
        .wait_for("web", "both volumes reported", WAIT, |p| spot(p, active).is_some() && spot(p, standby).is_some())
        .await;
    assert!(spot(&p, standby).unwrap() < 75, "{:?}", p.status.unwrap().members);
    assert_eq!(condition_on(&p, "VolumeSpaceLow"), None);

    // Space taken on the standby by something the pair does not sync (in
    // the agent's own directory, as a core dump or a log would take it).
    let filler = to.join(hapair::sync::path::STATE_DIR).join("filler");
    take(&filler, to_fill(&to, 84));
    let p = h
        .wait_for("web", "VolumeSpaceLow at 80 %", WAIT, |p| {
            condition_on(p, "VolumeSpaceLow").is_some_and(|(r, _)| r == "Above80Percent")
        })
        .await;
    let (_, message) = condition_on(&p, "VolumeSpaceLow").unwrap();
    assert!(message.starts_with(&format!("{standby}'s data volume is 8")), "{message}");
    assert!((80..90).contains(&spot(&p, standby).unwrap()), "{:?}", spot(&p, standby));
    let filler2 = to.join(hapair::sync::path::STATE_DIR).join("filler-2");
    take(&filler2, to_fill(&to, 93));
    h.wait_for("web", "VolumeSpaceLow at 90 %", WAIT, |p| {
        condition_on(p, "VolumeSpaceLow").is_some_and(|(r, _)| r == "Above90Percent")
    })
    .await;
    wait_events(&h, &["VolumeAbove80Percent", "VolumeAbove90Percent"]).await;

    // A file on the active that the standby's free space cannot hold: the
    // pull is refused whole and the pair says why; nothing of it is written.
    let free = hapair::agent::volume::measure(&to).unwrap().available_bytes;
    take(&from.join("too-big.bin"), free + (4 << 20));
    let p = h
        .wait_for("web", "the refusal in Synced", WAIT, |p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Synced"
                        && c.reason == "SyncFailing"
                        && c.message.contains("would fill this member's volume")
                })
            })
        })
        .await;
    assert!(!to.join("too-big.bin").exists());
    let tmp_files =
        std::fs::read_dir(to.join(hapair::sync::path::STATE_DIR).join("tmp")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(tmp_files, 0, "no partial copy left behind");
    assert_eq!(p.status.as_ref().unwrap().active_member, Some(active), "no failover for a full standby");

    // Space back: the standby pulls the file by itself, and the pair says
    // the volumes are fine again.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler2).unwrap();
    h.wait_for("web", "Synced again", Duration::from_secs(90), synced).await;
    assert_eq!(
        std::fs::metadata(to.join("too-big.bin")).unwrap().len(),
        std::fs::metadata(from.join("too-big.bin")).unwrap().len()
    );
    std::fs::remove_file(from.join("too-big.bin")).unwrap();
    h.wait_for("web", "VolumeSpaceLow cleared", WAIT, |p| condition_on(p, "VolumeSpaceLow").is_none()).await;
    wait_events(&h, &["VolumeSpaceRecovered"]).await;
}

/// Asks for an operation and waits until it ends; returns its phase and
/// what the pair said about it.
async fn operation(h: &Harness, id: &str, action: serde_json::Value) -> (OperationPhase, String) {
    let mut op = json!({"id": id});
    common::merge(&mut op, &action);
    // A merge patch would keep the previous request's action beside this one.
    h.merge_spec("web", json!({"operation": null})).await;
    h.merge_spec("web", json!({"operation": op})).await;
    let p = h
        .wait_for("web", &format!("operation {id}"), Duration::from_secs(90), |p| {
            p.status.as_ref().is_some_and(|s| s.operations.iter().any(|o| o.id == id && o.phase.is_terminal()))
        })
        .await;
    let o = p.status.unwrap().operations.into_iter().find(|o| o.id == id).unwrap();
    (o.phase, o.message.unwrap_or_default())
}

/// The manual's "Replace the Primary HA Server": the primary, standby after
/// a switchover, loses its volume (its claim deleted). No manual step: the
/// operator replaces its pod on a new claim, the new, empty volume gets every
/// file from the active member, and a failback to it then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_claim_is_deleted_gets_a_new_volume_a_full_copy_and_the_role_back() {
    use MemberState::*;
    let h = Harness::new("lifecycle-replace").await;
    h.apply(&synced_pair(json!({}))).await;
    h.wait_enabled("web", WAIT).await;
    h.wait_for("web", "Synced", WAIT, synced).await;
    let states = harness::states::StateLog::start(h.pairs(), "web");
    let (phase, why) = operation(&h, "to-secondary", json!({"switchover": {}})).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{why}");
    let secondary = h.data_dir("web", Member::Secondary).await;
    std::fs::write(secondary.join("kept.txt"), b"written on the secondary").unwrap();
    let old_dir = h.data_dir("web", Member::Primary).await;
    until_file(&old_dir.join("kept.txt"), b"written on the secondary").await;
    let old_pod = h.member_pod("web", Member::Primary).await.uid().unwrap();
    let old_claim = claims(&h).await["web-primary-data"].0.clone();

    // The primary's claim deleted (by hand, or by a tool cleaning up).
    let api: Api<PersistentVolumeClaim> = Api::namespaced(h.client.clone(), &h.ns.name);
    api.delete("web-primary-data", &DeleteParams::default()).await.unwrap();
    wait_claims(&h, "a new claim for the primary", |c| {
        c.get("web-primary-data").is_some_and(|(uid, _)| *uid != old_claim)
    })
    .await;
    let start = Instant::now();
    while h.pods().get_opt("web-primary").await.unwrap().is_none_or(|p| p.uid().as_deref() == Some(&old_pod)) {
        assert!(start.elapsed() < GONE, "the primary's pod was not replaced");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let new_dir = h.data_dir("web", Member::Primary).await;
    assert_ne!(new_dir, old_dir, "a new volume");
    until_file(&new_dir.join("kept.txt"), b"written on the secondary").await;
    let p = h
        .wait_for("web", "the primary synced on its new volume", WAIT, |p| {
            synced(p) && p.status.as_ref().and_then(|s| s.active_member) == Some(Member::Secondary)
        })
        .await;
    assert_eq!(p.status.unwrap().epoch, 2, "no failover meanwhile");
    wait_events(&h, &["MemberVolumeReplaced"]).await;

    // And the role goes back to it.
    let (phase, why) = operation(&h, "back", json!({"failback": {}})).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{why}");
    let p = h.pair("web").await;
    assert_eq!(p.status.and_then(|s| s.active_member), Some(Member::Primary));
    // The manual's states, in its order: the planned failover to the
    // secondary, the primary lost and back, the failback.
    h.wait_for("web", "the secondary syncing again", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| s.members.iter().any(|m| m.state == SecondarySyncing))
    })
    .await;
    states
        .assert_in_order(
            Member::Secondary,
            &[SecondarySyncing, SecondaryFailover, SecondaryActive, SecondaryFailback, SecondarySyncing],
        )
        .await;
    states
        .assert_in_order(Member::Primary, &[PrimaryActive, Down, PrimarySyncing, PrimaryFailback, PrimaryActive])
        .await;
}

/// The manuals' "remove HA" and re-registration: the standby removed on
/// purpose (its pod stopped, its claim and files kept), the active serving
/// alone with its data in mode `NotConfigured` without standby alarms,
/// requests to move the role refused; then the standby added back, which
/// registers it (`Initializing` until it holds the active's files, then
/// `Enabled`) with what was written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_runs_one_member_on_purpose_and_registers_its_standby_again() {
    let h = Harness::new("lifecycle-one").await;
    h.apply(&synced_pair(json!({}))).await;
    h.wait_enabled("web", WAIT).await;
    h.wait_for("web", "Synced", WAIT, synced).await;
    let p = h.pair("web").await;
    let (active, epoch) = (p.status.as_ref().unwrap().active_member.unwrap(), p.status.as_ref().unwrap().epoch);
    let standby = active.peer();
    let (from, to) = (h.data_dir("web", active).await, h.data_dir("web", standby).await);
    let before_claims = claims(&h).await;

    let (ok, out, err) = tokio::task::block_in_place(|| h.plugin(&["remove-standby", "web"]));
    assert!(ok && out.contains("runs one member"), "{out}{err}");
    let p = h
        .wait_for("web", "mode NotConfigured", WAIT, |p| {
            p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::NotConfigured) && s.removed_member == Some(standby))
        })
        .await;
    let pods = h.pods();
    let start = Instant::now();
    while pods.get_opt(&standby.pod_name("web")).await.unwrap().is_some() {
        assert!(start.elapsed() < GONE, "the removed member's pod is still there");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A few heartbeats alone: nothing comes back, nothing alarms, the
    // active serves its data and writes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(pods.get_opt(&standby.pod_name("web")).await.unwrap().is_none(), "the removed member was started again");
    let p2 = h.pair("web").await;
    let s = p2.status.as_ref().unwrap();
    assert_eq!((s.mode, s.active_member, s.epoch), (Some(Mode::NotConfigured), Some(active), epoch), "{s:?}");
    assert!(s.members.iter().all(|m| m.state == MemberState::StandAlone), "{:?}", s.members);
    for quiet in ["Degraded", "StandbyOutage", "FailoverRequired", "SplitBrain"] {
        assert_eq!(condition_on(&p2, quiet), None, "{quiet} on a pair of one");
    }
    assert_eq!(claims(&h).await, before_claims, "the removed member's claim is kept");
    // The active serves alone (the test's client gives each try one second,
    // which one fsync on a loaded node can outlast: a few tries).
    h.wait_vip_writable("web", Duration::from_secs(10)).await;
    std::fs::write(from.join("alone.txt"), b"written while alone").unwrap();
    let (phase, why) = operation(&h, "sw-alone", json!({"switchover": {}})).await;
    assert_eq!(phase, OperationPhase::Refused, "{why}");
    assert!(why.contains("spec.standby"), "{why}");
    drop(p);

    // Added back: a registration, then the files written meanwhile.
    let states = harness::states::StateLog::start(h.pairs(), "web");
    h.merge_spec("web", json!({"operation": null})).await;
    let (ok, out, err) = tokio::task::block_in_place(|| h.plugin(&["add-standby", "web"]));
    assert!(ok && out.contains("Initializing"), "{out}{err}");
    // A pair that does not exist: a clear error and a non-zero exit.
    let (ok, _, err) = tokio::task::block_in_place(|| h.plugin(&["add-standby", "nosuch"]));
    assert!(!ok && err.contains("nosuch"), "{err}");
    h.wait_for("web", "the standby registered again", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Enabled) && s.removed_member.is_none())
    })
    .await;
    h.wait_for("web", "Synced", WAIT, synced).await;
    until_file(&to.join("alone.txt"), b"written while alone").await;
    states.assert_in_order(standby, &[MemberState::StandAlone, MemberState::HaInitializing]).await;
    let sb_state =
        if standby == Member::Secondary { MemberState::SecondarySyncing } else { MemberState::PrimarySyncing };
    states.assert_in_order(standby, &[MemberState::HaInitializing, sb_state]).await;
    let p = h.pair("web").await;
    assert_eq!(p.status.as_ref().unwrap().epoch, epoch, "the role never moved");
}
