//! The standby's side of file sync: pull rounds, the ancestor check,
//! carrying out mirror and resync plans, and resync orders.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper::Method;
use tracing::info;

use super::{DRY_RUN_LIST, SyncError, Syncer, vpath};
use crate::api::SyncClass;
use crate::http::{self, Target};
use crate::proto::{ResyncOrder, ResyncReport};
use crate::sync::manifest::{self, Files};
use crate::sync::plan::{self, Action, Plan, Rules};
use crate::sync::state::{EMPTY_DIGEST, Verdict};
use crate::sync::store;
use crate::sync::wire::{self, ManifestReply};

impl Syncer {
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

    /// Takes a resync order, unless another one (another label) is not
    /// done yet: orders run one at a time, each to its end, and the one
    /// refused is ordered again by its Job once the first is done. (Replacing
    /// it left the first order's Job waiting for a report that never came
    /// until it failed: an automatic resync and a split-brain repair are
    /// often ordered seconds apart.)
    pub fn set_order(&self, order: ResyncOrder) -> Result<(), String> {
        let mut slot = self.order.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = slot.as_ref().filter(|o| o.label != order.label) {
            return Err(format!("resync {} is not done yet: order again once it is", running.label));
        }
        info!(label = %order.label, dry_run = order.dry_run, "resync ordered");
        *slot = Some(order);
        drop(slot);
        self.wake.notify_one();
        Ok(())
    }

