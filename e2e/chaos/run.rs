//! The chaos runner: one pair, its checkers always on, the cases in rounds.
//!
//! For each case of each round it waits for the pair to converge, sleeps a
//! random part of the renewal interval (so faults land at every phase of
//! the cycle), injects the fault, waits for convergence again, and then
//! checks what the clients saw: the history's rules, every acknowledged
//! write present on the active (or excused by a transition that recorded
//! `dataLossPossible`), the epoch never lower than before, and the
//! checker's watches and samples. Breaches are attributed to the case whose
//! round they appeared in.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use hapair::api::{ConditionStatus, HighAvailabilityPair, Mode};
use serde_json::json;
use tokio::sync::RwLock;

use super::cases::{self, Case, Target};
use crate::harness::checker::{Checker, held_writes};
use crate::harness::history::{self, Clients};
use crate::harness::{Harness, test_pair};

/// What one case did over its rounds.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub faults: u64,
    /// Role changes (epoch increments) during its rounds.
    pub failovers: u64,
    /// Of which no one asked for (not an operation, not a failback).
    pub unplanned: u64,
    pub violations: BTreeMap<&'static str, u64>,
    /// Acknowledged writes missing from the active, excused by a recorded
    /// `dataLossPossible` / not excused.
    pub lost_recorded: u64,
    pub lost: u64,
    pub epoch_regressions: u64,
    pub longest_converge: Duration,
    /// Rounds that did not converge within the limit.
    pub stuck: u64,
    /// Rounds of a case that must move the role in which it did not move.
    pub missed_failovers: u64,
    /// Rounds of a case that must not move the role in which it moved.
    pub needless_failovers: u64,
    /// Crash points armed (how often, how often an operator died there,
    /// how often the procedure took a path without that step).
    pub crash_points: BTreeMap<&'static str, (u64, u64, u64)>,
    /// A few breaches in words, for the report.
    pub examples: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.faults += o.faults;
        self.failovers += o.failovers;
        self.unplanned += o.unplanned;
        for (k, v) in &o.violations {
            *self.violations.entry(k).or_default() += v;
        }
        self.lost_recorded += o.lost_recorded;
        self.lost += o.lost;
        self.epoch_regressions += o.epoch_regressions;
        self.longest_converge = self.longest_converge.max(o.longest_converge);
        self.stuck += o.stuck;
        self.missed_failovers += o.missed_failovers;
        self.needless_failovers += o.needless_failovers;
        for (k, (armed, hit, off)) in &o.crash_points {
            let e = self.crash_points.entry(k).or_default();
            (e.0, e.1, e.2) = (e.0 + armed, e.1 + hit, e.2 + off);
        }
        self.examples.extend(o.examples.iter().take(5 - self.examples.len().min(5)).cloned());
    }

    /// One line of the report's table.
    fn row(&self, name: &str) -> String {
        format!(
            "{:<40} {:>6} {:>9} {:>9} {:>15} {:>10} {:>9} {:>5} {:>8} {:>5} {:>8.1}s\n",
            name,
            self.faults,
            self.failovers,
            self.unplanned,
            format!("{}+{}", self.missed_failovers, self.needless_failovers),
            self.violations.values().sum::<u64>(),
            self.lost_recorded,
            self.lost,
            self.epoch_regressions,
            self.stuck,
            self.longest_converge.as_secs_f64()
        )
    }

    pub fn breaches(&self) -> u64 {
        self.violations.values().sum::<u64>()
            + self.lost
            + self.epoch_regressions
            + self.stuck
            + self.missed_failovers
            + self.needless_failovers
    }
}

/// How long a pair may take to come back after a fault before the round
/// counts as stuck (a member restarting, a resync, the kubelet's back-off).
const CONVERGE: Duration = Duration::from_secs(120);

pub struct Pair {
    pub h: Harness,
    pub name: String,
    checker: Checker,
    clients: Clients,
    /// Breaches already attributed to a case.
    seen_breaches: usize,
    history_breaches: usize,
    /// Writes already found missing (counted once).
    missing: BTreeSet<u64>,
    highest_epoch: i64,
    /// Epochs whose transition recorded `dataLossPossible` (the status
    /// keeps only the latest transitions; these are kept for good).
    lossy: BTreeSet<i64>,
    /// Faults injected so far.
    serial: u64,
}

