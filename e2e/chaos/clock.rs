//! A clock step of a minute, either way, on one member (`clock-step-60s`).
//!
//! The member's agent runs the fault-hook build, whose wall clock adds the
//! offset a file in its run directory holds (`hapair::clock`: why a real step
//! of one member's clock cannot be made on nodes that share a kernel). What
//! must hold: nobody fences, fails over or loses a write (safety rests on
//! monotonic clocks and on each observer's own view of the Lease); the
//! operator sees the skew (`ClockSkew`, the member's `clockSkewSeconds`);
//! the standby's lag stays a duration, never a difference of two clocks; and
//! once the clock is back, the condition clears.

use std::time::{Duration, Instant};

use hapair::api::{AGENT_CONTAINER, ConditionStatus, Member};

use super::cases::{INTERVAL, Injected, LEASE, Target};
use crate::harness::nodes;

/// The step.
const STEP_MS: i64 = 60_000;
/// A lag the pair cannot reach while its members hear each other (its
/// realtime interval is 1 s): past it, a clock was read as a duration.
const LAG_BOUND: i64 = 20;

pub async fn step(t: &mut Target<'_>) -> Injected {
    let member = if t.rng.bool() { t.active } else { t.active.peer() };
    let ms = if t.rng.bool() { STEP_MS } else { -STEP_MS };
    std::fs::write(offset_file(t, member).await, ms.to_string()).expect("the clock stepped");
    let mut out = Injected::default();
    let mut watch = Watch::default();
    // Until the operator has seen the step (a poll or two), then two leases
    // more: every renewal, poll and pull of that time sees the stepped clock.
    let start = Instant::now();
    while !watch.seen && start.elapsed() < Duration::from_secs(15) {
        watch.sample(t, member, ms).await;
    }
    let hold = start.elapsed() + LEASE * 2 + Duration::from_millis(t.rng.u64(0..2000));
    while start.elapsed() < hold {
        watch.sample(t, member, ms).await;
    }
    // Found again: the file is in the pod's emptyDir, which outlives an
    // agent restart, while the path through its process does not.
    std::fs::remove_file(offset_file(t, member).await).expect("the clock stepped back");
    eprintln!(
        "chaos: the {member}'s clock stepped {:+} s; skew seen {}; largest lag reported {} s",
        ms / 1000,
        watch.seen,
        watch.max_lag
    );
    out.crash = Some(("clock-skew-reported", watch.seen));
    if watch.max_lag > LAG_BOUND {
        out.breaches.push((
            "lag-read-from-a-stepped-clock",
            format!("the standby was reported {} s behind while the {member}'s clock was stepped", watch.max_lag),
        ));
    }
    out
}

/// The agent's clock-offset file (`hapair::clock`), through the running
/// agent container's root.
async fn offset_file(t: &Target<'_>, member: Member) -> std::path::PathBuf {
    let pod = t.h.member_pod(t.pair, member).await;
    nodes::container_root(&pod, AGENT_CONTAINER)
        .expect("the agent runs")
        .join(hapair::operator::build::RUN_DIR.trim_start_matches('/'))
        .join("clock-offset-ms")
}

#[derive(Default)]
struct Watch {
    /// The operator reported the member's skew and raised `ClockSkew`.
    seen: bool,
    max_lag: i64,
}

impl Watch {
    async fn sample(&mut self, t: &Target<'_>, member: Member, ms: i64) {
        let s = t.h.pair(t.pair).await.status.unwrap_or_default();
        let skew = s.members.iter().find(|m| m.name == member).and_then(|m| m.clock_skew_seconds);
        let raised = s.conditions.iter().any(|c| c.type_ == "ClockSkew" && c.status == ConditionStatus::True);
        // Reported in whole seconds, its sign the step's.
        self.seen |= raised && skew.is_some_and(|k| (k * 1000 - ms).abs() <= 5_000);
        self.max_lag = self.max_lag.max(s.members.iter().filter_map(|m| m.sync_lag_seconds).max().unwrap_or(0));
        tokio::time::sleep(INTERVAL / 4).await;
    }
}
