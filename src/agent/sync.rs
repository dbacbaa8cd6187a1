//! The agent's half of file sync.
//!
//! As **active** it scans its synced directories every realtime interval
//! (and before answering a manifest request), numbering each change with a
//! new generation and remembering which files changed at which generation,
//! so it can tell how far behind its standby is in files, bytes and time —
//! also while the standby is away.
//!
//! As **standby** it pulls: realtime directories every
//! `realtimeIntervalSeconds`, batch directories every
//! `batchIntervalSeconds`, everything at once when the operator asks (a
//! switchover waits for that). A directory whose files are an ancestor of
//! the active's is mirrored; one that diverged is left alone and reported,
//! until the operator orders a resync, which quarantines instead of
//! overwriting. A promotion aborts a pull in progress before the member
//! serves.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hyper::Method;
use hyper::body::Bytes;
use tracing::{info, warn};

use crate::api::{FileSyncSpec, Member, SyncClass};
use crate::http::{self, CallError, Target};
use crate::proto::{ResyncOrder, ResyncReport, SyncStatus};
use crate::sync::manifest::{self, Files, Scanner};
use crate::sync::path::{self, Refusal};
use crate::sync::plan::{self, Action, Plan, Rules};
use crate::sync::state::{EMPTY_DIGEST, Point, SyncState, Verdict};
use crate::sync::store::{self, QuarantineRecord};
use crate::sync::wire::{self, ManifestReply};

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

    // ---- active side ----

    /// Scans every synced directory as the active member at `epoch`.
    pub async fn refresh(&self, epoch: i64) -> io::Result<Point> {
        let mut g = self.inner.lock().await;
        let g = &mut *g;
        let now = Utc::now();
        let mut changed = false;
        let mut refused = 0;
        for p in &self.spec.paths {
            let dir = p.path.clone();
            let scanner = g.scanners.entry(dir.clone()).or_default();
            let (files, skipped) = tokio::task::block_in_place(|| scanner.scan(&self.root, &dir))?;
            refused += skipped.total();
            let digest = manifest::digest(&files);
            if g.state.record_scan(&dir, &digest, Some(epoch), now) {
                changed = true;
                let generation = g.state.point.generation;
                let old = g.manifests.get(&dir);
                for (rel, e) in &files {
                    if old.and_then(|o| o.get(rel)).is_none_or(|o| !o.same_content(e)) {
                        let v = vpath(&dir, rel);
                        g.tombstones.remove(&v);
                        g.file_gen.insert(v, (generation, e.size));
                    }
                }
                if let Some(old) = old {
                    for rel in old.keys().filter(|r| !files.contains_key(*r)) {
                        let v = vpath(&dir, rel);
                        g.file_gen.remove(&v);
                        g.tombstones.insert(v, generation);
                    }
                }
                g.gen_times.push_back((generation, now));
                if g.gen_times.len() > GEN_HISTORY {
                    g.gen_times.pop_front();
                }
            }
            g.manifests.insert(dir, files);
        }
        if changed {
            tokio::task::block_in_place(|| g.state.save(&self.root))?;
        }
        g.last_refresh = Some(Instant::now());
        let point = g.state.point;
        let mut r = self.report();
        r.point = point;
        r.refused = r.refused.max(refused);
        Self::active_backlog(g, &mut r, now);
        Ok(point)
    }

    /// Stops attributing unscanned changes to the active epoch: called
    /// after the final scan when the member stops serving.
    pub async fn close_active(&self) {
        let mut g = self.inner.lock().await;
        g.state.close_active();
        if let Err(e) = tokio::task::block_in_place(|| g.state.save(&self.root)) {
            self.failed("cannot save the sync state", &e);
        }
    }

    fn active_backlog(g: &Inner, r: &mut SyncStatus, now: DateTime<Utc>) {
        let have = r.peer_generation.unwrap_or(0);
        let (mut files, mut bytes) = (0u64, 0u64);
        for (generation, size) in g.file_gen.values() {
            if *generation > have {
                files += 1;
                bytes += size;
            }
        }
        files += g.tombstones.values().filter(|generation| **generation > have).count() as u64;
        r.pending_files = files;
        r.pending_bytes = bytes;
        r.peer_lag_seconds = Some(if have >= g.state.point.generation {
            0.0
        } else {
            let since = g
                .gen_times
                .iter()
                .find(|(generation, _)| *generation > have)
                .map(|(_, t)| *t)
                .or(g.started)
                .unwrap_or(now);
            (now - since).num_milliseconds().max(0) as f64 / 1000.0
        });
    }

    /// Answers a standby's manifest request.
    pub async fn manifest(&self, dir: &str, have: Option<i64>, epoch: i64) -> Result<ManifestReply, SyncError> {
        if !self.configured(dir) {
            return Err(self.refused(Refusal::UnknownDir));
        }
        let stale = self.inner.lock().await.last_refresh.is_none_or(|t| t.elapsed() > Duration::from_secs(1));
        if stale {
            self.refresh(epoch).await?;
        }
        if let Some(h) = have {
            let mut r = self.report();
            r.peer_generation = Some(h);
            r.peer_seen_at = Some(Utc::now());
        }
        let g = self.inner.lock().await;
        {
            let mut r = self.report();
            Self::active_backlog(&g, &mut r, Utc::now());
        }
        let files = g.manifests.get(dir).cloned().unwrap_or_default();
        Ok(ManifestReply {
            dir: dir.to_string(),
            point: g.state.point,
            lineage: g.state.lineage.clone(),
            digest: manifest::digest(&files),
            files,
            changed_at: g.state.dirs.iter().map(|(k, d)| (k.clone(), d.as_of)).collect(),
        })
    }

    /// Opens a synced file for a peer.
    pub fn open_file(&self, dir: &str, rel: &str) -> Result<std::fs::File, SyncError> {
        if !self.configured(dir) {
            return Err(self.refused(Refusal::UnknownDir));
        }
        let v = path::volume_path(dir, rel).map_err(|r| self.refused(r))?;
        path::open_beneath(&self.root, &v).map_err(|e| match path::refusal_of(&e) {
            Some(r) => self.refused(r),
            None => SyncError::Io(e),
        })
    }

    // ---- standby side ----

    /// The generation this standby holds everywhere, as far as it knows
    /// how the source's directories changed.
    async fn have(&self) -> i64 {
        let g = self.inner.lock().await;
        let Some(source) = g.source_point else { return g.state.point.generation };
        self.spec
            .paths
            .iter()
            .map(|p| {
                let mine = g.state.dirs.get(&p.path).map(|d| d.as_of).unwrap_or_default();
                let changed = g.source_changed_at.get(&p.path).copied().unwrap_or_default();
                let current =
                    g.state.dirs.get(&p.path).is_some_and(|d| d.digest.is_some() && d.changed_while_standby.is_none());
                if current && mine.generation >= changed.generation { source.generation } else { mine.generation }
            })
            .min()
            .unwrap_or(source.generation)
    }

    /// Stops any pull in progress and keeps new ones from starting until
    /// [`Syncer::resume`]; returns once nothing writes to the volume.
    pub async fn stop_pulling(&self) {
        self.abort.store(true, Ordering::SeqCst);
        let _quiet = self.inner.lock().await;
    }

    /// Whether this member has never had an answer from an active member.
    pub async fn never_pulled(&self) -> bool {
        self.inner.lock().await.source_point.is_none()
    }

    pub fn resume(&self) {
        self.abort.store(false, Ordering::SeqCst);
    }

    pub fn set_order(&self, order: ResyncOrder) {
        info!(label = %order.label, dry_run = order.dry_run, "resync ordered");
        *self.order.lock().unwrap_or_else(|p| p.into_inner()) = Some(order);
        self.wake.notify_one();
    }

    /// One pull round from the active member at `source`: realtime
    /// directories, and batch ones when due (or everything with `all`).
    pub async fn pull_round(&self, source: &Target, all: bool) {
        let order = self.order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut diverged = BTreeMap::new();
        let mut complete = true;
        let mut pending = (0u64, 0u64);
        let mut resync_summary = plan::Summary::default();
        let mut resync_actions = Vec::new();
        let mut resync_warnings = Vec::new();
        for p in &self.spec.paths {
            if self.abort.load(Ordering::SeqCst) {
                return;
            }
            let due = {
                let g = self.inner.lock().await;
                let every = match p.class {
                    SyncClass::Realtime => self.spec.realtime_interval_seconds,
                    SyncClass::Batch => self.spec.batch_interval_seconds,
                };
                all || order.is_some()
                    || g.last_pull
                        .get(&p.path)
                        .is_none_or(|t| t.elapsed() + Duration::from_millis(500) >= Duration::from_secs(every as u64))
            };
            if !due {
                continue;
            }
            match self.pull_dir(source, &p.path, order.as_ref()).await {
                Ok(outcome) => {
                    if let Some(why) = outcome.diverged {
                        diverged.insert(p.path.clone(), why);
                    }
                    complete &= outcome.complete;
                    pending.0 += outcome.left.0;
                    pending.1 += outcome.left.1;
                    if let Some(plan) = outcome.resync {
                        add(&mut resync_summary, &plan.summary);
                        resync_warnings.extend(plan.warnings);
                        for a in plan.actions.iter().take(DRY_RUN_LIST.saturating_sub(resync_actions.len())) {
                            resync_actions.push(format!("{} {}", action_word(a), vpath(&p.path, a.path())));
                        }
                    }
                }
                Err(SyncError::Garbage(why)) => {
                    self.report().garbage += 1;
                    self.failed("ignored a malformed manifest", &why);
                    complete = false;
                }
                Err(e) => {
                    self.failed(&format!("sync of {} failed", p.path), &e);
                    complete = false;
                }
            }
        }
        let have = self.have().await;
        let g = self.inner.lock().await;
        let mut r = self.report();
        r.point = g.state.point;
        r.diverged = diverged.clone();
        r.changed_while_standby = g.state.split_brain_evidence().into_iter().collect();
        r.pending_files = pending.0;
        r.pending_bytes = pending.1;
        r.peer_generation = None;
        r.peer_lag_seconds = None;
        if complete && diverged.is_empty() && g.source_point.is_some_and(|s| have >= s.generation) {
            r.in_sync_at = Some(Utc::now());
        }
        drop(g);
        if let Some(order) = order {
            let mut report = r.resync.take().filter(|x| x.label == order.label && !x.done).unwrap_or(ResyncReport {
                label: order.label.clone(),
                dry_run: order.dry_run,
                done: false,
                started_at: Utc::now(),
                finished_at: None,
                summary: Default::default(),
                warnings: vec![],
                actions: vec![],
            });
            add(&mut report.summary, &resync_summary);
            report.warnings.extend(resync_warnings);
            report.warnings.dedup();
            if order.dry_run {
                report.actions = resync_actions;
            }
            // Done when nothing diverges any more (or, for a dry run, once planned).
            if order.dry_run || (complete && diverged.is_empty()) {
                report.done = true;
                report.finished_at = Some(Utc::now());
                *self.order.lock().unwrap_or_else(|p| p.into_inner()) = None;
                info!(label = %report.label, summary = ?report.summary, "resync finished");
            }
            r.resync = Some(report);
        }
    }

    async fn pull_dir(&self, source: &Target, dir: &str, order: Option<&ResyncOrder>) -> Result<Outcome, SyncError> {
        let have = self.have().await;
        let path = format!("/v1/sync/manifest?dir={}&have={have}", wire::encode(dir));
        let body = http::call_limited(source, Method::GET, &path, Duration::from_secs(60), wire::MAX_MANIFEST).await?;
        let reply = ManifestReply::decode(&body).map_err(|e| SyncError::Garbage(e.to_string()))?;
        if reply.dir != dir {
            return Err(SyncError::Garbage(format!("asked for {dir}, got {}", reply.dir)));
        }
        let mut g = self.inner.lock().await;
        let g = &mut *g;
        if self.abort.load(Ordering::SeqCst) {
            return Ok(Outcome { complete: false, ..Default::default() });
        }
        g.last_pull.insert(dir.to_string(), Instant::now());
        g.source_point = Some(reply.point);
        g.source_changed_at = reply.changed_at.clone();
        let now = Utc::now();
        let scanner = g.scanners.entry(dir.to_string()).or_default();
        let (local, _) = tokio::task::block_in_place(|| scanner.scan(&self.root, dir))?;
        let local_digest = (!local.is_empty()).then(|| manifest::digest(&local));
        if (local_digest.is_some() || g.state.dirs.get(dir).is_some_and(|d| d.digest.is_some()))
            && g.state.record_scan(dir, local_digest.as_deref().unwrap_or(EMPTY_DIGEST), None, now)
        {
            tokio::task::block_in_place(|| g.state.save(&self.root))?;
        }
        let verdict = g.state.verdict(dir, local_digest.as_deref(), reply.point, &reply.lineage);
        let rules = |o: &ResyncOrder| Rules {
            only_on_target: o.only_on_target,
            conflict: o.conflict,
            clocks_agree: o.clocks_agree,
        };
        let (plan, resync, diverged) = match (&verdict, order) {
            (Verdict::Follows, Some(o)) if o.full => (plan::resync(&reply.files, &local, &rules(o)), true, None),
            (Verdict::Follows, _) => (plan::mirror(&reply.files, &local), false, None),
            (Verdict::Diverged(why), Some(o)) => {
                (plan::resync(&reply.files, &local, &rules(o)), true, Some(why.clone()))
            }
            (Verdict::Diverged(why), None) => {
                return Ok(Outcome { diverged: Some(why.clone()), complete: false, ..Default::default() });
            }
        };
        if let Some(o) = order.filter(|o| o.dry_run) {
            let _ = o;
            return Ok(Outcome { diverged, complete: false, resync: Some(plan), ..Default::default() });
        }
        let label = order.map_or_else(|| "sync".to_string(), |o| o.label.clone());
        let (done, left) = self.execute(source, dir, &reply, &local, &plan, &label).await;
        // Record only a copy that now matches the source exactly.
        let scanner = g.scanners.entry(dir.to_string()).or_default();
        let (after, _) = tokio::task::block_in_place(|| scanner.scan(&self.root, dir))?;
        let digest = manifest::digest(&after);
        let matches = done && digest == reply.digest;
        if matches {
            g.state.record_copy(dir, &digest, reply.point, &reply.lineage, now);
            tokio::task::block_in_place(|| g.state.save(&self.root))?;
        }
        Ok(Outcome {
            diverged: if matches { None } else { diverged },
            complete: matches,
            left,
            resync: resync.then_some(plan),
        })
    }

    /// Carries out a plan on this (target) member; returns whether every
    /// action succeeded and what was left undone.
    async fn execute(
        &self,
        source: &Target,
        dir: &str,
        reply: &ManifestReply,
        local: &Files,
        plan: &Plan,
        label: &str,
    ) -> (bool, (u64, u64)) {
        let mut ok = true;
        let mut left = (0u64, 0u64);
        let record = |rel: &str, reason: &str| {
            let e =
                local.get(rel).cloned().unwrap_or(manifest::Entry { size: 0, mtime: 0, mode: 0, hash: String::new() });
            QuarantineRecord {
                path: vpath(dir, rel),
                reason: reason.into(),
                member: self.member.to_string(),
                size: e.size,
                hash: e.hash,
                mtime: e.mtime,
                at: Utc::now(),
            }
        };
        for a in &plan.actions {
            if self.abort.load(Ordering::SeqCst) {
                return (false, left);
            }
            let rel = a.path();
            let v = vpath(dir, rel);
            let result: Result<u64, String> = match a {
                Action::Copy { .. } | Action::Update { .. } => {
                    let quarantine = matches!(a, Action::Update { quarantine: true, .. });
                    let q = if quarantine {
                        tokio::task::block_in_place(|| {
                            store::quarantine(&self.root, label, &v, record(rel, "conflict"))
                        })
                    } else {
                        Ok(())
                    };
                    match q {
                        Err(e) => Err(e.to_string()),
                        Ok(()) => self.fetch(source, dir, rel, &reply.files[rel]).await,
                    }
                }
                Action::Delete { .. } => {
                    tokio::task::block_in_place(|| store::remove(&self.root, &v)).map(|_| 0).map_err(|e| e.to_string())
                }
                Action::Quarantine { .. } => tokio::task::block_in_place(|| {
                    store::quarantine(&self.root, label, &v, record(rel, "onlyOnTarget"))
                })
                .map(|_| 0)
                .map_err(|e| e.to_string()),
                Action::CopyBack { .. } | Action::UpdateSource { .. } => {
                    let e = &local[rel];
                    let q = u8::from(matches!(a, Action::UpdateSource { .. }));
                    let path = format!(
                        "/v1/sync/take?dir={}&path={}&size={}&hash={}&mtime={}&mode={}&quarantine={q}&label={}",
                        wire::encode(dir),
                        wire::encode(rel),
                        e.size,
                        e.hash,
                        e.mtime,
                        e.mode,
                        wire::encode(label)
                    );
                    http::call(source, Method::POST, &path, Duration::from_secs(3600))
                        .await
                        .map(|_| e.size)
                        .map_err(|e| e.to_string())
                }
            };
            match result {
                Ok(bytes) => {
                    if bytes > 0 || matches!(a, Action::Copy { .. } | Action::Update { .. }) {
                        let mut r = self.report();
                        r.copied_files += 1;
                        r.copied_bytes += bytes;
                    }
                }
                Err(e) => {
                    ok = false;
                    left.0 += 1;
                    left.1 += reply.files.get(rel).map_or(0, |e| e.size);
                    self.failed(&format!("{} {v}", action_word(a)), &e);
                }
            }
        }
        (ok, left)
    }

    /// Fetches one file from the peer into place.
    pub async fn fetch(&self, peer: &Target, dir: &str, rel: &str, entry: &manifest::Entry) -> Result<u64, String> {
        let v = path::volume_path(dir, rel).map_err(|r| r.to_string())?;
        let path = format!("/v1/sync/file?dir={}&path={}", wire::encode(dir), wire::encode(rel));
        let body = http::stream(peer, &path, Duration::from_secs(10), Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        let abort = &self.abort;
        let body = body.take_while(move |_| futures::future::ready(!abort.load(Ordering::SeqCst)));
        store::install(&self.root, &v, entry, Box::pin(body)).await.map_err(|e| e.to_string())
    }

    /// A peer asked this (active) member to take its version of a file
    /// (resync copy-back or newest-wins), quarantining its own first when
    /// `quarantine` is set.
    pub async fn take(
        &self,
        peer: &Target,
        dir: &str,
        rel: &str,
        entry: &manifest::Entry,
        quarantine: bool,
        label: &str,
    ) -> Result<u64, SyncError> {
        if !self.configured(dir) {
            return Err(self.refused(Refusal::UnknownDir));
        }
        let v = path::volume_path(dir, rel).map_err(|r| self.refused(r))?;
        if quarantine {
            let rec = QuarantineRecord {
                path: v.clone(),
                reason: "conflict".into(),
                member: self.member.to_string(),
                size: 0,
                hash: String::new(),
                mtime: 0,
                at: Utc::now(),
            };
            match tokio::task::block_in_place(|| store::quarantine(&self.root, label, &v, rec)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        self.fetch(peer, dir, rel, entry).await.map_err(|e| SyncError::Io(io::Error::other(e)))
    }
}

#[derive(Default)]
struct Outcome {
    diverged: Option<String>,
    complete: bool,
    left: (u64, u64),
    resync: Option<Plan>,
}

fn add(total: &mut plan::Summary, s: &plan::Summary) {
    total.copies += s.copies;
    total.updates += s.updates;
    total.quarantines += s.quarantines;
    total.deletions += s.deletions;
    total.copy_backs += s.copy_backs;
    total.conflicts += s.conflicts;
    total.bytes += s.bytes;
}

pub fn action_word(a: &Action) -> &'static str {
    match a {
        Action::Copy { .. } => "copy",
        Action::Update { quarantine: true, .. } => "update (quarantine old)",
        Action::Update { .. } => "update",
        Action::Quarantine { .. } => "quarantine",
        Action::Delete { .. } => "delete",
        Action::CopyBack { .. } => "copy-back",
        Action::UpdateSource { .. } => "update-source",
    }
}

/// Streams an open file in 64 KiB chunks.
pub fn file_stream(
    file: std::fs::File,
) -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Send + Sync + 'static {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::from_std(file);
    futures::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