fn cond(p: &HighAvailabilityPair, t: &str) -> Option<ConditionStatus> {
    p.status.as_ref()?.conditions.iter().find(|c| c.type_ == t).map(|c| c.status)
}

/// One member active and serving, the other a synced standby, nothing in
/// flight: the state every case starts from and must come back to.
fn converged(p: &HighAvailabilityPair) -> bool {
    let Some(s) = p.status.as_ref() else { return false };
    s.mode == Some(Mode::Enabled)
        && s.active_member.is_some()
        && s.observed_generation == p.metadata.generation
        && cond(p, "Available") == Some(ConditionStatus::True)
        && cond(p, "Degraded") == Some(ConditionStatus::False)
        && cond(p, "SplitBrain") != Some(ConditionStatus::True)
        && cond(p, "FailoverRequired") != Some(ConditionStatus::True)
        && cond(p, "ClockSkew") != Some(ConditionStatus::True)
        && cond(p, "Synced") == Some(ConditionStatus::True)
        && s.operations.iter().all(|o| o.phase.is_terminal())
}

impl Pair {
    /// A pair with file sync of its data (so lost writes can be counted),
    /// heartbeat 1 s × 3, two operator replicas, checkers and three history
    /// clients.
    pub async fn up(ns: &str) -> Pair {
        let mut h = Harness::with_fault_agents(ns).await;
        // A second replica: the leader can be killed or frozen under a case.
        h.start_operator();
        let name = "web".to_string();
        let (checker, clients) = Self::apply(&h, &name).await;
        let mut p = Pair {
            h,
            name,
            checker,
            clients,
            seen_breaches: 0,
            history_breaches: 0,
            missing: BTreeSet::new(),
            highest_epoch: 0,
            lossy: BTreeSet::new(),
            serial: 0,
        };
        p.converge(Duration::ZERO).await.expect("the new pair converges");
        p
    }

