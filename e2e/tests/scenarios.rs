//! The EPN manual's "Common Failover/Failback Scenarios" that the other
//! files do not already play, on the real nodes: a member restarting while
//! the secondary synchronizes — the primary in manual mode (no
//! administrator step: it serves again), the primary in automatic mode (a
//! failover through the manual's states, then a failback, nothing lost
//! without a trace), and the secondary (it finishes the copy by itself).
//! The others: network down and process restart fails (`failover.rs`,
//! `operations.rs`), split brain with both up (`sync.rs`), both powered
//! down and the secondary that will not restart (`cold_start.rs`), replace
//! the primary and removing HA (`lifecycle.rs`), secondary goes down
//! (`nodes.rs`).

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use hapair::api::{ConditionStatus, HighAvailabilityPair, Member, MemberState, Mode, OperationPhase, TransitionType};
use harness::states::StateLog;
use harness::{Harness, Kill, test_pair};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
/// The batch written on the active: large enough that the standby is seen
/// part-way through copying it.
const FILES: usize = 40;
const SIZE: usize = 8 << 20;

async fn up(name: &str, mode: &str) -> Harness {
    let h = Harness::new(name).await;
    h.apply(&test_pair(
        "web",
        1,
        json!({"spec": {
            "failover": {"mode": mode},
            "storage": {"size": "1Gi", "mountPath": "/data"},
            "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2}
        }}),
    ))
    .await;
    h.wait_for("web", "the primary active, the secondary synced", WAIT, |p| whole(p, Member::Primary)).await;
    h
}

fn whole(p: &HighAvailabilityPair, active: Member) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.active_member == Some(active)
            && s.mode == Some(Mode::Enabled)
            && s.conditions.iter().any(|c| c.type_ == "Synced" && c.status == ConditionStatus::True)
    })
}

fn name(i: usize) -> String {
    format!("big-{i:02}.bin")
}

/// Writes the batch on a member's volume, each file its own byte.
fn write_batch(dir: &Path) {
    for i in 0..FILES {
        std::fs::write(dir.join(name(i)), vec![i as u8; SIZE]).unwrap();
    }
}

/// Whether `path` holds file `i` of the batch, whole.
fn holds(path: &Path, i: usize) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() == SIZE && b.iter().all(|x| *x == i as u8))
}

/// How many files of the batch have arrived whole (by size: a copy lands
/// by rename, so a file is there whole or not at all).
fn arrived(dir: &Path) -> usize {
    (0..FILES).filter(|i| std::fs::metadata(dir.join(name(*i))).is_ok_and(|m| m.len() == SIZE as u64)).count()
}

