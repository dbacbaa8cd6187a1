//! `make bench-scale`: what one operator costs with many pairs, on the
//! testbed's real API server.
//!
//! One operator (the release binary, its own process) watches one
//! namespace. Its pairs' members run in this process (`members.rs`: the
//! real agent code and protocol on virtual nodes, because 2,000 member pods
//! do not fit on this machine); each pair's Lease, Service, Secret, pods and
//! status are real objects. Heartbeat 5 s × 3 (the default), an HTTP health
//! check every 5 s.
//!
//! First one pair alone: its failover time. Then, at each size (200, then
//! 1,000 pairs; `HAPAIR_BENCH_SCALE_PAIRS=200,1000`):
//! - created → serving: from each pair's creation to its first active
//!   member (the agent's role file), and the time until every pair serves;
//! - in steady state, over `HAPAIR_BENCH_SCALE_WINDOW` seconds (60): the
//!   API server's own request counts (`apiserver_request_total`) by verb
//!   and resource, less what the same window counted before any pair
//!   existed (the testbed's own nodes and controllers), beside the target —
//!   only Lease renewals, one per pair per interval; the operator's CPU and
//!   resident memory (from `/proc`, not from the operator), and the CPU of
//!   the API server and etcd beside their idle figure;
//! - reconcile latency, from outside: a spec change (pause, then resume)
//!   on sampled pairs, until the status shows that generation observed
//!   (polled every 10 ms);
//! - the failover time of one pair among them
//!   (`HAPAIR_BENCH_SCALE_FAULTS`, 10 per size): its active's application
//!   killed (the kubelet's report, the health check refused), at a random
//!   moment; measured to the kubelet's report accepted, to the Lease's move
//!   (stamped by a watch of it) and to the new active's role file, and
//!   compared with the lone pair's, in all and from the report on (the
//!   part that is the operator's and the agents');
//! - the operator killed among them (`HAPAIR_BENCH_SCALE_RESTARTS`, 3 per
//!   size), with one pair's active application at the same moment: from
//!   the kills to the peer serving (the new process waits out the old
//!   lead, then re-observes every pair), the operator's own exits
//!   meanwhile (a lead lost while re-observing), and the API requests by
//!   verb in the first `HAPAIR_BENCH_SCALE_RESTART_WINDOW` seconds (90).
//!
//! Prints `BENCH scale_…` lines; runs that fail are counted and printed.

#[path = "../tests/common/mod.rs"]
mod common;
mod credentials;
#[path = "../harness/mod.rs"]
mod harness;
mod members;
mod operator_process;
mod probe;
mod stages;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hapair::api::{HighAvailabilityPair, Member, Mode};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use members::Members;
use operator_process::Operator;
use probe::{CONTROL_PLANE, api_rates, beyond_idle, cpu_figure, proc_usage, with_control_plane_cpu};
use serde_json::{Value, json};
use stages::{LeaseMove, Stages};
use stats::{pct, report};

const INTERVAL: u64 = 5;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        _ => default,
    }
}

fn sizes() -> Vec<usize> {
    let v = std::env::var("HAPAIR_BENCH_SCALE_PAIRS").unwrap_or_else(|_| "200,1000".into());
    let sizes: Vec<usize> = v
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("HAPAIR_BENCH_SCALE_PAIRS={v:?}: whole numbers, comma-separated"))
        })
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "HAPAIR_BENCH_SCALE_PAIRS={v:?}: sizes in increasing order");
    sizes
}

fn pair(name: &str) -> Value {
    json!({
        "apiVersion": "hapair.dev/v1alpha1",
        "kind": "HighAvailabilityPair",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {
                "nodeSelector": {members::NODE_LABEL: "true"},
                "tolerations": [{"key": members::NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "app", "image": "hapair.dev/scale/app:1", "ports": [{"containerPort": 8080}]}],
            }},
            "service": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            "heartbeat": {"intervalSeconds": INTERVAL, "missedThreshold": 3},
            "healthCheck": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 2},
        }
    })
}

struct Bench {
    client: Client,
    /// A client of its own for the observer's Lease watches: each watch
    /// holds its connection for good (HTTP/1.1), and on the shared client
    /// it took the idle one the stand-in kubelet's report of the fault was
    /// about to use, which then opened a new connection first.
    watching: Client,
    ns: String,
    members: Arc<Members>,
    pairs: Api<HighAvailabilityPair>,
    rng: fastrand::Rng,
}

