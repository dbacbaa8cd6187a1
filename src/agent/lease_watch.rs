//! A member that does not hold the Lease follows it by a watch of its one
//! object, not by reading it every interval.
//!
//! Why: a standby's read every interval was half of what a thousand pairs
//! asked of the API server in steady state (one GET per pair per interval,
//! each a quorum read from etcd, beside the active's renewal). The active's
//! renewal changes the Lease every interval, so the watch delivers the same
//! news with no request at all, and sooner: a move of the Lease to this
//! member reaches it as the API server writes it, not at its next tick.
//!
//! What the watch is trusted for, and what not:
//! - A view it delivered is handled as a read of that moment would be
//!   ([`super::lease_task::take_read`]): the holder's renewal bounds when the
//!   holder fences, counted from the view's arrival, which is after the
//!   renewal was written — the same argument as for a read.
//! - The lease loop takes the last delivered view instead of reading only
//!   while views keep coming ([`fresh`]); a tick that was woken (the
//!   operator moved the Lease, the peer stood down, the application failed)
//!   reads unless that view names this member, and so does every tick after
//!   two intervals without a view (the holder stopped renewing, or the watch
//!   is stuck), an error, or a deleted Lease. Then the loop is exactly what
//!   it was before the watch.
//! - A view older than one already handled (a lower epoch than the last read
//!   or watched) is dropped: events are ordered, but a read may overtake an
//!   event still on its way.
//! - A claim is never made on a view: it is proved by a renewal at the
//!   epoch, as before (see `claim` in [`super::lease_task`]).
//!
//! What it costs the API server, which is what broke a first version of it
//! (each new standby's list and watch, and watches started again and again
//! while the API server lagged, tipped a 1,000-pair creation burst into the
//! operator's step-downs):
//! - A watch starts only once a read showed the Lease held by the other
//!   member (the pair is up), and from that read's `resourceVersion`: no
//!   list, ever. Until then, and whenever the watch is off, the loop reads.
//! - A watch the API server ends (its timeout, every few minutes) goes on
//!   from the last version seen, with bookmarks keeping that version young.
//! - One that fails is not retried for four lease durations (jittered), and
//!   one whose version is too old (`410 Gone`) waits for the loop's next
//!   read to start from. Either way the loop reads meanwhile.
//! - The loop still reads once a minute ([`KEEP_WARM`]), to keep a
//!   connection ready for the claim.
//!
//! The active does not watch: its renewals answer with the Lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use tracing::{debug, warn};

use super::lease::LeaseView;
use super::{Agent, State};
use crate::api::Role;

/// How often a member that may not watch yet looks whether it may.
const CHECK: Duration = Duration::from_secs(1);

/// How long the API server keeps one watch open (it then ends it, and the
/// watch goes on from where it was).
const WATCH_SECONDS: u32 = 290;

/// A watch that ends sooner than this did not end at the API server's
/// timeout.
const EARLY_END: Duration = Duration::from_secs(30);

/// Whether the member follows the Lease rather than renews it.
fn reading(s: &State) -> bool {
    s.role != Role::Active && s.draining_since.is_none()
}

/// How often a member that watches still reads the Lease: the read keeps
/// a connection to the API server open beside the watch's own (an HTTP/1.1
/// watch holds its connection, and the client's pool closes one idle for
/// 90 s). Without it the claim after a failover — the one request whose
/// speed matters — opened a new connection first (`make bench-scale`, a
/// lone pair, median of 5 and 8 failovers: from the kill to the new active
/// 67 and 76 ms, of which 45–50 from the Lease's move to the promotion;
/// with the read, 41 ms, of which about 19). One read a minute costs a
/// thousand standbys 17 requests a second, against the 200 that reading
/// every interval did.
const KEEP_WARM: Duration = Duration::from_secs(60);

/// The view a tick of the lease loop may take instead of reading the
/// Lease: the last one the watch delivered, if it came within two
/// intervals, and the loop has read the Lease since the watch started and
/// within [`KEEP_WARM`]. `None` with no watch or a silent one.
///
/// A woken tick takes it only if it names this member (the view that woke
/// it, usually): the claim that follows is a renewal guarded by holder and
/// epoch, so a view already overtaken costs a refused claim, never a wrong
/// one, while reading first cost every failover one more round trip to a
/// busy API server. Woken for anything else (the operator's or the peer's
/// wake-up, which may have overtaken the watch), it reads.
pub(super) fn fresh(s: &State, woken: bool, now: Instant) -> Option<LeaseView> {
    let (view, at) = s.watched.as_ref().filter(|(v, _)| !woken || s.named_at == Some(v.epoch))?;
    let silence = Duration::from_secs(2 * s.interval_seconds.max(1) as u64);
    let warm = s.last_read.is_some_and(|r| Some(r) > s.watch_since && now.saturating_duration_since(r) < KEEP_WARM);
    (warm && now.saturating_duration_since(*at) < silence).then(|| view.clone())
}