    /// One pull round from the active member at `source`: realtime
    /// directories, and batch ones when due (or everything with `all`).
    pub async fn pull_round(&self, source: &Target, all: bool) {
        let order = self.order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let round_started = crate::clock::now();
        let errors_before = self.report().errors;
        // Directories an order left alone: changed while standby (split-brain
        // evidence), which only a split-brain repair or a request resolves.
        let mut held: Vec<String> = Vec::new();
        let mut diverged = BTreeMap::new();
        let mut complete = true;
        let mut pending = (0u64, 0u64);
        let mut resync_summary = plan::Summary::default();
        let mut resync_actions = Vec::new();
        let mut resync_warnings = Vec::new();
        // A directory whose pull failed was neither planned nor repaired.
        let mut failed = false;
        let mut pulled = false;
        for p in &self.spec.paths {
            if self.must_stop() {
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
            pulled = true;
            match self.pull_dir(source, &p.path, order.as_ref()).await {
                Ok(outcome) => {
                    if outcome.held {
                        held.push(p.path.clone());
                    }
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
                    failed = true;
                }
                Err(e) => {
                    self.failed(&format!("sync of {} failed", p.path), &e);
                    complete = false;
                    failed = true;
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
        if pulled {
            r.failing = if r.errors > errors_before { r.last_error.clone() } else { None };
        }
        if complete && diverged.is_empty() && g.source_point.is_some_and(|s| have >= s.generation) {
            r.in_sync_at = Some(crate::clock::now());
        }
        drop(g);
        if let Some(order) = order {
            let running = match r.resync.take() {
                Some(x) if x.label == order.label && !x.done => Some(x),
                Some(done) if done.done => {
                    r.earlier_resyncs.retain(|x| x.label != done.label);
                    r.earlier_resyncs.push(done);
                    let excess = r.earlier_resyncs.len().saturating_sub(crate::proto::EARLIER_RESYNCS);
                    r.earlier_resyncs.drain(..excess);
                    None
                }
                _ => None,
            };
            let mut report = running.unwrap_or(ResyncReport {
                label: order.label.clone(),
                dry_run: order.dry_run,
                done: false,
                started_at: round_started,
                finished_at: None,
                summary: Default::default(),
                warnings: vec![],
                actions: vec![],
            });
            if order.dry_run {
                // A plan is whole per round: a retried round replaces it.
                report.summary = resync_summary;
                report.warnings = resync_warnings;
                report.actions = resync_actions;
            } else {
                add(&mut report.summary, &resync_summary);
                report.warnings.extend(resync_warnings);
            }
            report.warnings.dedup();
            for dir in &held {
                let w = format!(
                    "left {dir} alone: it changed while this member was standby; the split-brain policy decides"
                );
                if !report.warnings.contains(&w) {
                    report.warnings.push(w);
                }
            }
            // Done when nothing diverges any more (or, for a dry run, once
            // planned), apart from what it must leave alone; never while a
            // directory could not be pulled (an empty plan would be a lie).
            let open = diverged.keys().filter(|d| !held.contains(d)).count();
            if !failed && (order.dry_run || (open == 0 && (complete || !held.is_empty()))) {
                report.done = true;
                report.finished_at = Some(crate::clock::now());
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
        if self.must_stop() {
            return Ok(Outcome { complete: false, ..Default::default() });
        }
        g.last_pull.insert(dir.to_string(), Instant::now());
        g.source_point = Some(reply.point);
        g.source_changed_at = reply.changed_at.clone();
        let now = crate::clock::now();
        let scanner = g.scanners.entry(dir.to_string()).or_default();
        let (local, _) = tokio::task::block_in_place(|| scanner.scan(&self.root, dir))?;
        let local_digest = (!local.is_empty()).then(|| manifest::digest(&local));
        let evidence_before = g.state.split_brain_evidence().len();
        let moved = (local_digest.is_some() || g.state.dirs.get(dir).is_some_and(|d| d.digest.is_some()))
            && g.state.record_scan(dir, local_digest.as_deref().unwrap_or(EMPTY_DIGEST), None, now);
        // New split-brain evidence is saved at once: it must survive a
        // restart of this agent (or of its pod, isolated by the policy).
        if moved || g.state.split_brain_evidence().len() > evidence_before {
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
            // A returning member's resync (not a full one: not a split-brain
            // repair or a request) does not touch changes made while standby.
            (Verdict::Diverged(why), Some(o))
                if !o.full && g.state.dirs.get(dir).is_some_and(|d| d.changed_while_standby.is_some()) =>
            {
                return Ok(Outcome { diverged: Some(why.clone()), complete: false, held: true, ..Default::default() });
            }
            (Verdict::Diverged(why), Some(o)) => {
                (plan::resync(&reply.files, &local, &rules(o)), true, Some(why.clone()))
            }
            (Verdict::Diverged(why), None) => {
                return Ok(Outcome { diverged: Some(why.clone()), complete: false, ..Default::default() });
            }
        };
        if order.is_some_and(|o| o.dry_run) {
            return Ok(Outcome { diverged, complete: false, resync: Some(plan), ..Default::default() });
        }
        // A pull that would fill the volume is refused whole, before any
        // of it is written: a full volume stops the member's own
        // bookkeeping (and, once it serves, its application), and half a
        // tree is no more use to a failover than the one it has.
        let need = plan::space_needed(&plan, &reply.files, &local, FETCH_CONCURRENCY);
        if need > 0 {
            let v = tokio::task::block_in_place(|| crate::agent::volume::measure(&self.root))?;
            let kept = crate::agent::volume::reserve(&v);
            let room = v.available_bytes.saturating_sub(kept);
            if need > room {
                return Err(SyncError::NoRoom { need, room, kept });
            }
        }
        let label = order.map_or_else(|| "sync".to_string(), |o| o.label.clone());
        let (done, left, newer, pulled) = self.execute(source, dir, &reply, &local, &plan, &label).await;
        // Record only a copy that now matches the source exactly: its
        // manifest, with the newer versions of files that changed since it
        // was taken and arrived whole.
        let expected = if newer.is_empty() {
            reply.digest.clone()
        } else {
            let mut files = reply.files.clone();
            files.extend(newer);
            manifest::digest(&files)
        };
        let scanner = g.scanners.entry(dir.to_string()).or_default();
        let (after, _) = tokio::task::block_in_place(|| scanner.scan(&self.root, dir))?;
        let digest = manifest::digest(&after);
        let matches = done && digest == expected;
        if matches {
            g.state.record_copy(dir, &digest, reply.point, &reply.lineage, now);
            tokio::task::block_in_place(|| g.state.save(&self.root))?;
        } else if digest == manifest::digest(&pulled) && g.state.record_pulled(dir, &digest) {
            // Part of the plan failed (a full volume, a file it may not
            // write): what the rest changed is this pull's doing, not the
            // member's own, and must not read as a split brain at the next
            // scan. Anything else that changed meanwhile does not match and
            // stays evidence.
            tokio::task::block_in_place(|| g.state.save(&self.root))?;
        }
        Ok(Outcome {
            diverged: if matches { None } else { diverged },
            complete: matches,
            held: false,
            left,
            resync: resync.then_some(plan),
        })
    }

    /// Carries out a plan on this (target) member; returns whether every
    /// action succeeded, what was left undone, the files copied in a newer
    /// version than the manifest's, and the tree `local` becomes with the
    /// actions that succeeded. Removals, quarantines and
    /// copy-backs go first, in plan order; then the copies, up to
    /// [`FETCH_CONCURRENCY`] at a time (each is its own connection, so many
    /// small files are not a round trip each in a row).
    async fn execute(
        &self,
        source: &Target,
        dir: &str,
        reply: &ManifestReply,
        local: &Files,
        plan: &Plan,
        label: &str,
    ) -> (bool, (u64, u64), Files, Files) {
        use futures::StreamExt;
        let member = self.member.to_string();
        // Owned actions: the copies' futures must not borrow the plan (a
        // stream of borrowed items does not satisfy tokio::spawn's bounds).
        let (copies, others): (Vec<Action>, Vec<Action>) =
            plan.actions.iter().cloned().partition(|a| matches!(a, Action::Copy { .. } | Action::Update { .. }));
        let mut results: Vec<(Action, Result<u64, String>)> = Vec::new();
        for a in others {
            if self.must_stop() {
                results.push((a, Err("stopped: the member is being promoted".into())));
                continue;
            }
            let v = vpath(dir, a.path());
            let result = match &a {
                Action::Delete { .. } => {
                    tokio::task::block_in_place(|| store::remove(&self.root, &v)).map(|_| 0).map_err(|e| e.to_string())
                }
                Action::Quarantine { .. } => {
                    tokio::task::block_in_place(|| store::quarantine(&self.root, label, &v, "onlyOnTarget", &member))
                        .map(|_| 0)
                        .map_err(|e| e.to_string())
                }
                Action::CopyBack { .. } | Action::UpdateSource { .. } => {
                    let rel = a.path();
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
                Action::Copy { .. } | Action::Update { .. } => unreachable!("partitioned above"),
            };
            results.push((a, result));
        }
        let newer = std::sync::Mutex::new(Files::new());
        let fetched: Vec<(Action, Result<u64, String>)> = futures::stream::iter(copies)
            .map(|a: Action| {
                let newer = &newer;
                async move {
                    if self.must_stop() {
                        return (a, Err("stopped: the member is being promoted".to_string()));
                    }
                    let rel = a.path().to_string();
                    let rel = rel.as_str();
                    let displace = matches!(a, Action::Update { quarantine: true, .. }).then_some(label);
                    let result = self.fetch(source, dir, rel, &reply.files[rel], displace).await.map(|got| {
                        let size = got.size;
                        if got != reply.files[rel] {
                            newer.lock().unwrap_or_else(|p| p.into_inner()).insert(rel.to_string(), got);
                        }
                        size
                    });
                    (a, result)
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        results.extend(fetched);
        let mut ok = true;
        let mut left = (0u64, 0u64);
        let newer = newer.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut pulled = local.clone();
        for (a, result) in results {
            match result {
                Ok(bytes) => {
                    let rel = a.path();
                    match a {
                        Action::Copy { .. } | Action::Update { .. } => {
                            let e = newer.get(rel).or_else(|| reply.files.get(rel));
                            pulled.extend(e.map(|e| (rel.to_string(), e.clone())));
                        }
                        Action::Delete { .. } | Action::Quarantine { .. } => {
                            pulled.remove(rel);
                        }
                        // The source's files changed, not this member's.
                        Action::CopyBack { .. } | Action::UpdateSource { .. } => {}
                    }
                    if bytes > 0 || matches!(a, Action::Copy { .. } | Action::Update { .. }) {
                        let mut r = self.report();
                        r.copied_files += 1;
                        r.copied_bytes += bytes;
                    }
                }
                Err(e) => {
                    ok = false;
                    left.0 += 1;
                    left.1 += reply.files.get(a.path()).map_or(0, |e| e.size);
                    self.failed(&format!("{} {}", action_word(&a), vpath(dir, a.path())), &e);
                }
            }
        }
        (ok, left, newer, pulled)
    }
}

/// Files fetched at once by one pull.
const FETCH_CONCURRENCY: usize = 8;

#[derive(Default)]
struct Outcome {
    diverged: Option<String>,
    /// Left alone by the order: split-brain evidence.
    held: bool,
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
