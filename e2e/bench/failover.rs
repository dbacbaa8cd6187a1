//! `make bench`: failover timings on the testbed's real nodes. For heartbeat
//! 1 s × 3 and 5 s × 3, runs confirmed failures (kill -9 of the active's
//! application container) and unconfirmed ones (the active's pod frozen,
//! agent and application alike: nothing reports anything) repeatedly and
//! prints one line per figure: `BENCH <name> <value> <unit>`.
//!
//! - detection: from the kill to the Lease move (the commit point);
//! - lease_to_selector: from the Lease move to the VIP selector write;
//! - outage: what a client sees, first failed to first successful write
//!   through the Service's ClusterIP (kube-proxy's rules, keep-alive).
//!
//! Then planned switchovers (`spec.operation`) of a pair that syncs its
//! data volume, under writes: from the request to its success, the client
//! outage, and acknowledged writes the new active lacks (must be 0).
//!
//! `HAPAIR_BENCH_RUNS` sets the runs per series (default 20);
//! `HAPAIR_BENCH_ONLY=failover|switchover|sync` runs one part.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use hapair::api::{HighAvailabilityPair, Mode};
use harness::{Harness, Kill, test_pair};
use serde_json::json;

#[derive(Default)]
struct Series {
    detection: Vec<f64>,
    lease_to_selector: Vec<f64>,
    outage: Vec<f64>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

async fn wait(h: &Harness, what: &str, f: impl Fn(&HighAvailabilityPair) -> bool) -> HighAvailabilityPair {
    h.wait_for("web", what, Duration::from_secs(120), f).await
}

async fn vip_writable(h: &Harness) {
    let start = Instant::now();
    while !matches!(h.vip("web", "/write?key=probe&value=1").await, Ok((200, _))) {
        assert!(start.elapsed() < Duration::from_secs(60), "no write through the VIP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn series(interval: i32, kind: Kill, runs: usize) -> Series {
    let label = format!("bench-{interval}s-{}", if kind == Kill::App { "c" } else { "u" });
    let h = Harness::new(&label).await;
    h.apply(&test_pair(
        "web",
        interval,
        json!({"spec": {"failover": {"flapBudget": {"maxAutomaticFailovers": 100, "windowSeconds": 60}}}}),
    ))
    .await;
    let mut out = Series::default();
    for run in 0..runs {
        let p = wait(&h, "Enabled", |p| p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Enabled))).await;
        vip_writable(&h).await;
        let s = p.status.unwrap();
        let (victim, epoch) = (s.active_member.unwrap(), s.epoch);
        let writer = h.writer("web").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = chrono::Utc::now();
        h.kill("web", victim, kind).await;
        let p = wait(&h, "failover", |p| p.status.as_ref().is_some_and(|s| s.epoch > epoch)).await;
        // The outage ends when the writer's own connection is served again,
        // not when a fresh one would be.
        writer.wait_epoch(epoch + 1, Duration::from_secs(120)).await;
        let log = writer.stop().await;
        let t = p.status.unwrap().last_transition.unwrap();
        out.detection.push((t.time - killed).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        out.lease_to_selector.push(t.lease_to_selector_millis.unwrap_or(0) as f64);
        out.outage.push(log.longest_outage.as_secs_f64() * 1000.0);
        eprintln!(
            "{label} run {run}: {victim} killed, detection {:.0} ms, lease->selector {} ms, outage {:.0} ms",
            out.detection.last().unwrap(),
            t.lease_to_selector_millis.unwrap_or(0),
            out.outage.last().unwrap()
        );
        match kind {
            // Thawed, the old active finds it lost the Lease and returns as standby.
            Kill::Freeze => h.thaw_all(),
            // The kubelet restarts a container that keeps crashing with a
            // growing back-off (up to 5 min): a fresh pod for the old active
            // keeps every run's start the same.
            Kill::App => {
                let pod = victim.pod_name("web");
                let old = h.pods().get(&pod).await.ok().and_then(|p| p.metadata.uid);
                let _ = h.pods().delete(&pod, &Default::default()).await;
                let start = Instant::now();
                loop {
                    let p = h.pods().get_opt(&pod).await.ok().flatten();
                    let fresh_and_ready = p.is_some_and(|p| {
                        p.metadata.uid != old
                            && p.status
                                .and_then(|s| s.conditions)
                                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    });
                    if fresh_and_ready {
                        break;
                    }
                    assert!(start.elapsed() < Duration::from_secs(120), "{pod} was not recreated");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    out
}

/// Planned switchovers of a pair that syncs its data volume, under
/// continuous writes: duration, client outage, and acknowledged writes the
/// new active does not hold (must be 0).
async fn switchovers(runs: usize) -> (Vec<f64>, Vec<f64>, usize) {
    let h = Harness::new("bench-sw").await;
    let synced = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2}
    }});
    h.apply(&test_pair("web", 1, synced)).await;
    let (mut took, mut outage, mut lost) = (Vec::new(), Vec::new(), 0);
    for run in 0..runs {
        wait(&h, "Enabled", |p| p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Enabled))).await;
        vip_writable(&h).await;
        let writer = h.writer("web").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = format!("sw-{run}");
        let start = Instant::now();
        h.merge_spec("web", json!({"operation": {"id": id, "switchover": {}}})).await;
        let p = wait(&h, "switchover", |p| {
            p.status.as_ref().is_some_and(|s| s.operations.iter().any(|o| o.id == id && o.phase.is_terminal()))
        })
        .await;
        took.push(start.elapsed().as_secs_f64() * 1000.0);
        writer.wait_epoch(p.status.as_ref().map_or(0, |s| s.epoch), Duration::from_secs(60)).await;
        let log = writer.stop().await;
        outage.push(log.longest_outage.as_secs_f64() * 1000.0);
        let s = p.status.unwrap();
        let op = s.operations.iter().find(|o| o.id == id).unwrap();
        assert_eq!(op.phase, hapair::api::OperationPhase::Succeeded, "{op:?}");
        let missing = log.missing_from(&h.data_dir("web", s.active_member.unwrap()).await);
        lost += missing.len();
        eprintln!(
            "switchover run {run}: {:.0} ms, outage {:.0} ms, {} acknowledged, {} lost",
            took.last().unwrap(),
            outage.last().unwrap(),
            log.acknowledged.len(),
            missing.len()
        );
    }
    (took, outage, lost)
}

fn report(name: &str, v: &[f64]) {
    for (stat, p) in [("median", 50.0), ("p99", 99.0)] {
        println!("BENCH {name}_{stat} {:.0} ms", pct(v, p));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("HAPAIR_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let only = std::env::var("HAPAIR_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "switchover" {
        let (took, outage, lost) = switchovers(runs).await;
        report("switchover_1sx3_duration", &took);
        report("switchover_1sx3_outage", &outage);
        println!("BENCH switchover_1sx3_acknowledged_writes_lost {lost}");
    }
    if !(only.is_empty() || only == "failover") {
        return;
    }
    for interval in [1, 5] {
        for (kind, name) in [(Kill::App, "confirmed"), (Kill::Freeze, "unconfirmed")] {
            let s = series(interval, kind, runs).await;
            for (metric, v) in
                [("detection", &s.detection), ("lease_to_selector", &s.lease_to_selector), ("outage", &s.outage)]
            {
                for (stat, p) in [("median", 50.0), ("p99", 99.0)] {
                    println!("BENCH failover_{name}_{interval}sx3_{metric}_{stat} {:.0} ms", pct(v, p));
                }
            }
        }
    }
}