impl Bench {
    /// The member of `pair` whose role file says active, with its epoch.
    fn active(&self, pair: &str) -> Option<(Member, i64)> {
        Member::BOTH.into_iter().find_map(|m| match self.members.role(&m.pod_name(pair)) {
            Some((r, e)) if r == "active" => Some((m, e)),
            _ => None,
        })
    }

    /// Creates `names` (ten at a time) and returns, per pair, how long from
    /// its creation until one member serves, and the time until all do.
    async fn create(&self, names: &[String]) -> (Vec<f64>, f64, Vec<String>) {
        let api = common::dynamic_pairs(&self.client, &self.ns);
        let start = Instant::now();
        let mut created: BTreeMap<String, Instant> = BTreeMap::new();
        for chunk in names.chunks(10) {
            let sent = futures::future::join_all(chunk.iter().map(|n| {
                let api = api.clone();
                async move { (n.clone(), common::apply(&api, &pair(n)).await, Instant::now()) }
            }))
            .await;
            for (n, r, at) in sent {
                r.unwrap_or_else(|e| panic!("pair {n} refused: {e}"));
                created.insert(n, at);
            }
        }
        let mut serving = Vec::new();
        let mut failed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        while !created.is_empty() {
            let now = Instant::now();
            created.retain(|n, at| match self.active(n) {
                Some(_) => {
                    serving.push(now.duration_since(*at).as_secs_f64() * 1000.0);
                    false
                }
                None => true,
            });
            if now > deadline {
                failed.extend(created.keys().map(|n| format!("{n}: not serving 10 min after its creation")));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (serving, start.elapsed().as_secs_f64(), failed)
    }

    /// Until `pair` is enabled and both its applications pass their health
    /// checks (a restarted one is not healthy again until its agent's next
    /// check): a failover can start, and only one member has failed.
    async fn steady(&self, pair: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            if let Ok(p) = self.pairs.get(pair).await
                && let Some(s) = &p.status
                && s.mode == Some(Mode::Enabled)
                && s.members.len() == 2
                && s.members.iter().all(|m| m.healthy == Some(true) && m.missed_heartbeats == 0)
                && self.active(pair).is_some()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Kills the active application of each of `pairs` in turn, at a random
    /// moment; per run, from the kill: the kubelet's report accepted, the
    /// Lease's move and the new active's role file (ms).
    ///
    /// The Lease is followed by one watch, not polled: a GET every few
    /// milliseconds would add a couple of hundred requests a second to the
    /// API server just while it is being measured, which at 1,000 pairs is
    /// as much again as the whole steady load.
    async fn failovers(&mut self, pairs: &[String]) -> (Stages, Vec<String>) {
        let leases: Api<Lease> = Api::namespaced(self.watching.clone(), &self.ns);
        let (mut stages, mut failed) = (Stages::default(), Vec::new());
        for name in pairs {
            if !self.steady(name).await {
                failed.push(format!("{name}: never steady before the fault"));
                continue;
            }
            tokio::time::sleep(Duration::from_millis(self.rng.u64(0..INTERVAL * 1000))).await;
            let Some((old, epoch)) = self.active(name) else {
                failed.push(format!("{name}: no active member at the fault"));
                continue;
            };
            let moved = match LeaseMove::watch(&leases, name).await {
                Ok(m) => m,
                Err(e) => {
                    failed.push(format!("{name}: the Lease not watched: {e}"));
                    continue;
                }
            };
            let t0 = Instant::now();
            self.members.kill_app(&old.pod_name(name)).await;
            let reported = t0.elapsed();
            let mut role_at = None;
            while t0.elapsed() < Duration::from_secs(60) {
                if let Some((r, e)) = self.members.role(&old.peer().pod_name(name))
                    && r == "active"
                    && e > epoch
                {
                    role_at = Some(t0.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let lease_at = moved.at(t0).await;
            eprintln!(
                "scale: {name}: {old}'s application killed at epoch {epoch}; reported {reported:?}, Lease moved {lease_at:?}, peer serving {role_at:?}"
            );
            match (lease_at, role_at) {
                (Some(l), Some(r)) => {
                    stages.reported.push(reported.as_secs_f64() * 1000.0);
                    stages.moved.push(l.as_secs_f64() * 1000.0);
                    stages.serving.push(r.as_secs_f64() * 1000.0);
                }
                _ => failed.push(format!("{name}: no failover within 60 s (Lease moved: {lease_at:?})")),
            }
            self.members.restart_app(&old.pod_name(name)).await;
        }
        (stages, failed)
    }

    /// The operator killed with every pair steady, and the active
    /// application of one pair killed at the same moment: per run, from
    /// the kills until the peer serves. The new process waits out the old
    /// one's lead (it handed nothing over), then re-observes every pair
    /// before it decides anything, and must keep its own lead while it does
    /// (a restart storm would show here as no failover and in the exits).
    /// Each run also waits until the pair is steady again before the next.
    async fn restarts(&mut self, operator: &Operator, names: &[String], n: usize) -> (Vec<f64>, Vec<String>) {
        let (mut promoted, mut failed) = (Vec::new(), Vec::new());
        for name in self.sample(names, n) {
            if !self.steady(&name).await {
                failed.push(format!("{name}: never steady before the restart"));
                continue;
            }
            tokio::time::sleep(Duration::from_millis(self.rng.u64(0..INTERVAL * 1000))).await;
            let Some((old, epoch)) = self.active(&name) else {
                failed.push(format!("{name}: no active member at the restart"));
                continue;
            };
            let t0 = Instant::now();
            operator.kill();
            self.members.kill_app(&old.pod_name(&name)).await;
            let mut role_at = None;
            while t0.elapsed() < Duration::from_secs(180) {
                if let Some((r, e)) = self.members.role(&old.peer().pod_name(&name))
                    && r == "active"
                    && e > epoch
                {
                    role_at = Some(t0.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            eprintln!(
                "scale: {name}: operator and {old}'s application killed at epoch {epoch}; peer serving {role_at:?}"
            );
            match role_at {
                Some(r) => promoted.push(r.as_secs_f64() * 1000.0),
                None => failed.push(format!("{name}: no failover within 180 s of the operator's restart")),
            }
            self.members.restart_app(&old.pod_name(&name)).await;
        }
        (promoted, failed)
    }

    /// Pause then resume each of `pairs`: from each patch to the status
    /// showing its generation observed (ms).
    async fn reconcile_latency(&self, pairs: &[String]) -> (Vec<f64>, Vec<String>) {
        let (mut out, mut failed) = (Vec::new(), Vec::new());
        for name in pairs {
            for paused in [true, false] {
                let patch = json!({"spec": {"paused": paused}});
                let t0 = Instant::now();
                let generation = match self.pairs.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(p) => p.metadata.generation.unwrap_or(0),
                    Err(e) => {
                        failed.push(format!("{name}: not patched: {e}"));
                        continue;
                    }
                };
                let mut seen = None;
                while t0.elapsed() < Duration::from_secs(60) {
                    if let Ok(p) = self.pairs.get(name).await
                        && p.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0) >= generation
                    {
                        seen = Some(t0.elapsed());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                match seen {
                    Some(d) => out.push(d.as_secs_f64() * 1000.0),
                    None => failed.push(format!("{name}: generation {generation} not observed within 60 s")),
                }
            }
        }
        (out, failed)
    }

    /// Deletes a pair and waits until its members are gone.
    async fn remove(&self, name: &str) {
        let _ = self.pairs.delete(name, &Default::default()).await;
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && Member::BOTH.iter().any(|m| self.members.role(&m.pod_name(name)).is_some()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn sample(&mut self, names: &[String], k: usize) -> Vec<String> {
        let mut v = names.to_vec();
        self.rng.shuffle(&mut v);
        v.truncate(k);
        v
    }
}

fn print_failed(what: &str, failed: &[String], n: usize) {
    println!("BENCH scale_{what}_failed {} of {n}", failed.len());
    for f in failed {
        eprintln!("  failed: {f}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Every agent holds a few sockets; a thousand pairs, thousands.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    let limit = rustix::process::Rlimit { current: hard, maximum: hard };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).expect("the open-file limit raised");
    // The agents' own logs, each line with its pod, when asked for.
    if let Ok(path) = std::env::var("HAPAIR_BENCH_SCALE_TRACE") {
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("HAPAIR_BENCH_SCALE_TRACE={path}: {e}"));
        tracing_subscriber::fmt().with_writer(std::sync::Mutex::new(file)).with_ansi(false).init();
    }
    let sizes = sizes();
    let faults = env_u64("HAPAIR_BENCH_SCALE_FAULTS", 10) as usize;
    let window = Duration::from_secs(env_u64("HAPAIR_BENCH_SCALE_WINDOW", 60));
    let samples = env_u64("HAPAIR_BENCH_SCALE_RECONCILES", 25) as usize;
    let restarts = env_u64("HAPAIR_BENCH_SCALE_RESTARTS", 3) as usize;
    let restart_window = Duration::from_secs(env_u64("HAPAIR_BENCH_SCALE_RESTART_WINDOW", 90));
    let seed = env_u64("HAPAIR_BENCH_SEED", std::process::id() as u64);
    eprintln!("scale: sizes {sizes:?}, {faults} faults per size, window {window:?}, seed {seed}");

    let client = common::client().await;
    common::install_crd(&client).await;
    let ns = common::TestNamespace::new(&client, "scale").await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-scale");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a work directory");
    let members = Members::start(client.clone(), &ns.name, dir.join("members")).await;
    let mut bench = Bench {
        client: client.clone(),
        watching: common::client().await,
        ns: ns.name.clone(),
        members: members.clone(),
        pairs: Api::namespaced(client.clone(), &ns.name),
        rng: fastrand::Rng::with_seed(seed),
    };
    let kubeconfig = credentials::operator(&client, &ns.name, &dir).await;
    let operator = Operator::start(&ns.name, &kubeconfig, &dir.join("operator.log"));
    eprintln!("scale: operator's log in {}", dir.join("operator.log").display());

    // What the testbed itself asks of the API server, operator idle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (baseline, idle_cpu) = with_control_plane_cpu(api_rates(&client, window)).await;

    // One pair alone, a fresh one for each fault: a pair failed over again
    // and again meets its flap budget, and a member restarted a moment ago
    // is not healthy again until its next check.
    let (mut lone, mut lone_failed) = (Stages::default(), Vec::new());
    for i in 0..faults {
        let name = vec![format!("lone{i}")];
        let (_, _, failed) = bench.create(&name).await;
        lone_failed.extend(failed);
        // Older than one lease duration: an agent that has just started
        // takes over only a lease duration after its start (it cannot know
        // what its previous life promised), which the pairs at scale,
        // created long before their faults, never meet.
        tokio::time::sleep(Duration::from_secs(INTERVAL * 3 + 1)).await;
        let (st, f) = bench.failovers(&name).await;
        lone.extend(st);
        lone_failed.extend(f);
        bench.remove(&name[0]).await;
    }
    lone.report("lone");
    print_failed("lone_failover", &lone_failed, faults);

    let mut names: Vec<String> = Vec::new();
    for size in sizes {
        let new: Vec<String> = (names.len()..size).map(|i| format!("p{i:04}")).collect();
        eprintln!("scale: creating {} pairs ({} in all)", new.len(), size);
        let (serving, all_in, failed) = bench.create(&new).await;
        names.extend(new.iter().cloned());
        report(&format!("scale_{size}_created_to_serving"), &serving);
        println!("BENCH scale_{size}_all_serving_after {:.1} s ({} pairs created)", all_in, new.len());
        print_failed(&format!("{size}_create"), &failed, new.len());

        // Settled: every decision taken, status written.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (cpu0, _, _) = operator.usage();
        let t0 = Instant::now();
        let (rates, plane_cpu) = with_control_plane_cpu(api_rates(&client, window)).await;
        let (cpu1, rss, hwm) = operator.usage();
        let cpu_pct = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        let (_, host_rss, _) = proc_usage(std::process::id());
        println!(
            "BENCH scale_{size}_operator cpu={cpu_pct:.1}% rss={rss:.1} MiB peak_rss={hwm:.1} MiB (n={} pairs, window {} s; \
             own exits so far {})",
            size + 1,
            window.as_secs(),
            operator.own_exits()
        );
        println!("BENCH scale_{size}_members_process rss={host_rss:.0} MiB ({} agents)", members.running());
        for ((name, busy), idle) in CONTROL_PLANE.iter().zip(&plane_cpu).zip(&idle_cpu) {
            let (busy, idle) = (cpu_figure(*busy), cpu_figure(*idle));
            println!("BENCH scale_{size}_{name} cpu={busy} (idle testbed {idle}, same window length)");
        }
        let expected = (size + 1) as f64 / INTERVAL as f64;
        let (rows, total) = beyond_idle(&rates, &baseline);
        println!(
            "BENCH scale_{size}_api_requests total={total:.1}/s beyond the idle testbed; target: Lease renewals only, {expected:.1}/s"
        );
        for (k, v) in &rows {
            println!("BENCH scale_{size}_api {k} {v:.2}/s");
        }

        let sampled = bench.sample(&names, samples);
        let (latency, failed) = bench.reconcile_latency(&sampled).await;
        report(&format!("scale_{size}_reconcile_latency"), &latency);
        print_failed(&format!("{size}_reconcile"), &failed, sampled.len() * 2);

        let sampled = bench.sample(&names, faults);
        let (stages, failed) = bench.failovers(&sampled).await;
        stages.report(&size.to_string());
        print_failed(&format!("{size}_failover"), &failed, faults);
        if !stages.serving.is_empty() && !lone.serving.is_empty() {
            println!(
                "BENCH ratio_scale_{size}_failover_vs_lone median={:.2} p90={:.2} x (target ≤ 1.2)",
                pct(&stages.serving, 50.0) / pct(&lone.serving, 50.0),
                pct(&stages.serving, 90.0) / pct(&lone.serving, 90.0)
            );
            let (at_scale, alone) = (stages.after_report(), lone.after_report());
            println!(
                "BENCH ratio_scale_{size}_report_to_promoted_vs_lone median={:.2} p90={:.2} x (without the kubelet's write)",
                pct(&at_scale, 50.0) / pct(&alone, 50.0),
                pct(&at_scale, 90.0) / pct(&alone, 90.0)
            );
        }

        // The operator restarted among them: what its re-observation asks
        // of the API server, and whether it keeps its lead meanwhile.
        let own = operator.own_exits();
        let ((promoted, failed), rates) =
            tokio::join!(bench.restarts(&operator, &names, restarts), api_rates(&client, restart_window));
        report(&format!("scale_{size}_restart_failover_promoted"), &promoted);
        print_failed(&format!("{size}_restart"), &failed, restarts);
        println!(
            "BENCH scale_{size}_restart_own_exits {} (the operator's own exits, beside the {restarts} kills; a lost lead is one)",
            operator.own_exits() - own
        );
        let (_, rss, hwm) = operator.usage();
        println!(
            "BENCH scale_{size}_restart_operator rss={rss:.1} MiB peak_rss={hwm:.1} MiB (the last restarted process)"
        );
        let (rows, total) = beyond_idle(&rates, &baseline);
        println!(
            "BENCH scale_{size}_restart_api_requests total={total:.1}/s beyond the idle testbed, over the first {} s of the restarts",
            restart_window.as_secs()
        );
        for (k, v) in rows.iter().take(12) {
            println!("BENCH scale_{size}_restart_api {k} {v:.2}/s");
        }
    }
    println!(
        "BENCH scale_operator_exits {} (of which the bench's kills {})",
        operator.exits(),
        operator.exits() - operator.own_exits()
    );
    let failures = members.failures.lock().unwrap().clone();
    println!("BENCH scale_member_failures {}", failures.len());
    for f in failures.iter().take(20) {
        eprintln!("  member: {f}");
    }

    // The pairs first, the operator still running (the garbage collector
    // takes their objects; without a kubelet, this process removes the pods
    // as they are deleted, so it stops its members last), then the
    // namespace.
    let _ = bench.pairs.delete_collection(&Default::default(), &Default::default()).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &bench.ns);
    let until = Instant::now() + Duration::from_secs(300);
    while Instant::now() < until && pods.list(&Default::default()).await.is_ok_and(|l| !l.items.is_empty()) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    credentials::remove(&client, &ns.name).await;
    drop(ns);
    drop(operator);
    members.stop().await;
}
