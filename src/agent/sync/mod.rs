//! The agent's half of file sync: [`Syncer`] keeps one member's synced
//! directories and what it knows of them.
//!
//! - As **active** (`active.rs`) it scans its directories every realtime
//!   interval (and before answering a manifest request), numbering each
//!   change with a new generation and remembering which files changed at
//!   which generation, so it can tell how far behind its standby is in
//!   files, bytes and time — also while the standby is away.
//! - As **standby** (`pull.rs`) it pulls: realtime directories every
//!   `realtimeIntervalSeconds`, batch directories every
//!   `batchIntervalSeconds`, everything at once when the operator asks (a
//!   switchover waits for that). A directory whose files are an ancestor of
//!   the active's is mirrored; one that diverged is left alone and
//!   reported, until the operator orders a resync, which quarantines
//!   instead of overwriting.
//!
//! Nothing is pulled into a volume the application may write to: a
//! promotion stops a pull in progress and waits for it before the member
//! serves, and no pull starts or goes on while the member serves.

mod active;
mod pull;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::warn;

use crate::api::{FileSyncSpec, Member};
use crate::http::{self, CallError, Target};
use crate::proto::{ResyncOrder, SyncStatus};
use crate::sync::manifest::{self, Files, Scanner};
use crate::sync::path::{self, Refusal};
use crate::sync::state::{Point, SyncState};
use crate::sync::{store, wire};

pub use active::file_reply;

/// Generations whose time of change is remembered for the lag.
const GEN_HISTORY: usize = 4096;
/// Actions listed in a dry run's report.
const DRY_RUN_LIST: usize = 100;

pub struct Syncer {
    pub root: PathBuf,
    pub spec: FileSyncSpec,
    member: Member,
    inner: tokio::sync::Mutex<Inner>,
    report: Mutex<SyncStatus>,
    order: Mutex<Option<ResyncOrder>>,
    /// Set to stop a pull in progress (promotion).
    abort: AtomicBool,
    /// Set while this member serves (active or draining): nothing is pulled
    /// into a volume the application writes to.
    serving: AtomicBool,
    pub wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    state: SyncState,
    scanners: HashMap<String, Scanner>,
    /// Active: the last scan of each directory.
    manifests: HashMap<String, Files>,
    last_refresh: Option<Instant>,
    /// Active: volume path → generation it last changed at, and its size.
    file_gen: HashMap<String, (i64, u64)>,
    /// Active: deleted volume path → generation of the deletion.
    tombstones: HashMap<String, i64>,
    /// Active: when each recent generation was scanned — on the monotonic
    /// clock (the standby's lag, a duration) and the wall clock (reported).
    gen_times: VecDeque<(i64, Instant, DateTime<Utc>)>,
    /// Standby: the source's point and per-directory change points.
    source_point: Option<Point>,
    source_changed_at: BTreeMap<String, Point>,
    last_pull: HashMap<String, Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("peer: {0}")]
    Peer(#[from] CallError),
    #[error("peer sent a malformed manifest: {0}")]
    Garbage(String),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error(
        "not copied: it would fill this member's volume ({} to write, {} free beyond the {} kept free); free space on it or give the pair larger claims",
        crate::proto::size_text(*need), crate::proto::size_text(*room), crate::proto::size_text(*kept)
    )]
    NoRoom { need: u64, room: u64, kept: u64 },
}

fn vpath(dir: &str, rel: &str) -> String {
    if dir == "." { rel.to_string() } else { format!("{dir}/{rel}") }
}

