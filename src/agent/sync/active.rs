//! The active member's side of file sync: scanning, generations, the
//! backlog its standby has, and serving manifests and files.

use std::io;
use std::time::{Duration, Instant};

use hyper::body::{Bytes, Frame};

use super::{GEN_HISTORY, Inner, SyncError, Syncer, vpath};
use crate::http::Target;
use crate::proto::SyncStatus;
use crate::sync::manifest;
use crate::sync::path::{self, Refusal};
use crate::sync::state::Point;
use crate::sync::wire::{self, ManifestReply};

/// How long the volume of a member that stopped serving must stay
/// unchanged before its final generation is taken.
pub const QUIET: std::time::Duration = std::time::Duration::from_millis(200);
/// The longest a drain waits for the volume to be quiet (within the
/// operator's 2 s call).
pub const SETTLE_MAX: std::time::Duration = std::time::Duration::from_millis(1500);

impl Syncer {
    /// Scans every synced directory as the active member at `epoch`.
    pub async fn refresh(&self, epoch: i64) -> io::Result<Point> {
        let mut g = self.inner.lock().await;
        let g = &mut *g;
        let now = crate::clock::now();
        let mut changed = false;
        let mut skipped = 0;
        for p in &self.spec.paths {
            let dir = p.path.clone();
            let scanner = g.scanners.entry(dir.clone()).or_default();
            let (files, passed_over) = tokio::task::block_in_place(|| scanner.scan(&self.root, &dir))?;
            skipped += passed_over.total();
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
                g.gen_times.push_back((generation, Instant::now(), now));
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
        r.skipped = skipped;
        r.last_change_at = g.gen_times.back().map(|(_, _, t)| *t);
        // As active its files are the reference: nothing diverges, and what
        // it changed while standby is no longer evidence (see begin_epoch).
        r.diverged.clear();
        r.changed_while_standby = g.state.split_brain_evidence().into_iter().collect();
        Self::active_backlog(g, &mut r, Instant::now());
        Ok(point)
    }

    /// The final generation of a member that stopped serving: writes the
    /// application began before its role file changed may still land, so
    /// the volume is scanned every [`QUIET`] until a scan finds nothing new
    /// (at most [`SETTLE_MAX`]: an application that never stops writing
    /// leaves what it writes after that as divergence, which a resync
    /// quarantines). One fixed pause was not enough on a loaded node: a
    /// write acknowledged after it was missing from the generation the
    /// standby was waited for, and lost at the switchover.
    pub async fn settle(&self, epoch: i64) -> io::Result<Point> {
        let start = Instant::now();
        tokio::time::sleep(QUIET).await;
        let mut last = self.refresh(epoch).await?;
        while start.elapsed() < SETTLE_MAX {
            tokio::time::sleep(QUIET).await;
            let now = self.refresh(epoch).await?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
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

    /// What the standby still lacks. Its lag is a duration, measured on the
    /// monotonic clock: a step of this member's wall clock must not make a
    /// synced standby look a minute behind (which would hold a failover
    /// back) nor a lagging one look current (which would hide a loss).
    fn active_backlog(g: &Inner, r: &mut SyncStatus, now: Instant) {
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
        // The first change the standby lacks, when this agent saw it. One
        // made before the agent started (a restart, both members down) has
        // no time here: the lag is then unknown, not "since the start" —
        // that would call a standby missing a whole outage's writes in
        // sync for the first seconds after the active came back.
        r.peer_lag_seconds = if have >= g.state.point.generation {
            Some(0.0)
        } else {
            g.gen_times
                .iter()
                .find(|(generation, _, _)| *generation == have + 1)
                .map(|(_, t, _)| now.saturating_duration_since(*t).as_millis() as f64 / 1000.0)
        };
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
            r.peer_seen_at = Some(crate::clock::now());
        }
        let g = self.inner.lock().await;
        {
            let mut r = self.report();
            Self::active_backlog(&g, &mut r, Instant::now());
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
        path::volume_path(dir, rel).map_err(|r| self.refused(r))?;
        self.fetch(peer, dir, rel, entry, quarantine.then_some(label))
            .await
            .map(|e| e.size)
            .map_err(|e| SyncError::Io(io::Error::other(e)))
    }
}

/// A file being served: its size when opened (never more is sent) and its
/// bytes in 64 KiB chunks, ending with trailers that name the exact version
/// sent when the file's size, mtime and ctime did not move while it was
/// read. A file that changes mid-read gets no trailers; the copy must then
/// match the manifest, or it is refused and tried again next round.
fn file_stream(
    file: std::fs::File,
) -> io::Result<(u64, impl futures::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send + Sync + 'static)> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let meta = file.metadata()?;
    let opened = Stamp::of(&meta);
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
    struct Reading {
        file: tokio::fs::File,
        left: u64,
        sent: u64,
        hash: sha2::Sha256,
    }
    let start =
        Reading { file: tokio::fs::File::from_std(file), left: opened.size, sent: 0, hash: sha2::Sha256::new() };
    let frames = futures::stream::unfold(Some(start), move |r| async move {
        let mut r = r?;
        if r.left > 0 {
            let mut buf = vec![0u8; r.left.min(64 * 1024) as usize];
            match r.file.read(&mut buf).await {
                Ok(0) => r.left = 0,
                Ok(n) => {
                    buf.truncate(n);
                    r.hash.update(&buf);
                    r.left -= n as u64;
                    r.sent += n as u64;
                    return Some((Ok(Frame::data(Bytes::from(buf))), Some(r)));
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
        let now = r.file.metadata().await.ok().map(|m| Stamp::of(&m));
        if now != Some(opened) || r.sent != opened.size {
            return None;
        }
        let entry =
            manifest::Entry { size: r.sent, mtime: opened.mtime, mode, hash: manifest::hex(&r.hash.finalize()) };
        Some((Ok(Frame::trailers(wire::sent_trailers(&entry))), None))
    });
    Ok((opened.size, frames))
}

/// The answer to `GET /v1/sync/file`: the size header, the bytes, and the
/// trailers (announced in `Trailer`, as HTTP/1.1 requires).
pub fn file_reply(file: std::fs::File) -> io::Result<crate::http::Reply> {
    let (size, frames) = file_stream(file)?;
    let mut r = crate::http::frames_reply(frames);
    let h = r.headers_mut();
    h.insert(wire::SIZE_HEADER, size.into());
    let names = [wire::SENT_SIZE, wire::SENT_HASH, wire::SENT_MTIME, wire::SENT_MODE].join(", ");
    h.insert(hyper::header::TRAILER, hyper::header::HeaderValue::from_str(&names).map_err(io::Error::other)?);
    Ok(r)
}

/// What tells a file's versions apart without reading it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    size: u64,
    mtime: i64,
    ctime: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: m.size(),
            mtime: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}