/// How a watch ended.
enum End {
    /// The member holds the Lease now.
    Holding,
    /// The Lease is gone, or the version to go on from is: start again from
    /// the loop's next read.
    FromRead,
    /// The API server refused or failed it.
    Failed(String),
}

/// Watches the pair's Lease whenever the member follows it (see the module).
pub(super) async fn lease_watch(agent: Arc<Agent>, api: Api<Lease>) {
    let params = WatchParams::default().fields(&format!("metadata.name={}", agent.config.pair)).timeout(WATCH_SECONDS);
    loop {
        let from = loop {
            if let Some(version) = startable(&mut agent.lock()) {
                break version;
            }
            tokio::time::sleep(CHECK).await;
        };
        agent.lock().watch_since = Some(Instant::now());
        let end = follow(&agent, &api, &params, from).await;
        forget(&agent);
        if let End::Failed(why) = end {
            agent.metrics.lease_watch_errors.inc();
            let lease = {
                let s = agent.lock();
                Duration::from_secs((s.interval_seconds.max(1) * s.missed_threshold.max(2)) as u64)
            };
            let retry = 4 * lease + lease.mul_f64(jitter());
            warn!(error = %why, ?retry, "cannot watch the lease; reading it every interval until then");
            tokio::time::sleep(retry).await;
        }
    }
}

/// The version a watch may start from: a read showed the Lease held by the
/// other member, and this member follows it. Taken, so that a watch that
/// ends starts again only from a newer read.
fn startable(s: &mut State) -> Option<String> {
    if !reading(s) {
        return None;
    }
    s.lease_version.take()
}

/// One watch, gone on with from the last version seen each time the API
/// server ends it, until it must stop.
async fn follow(agent: &Agent, api: &Api<Lease>, params: &WatchParams, mut version: String) -> End {
    loop {
        let started = Instant::now();
        let events = match api.watch(params, &version).await {
            Ok(events) => events,
            Err(e) => return End::Failed(e.to_string()),
        };
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Added(lease) | WatchEvent::Modified(lease)) => {
                    version = lease.metadata.resource_version.clone().unwrap_or(version);
                    if !publish(agent, LeaseView::of(&lease), Instant::now()) {
                        return End::Holding;
                    }
                }
                Ok(WatchEvent::Bookmark(b)) => version = b.metadata.resource_version,
                Ok(WatchEvent::Deleted(_)) => return End::FromRead,
                Ok(WatchEvent::Error(e)) if e.code == 410 => return End::FromRead,
                Ok(WatchEvent::Error(e)) => return End::Failed(e.message),
                Err(e) => return End::Failed(e.to_string()),
            }
        }
        if !reading(&agent.lock()) {
            return End::Holding;
        }
        // The API server ends a watch at its timeout; one that ends much
        // sooner (the server going away, a proxy cutting it) is a failure,
        // or watches would be sent back to back while it lasts.
        if started.elapsed() < EARLY_END {
            return End::Failed(format!("the watch ended after {:?}", started.elapsed()));
        }
        debug!("the lease's watch ended; going on from the last version seen");
    }
}

/// A fraction in [0, 1), different each call: spreads the retries of many
/// members that failed at the same moment.
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// The loop reads the Lease again, and a new watch starts from a new read.
fn forget(agent: &Agent) {
    let mut s = agent.lock();
    s.watched = None;
    s.lease_version = None;
    s.watch_since = None;
}