impl Syncer {
    pub fn open(root: PathBuf, spec: FileSyncSpec, member: Member) -> io::Result<Self> {
        std::fs::create_dir_all(root.join(path::STATE_DIR))?;
        store::clean_tmp(&root)?;
        let state = SyncState::load(&root)?;
        let report = SyncStatus { point: state.point, ..Default::default() };
        Ok(Syncer {
            root,
            spec,
            member,
            inner: tokio::sync::Mutex::new(Inner { state, ..Default::default() }),
            report: Mutex::new(report),
            order: Mutex::new(None),
            abort: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn report(&self) -> std::sync::MutexGuard<'_, SyncStatus> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> SyncStatus {
        self.report().clone()
    }

    /// What pruning removed and what the quarantine holds now.
    pub fn record_quarantine(
        &self,
        removed: Vec<crate::sync::quarantine::Pruned>,
        usage: crate::sync::quarantine::Usage,
    ) {
        let mut r = self.report();
        r.quarantine = usage;
        r.pruned.extend(removed);
        let extra = r.pruned.len().saturating_sub(20);
        r.pruned.drain(..extra);
    }

    fn configured(&self, dir: &str) -> bool {
        self.spec.paths.iter().any(|p| p.path == dir)
    }

    fn refused(&self, r: Refusal) -> SyncError {
        self.report().refused += 1;
        SyncError::Refused(r)
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        warn!(error = %e, "{what}");
        let mut r = self.report();
        r.errors += 1;
        r.last_error = Some(format!("{what}: {e}"));
    }

    /// The agent says whether the member serves (active, or draining for a
    /// handover) on every change of role. A member that serves drops any
    /// resync order it had not finished: the order was to follow the active
    /// member of its time, and orders now run one at a time, so a stale one
    /// would hold every later order back until it ran against a newer
    /// active. Its Job sees the member is no longer standby and fails or
    /// orders again.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
        if serving && let Some(dropped) = self.order.lock().unwrap_or_else(|p| p.into_inner()).take() {
            warn!(label = %dropped.label, "resync order dropped: this member serves now");
        }
    }

    /// Whether a pull must stop: the member is about to serve or serves.
    fn must_stop(&self) -> bool {
        self.abort.load(Ordering::SeqCst) || self.serving.load(Ordering::SeqCst)
    }

    /// Copies one file from `peer` into place: the version the peer says it
    /// sent (a file that keeps changing still arrives whole, as it was at
    /// one moment), or else exactly `entry` from its manifest. With
    /// `quarantine_as`, this member's own version goes to that quarantine
    /// once the copy is whole (see [`store::install`]). Returns the version
    /// now in place.
    pub async fn fetch(
        &self,
        peer: &Target,
        dir: &str,
        rel: &str,
        entry: &manifest::Entry,
        quarantine_as: Option<&str>,
    ) -> Result<manifest::Entry, String> {
        let v = path::volume_path(dir, rel).map_err(|r| r.to_string())?;
        let path = format!("/v1/sync/file?dir={}&path={}", wire::encode(dir), wire::encode(rel));
        let got = http::stream(peer, &path, Duration::from_secs(10), Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        let announced = got.headers.get(wire::SIZE_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body = got.body.take_while(move |_| futures::future::ready(!self.abort.load(Ordering::SeqCst)));
        let trailers = got.trailers;
        let settle = move |n: u64, hash: &str| {
            let sent = trailers.lock().unwrap_or_else(|p| p.into_inner()).take();
            match sent.as_ref().and_then(wire::sent_entry) {
                Some(sent) if sent.size == n && sent.hash == hash => Ok(sent),
                Some(_) => Err(store::CopyError::Transfer("the body does not match the version announced".into())),
                None => store::exactly(entry)(n, hash),
            }
        };
        let member = self.member.to_string();
        let displaced = quarantine_as.map(|label| store::Displaced { label, member: &member });
        store::install(&self.root, &v, announced.unwrap_or(entry.size), Box::pin(body), settle, displaced)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FileSyncPath, SyncClass};

    fn syncer(root: PathBuf) -> Syncer {
        let spec = FileSyncSpec {
            paths: vec![FileSyncPath { path: ".".into(), class: SyncClass::Realtime }],
            realtime_interval_seconds: 1,
            batch_interval_seconds: 2,
            quarantine: Default::default(),
        };
        Syncer::open(root, spec, Member::Secondary).unwrap()
    }

    /// A peer that is not there: any pull attempt fails and is counted.
    fn nowhere() -> Target {
        let m = crate::tls::generate_pair_material("db", "ns", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        let id = crate::tls::Identity {
            ca: m[crate::tls::CA_CERT].clone(),
            cert: m[crate::tls::CLIENT_CERT].clone(),
            key: m[crate::tls::CLIENT_KEY].clone(),
        };
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        Target {
            addr,
            server_name: crate::tls::server_name("primary.db.ns.hapair").unwrap(),
            tls: crate::tls::client_config(&id).unwrap(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_serves_or_is_being_promoted_pulls_nothing() {
        let root = crate::sync::path::tests::tempdir();
        let s = syncer(root.clone());
        s.set_serving(true);
        s.pull_round(&nowhere(), true).await;
        assert_eq!(s.status().errors, 0, "serving: no pull was even tried");
        s.set_serving(false);
        s.stop_pulling().await;
        s.pull_round(&nowhere(), true).await;
        assert_eq!(s.status().errors, 0, "being promoted: no pull was even tried");
        s.resume();
        s.pull_round(&nowhere(), true).await;
        assert_eq!(s.status().errors, 1, "a standby tries, and counts the failure");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_whose_source_cannot_be_pulled_is_not_reported_done() {
        let root = crate::sync::path::tests::tempdir();
        std::fs::write(root.join("stray.txt"), b"only here").unwrap();
        for dry_run in [true, false] {
            let s = syncer(root.clone());
            s.set_order(order(&format!("resync-{}", u8::from(dry_run)), dry_run)).unwrap();
            s.pull_round(&nowhere(), true).await;
            let r = s.status().resync.expect("the order is reported");
            assert!(!r.done, "dry run {dry_run}: an empty plan from a failed pull is not a plan: {r:?}");
            assert_eq!(r.summary, Default::default());
        }
        assert!(root.join("stray.txt").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn order(label: &str, dry_run: bool) -> crate::proto::ResyncOrder {
        crate::proto::ResyncOrder {
            label: label.into(),
            only_on_target: crate::api::OnlyOnTarget::Quarantine,
            conflict: crate::api::ConflictRule::SourceWins,
            clocks_agree: true,
            dry_run,
            full: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_active_that_restarted_does_not_call_a_standby_missing_older_changes_in_sync() {
        let root = crate::sync::path::tests::tempdir();
        std::fs::write(root.join("log"), b"0\n").unwrap();
        let s = syncer(root.clone());
        s.refresh(1).await.unwrap();
        std::fs::write(root.join("log"), b"0\n1\n").unwrap();
        s.refresh(1).await.unwrap();
        // The standby holds generation 1 of 2, and this agent saw 2 made.
        s.manifest(".", Some(1), 1).await.unwrap();
        assert!(s.status().peer_lag_seconds.is_some_and(|l| l < 5.0), "{:?}", s.status().peer_lag_seconds);
        // The agent restarts: generation 2 was made before it started.
        let s = syncer(root.clone());
        s.manifest(".", Some(1), 1).await.unwrap();
        assert_eq!(s.status().peer_lag_seconds, None, "how far behind is unknown, not zero");
        // Once the standby holds everything, it is in sync; a change made
        // now has a time again.
        s.manifest(".", Some(2), 1).await.unwrap();
        assert_eq!(s.status().peer_lag_seconds, Some(0.0));
        std::fs::write(root.join("log"), b"0\n1\n2\n").unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s.manifest(".", Some(2), 1).await.unwrap();
        assert!(s.status().peer_lag_seconds.is_some(), "a change this agent saw made has a lag");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drain_takes_its_final_generation_once_the_volume_is_quiet() {
        let root = crate::sync::path::tests::tempdir();
        std::fs::write(root.join("log"), b"0\n").unwrap();
        let s = syncer(root.clone());
        s.refresh(5).await.unwrap();
        // A write the application began before its role changed, landing
        // well past one quiet period later (a loaded node).
        let log = root.join("log");
        let late = tokio::spawn(async move {
            tokio::time::sleep(active::QUIET + Duration::from_millis(150)).await;
            let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
            std::io::Write::write_all(&mut f, b"late\n").unwrap();
        });
        let settled = s.settle(5).await.unwrap();
        late.await.unwrap();
        assert_eq!(settled, s.refresh(5).await.unwrap(), "the late write is in the final generation");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn orders_run_one_at_a_time_and_a_finished_report_outlives_the_next_order() {
        let root = crate::sync::path::tests::tempdir();
        let s = syncer(root.clone());
        s.set_order(order("resync-3", false)).unwrap();
        // Another label waits for the first to be done; its own Job may
        // order it again (a retried pod) at any time.
        let why = s.set_order(order("splitbrain-3-1", false)).unwrap_err();
        assert!(why.contains("resync-3"), "{why}");
        s.set_order(order("resync-3", false)).unwrap();
        // A member that starts serving drops an unfinished order: it must
        // not hold later orders back once it is standby again.
        s.set_serving(true);
        s.set_serving(false);
        s.set_order(order("splitbrain-3-0", false)).unwrap();
        *s.order.lock().unwrap() = None;
        s.set_order(order("resync-3", false)).unwrap();
        // Done (as a round marks it): the next order is taken, and the
        // report of the first stays findable once the next one's replaces it.
        s.pull_round(&nowhere(), true).await;
        {
            let mut r = s.report();
            let done = r.resync.as_mut().unwrap();
            done.done = true;
        }
        *s.order.lock().unwrap() = None;
        s.set_order(order("splitbrain-3-1", true)).unwrap();
        s.pull_round(&nowhere(), true).await;
        let st = s.status();
        assert_eq!(st.resync.as_ref().map(|r| r.label.as_str()), Some("splitbrain-3-1"));
        assert!(st.resync_report("resync-3").is_some_and(|r| r.done), "{st:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A peer at `addr` serving files with `handler`, over the pair's mTLS.
    fn peer<H, F>(handler: H) -> Target
    where
        H: Fn(hyper::Request<hyper::body::Incoming>, std::net::SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = http::Reply> + Send + 'static,
    {
        let m = crate::tls::generate_pair_material("db", "ns", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        let (cert, key) = crate::tls::member_cert_key(Member::Primary);
        let id = |c: &str, k: &str| crate::tls::Identity {
            ca: m[crate::tls::CA_CERT].clone(),
            cert: m[c].clone(),
            key: m[k].clone(),
        };
        let server = crate::tls::server_config(&id(&cert, &key)).unwrap();
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let addr = std.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(std).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        tokio::spawn(http::serve(listener, Some(acceptor), Duration::from_secs(10), handler));
        Target {
            addr,
            server_name: crate::tls::server_name(&crate::tls::member_server_name(Member::Primary, "db", "ns")).unwrap(),
            tls: crate::tls::client_config(&id(crate::tls::CLIENT_CERT, crate::tls::CLIENT_KEY)).unwrap(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_changed_since_the_manifest_arrives_in_the_version_sent_and_lies_are_refused() {
        let (src, dst) = (crate::sync::path::tests::tempdir(), crate::sync::path::tests::tempdir());
        std::fs::write(src.join("log"), b"one\n").unwrap();
        let (stale, _) = manifest::Scanner::default().scan(&src, ".").unwrap();
        // The log grows after the manifest was taken (an appending app).
        std::fs::write(src.join("log"), b"one\ntwo\n").unwrap();
        let root = src.clone();
        let honest = peer(move |_req, _| {
            let root = root.clone();
            async move { file_reply(std::fs::File::open(root.join("log")).unwrap()).unwrap() }
        });
        let s = syncer(dst.clone());
        let got = s.fetch(&honest, ".", "log", &stale["log"], None).await.unwrap();
        let (now, _) = manifest::Scanner::default().scan(&src, ".").unwrap();
        assert_eq!(got, now["log"], "the version sent, not the stale one");
        assert_eq!(std::fs::read(dst.join("log")).unwrap(), b"one\ntwo\n");
        let (copied, _) = manifest::Scanner::default().scan(&dst, ".").unwrap();
        assert_eq!(copied["log"], now["log"], "same size, hash, mode and mtime");

        // A peer whose trailers name another version than the body it sent.
        let lie = manifest::Entry { size: 4, mtime: 0, mode: 0o644, hash: "00".repeat(32) };
        let liar = peer(move |_req, _| {
            let lie = lie.clone();
            async move {
                let frames = futures::stream::iter([
                    Ok(hyper::body::Frame::data(hyper::body::Bytes::from_static(b"evil"))),
                    Ok(hyper::body::Frame::trailers(wire::sent_trailers(&lie))),
                ]);
                let mut r = http::frames_reply(frames);
                r.headers_mut().insert(hyper::header::TRAILER, wire::SENT_HASH.parse().unwrap());
                r.headers_mut().append(hyper::header::TRAILER, wire::SENT_SIZE.parse().unwrap());
                r.headers_mut().append(hyper::header::TRAILER, wire::SENT_MTIME.parse().unwrap());
                r.headers_mut().append(hyper::header::TRAILER, wire::SENT_MODE.parse().unwrap());
                r
            }
        });
        assert!(s.fetch(&liar, ".", "log", &stale["log"], None).await.unwrap_err().contains("does not match"));
        // A peer sending more than it announced.
        let flood = peer(|_req, _| async {
            let frames =
                futures::stream::iter([Ok(hyper::body::Frame::data(hyper::body::Bytes::from(vec![7u8; 4096])))]);
            let mut r = http::frames_reply(frames);
            r.headers_mut().insert(wire::SIZE_HEADER, 10u64.into());
            r
        });
        assert!(s.fetch(&flood, ".", "log", &stale["log"], None).await.unwrap_err().contains("more than"));
        assert_eq!(std::fs::read(dst.join("log")).unwrap(), b"one\ntwo\n", "refused copies replaced nothing");

        // A copy that replaces this member's own version (a resync's
        // conflict): refused, it leaves that version in place and nothing in
        // quarantine; whole, it quarantines it as it puts itself in place.
        std::fs::write(dst.join("log"), b"mine\n").unwrap();
        for refused in [&liar, &flood] {
            assert!(s.fetch(refused, ".", "log", &stale["log"], Some("resync-9")).await.is_err());
            assert_eq!(std::fs::read(dst.join("log")).unwrap(), b"mine\n", "a refused copy took the file away");
        }
        assert!(store::quarantine_records(&dst, "resync-9").is_err(), "nothing quarantined for a refused copy");
        s.fetch(&honest, ".", "log", &stale["log"], Some("resync-9")).await.unwrap();
        assert_eq!(std::fs::read(dst.join("log")).unwrap(), b"one\ntwo\n");
        let q = store::quarantine_records(&dst, "resync-9").unwrap();
        assert_eq!((q.len(), q[0].path.as_str(), q[0].reason.as_str(), q[0].size), (1, "log", "conflict", 5));
        let kept = store::quarantine_root(&dst).join("resync-9/files/log");
        assert_eq!(std::fs::read(kept).unwrap(), b"mine\n");
        std::fs::remove_dir_all(&src).unwrap();
        std::fs::remove_dir_all(&dst).unwrap();
    }
}
