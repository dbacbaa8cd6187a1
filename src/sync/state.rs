//! Where a member's files stand in the pair's history, kept on its data
//! volume (`.hapair/sync.json`) so it survives restarts and pod
//! replacement.
//!
//! The active member numbers the states of its files: each scan that finds
//! a synced directory changed moves the **generation** on. Generations
//! continue across epochs; the **lineage** lists, for each earlier epoch,
//! the last point the current holder's files came from. A standby records,
//! per directory, the point it last copied. Before copying again it checks
//! that its files are an ancestor of the source's — never changed locally,
//! never moved past the point at which the source's lineage left its epoch.
//! Otherwise the directory has **diverged** and needs a resync, which keeps
//! what would otherwise be overwritten.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::path::STATE_DIR;

/// A point in the pair's history of files.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Point {
    pub epoch: i64,
    pub generation: i64,
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.generation)
    }
}

/// Longest lineage kept (epochs); older history means a full resync.
pub const MAX_LINEAGE: usize = 64;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DirState {
    /// Digest of the directory as last recorded (scanned as active, or
    /// copied as standby); `None`: never.
    pub digest: Option<String>,
    /// The point the directory's content belongs to: where it last changed
    /// (active) or the source's point when it was copied (standby).
    pub as_of: Point,
    /// When a standby last completed a copy of it.
    pub synced_at: Option<DateTime<Utc>>,
    /// Set when a scan found it changed while this member was not active
    /// and not copying: evidence of a split brain. Cleared by a resync.
    pub changed_while_standby: Option<DateTime<Utc>>,
    /// Whether the last record was made while active.
    #[serde(default)]
    pub recorded_active: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncState {
    /// The current point of this member's files (as active: the latest;
    /// as standby: the source's point it last copied).
    pub point: Point,
    /// Last point of each earlier epoch, oldest first.
    pub lineage: Vec<Point>,
    pub dirs: BTreeMap<String, DirState>,
}

/// Whether a standby's directory may simply follow the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An ancestor of the source: mirror it.
    Follows,
    /// Holds what the source does not; why.
    Diverged(String),
}

impl SyncState {
    pub fn file(root: &Path) -> PathBuf {
        root.join(STATE_DIR).join("sync.json")
    }

