//! A history of what clients saw, checked in the manner of Jepsen: several
//! clients write through the pair's ClusterIP at once, each on its own
//! keep-alive connection, and every operation is recorded with a unique id,
//! when it was invoked and when it completed (one monotonic clock), and —
//! when acknowledged — the member that answered and the epoch it answered
//! at. A request that fails or times out is recorded too, never dropped.
//!
//! What the history must satisfy, whatever the faults:
//!
//! - **one member per epoch**: every acknowledgement at an epoch names the
//!   same member (two members acknowledging at one epoch is two actives);
//! - **epochs never go backwards in real time**: once an acknowledgement at
//!   epoch `e` has completed, no operation invoked after that is
//!   acknowledged at an epoch below `e` — the old active acknowledging after
//!   the new one did is a dual active that clients saw.
//!
//! Unlike sampling, this misses nothing a client could see: every
//! acknowledgement is in the history.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::client::{Answer, VipConnection};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ack {
        member: String,
        epoch: i64,
    },
    /// An answer that is not an acknowledgement (503 from a standby).
    Refused(u16),
    /// No answer: connection refused, reset, or the deadline passed.
    Failed,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub id: u64,
    pub client: usize,
    pub invoke: Instant,
    pub complete: Instant,
    pub outcome: Outcome,
}

/// Breaches of the two rules, in words; empty when the history is sound.
pub fn check(ops: &[Op]) -> Vec<String> {
    let mut out = Vec::new();
    let acks: Vec<(&Op, &str, i64)> = ops
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Ack { member, epoch } => Some((o, member.as_str(), *epoch)),
            _ => None,
        })
        .collect();
    let mut by_epoch: std::collections::BTreeMap<i64, &str> = Default::default();
    for (op, member, epoch) in &acks {
        match by_epoch.get(epoch) {
            Some(first) if first != member => {
                out.push(format!("epoch {epoch} acknowledged by {first} and by {member} (write {})", op.id));
            }
            Some(_) => {}
            None => {
                by_epoch.insert(*epoch, member);
            }
        }
    }
    // Acks by completion time; walk the invocations in order, keeping the
    // highest epoch among acks completed before each invocation.
    let mut completed: Vec<&(&Op, &str, i64)> = acks.iter().collect();
    completed.sort_by_key(|(o, _, _)| o.complete);
    let mut invoked: Vec<&(&Op, &str, i64)> = acks.iter().collect();
    invoked.sort_by_key(|(o, _, _)| o.invoke);
    let (mut i, mut highest): (usize, Option<(i64, u64)>) = (0, None);
    for (op, member, epoch) in invoked {
        while i < completed.len() && completed[i].0.complete < op.invoke {
            let (o, _, e) = completed[i];
            if highest.is_none_or(|(h, _)| *e > h) {
                highest = Some((*e, o.id));
            }
            i += 1;
        }
        if let Some((h, by)) = highest
            && *epoch < h
        {
            out.push(format!(
                "write {} acknowledged by {member} at epoch {epoch} after write {by} had been acknowledged at epoch {h}",
                op.id
            ));
        }
    }
    out
}

/// Where the history clients' write values start.
pub const VALUE_BASE: u64 = 1_000_000_000;

