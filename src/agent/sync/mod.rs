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

pub use active::file_stream;

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
    gen_times: VecDeque<(i64, DateTime<Utc>)>,
    started: Option<DateTime<Utc>>,
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
            inner: tokio::sync::Mutex::new(Inner { state, started: Some(Utc::now()), ..Default::default() }),
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
    /// handover) on every change of role.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Whether a pull must stop: the member is about to serve or serves.
    fn must_stop(&self) -> bool {
        self.abort.load(Ordering::SeqCst) || self.serving.load(Ordering::SeqCst)
    }

    /// Fetches one file from the peer into place.
    pub async fn fetch(&self, peer: &Target, dir: &str, rel: &str, entry: &manifest::Entry) -> Result<u64, String> {
        let v = path::volume_path(dir, rel).map_err(|r| r.to_string())?;
        let path = format!("/v1/sync/file?dir={}&path={}", wire::encode(dir), wire::encode(rel));
        let body = http::stream(peer, &path, Duration::from_secs(10), Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        let body = body.take_while(move |_| futures::future::ready(!self.abort.load(Ordering::SeqCst)));
        store::install(&self.root, &v, entry, Box::pin(body)).await.map_err(|e| e.to_string())
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
        };
        Syncer::open(root, spec, Member::Secondary).unwrap()
    }

    /// A peer that is not there: any pull attempt fails and is counted.
    fn nowhere() -> Target {
        let m = crate::tls::generate_pair_material("db", "ns").unwrap();
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
}