    /// Applies the pair, waits until it serves with the bulk tree on both
    /// members, and starts its checker and clients.
    async fn apply(h: &Harness, name: &str) -> (Checker, Clients) {
        // The flap budget at its most: the suite fails the pair over again
        // and again on purpose, and a spent budget (3 per hour by default)
        // would turn every later case into a FailoverRequired wait. Its
        // volumes are small file systems of their own, which a case fills.
        // They go with the pair: `pair-deleted-in-failover` checks that
        // nothing the pair owned is left and applies it anew as a new pair,
        // whose write numbers would otherwise mix with the old ones on a
        // retained volume (keeping claims is `e2e/tests/sync.rs`'s business).
        let files = json!({"spec": {
            "storage": {"size": "400Mi", "mountPath": "/data", "storageClassName": "hapair-small"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"},
            "service": {"standby": true},
            "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1},
            "failover": {"flapBudget": {"maxAutomaticFailovers": 100, "windowSeconds": 60}}
        }});
        h.apply(&test_pair(name, cases::INTERVAL.as_secs() as i32, files)).await;
        h.wait_enabled(name, Duration::from_secs(90)).await;
        let active = h.pair(name).await.status.and_then(|s| s.active_member).expect("an active member");
        cases::ensure_bulk(h, name, active).await;
        (h.checker_with_grace(name, Duration::from_secs(2)).await, h.clients(name, 3).await)
    }

    /// After the pair's deletion: the same pair applied anew — a new pair,
    /// new volumes, a new history from epoch 1 — with new clients and
    /// checkers. The old history was checked up to the deletion.
    async fn recreate(&mut self) {
        crate::harness::nodes::testbed(&["recycle"]).expect("local volumes recycled");
        let (checker, clients) = Self::apply(&self.h, &self.name).await;
        let old = std::mem::replace(&mut self.clients, clients);
        old.stop().await;
        self.checker = checker;
        (self.seen_breaches, self.history_breaches, self.highest_epoch) = (0, 0, 0);
        self.missing.clear();
        self.lossy.clear();
    }

    /// Waits until the pair has converged — and stayed so for at least
    /// `settle` from the call (a fault's effects take up to a lease to show:
    /// a Lease deleted, a standby promoted) — with a client write
    /// acknowledged at its epoch since the call. Returns the pair and when
    /// the last unbroken converged stretch began, from the call.
    async fn converge(&mut self, settle: Duration) -> Result<(HighAvailabilityPair, Duration), HighAvailabilityPair> {
        let start = Instant::now();
        let mut since: Option<Duration> = None;
        loop {
            let p = self.h.pair(&self.name).await;
            let epoch = p.status.as_ref().map_or(0, |s| s.epoch);
            let served = self.clients.acknowledged_since(start, epoch);
            if converged(&p) {
                since.get_or_insert(start.elapsed());
            } else {
                since = None;
            }
            if let Some(at) = since
                && served
                && start.elapsed() >= settle
            {
                return Ok((p, at));
            }
            if start.elapsed() > CONVERGE {
                return Err(p);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One case, once; what it did.
    pub async fn round(&mut self, case: Case, round: u64, rng: &mut fastrand::Rng, lock: &RwLock<()>) -> Tally {
        let mut t = Tally::default();
        let _guard = if case.exclusive() { Err(lock.write().await) } else { Ok(lock.read().await) };
        // Whole nodes and the control plane: no other test binary's either.
        let _node_lock = case.exclusive().then(crate::harness::nodes::NodeFaultLock::take);
        let before = match self.converge(Duration::ZERO).await {
            Ok((p, _)) => p,
            Err(p) => {
                t.stuck += 1;
                t.examples.push(format!("{}: not converged before the fault: {}", case.name(), brief(&p)));
                return t;
            }
        };
        let e0 = before.status.as_ref().map_or(0, |s| s.epoch);
        let active = before.status.as_ref().and_then(|s| s.active_member).expect("an active member");
        // A random phase of the renewal cycle.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..cases::INTERVAL.as_millis() as u64))).await;
        self.serial += 1;
        let injected =
            cases::inject(case, &mut Target { h: &self.h, pair: &self.name, active, serial: self.serial, rng }).await;
        t.faults += 1;
        let mut e0 = e0;
        if let Some(left) = &injected.deleted {
            for l in left {
                *t.violations.entry("deleted-pair-left-objects").or_default() += 1;
                t.examples.push(format!("{}: {l}", case.name()));
            }
            // The old pair's history is checked up to its deletion; the
            // new pair starts its own.
            let ops = self.clients.snapshot();
            self.check_history(&ops, case, &mut t);
            self.recreate().await;
            // Its bootstrap is no failover.
            e0 = self.h.pair(&self.name).await.status.map_or(0, |s| s.epoch);
        }
        for (kind, example) in &injected.breaches {
            *t.violations.entry(kind).or_default() += 1;
            t.examples.push(format!("{}: {example}", case.name()));
        }
        if let Some((point, hit)) = injected.crash {
            let e = t.crash_points.entry(point).or_default();
            (e.0, e.1, e.2) = (e.0 + 1, e.1 + u64::from(hit), e.2 + u64::from(injected.off_path));
            // A fault that did not land tested nothing.
            if !hit && !injected.off_path {
                *t.violations.entry("fault-did-not-land").or_default() += 1;
                t.examples.push(format!("{}: {point} was never reached", case.name()));
            }
        }
        let after = match self.converge(cases::LEASE + cases::INTERVAL).await {
            Ok((p, took)) => {
                t.longest_converge = took;
                p
            }
            Err(p) => {
                t.stuck += 1;
                t.examples.push(format!("{}: not converged {CONVERGE:?} after the fault: {}", case.name(), brief(&p)));
                p
            }
        };
        let s = after.status.clone().unwrap_or_default();
        t.failovers = (s.epoch - e0).max(0) as u64;
        t.unplanned = s
            .history
            .iter()
            .filter(|x| x.epoch > e0 && x.operation_id.is_none() && x.reason != "AutomaticFailback")
            .count() as u64;
        if case.must_fail_over() && t.failovers == 0 {
            t.missed_failovers += 1;
            t.examples.push(format!("{}: the role did not move: {}", case.name(), brief(&after)));
        }
        if case.must_not_fail_over() && t.failovers > 0 {
            t.needless_failovers += 1;
            t.examples.push(format!("{}: the role moved though the members heard each other", case.name()));
        }
        if s.epoch < self.highest_epoch {
            t.epoch_regressions += 1;
            t.examples.push(format!("{}: epoch {} after {}", case.name(), s.epoch, self.highest_epoch));
        }
        self.highest_epoch = self.highest_epoch.max(s.epoch);
        let moved: Vec<String> = s
            .history
            .iter()
            .filter(|x| x.epoch > e0)
            .map(|x| format!("{:?}→{:?}@{} {}", x.type_, x.to, x.epoch, x.reason))
            .collect();
        eprintln!(
            "chaos: {} round {round}: {active} active at epoch {e0}, now {:?} at {}; {moved:?}; converged after {:.1} s",
            case.name(),
            s.active_member,
            s.epoch,
            t.longest_converge.as_secs_f64()
        );
        if injected.tree_restored
            && let Some(now) = s.active_member
        {
            let (want, got) = (
                cases::bulk_size(&self.h, &self.name, now).await,
                cases::bulk_size(&self.h, &self.name, now.peer()).await,
            );
            if want != got || want.0 != cases::BULK_FILES {
                *t.violations.entry("resync-tree-incomplete").or_default() += 1;
                t.examples.push(format!("{}: bulk tree {want:?} on the active, {got:?} on the standby", case.name()));
            }
        }
        // One copy of the history for both checks.
        let ops = self.clients.snapshot();
        self.check_writes(&ops, &s, case, &mut t).await;
        self.check_history(&ops, case, &mut t);
        if t.breaches() > 0 {
            self.keep_logs(&format!("round-{round}-{}", case.name())).await;
        }
        t
    }

    /// Copies the members' container logs (the agents' and the
    /// applications') next to the operators' logs: the namespace's deletion
    /// would take them.
    async fn keep_logs(&self, label: &str) {
        let to = self.h.dir.join(label);
        let prefix = format!("{}_", self.h.ns.name);
        let _ = std::fs::create_dir_all(&to);
        // The pair and its Jobs as they stand (a Job's pods may be gone).
        let pair = serde_json::to_string_pretty(&self.h.pair(&self.name).await).unwrap_or_default();
        let _ = std::fs::write(to.join("pair.json"), pair);
        let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
            kube::Api::namespaced(self.h.client.clone(), &self.h.ns.name);
        if let Ok(list) = jobs.list(&Default::default()).await {
            let _ = std::fs::write(to.join("jobs.json"), serde_json::to_string_pretty(&list.items).unwrap_or_default());
        }
        for d in crate::harness::views::pod_log_entries(&crate::harness::views::pod_log_dirs()) {
            if d.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::process::Command::new("cp").arg("-r").arg(d.path()).arg(&to).status();
            }
        }
        eprintln!("chaos: logs of {label} kept in {}", to.display());
    }

    /// Every acknowledged write is on the active now, unless a transition
    /// past its epoch recorded `dataLossPossible`.
    async fn check_writes(
        &mut self,
        ops: &[history::Op],
        s: &hapair::api::HighAvailabilityPairStatus,
        case: Case,
        t: &mut Tally,
    ) {
        let Some(active) = s.active_member else { return };
        let held: HashSet<u64> = held_writes(&self.h.data_dir(&self.name, active).await);
        self.lossy.extend(s.history.iter().filter(|x| x.data_loss_possible).map(|x| x.epoch));
        let lossy: Vec<i64> = self.lossy.iter().copied().collect();
        let (excused, lost) = history::missing_writes(ops, &held, &lossy);
        for id in excused {
            if self.missing.insert(id) {
                t.lost_recorded += 1;
            }
        }
        for id in lost {
            if self.missing.insert(id) {
                t.lost += 1;
                if t.examples.len() < 5 {
                    t.examples.push(format!("{}: write {id} acknowledged, not on {active}", case.name()));
                }
            }
        }
    }

    /// New breaches of the history's rules and of the checker's.
    fn check_history(&mut self, ops: &[history::Op], case: Case, t: &mut Tally) {
        let breaches = history::check(ops);
        for b in breaches.iter().skip(self.history_breaches) {
            let kind = if b.contains(" and by ") { "acks-two-members-one-epoch" } else { "ack-after-newer-epoch" };
            *t.violations.entry(kind).or_default() += 1;
            if t.examples.len() < 5 {
                t.examples.push(format!("{}: {b}", case.name()));
            }
        }
        self.history_breaches = breaches.len();
        let checker = self.checker.breaches();
        for (kind, b) in checker.iter().skip(self.seen_breaches) {
            *t.violations.entry(kind).or_default() += 1;
            if kind == &"epoch-regression" {
                t.epoch_regressions += 1;
            }
            if t.examples.len() < 5 {
                t.examples.push(format!("{}: {b}", case.name()));
            }
        }
        self.seen_breaches = checker.len();
    }

    /// What the clients did, for the report.
    pub fn totals(&self) -> (usize, usize) {
        let ops = self.clients.snapshot();
        (ops.len(), ops.iter().filter(|o| matches!(o.outcome, history::Outcome::Ack { .. })).count())
    }

    pub fn coverage(&self) -> (u64, u64, usize) {
        self.checker.coverage()
    }
}

fn brief(p: &HighAvailabilityPair) -> String {
    let Some(s) = p.status.as_ref() else { return "no status".into() };
    let conds: Vec<String> = s.conditions.iter().map(|c| format!("{}={:?}({})", c.type_, c.status, c.reason)).collect();
    let members: Vec<String> = s.members.iter().map(|m| format!("{}:{:?}", m.name, m.state)).collect();
    format!("mode {:?}, epoch {}, members {members:?}, {conds:?}", s.mode, s.epoch)
}

/// The per-case table and the totals.
pub fn report(
    tallies: &BTreeMap<Case, Tally>,
    rounds: u64,
    seed: u64,
    pairs: usize,
    ops: (usize, usize),
    took: Duration,
) -> (String, Tally) {
    let mut out = String::new();
    let mut total = Tally::default();
    out.push_str(&format!(
        "chaos: {rounds} round(s) of {} case(s) on {pairs} pair(s), seed {seed}, {:.0} s\n",
        tallies.len(),
        took.as_secs_f64()
    ));
    out.push_str(&format!(
        "{:<40} {:>6} {:>9} {:>9} {:>15} {:>10} {:>9} {:>5} {:>8} {:>5} {:>9}\n",
        "case",
        "faults",
        "failovers",
        "unplanned",
        "missed+needless",
        "violations",
        "lost-ok",
        "lost",
        "epoch<",
        "stuck",
        "converge"
    ));
    for (case, t) in tallies {
        out.push_str(&t.row(case.name()));
        total.add(t);
    }
    out.push_str(&total.row("total"));
    let kinds: Vec<String> = total.violations.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    out.push_str(&format!(
        "violations by kind: {}\nclient operations: {}, acknowledged: {}\n",
        if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") },
        ops.0,
        ops.1
    ));
    let points: Vec<String> = total
        .crash_points
        .iter()
        .map(|(k, (armed, hit, off))| match off {
            0 => format!("{k} {hit}/{armed}"),
            _ => format!("{k} {hit}/{armed} ({off} off the path)"),
        })
        .collect();
    if !points.is_empty() {
        out.push_str(&format!(
            "faults that must land (landed / tried; off the path: the procedure had no such step that time): {}\n",
            points.join(", ")
        ));
    }
    for e in &total.examples {
        out.push_str(&format!("  {e}\n"));
    }
    (out, total)
}

/// Which cases to run: `HAPAIR_CHAOS_CASES` (comma-separated names), or
/// every case (`soak`) or every case that fits a brief run.
pub fn selected(soak: bool) -> Vec<Case> {
    match std::env::var("HAPAIR_CHAOS_CASES").ok().filter(|s| !s.is_empty()) {
        Some(list) => list
            .split(',')
            .map(|n| Case::parse(n.trim()).unwrap_or_else(|| panic!("no chaos case {n:?}; cases: {:?}", names())))
            .collect(),
        None => Case::ALL.iter().copied().filter(|c| soak || !c.soak_only()).collect(),
    }
}

pub fn names() -> Vec<&'static str> {
    Case::ALL.iter().map(|c| c.name()).collect()
}
