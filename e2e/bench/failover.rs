//! `make bench`, failover part: failovers and switchovers on the testbed's
//! real nodes, measured from outside the operator.
//!
//! Every figure comes from one monotonic clock in this process: the fault's
//! injection, each event of the observer's watches as it arrives (the
//! kubelet's report of the application, the Lease, the role label, the
//! EndpointSlice — `harness/observer.rs`) and each acknowledgement of the client,
//! which writes through the Service's ClusterIP on a keep-alive connection
//! (kube-proxy and conntrack in play) with an id unique across the whole run
//! (`harness/probe.rs`). The operator's own status figures are not used.
//!
//! Each fault is placed at a random phase of the renewal cycle: after the
//! observer sees a renewal arrive, a uniform delay within one interval.
//! Series, each at heartbeat 1 s × 3 and 5 s × 3:
//! - `confirmed`: kill -9 of the active's application (the kubelet reports it);
//! - `frozen`: the active's whole node frozen (kubelet, runtime, pods);
//! - `partitioned`: the active's node cut from the network;
//! - `switchover` (`spec.operation`) of a pair that syncs its data volume,
//!   and `switchover_nosync` of one that does not.
//!
//! A run that does not complete (no failover, no acknowledgement from the
//! new active within bounds) is counted as failed and printed, never dropped.
//! The chaos suite's checker runs throughout each series (the applications'
//! own views, the agents' roles, the routes); its breaches are printed.
//! Switchovers report the acknowledged writes the final active lacks, over
//! all runs (ids never reused).
//!
//! Each failure series is followed by the same fault on the peers — a
//! keepalived pair (`keepalived.rs`) and client-go's leader election as a
//! sidecar at its defaults and tuned to hapair's lease (`leaderelect.rs`) —
//! and the ratio of the outages.
//!
//! Then file sync's lag under continuous writes beside rsync (`lag.rs`),
//! syncing every second and every 11 s (the default).
//!
//! Prints `BENCH <series>_<stage> n=… median=… p90=… p99=… max=… ms` and
//! `BENCH <series>_failed <k> of <n>`. `HAPAIR_BENCH_RUNS` sets the runs per
//! series (default 100); `HAPAIR_BENCH_ONLY=failover|switchover|lag|sync` one
//! part; `HAPAIR_BENCH_SERIES=confirmed,frozen,…` some series;
//! `HAPAIR_BENCH_INTERVALS=1,5` the heartbeats; `HAPAIR_BENCH_SEED` the
//! phases' seed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../harness/mod.rs"]
mod harness;
mod keepalived;
mod lag;
mod leaderelect;
// Only its ssh server and one transfer are used here.
#[allow(dead_code)]
mod rsync;
mod stats;

use std::time::{Duration, Instant};

use hapair::api::{Member, Mode};
use harness::nodes::{NodeFault, NodeFaultLock};
use harness::observer::{self, Observer, Stages};
use harness::probe::{self, Probe};
use harness::{Harness, Kill, test_pair};
use serde_json::json;
use stats::{pct, report};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Confirmed,
    Frozen,
    Partitioned,
    Switchover,
    SwitchoverNoSync,
}

impl Fault {
    const ALL: [Fault; 5] =
        [Fault::Confirmed, Fault::Frozen, Fault::Partitioned, Fault::Switchover, Fault::SwitchoverNoSync];

    fn name(self) -> &'static str {
        match self {
            Fault::Confirmed => "confirmed",
            Fault::Frozen => "frozen",
            Fault::Partitioned => "partitioned",
            Fault::Switchover => "switchover",
            Fault::SwitchoverNoSync => "switchover_nosync",
        }
    }

    fn planned(self) -> bool {
        matches!(self, Fault::Switchover | Fault::SwitchoverNoSync)
    }

    fn node(self) -> bool {
        matches!(self, Fault::Frozen | Fault::Partitioned)
    }
}

#[derive(Default)]
struct Results {
    stages: Vec<Stages>,
    outage: Vec<f64>,
    failed: Vec<String>,
    lost: Option<usize>,
    acknowledged: usize,
    breaches: Vec<String>,
}