/// Takes a view the watch delivered at `now`, as a read then would be taken;
/// wakes the lease loop when it names this member holder. Returns whether
/// the member still follows the Lease (the watch ends when it does not).
pub(super) fn publish(agent: &Agent, view: LeaseView, now: Instant) -> bool {
    let mut s = agent.lock();
    if !reading(&s) {
        s.watched = None;
        return false;
    }
    if view.epoch < s.lease_epoch_read {
        return true;
    }
    let named_before = s.named_at;
    super::lease_task::take_read(agent, &mut s, Some(&view), now);
    let named_now = s.named_at.is_some() && s.named_at != named_before;
    s.watched = Some((view, now));
    drop(s);
    agent.metrics.lease_views.with_label_values(&["watch"]).inc();
    if named_now {
        agent.wake.notify_one();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(holder: &str, epoch: i64) -> LeaseView {
        LeaseView {
            holder: Some(holder.into()),
            epoch,
            renewed: Some(format!("r{epoch}")),
            interval_seconds: Some(1),
            missed_threshold: Some(3),
            replaced: None,
            drain_mark: None,
            annotated: false,
            resource_version: Some(format!("{epoch}00")),
        }
    }

    #[test]
    fn a_tick_takes_the_watched_view_while_views_keep_coming_and_a_woken_one_only_when_named() {
        let mut s = State { role: Role::Standby, ..crate::agent::tests::state() };
        let t0 = Instant::now();
        assert_eq!(fresh(&s, false, t0), None, "no watch: read");
        s.watch_since = Some(t0);
        s.watched = Some((view("primary/uid-1", 3), t0));
        assert_eq!(fresh(&s, false, t0), None, "no read since the watch started: read");
        s.last_read = Some(t0 + Duration::from_millis(1));
        assert_eq!(fresh(&s, false, t0 + Duration::from_millis(1900)), Some(view("primary/uid-1", 3)));
        assert_eq!(fresh(&s, true, t0 + Duration::from_millis(100)), None, "woken, not named by the view: read");
        s.named_at = Some(3);
        s.watched = Some((view("secondary/uid-2", 3), t0));
        assert_eq!(fresh(&s, true, t0 + Duration::from_millis(100)), Some(view("secondary/uid-2", 3)), "named: claim");
        s.named_at = Some(4);
        assert_eq!(fresh(&s, true, t0 + Duration::from_millis(100)), None, "named at another epoch: read");
        s.named_at = None;
        s.watched = Some((view("primary/uid-1", 3), t0));
        assert_eq!(fresh(&s, false, t0 + Duration::from_secs(2)), None, "two intervals without a view: read");
        // Views keep coming, but the last read is a minute old: read.
        s.watched = Some((view("primary/uid-1", 3), t0 + Duration::from_secs(60)));
        assert_eq!(fresh(&s, false, t0 + Duration::from_millis(60_500)), None);
    }

    #[tokio::test]
    async fn a_watched_view_is_taken_as_a_read_older_ones_are_dropped_and_naming_wakes_the_loop() {
        let dir = std::env::temp_dir().join(format!("hapair-lease-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let agent = crate::agent::tests::agent(&dir);
        agent.lock().role = Role::Standby;
        let t0 = Instant::now();
        assert!(publish(&agent, view("secondary/uid-2", 4), t0));
        {
            let s = agent.lock();
            assert_eq!(s.seen_other, Some(4));
            assert_eq!(s.named_at, None);
            assert!(s.other_fenced_by.is_some(), "the holder's renewal bounds its fence");
        }
        // A read overtook an event still on its way: the older view is dropped.
        agent.lock().lease_epoch_read = 6;
        assert!(publish(&agent, view("primary/uid", 5), t0));
        assert_eq!(agent.lock().named_at, None);
        assert_eq!(agent.lock().watched.as_ref().map(|(v, _)| v.epoch), Some(4));
        // Named holder: the loop is woken to claim now, not at its next tick.
        assert!(publish(&agent, view("primary/uid", 6), t0));
        assert_eq!(agent.lock().named_at, Some(6));
        tokio::time::timeout(Duration::from_millis(100), agent.wake.notified()).await.expect("the loop is woken");
        // The last view held by the other member is where a watch may start
        // from, once: a watch that ended starts again only from a newer one.
        agent.lock().named_at = None;
        agent.lock().lease_epoch_read = 0;
        assert!(publish(&agent, view("secondary/uid-2", 7), t0));
        assert_eq!(startable(&mut agent.lock()).as_deref(), Some("700"));
        assert_eq!(startable(&mut agent.lock()), None);
        // A member that serves follows the Lease no more: the watch ends.
        agent.lock().role = Role::Active;
        assert!(!publish(&agent, view("primary/uid", 6), t0));
        assert!(agent.lock().watched.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