/// Waits until every file of the batch is on the standby, each as written.
async fn whole_batch_on(dir: &Path) {
    let start = Instant::now();
    while arrived(dir) < FILES {
        assert!(start.elapsed() < WAIT, "the standby has {} of {FILES} files", arrived(dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..FILES {
        assert!(holds(&dir.join(name(i)), i), "{} differs on the standby", name(i));
    }
}

/// Waits until the standby is part-way through copying the batch.
async fn mid_copy(dir: &Path) -> usize {
    let start = Instant::now();
    loop {
        let n = arrived(dir);
        if n > 0 {
            assert!(
                n < FILES,
                "the standby copied the whole batch before it was seen copying: the test proves nothing"
            );
            return n;
        }
        assert!(start.elapsed() < WAIT, "the standby never started copying the batch");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() { found.extend(files_under(&path)) } else { found.push(path) }
    }
    found
}

fn transitions_since(p: &HighAvailabilityPair, epoch: i64) -> Vec<(TransitionType, Option<Member>)> {
    p.status.as_ref().unwrap().history.iter().filter(|t| t.epoch > epoch).map(|t| (t.type_, t.to)).collect()
}

/// EPN, manual failover: "If the primary server is restarted while the
/// secondary server is synchronizing ... No administrator response should
/// be required." The primary's application is killed mid-copy; hapair does
/// not fail over (manual mode), the primary serves again once its
/// application is back, and the secondary finishes the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarting_while_the_secondary_syncs_serves_again_by_itself_in_manual_mode() {
    let h = up("sc-primary-manual", "Manual").await;
    let checker = h.checker("web").await;
    let (primary, secondary) = (h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await);
    let at = h.pair("web").await.status.unwrap().epoch;
    write_batch(&primary);
    let seen = mid_copy(&secondary).await;
    h.kill("web", Member::Primary, Kill::App).await;
    eprintln!("primary restarted with {seen} of {FILES} files copied");
    let p =
        h.wait_for("web", "the primary serving again, the secondary synced", WAIT, |p| whole(p, Member::Primary)).await;
    let moves = transitions_since(&p, at);
    assert!(moves.iter().all(|(_, to)| *to == Some(Member::Primary)), "the role moved: {moves:?}");
    assert!(p.status.as_ref().unwrap().operations.is_empty(), "no request was needed");
    whole_batch_on(&secondary).await;
    checker.assert_clean();
}

/// EPN, automatic failover: "you must trigger a failback". The primary's
/// application is killed mid-copy: the secondary takes over through the
/// manual's states (an unplanned failover), the primary returns as standby
/// and is resynced, a failback request gives it the role back, and every
/// file of the batch is on the active member or kept in the primary's
/// quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarting_while_the_secondary_syncs_fails_over_and_back_with_nothing_lost() {
    let h = up("sc-primary-auto", "Automatic").await;
    let checker = h.checker("web").await;
    let (primary, secondary) = (h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await);
    let states = StateLog::start(h.pairs(), "web");
    write_batch(&primary);
    mid_copy(&secondary).await;
    h.kill("web", Member::Primary, Kill::App).await;
    let p = h
        .wait_for("web", "the secondary active after a failover", WAIT, |p| {
            p.status.as_ref().is_some_and(|s| s.active_member == Some(Member::Secondary))
        })
        .await;
    assert_eq!(p.status.as_ref().unwrap().last_transition.as_ref().unwrap().type_, TransitionType::Failover);
    h.wait_for("web", "the primary back as standby, resynced", WAIT, |p| whole(p, Member::Secondary)).await;
    // The manual's unplanned failover: Primary Active → Primary Failover;
    // Secondary Syncing → Secondary Failover → Secondary Active.
    states.assert_in_order(Member::Primary, &[MemberState::PrimaryActive, MemberState::PrimaryFailover]).await;
    states
        .assert_in_order(
            Member::Secondary,
            &[MemberState::SecondarySyncing, MemberState::SecondaryFailover, MemberState::SecondaryActive],
        )
        .await;

    h.merge_spec("web", json!({"operation": {"id": "back", "failback": {}}})).await;
    let p = h
        .wait_for("web", "the failback done", WAIT, |p| {
            p.status.as_ref().is_some_and(|s| s.operations.iter().any(|o| o.id == "back" && o.phase.is_terminal()))
        })
        .await;
    let op = p.status.as_ref().unwrap().operations.iter().find(|o| o.id == "back").unwrap().clone();
    assert_eq!(op.phase, OperationPhase::Succeeded, "{op:?}");
    h.wait_for("web", "the primary active, the secondary synced", WAIT, |p| whole(p, Member::Primary)).await;
    states
        .assert_in_order(
            Member::Primary,
            &[MemberState::PrimaryFailover, MemberState::PrimaryFailback, MemberState::PrimaryActive],
        )
        .await;
    let kept = files_under(&primary.join(".hapair").join("quarantine"));
    for i in 0..FILES {
        let live = holds(&primary.join(name(i)), i);
        let quarantined = kept.iter().any(|f| f.file_name().is_some_and(|n| *n == *name(i)) && holds(f, i));
        assert!(live || quarantined, "{} is neither on the active member nor in the primary's quarantine", name(i));
    }
    checker.assert_clean();
}

/// EPN: "If the secondary server is restarted while syncing with the
/// primary server ... No administrator response should be required." The
/// secondary's pod is deleted mid-copy; its new pod, on the same claim,
/// finishes the copy, and nothing fails over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_restarting_while_it_syncs_finishes_the_copy_by_itself() {
    let h = up("sc-secondary", "Automatic").await;
    let checker = h.checker("web").await;
    let (primary, secondary) = (h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await);
    let at = h.pair("web").await.status.unwrap().epoch;
    write_batch(&primary);
    let old = h.member_pod("web", Member::Secondary).await.metadata.uid;
    mid_copy(&secondary).await;
    h.pods().delete(&Member::Secondary.pod_name("web"), &Default::default()).await.unwrap();
    // Wait for the new pod before calling the pair whole again.
    let start = Instant::now();
    loop {
        let now = h.pods().get_opt(&Member::Secondary.pod_name("web")).await.unwrap();
        if now.as_ref().is_some_and(|p| p.metadata.uid != old && p.metadata.deletion_timestamp.is_none()) {
            break;
        }
        assert!(start.elapsed() < WAIT, "the secondary's pod was not replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = h.wait_for("web", "the pair whole again", WAIT, |p| whole(p, Member::Primary)).await;
    assert_eq!(transitions_since(&p, at), vec![], "a restarting standby moves nothing");
    whole_batch_on(&secondary).await;
    checker.assert_clean();
}

/// EPN, "Restore Data In an HA Deployment": remove HA, restore the data on
/// the member that serves, register the standby again — which then holds
/// exactly the restored data (files the restore removed are gone from it
/// too), and nothing is kept aside as a split brain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_restored_on_the_active_alone_reaches_the_standby_when_it_registers_again() {
    let h = up("sc-restore", "Automatic").await;
    let (primary, secondary) = (h.data_dir("web", Member::Primary).await, h.data_dir("web", Member::Secondary).await);
    std::fs::write(primary.join("config.txt"), b"before the restore").unwrap();
    std::fs::write(primary.join("later.txt"), b"written after the backup").unwrap();
    let start = Instant::now();
    while std::fs::read(secondary.join("later.txt")).is_err() {
        assert!(start.elapsed() < WAIT, "later.txt never reached the secondary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Remove HA.
    h.merge_spec("web", json!({"standby": "Removed"})).await;
    h.wait_for("web", "mode NotConfigured", WAIT, |p| {
        p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::NotConfigured))
    })
    .await;
    // 2. The restore, on the active member's volume: the backup's files
    //    back, what came after it gone.
    std::fs::write(primary.join("config.txt"), b"from the backup").unwrap();
    std::fs::remove_file(primary.join("later.txt")).unwrap();
    // 3. Register the standby again.
    h.merge_spec("web", json!({"standby": "Enabled"})).await;
    let p = h.wait_for("web", "the standby registered and synced", WAIT, |p| whole(p, Member::Primary)).await;
    let start = Instant::now();
    while std::fs::read(secondary.join("config.txt")).ok().as_deref() != Some(b"from the backup".as_slice())
        || secondary.join("later.txt").exists()
    {
        assert!(start.elapsed() < WAIT, "the secondary does not hold the restored data");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = p.status.as_ref().unwrap();
    assert!(
        s.conditions.iter().all(|c| c.type_ != "SplitBrain" || c.status == ConditionStatus::False),
        "a restore on the active is no split brain: {:?}",
        s.conditions
    );
    assert!(files_under(&secondary.join(".hapair").join("quarantine")).is_empty(), "nothing set aside");
}