    /// Reads the state; a missing file is a member that never synced.
    pub fn load(root: &Path) -> io::Result<Self> {
        match std::fs::read(Self::file(root)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self, root: &Path) -> io::Result<()> {
        let dir = root.join(STATE_DIR);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("sync.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, Self::file(root))?;
        std::fs::File::open(&dir)?.sync_all()
    }

    /// Becoming active at `epoch`: the point held so far closes the
    /// previous epoch in the lineage, and what this member changed while it
    /// was not active is no longer evidence of a split brain: its files are
    /// now the ones the other member follows (and the other member's own
    /// unsynced changes go to quarantine when it is resynced).
    pub fn begin_epoch(&mut self, epoch: i64) {
        if self.point.epoch == epoch {
            return;
        }
        for d in self.dirs.values_mut() {
            d.changed_while_standby = None;
        }
        if self.point != Point::default() {
            self.lineage.retain(|p| p.epoch != self.point.epoch);
            self.lineage.push(self.point);
            if self.lineage.len() > MAX_LINEAGE {
                self.lineage.remove(0);
            }
        }
        self.point = Point { epoch, generation: self.point.generation };
    }

    /// Records a scan of `dir`. Active at `active_epoch`: a changed digest
    /// moves the generation on (returns true). Not active: a change is
    /// kept as evidence, the recorded digest stays (the directory then
    /// counts as diverged), unless the last record was made while active
    /// and never closed — changes its own epoch made but never scanned.
    pub fn record_scan(&mut self, dir: &str, digest: &str, active_epoch: Option<i64>, now: DateTime<Utc>) -> bool {
        let d = self.dirs.entry(dir.to_string()).or_default();
        if d.digest.as_deref() == Some(digest) {
            return false;
        }
        match active_epoch {
            Some(epoch) => {
                if self.point.epoch != epoch {
                    self.begin_epoch(epoch);
                }
                self.point.generation += 1;
                let d = self.dirs.entry(dir.to_string()).or_default();
                d.digest = Some(digest.to_string());
                d.as_of = self.point;
                d.recorded_active = true;
                d.changed_while_standby = None;
                true
            }
            None if d.recorded_active => {
                // Written while it was active but not scanned before it
                // stopped (killed): those changes belong to its epoch.
                self.point.generation += 1;
                let point = Point { epoch: d.as_of.epoch.max(self.point.epoch), generation: self.point.generation };
                let d = self.dirs.entry(dir.to_string()).or_default();
                d.digest = Some(digest.to_string());
                d.as_of = point;
                d.recorded_active = false;
                self.point = point;
                true
            }
            None => {
                if d.digest.is_some() && d.changed_while_standby.is_none() {
                    d.changed_while_standby = Some(now);
                }
                false
            }
        }
    }

    /// Stops attributing unscanned changes to an active epoch (called after
    /// the final scan when the member stops being active).
    pub fn close_active(&mut self) {
        for d in self.dirs.values_mut() {
            d.recorded_active = false;
        }
    }

    /// Whether the standby's `dir`, whose files now have `local_digest`
    /// (`None`: empty), may follow a source at `source` with `lineage`.
    pub fn verdict(&self, dir: &str, local_digest: Option<&str>, source: Point, lineage: &[Point]) -> Verdict {
        let Some(d) = self.dirs.get(dir).filter(|d| d.digest.is_some()) else {
            return match local_digest {
                None => Verdict::Follows,
                Some(_) => Verdict::Diverged(format!("{dir} holds files that never came from the active member")),
            };
        };
        if let Some(when) = d.changed_while_standby {
            return Verdict::Diverged(format!("{dir} changed at {when} while this member was not active"));
        }
        if local_digest.unwrap_or(EMPTY_DIGEST) != d.digest.as_deref().unwrap_or_default() {
            return Verdict::Diverged(format!("{dir} changed since it was last recorded"));
        }
        let mine = d.as_of;
        let last_of_epoch = if mine.epoch == source.epoch {
            Some(source)
        } else {
            lineage.iter().rev().find(|p| p.epoch == mine.epoch).copied()
        };
        match last_of_epoch {
            _ if mine == Point::default() => Verdict::Follows,
            Some(p) if mine.generation <= p.generation => Verdict::Follows,
            Some(p) => Verdict::Diverged(format!(
                "{dir} holds changes up to {mine} that the active member's files (from {p}) do not have"
            )),
            None => Verdict::Diverged(format!(
                "{dir} is from epoch {}, which the active member's history does not reach",
                mine.epoch
            )),
        }
    }

    /// A standby copied `dir` from a source at `source` with `lineage`.
    pub fn record_copy(&mut self, dir: &str, digest: &str, source: Point, lineage: &[Point], now: DateTime<Utc>) {
        self.lineage = lineage.to_vec();
        let d = self.dirs.entry(dir.to_string()).or_default();
        *d = DirState {
            digest: Some(digest.to_string()),
            as_of: source,
            synced_at: Some(now),
            changed_while_standby: None,
            recorded_active: false,
        };
        self.point = self.dirs.values().map(|d| d.as_of).min_by_key(|p| p.generation).unwrap_or(source);
    }

    /// A standby's pull that did part of its plan: the directory now holds
    /// `digest`, by this member's own copying, though not yet the source's
    /// point. Recorded so that the next scan does not take the copied files
    /// for changes made while standby; the point stays the last complete
    /// copy's. Returns whether anything changed.
    pub fn record_pulled(&mut self, dir: &str, digest: &str) -> bool {
        let d = self.dirs.entry(dir.to_string()).or_default();
        if d.digest.as_deref() == Some(digest) || d.changed_while_standby.is_some() {
            return false;
        }
        d.digest = Some(digest.to_string());
        true
    }

    /// The directories that hold changes made while not active.
    pub fn split_brain_evidence(&self) -> Vec<(String, DateTime<Utc>)> {
        self.dirs.iter().filter_map(|(k, d)| d.changed_while_standby.map(|t| (k.clone(), t))).collect()
    }
}

/// Digest of an empty tree.
pub const EMPTY_DIGEST: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(epoch: i64, generation: i64) -> Point {
        Point { epoch, generation }
    }

    #[test]
    fn the_empty_digest_is_the_digest_of_no_files() {
        assert_eq!(super::super::manifest::digest(&Default::default()), EMPTY_DIGEST);
    }

    #[test]
    fn what_a_partial_pull_copied_is_no_split_brain_but_a_change_of_its_own_still_is() {
        let now = Utc::now();
        let source = p(1, 5);
        let mut b = SyncState::default();
        // The first pull copies part of the tree and fails on the rest.
        assert!(b.record_pulled("up", "part1"));
        assert_eq!(b.verdict("up", Some("part1"), source, &[]), Verdict::Follows);
        assert!(!b.record_scan("up", "part1", None, now), "its own copy is no change");
        b.record_copy("up", "full", source, &[], now);
        // A later pull copies part of a newer generation: the point stays.
        assert!(b.record_pulled("up", "part2"));
        assert!(!b.record_scan("up", "part2", None, now));
        assert_eq!((b.point, b.split_brain_evidence().len()), (source, 0));
        assert_eq!(b.verdict("up", Some("part2"), p(1, 7), &[]), Verdict::Follows);
        // Something else changed it: evidence, which a pull does not clear.
        assert!(!b.record_scan("up", "mine", None, now), "evidence is no new generation");
        assert!(!b.record_pulled("up", "part3"));
        assert_eq!(b.split_brain_evidence().len(), 1);
    }

    #[test]
    fn a_follower_follows_and_a_former_active_with_unsynced_changes_diverges() {
        let now = Utc::now();
        // A is active at epoch 1 and changes "up" twice; B copies at 1.2.
        let mut a = SyncState::default();
        assert!(a.record_scan("up", "d1", Some(1), now));
        assert!(a.record_scan("up", "d2", Some(1), now));
        assert!(!a.record_scan("up", "d2", Some(1), now), "no change, no new generation");
        assert_eq!(a.point, p(1, 2));
        let mut b = SyncState::default();
        assert_eq!(b.verdict("up", None, a.point, &a.lineage), Verdict::Follows);
        b.record_copy("up", "d2", a.point, &a.lineage, now);
        // A writes once more (1.3) and dies before B copies it.
        a.record_scan("up", "d3", Some(1), now);
        // B becomes active at epoch 2 and changes "up".
        b.begin_epoch(2);
        b.record_scan("up", "d4", Some(2), now);
        assert_eq!((b.point, b.lineage.clone()), (p(2, 3), vec![p(1, 2)]));
        // A returns: its 1.3 is past B's copy of epoch 1 → diverged.
        a.close_active();
        match a.verdict("up", Some("d3"), b.point, &b.lineage) {
            Verdict::Diverged(why) => assert!(why.contains("1.3"), "{why}"),
            v => panic!("{v:?}"),
        }
        // Had A died right after B's copy, it would simply follow.
        let mut a2 = SyncState::default();
        a2.record_scan("up", "d1", Some(1), now);
        a2.record_scan("up", "d2", Some(1), now);
        assert_eq!(a2.verdict("up", Some("d2"), b.point, &b.lineage), Verdict::Follows);
    }

    #[test]
    fn changes_while_standby_are_evidence_and_unscanned_active_changes_are_not() {
        let now = Utc::now();
        let mut s = SyncState::default();
        s.record_copy("up", "d1", p(1, 1), &[], now);
        assert!(!s.record_scan("up", "dx", None, now));
        assert_eq!(s.split_brain_evidence().len(), 1);
        assert!(matches!(s.verdict("up", Some("dx"), p(1, 1), &[]), Verdict::Diverged(_)));
        // Active at 2, written, killed before its final scan: on return the
        // change is its own epoch's, not a split brain.
        let mut a = SyncState::default();
        a.record_scan("up", "d1", Some(2), now);
        assert!(a.record_scan("up", "d2", None, now));
        assert!(a.split_brain_evidence().is_empty());
        assert_eq!(a.dirs["up"].as_of, p(2, 2));
        // The standby with evidence is made active (a split brain resolved
        // by keeping its side): its files become the epoch's, no evidence.
        assert!(s.record_scan("up", "dx", Some(2), now));
        assert!(s.split_brain_evidence().is_empty());
        assert_eq!((s.point, s.lineage.clone()), (p(2, 2), vec![p(1, 1)]));
    }

    #[test]
    fn files_that_never_came_from_the_active_diverge_and_state_survives_a_restart() {
        let s = SyncState::default();
        assert!(matches!(s.verdict("up", Some("x"), p(1, 1), &[]), Verdict::Diverged(_)));
        let root = crate::sync::path::tests::tempdir();
        let mut s = SyncState::default();
        s.record_scan("up", "d1", Some(3), Utc::now());
        s.save(&root).unwrap();
        assert_eq!(SyncState::load(&root).unwrap(), s);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