/// Clients writing through a Service's ClusterIP until stopped.
pub struct Clients {
    stop: Arc<AtomicBool>,
    /// Every completed operation so far, in completion order.
    ops: Arc<std::sync::Mutex<Vec<Op>>>,
    /// The latest acknowledgement to complete: when its request was sent,
    /// and its epoch (read often, so not from the whole history).
    latest: Arc<std::sync::Mutex<Option<(Instant, i64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// `n` clients, each writing every 20 ms on its own connection (dialled
    /// again after a failure); write ids are unique across all of them.
    pub fn start(addr: SocketAddr, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ids = Arc::new(AtomicU64::new(0));
        let ops: Arc<std::sync::Mutex<Vec<Op>>> = Arc::default();
        let latest: Arc<std::sync::Mutex<Option<(Instant, i64)>>> = Arc::default();
        let tasks = (0..n)
            .map(|client| {
                let (stop, ids, ops, latest) = (stop.clone(), ids.clone(), ops.clone(), latest.clone());
                tokio::spawn(async move {
                    let mut conn = VipConnection::new(addr);
                    while !stop.load(Ordering::SeqCst) {
                        let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
                        let invoke = Instant::now();
                        // Values far above the single writer's numbers, so a
                        // member's writes.log never mixes the two up.
                        let value = VALUE_BASE + id;
                        let answer = conn.request(&format!("/write?key=h{id}&value={value}")).await;
                        let outcome = match answer {
                            Ok(Answer { code: 200, body, member }) => {
                                Outcome::Ack { member, epoch: body.trim_start_matches("epoch=").parse().unwrap_or(0) }
                            }
                            Ok(Answer { code, .. }) => Outcome::Refused(code),
                            Err(_) => Outcome::Failed,
                        };
                        if let Outcome::Ack { epoch, .. } = &outcome {
                            *latest.lock().unwrap() = Some((invoke, *epoch));
                        }
                        let op = Op { id, client, invoke, complete: Instant::now(), outcome };
                        ops.lock().unwrap().push(op);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Clients { stop, ops, latest, tasks }
    }

    /// Whether a write sent at or after `since` was acknowledged at `epoch`
    /// (the latest acknowledgement, without copying the history).
    pub fn acknowledged_since(&self, since: Instant, epoch: i64) -> bool {
        self.latest.lock().unwrap().is_some_and(|(invoke, e)| invoke >= since && e == epoch)
    }

    /// The history so far (operations that completed), by invocation.
    pub fn snapshot(&self) -> Vec<Op> {
        let mut all = self.ops.lock().unwrap().clone();
        all.sort_by_key(|o| o.invoke);
        all
    }

    /// Stops every client; the whole history, by invocation.
    pub async fn stop(mut self) -> Vec<Op> {
        self.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.tasks) {
            t.await.expect("a client task");
        }
        self.snapshot()
    }
}

/// Acknowledged writes of `ops` missing from what the active member holds
/// (`held`: its `writes.log` read after `ops` was taken), split by whether
/// the pair's history excuses them: a write acknowledged at epoch `e` may be
/// missing only if a transition to an epoch above `e` recorded
/// `dataLossPossible`.
pub fn missing_writes(ops: &[Op], held: &std::collections::HashSet<u64>, lossy_epochs: &[i64]) -> (Vec<u64>, Vec<u64>) {
    let (mut excused, mut lost) = (Vec::new(), Vec::new());
    for op in ops {
        let Outcome::Ack { epoch, .. } = op.outcome else { continue };
        if held.contains(&(VALUE_BASE + op.id)) {
            continue;
        }
        if lossy_epochs.iter().any(|e| *e > epoch) {
            excused.push(op.id);
        } else {
            lost.push(op.id);
        }
    }
    (excused, lost)
}

/// Fails the test on any breach, and says what the history held.
pub fn assert_sound(ops: &[Op]) {
    let acks = ops.iter().filter(|o| matches!(o.outcome, Outcome::Ack { .. })).count();
    let failed = ops.iter().filter(|o| o.outcome == Outcome::Failed).count();
    let breaches = check(ops);
    assert!(breaches.is_empty(), "the clients saw {} breach(es): {breaches:#?}", breaches.len());
    assert!(acks > 0, "no write was acknowledged in {} operations", ops.len());
    eprintln!("history: {} operations, {acks} acknowledged, {failed} without an answer, sound", ops.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, at_ms: u64, took_ms: u64, member: &str, epoch: i64) -> Op {
        let t0 = *T0;
        Op {
            id,
            client: 0,
            invoke: t0 + Duration::from_millis(at_ms),
            complete: t0 + Duration::from_millis(at_ms + took_ms),
            outcome: Outcome::Ack { member: member.into(), epoch },
        }
    }

    static T0: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

    #[test]
    fn a_clean_failover_is_sound_and_each_breach_is_named() {
        // Primary at 1, then the secondary at 2, with a failed op between.
        let mut ops = vec![op(1, 0, 5, "primary", 1), op(2, 10, 5, "primary", 1), op(4, 40, 5, "secondary", 2)];
        ops.push(Op { outcome: Outcome::Failed, ..op(3, 20, 1000, "x", 0) });
        assert!(check(&ops).is_empty(), "{:?}", check(&ops));
        // Concurrent ops across the switch may complete in either order.
        let overlap = vec![op(1, 0, 50, "primary", 1), op(2, 10, 5, "secondary", 2)];
        assert!(check(&overlap).is_empty());
        // The old active acknowledges after the new one did.
        let stale = vec![op(1, 0, 5, "secondary", 2), op(2, 10, 5, "primary", 1)];
        assert_eq!(check(&stale).len(), 1, "{:?}", check(&stale));
        assert!(check(&stale)[0].contains("write 2 acknowledged by primary at epoch 1 after write 1"));
        // Two members at one epoch.
        let twins = vec![op(1, 0, 5, "primary", 3), op(2, 10, 5, "secondary", 3)];
        assert_eq!(check(&twins), ["epoch 3 acknowledged by primary and by secondary (write 2)"]);
    }

    #[test]
    fn a_missing_write_is_excused_only_by_a_lossy_transition_past_its_epoch() {
        let ops = vec![op(1, 0, 5, "primary", 1), op(2, 10, 5, "primary", 1), op(3, 20, 5, "secondary", 2)];
        let held: std::collections::HashSet<u64> = [VALUE_BASE + 1, VALUE_BASE + 3].into();
        assert_eq!(missing_writes(&ops, &held, &[]), (vec![], vec![2]));
        assert_eq!(missing_writes(&ops, &held, &[2]), (vec![2], vec![]));
        // A lossy transition before the write's epoch excuses nothing.
        assert_eq!(missing_writes(&ops, &held, &[1]), (vec![], vec![2]));
    }
}
