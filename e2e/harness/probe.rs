//! The benchmark's client: writes through the pair's ClusterIP on one
//! keep-alive connection from the testbed's client network namespace (dialled
//! again after a failure, as a real client does), every write with an id
//! unique in the whole benchmark process — across runs and series — and
//! every acknowledgement stamped on the same monotonic clock as the
//! observer's events and the faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::VipConnection;

/// Ids are never reused in one benchmark process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How long the client waits between writes.
pub const PACE: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct Ack {
    pub id: u64,
    pub at: Instant,
    pub member: String,
    pub epoch: i64,
}

pub struct Probe {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub fn start(addr: SocketAddr) -> Self {
        Self::start_in(addr, super::client::CLIENT_NETNS)
    }

    /// The same client from the network namespace `netns` (a path).
    pub fn start_in(addr: SocketAddr, netns: &'static str) -> Self {
        let (stop, acks): (Arc<AtomicBool>, Arc<Mutex<Vec<Ack>>>) = Default::default();
        let (flag, log) = (stop.clone(), acks.clone());
        let task = tokio::spawn(async move {
            let mut conn = VipConnection::from_netns(addr, netns);
            while !flag.load(Ordering::SeqCst) {
                let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
                if let Ok(a) = conn.request(&format!("/write?key=bench&value={id}")).await
                    && a.code == 200
                {
                    let epoch = a.body.trim().strip_prefix("epoch=").and_then(|e| e.parse().ok()).unwrap_or(0);
                    log.lock().unwrap().push(Ack { id, at: Instant::now(), member: a.member, epoch });
                }
                tokio::time::sleep(PACE).await;
            }
        });
        Probe { stop, acks, task }
    }

    /// Every acknowledgement so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// Waits until a write was acknowledged at `epoch` or later after
    /// `since`; when it was, or `None` after `timeout`.
    pub async fn wait_epoch(&self, epoch: i64, since: Instant, timeout: Duration) -> Option<Instant> {
        self.wait_for(since, timeout, |a| a.epoch >= epoch).await
    }

    /// Waits until a write `accept`ed was acknowledged after `since`.
    pub async fn wait_for(&self, since: Instant, timeout: Duration, accept: impl Fn(&Ack) -> bool) -> Option<Instant> {
        let start = Instant::now();
        loop {
            let found = self.acks.lock().unwrap().iter().find(|a| a.at >= since && accept(a)).map(|a| a.at);
            if found.is_some() || start.elapsed() > timeout {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        let acks = self.acks.clone();
        let _ = self.task.await;
        acks.lock().unwrap().clone()
    }
}

/// What the client lived through around a fault at `fault`: the longest
/// time without an acknowledgement from the last one before the fault up
/// to the first one at `epoch` or later, in milliseconds; and that first
/// one's time. `None` when the client never got there.
pub fn outage(acks: &[Ack], fault: Instant, epoch: i64) -> Option<(f64, Instant)> {
    let first_new = acks.iter().find(|a| a.at > fault && a.epoch >= epoch)?;
    acks.iter().rev().find(|a| a.at <= fault)?;
    Some((longest_gap(acks, fault, first_new.at), first_new.at))
}

/// The longest time without an acknowledgement from the last one at or
/// before `from` up to `to`, in milliseconds (to `to` itself when nothing
/// was acknowledged after the last one).
pub fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> f64 {
    let start = acks.iter().rev().find(|a| a.at <= from).map_or(from, |a| a.at);
    let (mut prev, mut longest) = (start, Duration::ZERO);
    for a in acks.iter().filter(|a| a.at > start && a.at <= to) {
        longest = longest.max(a.at - prev);
        prev = a.at;
    }
    longest.max(to.saturating_duration_since(prev)).as_secs_f64() * 1000.0
}

impl Probe {
    /// After a fault at `at`, for a peer whose recovery shows only in the
    /// client (no epoch to wait for): waits until the client has been
    /// served for `steady` with no silence of `break_` (and at least
    /// `steady` after the fault, so the fault has landed), then returns the
    /// longest silence since the last acknowledgement before the fault, in
    /// milliseconds; `None` when that did not happen within `timeout`.
    pub async fn outage_after(
        &self,
        at: Instant,
        break_: Duration,
        steady: Duration,
        timeout: Duration,
    ) -> Option<f64> {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = Instant::now();
            if now.saturating_duration_since(at) > timeout {
                return None;
            }
            if now.saturating_duration_since(at) < steady {
                continue;
            }
            // Read in place: the log holds every acknowledgement of the
            // series, and the bench shares the machine with what it measures.
            let acks = self.acks.lock().unwrap();
            let from = now - steady;
            let window = &acks[acks.partition_point(|a| a.at < from)..];
            let (Some(first), Some(last)) = (window.first(), window.last()) else { continue };
            if first.at - from < break_
                && now - last.at < break_
                && window.windows(2).all(|w| w[1].at - w[0].at < break_)
            {
                return Some(longest_gap(&acks, at, now));
            }
        }
    }
}

/// The acknowledged ids the data volume's `writes.log` lacks (each line
/// `EPOCH KEY VALUE`, the value being the id).
pub fn missing(acks: &[Ack], data_dir: &std::path::Path) -> Vec<u64> {
    let text = std::fs::read_to_string(data_dir.join("writes.log")).unwrap_or_default();
    let held: std::collections::HashSet<u64> =
        text.lines().filter_map(|l| l.split(' ').nth(2)).filter_map(|n| n.parse().ok()).collect();
    acks.iter().map(|a| a.id).filter(|id| !held.contains(id)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_outage_is_the_longest_silence_up_to_the_first_ack_of_the_new_epoch() {
        use super::*;
        use std::time::Duration;
        let t0 = Instant::now();
        let ack = |ms: u64, epoch: i64| Ack { id: ms, at: t0 + Duration::from_millis(ms), member: "m".into(), epoch };
        // Acked at 0 and 20, fault at 30, the old epoch still answers at 40
        // (a drain not yet done), then nothing until 900 at the new epoch.
        let acks = [ack(0, 1), ack(20, 1), ack(40, 1), ack(900, 2), ack(920, 2)];
        let (ms, first) = outage(&acks, t0 + Duration::from_millis(30), 2).unwrap();
        assert_eq!((ms, first), (860.0, t0 + Duration::from_millis(900)));
        assert!(outage(&acks[..3], t0 + Duration::from_millis(30), 2).is_none(), "never served again");
        assert_eq!(longest_gap(&acks, t0 + Duration::from_millis(30), t0 + Duration::from_millis(920)), 860.0);
        assert_eq!(longest_gap(&acks[..3], t0 + Duration::from_millis(30), t0 + Duration::from_millis(1040)), 1000.0);
    }
}
