//! `make chaos`: every named fault case (see `e2e/chaos/cases.rs`), in
//! rounds, on pairs on the testbed's real nodes, each fault at a random phase
//! of the renewal cycle, the history checker and the safety checker on the
//! whole time. Prints, per case and in total: faults, failovers, breaches by
//! kind, acknowledged writes lost (excused only by a recorded
//! `dataLossPossible`), epoch regressions and the longest time to converge.
//!
//! Set through the environment (the Makefile's `ROUNDS`, `PAIRS`, `CASES`,
//! `SEED`): `HAPAIR_CHAOS_ROUNDS` (1), `HAPAIR_CHAOS_PAIRS` (1),
//! `HAPAIR_CHAOS_CASES` (all that fit a brief run; `HAPAIR_CHAOS_SOAK=1`
//! adds the long ones; a name may repeat, to weigh it), `HAPAIR_CHAOS_SEED`
//! (from the clock; printed, so a run can be replayed),
//! `HAPAIR_CHAOS_MINUTES` (no round starts after that many minutes; 0: no
//! limit), `HAPAIR_CHAOS_REPORT` (a file the table is also written to).

#[path = "../chaos/mod.rs"]
mod chaos;
mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::time::Instant;

use chaos::cases::Case;
use chaos::run::{self, Pair, Tally};
use tokio::sync::RwLock;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .filter(|s| !s.is_empty())
        .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_rounds_keep_every_invariant() {
    let rounds = env_u64("HAPAIR_CHAOS_ROUNDS", 1);
    let pairs = env_u64("HAPAIR_CHAOS_PAIRS", 1).max(1) as usize;
    let soak = std::env::var_os("HAPAIR_CHAOS_SOAK").is_some_and(|v| v != "0");
    let seed = env_u64(
        "HAPAIR_CHAOS_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
    );
    let cases = run::selected(soak);
    // A soak bounded by time rather than rounds: no round starts after it.
    let minutes = env_u64("HAPAIR_CHAOS_MINUTES", 0);
    let until = (minutes > 0).then(|| Instant::now() + std::time::Duration::from_secs(minutes * 60));
    eprintln!(
        "chaos: seed {seed}, {rounds} round(s), {pairs} pair(s), cases {:?}",
        cases.iter().map(|c| c.name()).collect::<Vec<_>>()
    );
    let started = Instant::now();
    let lock = RwLock::new(());
    let mut set = Vec::new();
    for i in 0..pairs {
        set.push(Pair::up(&format!("chaos-{i}")).await);
    }
    let results = futures::future::join_all(set.iter_mut().enumerate().map(|(i, pair)| {
        let (cases, lock) = (cases.clone(), &lock);
        async move {
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(i as u64));
            let mut tallies: BTreeMap<Case, Tally> = BTreeMap::new();
            // The time limit ends a round between two cases: a long round
            // must not overrun it by most of a round.
            'rounds: for round in 0..rounds {
                let mut order = cases.clone();
                rng.shuffle(&mut order);
                for case in order {
                    if until.is_some_and(|u| Instant::now() >= u) {
                        eprintln!("chaos: pair {i}: time is up in round {round}");
                        break 'rounds;
                    }
                    let t = pair.round(case, round, &mut rng, lock).await;
                    if t.breaches() > 0 {
                        eprintln!("chaos: pair {i} round {round} {}: {:?}", case.name(), t.examples);
                    }
                    tallies.entry(case).or_default().add(&t);
                }
            }
            tallies
        }
    }))
    .await;
    let mut all: BTreeMap<Case, Tally> = BTreeMap::new();
    for tallies in results {
        for (c, t) in tallies {
            all.entry(c).or_default().add(&t);
        }
    }
    let ops = set.iter().map(Pair::totals).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let (table, total) = run::report(&all, rounds, seed, pairs, ops, started.elapsed());
    for (i, p) in set.iter().enumerate() {
        let (samples, unanswered, lines) = p.coverage();
        eprintln!(
            "pair {i}: checker {samples} samples ({unanswered} agent polls unanswered), {lines} application view lines"
        );
    }
    eprint!("{table}");
    if let Some(path) = std::env::var_os("HAPAIR_CHAOS_REPORT") {
        std::fs::write(path, &table).expect("report written");
    }
    assert!(total.faults > 0, "no fault was injected");
    assert_eq!(total.breaches(), 0, "the chaos suite found breaches:\n{table}");
}