/// The node a member's pod runs on (the testbed numbers them).
async fn node_of(h: &Harness, member: Member) -> u32 {
    harness::nodes::node_number(&h.member_pod("web", member).await).expect("a member pod on a testbed node")
}

async fn enabled(h: &Harness, timeout: Duration) -> Option<(Member, i64)> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let p = h.pair("web").await;
        if let Some(s) = p.status.filter(|s| s.mode == Some(Mode::Enabled))
            && let Some(a) = s.active_member
        {
            return Some((a, s.epoch));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Brings the old active back after a run: thawed, healed, or (its
/// application killed) a fresh pod, since the kubelet restarts a container
/// that keeps crashing with a growing back-off.
async fn recover(h: &Harness, fault: Fault, victim: Member, node: Option<NodeFault>) {
    if let Some(n) = node {
        n.undo();
    }
    if fault == Fault::Confirmed {
        let pod = victim.pod_name("web");
        let old = h.pods().get(&pod).await.ok().and_then(|p| p.metadata.uid);
        let _ = h.pods().delete(&pod, &Default::default()).await;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let p = h.pods().get_opt(&pod).await.ok().flatten();
            let fresh_and_ready = p.is_some_and(|p| {
                p.metadata.uid != old
                    && p.status
                        .and_then(|s| s.conditions)
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if fresh_and_ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn series(fault: Fault, interval: i32, runs: usize, rng: &mut fastrand::Rng) -> Results {
    let label = format!("bench-{}-{interval}s", fault.name().replace('_', "-"));
    let _lock = fault.node().then(NodeFaultLock::take);
    let h = Harness::new(&label).await;
    let mut extra = json!({"spec": {"failover": {"flapBudget": {"maxAutomaticFailovers": 100, "windowSeconds": 60}}}});
    if fault.planned() {
        extra["spec"]["storage"] = json!({"size": "1Gi", "mountPath": "/data"});
    }
    if fault == Fault::Switchover {
        extra["spec"]["fileSync"] =
            json!({"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2});
    }
    h.apply(&test_pair("web", interval, extra)).await;
    let mut out = Results::default();
    if enabled(&h, Duration::from_secs(180)).await.is_none() {
        out.failed.push("the pair never became Enabled".into());
        return out;
    }
    // Everything the observer sees counts, its first listing included: the
    // state before the first fault.
    let started = Instant::now();
    let observer = Observer::start(h.client.clone(), &h.ns.name, "web");
    let checker = h.checker_with_grace("web", Duration::from_secs(2)).await;
    let client = Probe::start(h.cluster_ip("web").await);
    let lease = Duration::from_secs(3 * interval as u64);
    for run in 0..runs {
        let Some((victim, epoch)) = enabled(&h, Duration::from_secs(300)).await else {
            out.failed.push(format!("run {run}: not Enabled within 300 s"));
            break;
        };
        if client.wait_epoch(epoch, Instant::now(), Duration::from_secs(60)).await.is_none() {
            out.failed.push(format!("run {run}: the client was not served at epoch {epoch} within 60 s"));
            continue;
        }
        // A random phase of the renewal cycle, from a renewal seen arriving.
        observer.next_renewal(lease * 2).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..interval as u64 * 1000))).await;
        let node = if fault.node() { Some(node_of(&h, victim).await) } else { None };
        let at = Instant::now();
        let held = match fault {
            Fault::Confirmed => {
                h.kill("web", victim, Kill::App).await;
                None
            }
            Fault::Frozen => Some(NodeFault::apply("freeze", "thaw", node.unwrap())),
            Fault::Partitioned => Some(NodeFault::apply("partition", "heal", node.unwrap())),
            Fault::Switchover | Fault::SwitchoverNoSync => {
                let id = format!("bench-{run}-{}", rng.u32(..));
                h.merge_spec("web", json!({"operation": {"id": id, "switchover": {}}})).await;
                None
            }
        };
        let moved = h
            .wait_for_opt("web", lease * 3 + Duration::from_secs(30), |p| {
                p.status.as_ref().is_some_and(|s| s.epoch > epoch && s.active_member == Some(victim.peer()))
            })
            .await;
        let new_epoch = moved.as_ref().and_then(|p| p.status.as_ref()).map_or(epoch + 1, |s| s.epoch);
        let served = client.wait_epoch(new_epoch, at, Duration::from_secs(60)).await;
        // The slices' and labels' events may trail the client's first answer.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let acks = client.acks();
        match (moved, served, probe::outage(&acks, at, new_epoch)) {
            (Some(_), Some(_), Some((ms, first))) => {
                let st = observer::stages(&observer.since(started), at, victim, victim.peer(), Some(first));
                eprintln!(
                    "{label} run {run}: {victim} at epoch {epoch}; kubelet {:?} lease {:?} label {:?} slice {:?} client {:?} ms; outage {ms:.0} ms",
                    st.kubelet, st.lease, st.label, st.slice, st.client
                );
                if st.slice.is_none() {
                    // What the slices said meanwhile, to see why.
                    let routes: Vec<String> = observer
                        .since(at)
                        .into_iter()
                        .filter_map(|(t, s)| match s {
                            observer::Seen::Routes(ips) => {
                                Some(format!("{:.0}ms {ips:?}", (t - at).as_secs_f64() * 1e3))
                            }
                            _ => None,
                        })
                        .collect();
                    eprintln!(
                        "{label} run {run}: no slice routing to {} alone seen after the fault: {routes:?}",
                        victim.peer()
                    );
                }
                out.stages.push(st);
                out.outage.push(ms);
            }
            (moved, served, _) => {
                let why = format!(
                    "run {run}: {victim} at epoch {epoch}: role moved {}, client served at the new epoch {}",
                    moved.is_some(),
                    served.is_some()
                );
                eprintln!("{label} {why}");
                out.failed.push(why);
            }
        }
        recover(&h, fault, victim, held).await;
    }
    let acks = client.stop().await;
    out.acknowledged = acks.len();
    if fault == Fault::Switchover
        && let Some((active, _)) = enabled(&h, Duration::from_secs(120)).await
    {
        // Synced to the active's volume, every acknowledged write of every run.
        tokio::time::sleep(Duration::from_secs(3)).await;
        out.lost = Some(probe::missing(&acks, &h.data_dir("web", active).await).len());
    }
    out.breaches = checker.breaches().into_iter().map(|(k, m)| format!("{k}: {m}")).collect();
    out
}

fn print(name: &str, r: &Results, runs: usize) {
    let pick = |f: fn(&Stages) -> Option<f64>| -> Vec<f64> { r.stages.iter().filter_map(f).collect() };
    report(&format!("{name}_kubelet_reported"), &pick(|s| s.kubelet));
    report(&format!("{name}_lease_moved"), &pick(|s| s.lease));
    report(&format!("{name}_role_labelled"), &pick(|s| s.label));
    report(&format!("{name}_slice_routed"), &pick(|s| s.slice));
    report(&format!("{name}_client_served"), &pick(|s| s.client));
    report(&format!("{name}_outage"), &r.outage);
    println!("BENCH {name}_failed {} of {runs}", r.failed.len());
    for f in r.failed.iter().take(5) {
        println!("BENCH-NOTE {name} failed {f}");
    }
    if let Some(lost) = r.lost {
        println!("BENCH {name}_acknowledged_writes_lost {lost} of {}", r.acknowledged);
    }
    println!("BENCH {name}_checker_breaches {}", r.breaches.len());
    for b in r.breaches.iter().take(3) {
        println!("BENCH-NOTE {name} breach {}", b.lines().next().unwrap_or_default());
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    // A mistyped setting stops the bench with what to fix, rather than
    // measuring something else than was asked.
    fn number<T: std::str::FromStr>(key: &str, value: &str) -> T {
        value.trim().parse().unwrap_or_else(|_| panic!("{key}: {value:?} is not a number"))
    }
    let runs: usize = match env("HAPAIR_BENCH_RUNS") {
        v if v.is_empty() => 100,
        v => number("HAPAIR_BENCH_RUNS", &v),
    };
    let only = env("HAPAIR_BENCH_ONLY");
    assert!(
        ["", "failover", "switchover", "lag", "sync"].contains(&only.as_str()),
        "HAPAIR_BENCH_ONLY: {only:?} is none of failover, switchover, lag, sync"
    );
    let picked = env("HAPAIR_BENCH_SERIES");
    for p in picked.split(',').filter(|p| !p.is_empty()) {
        let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
        assert!(known.contains(&p), "HAPAIR_BENCH_SERIES: {p:?} is none of {}", known.join(", "));
    }
    let intervals: Vec<i32> = match env("HAPAIR_BENCH_INTERVALS") {
        v if v.is_empty() => vec![1, 5],
        v => v.split(',').map(|i| number("HAPAIR_BENCH_INTERVALS", i)).collect(),
    };
    let seed = match env("HAPAIR_BENCH_SEED") {
        v if v.is_empty() => fastrand::u64(..),
        v => number("HAPAIR_BENCH_SEED", &v),
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    println!("BENCH-NOTE failover part: {runs} runs per series, phases seeded {seed}");
    let app = std::path::PathBuf::from(env("HAPAIR_BENCH_APP"));
    let peer = keepalived::missing().or_else(|| {
        (!app.is_file()).then(|| "set HAPAIR_BENCH_APP to the test application (make bench does)".to_string())
    });
    if only.is_empty() || only == "lag" {
        // Every second (what the other series' pairs use) and the default.
        for interval in [1, 11] {
            let for_ = Duration::from_secs(60.max(10 * interval as u64));
            let ours = lag::hapair(interval, for_).await;
            let theirs = if app.is_file() {
                lag::rsync_peer(&app, interval, for_).await
            } else {
                Err("set HAPAIR_BENCH_APP to the test application (make bench does)".into())
            };
            for (who, r) in [("hapair", &ours), ("rsync_ssh_fsync", &theirs)] {
                match r {
                    Ok((lags, missing)) => {
                        report(&format!("lag_{who}_every_{interval}s"), lags);
                        println!("BENCH lag_{who}_every_{interval}s_never_seen {missing} of {}", lags.len() + missing);
                    }
                    Err(e) => println!("BENCH-NOTE lag_{who}_every_{interval}s not measured: {e}"),
                }
            }
            if let (Ok((a, _)), Ok((b, _))) = (&ours, &theirs)
                && !a.is_empty()
                && !b.is_empty()
            {
                println!(
                    "BENCH ratio_lag_every_{interval}s_hapair_vs_rsync_ssh_fsync median={:.2} p99={:.2} x",
                    pct(a, 50.0) / pct(b, 50.0),
                    pct(a, 99.0) / pct(b, 99.0)
                );
            }
        }
    }
    for fault in Fault::ALL {
        let part = if fault.planned() { "switchover" } else { "failover" };
        if !(only.is_empty() || only == part) || !(picked.is_empty() || picked.split(',').any(|p| p == fault.name())) {
            continue;
        }
        let mut ours = Vec::new();
        for &interval in &intervals {
            let r = series(fault, interval, runs, &mut rng).await;
            print(&format!("{}_{interval}sx3", fault.name()), &r, runs);
            ours.push((interval, r.outage));
        }
        if fault.planned() {
            continue;
        }
        // The peer, facing the same fault with the same client and clock.
        if let Some(why) = &peer {
            println!("BENCH-NOTE keepalived not measured: {why}");
            continue;
        }
        let mut peers = vec![("keepalived".to_string(), keepalived::series(&app, fault, runs, &mut rng).await)];
        for t in leaderelect::TIMINGS {
            peers.push((format!("clientgo_{}", t.name), leaderelect::series(fault, t, runs, &mut rng).await));
        }
        for (peer, (theirs, failed)) in peers {
            let name = format!("{peer}_{}", fault.name());
            report(&format!("{name}_outage"), &theirs);
            println!("BENCH {name}_failed {} of {runs}", failed.len());
            for f in failed.iter().take(5) {
                println!("BENCH-NOTE {name} failed {f}");
            }
            for (interval, v) in &ours {
                if v.is_empty() || theirs.is_empty() {
                    continue;
                }
                // Below 1: hapair's outage is shorter.
                println!(
                    "BENCH ratio_{}_{interval}sx3_outage_vs_{peer} median={:.2} p99={:.2} x",
                    fault.name(),
                    pct(v, 50.0) / pct(&theirs, 50.0),
                    pct(v, 99.0) / pct(&theirs, 99.0)
                );
            }
        }
    }
}
