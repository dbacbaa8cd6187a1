//! Keeping the quarantine bounded without losing anything silently.
//!
//! Every resync moves the losing side's files to
//! `.hapair/quarantine/<label>/`; left alone, a pair that fails over often
//! fills its volume with them and takes the application down. So each
//! member's agent prunes its own quarantine: whole labels (one resync each)
//! once their newest file is older than `retentionDays`, and — when
//! `maxBytes` is set — the oldest labels until the rest fits, never the
//! newest label (the latest repair stays inspectable whatever its size).
//!
//! Nothing goes without a trace: before a label is removed, a line saying
//! what it held (files, bytes, newest file, why) is appended and fsynced to
//! `.hapair/quarantine-pruned.jsonl`, next to (not inside) the quarantine;
//! the agent reports it, and the operator tells it as a `QuarantinePruned`
//! Event on the pair.

use std::io::{self, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::{quarantine_records, quarantine_root};

/// One label of the quarantine, as scanned.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub name: String,
    pub files: u64,
    pub bytes: u64,
    /// When its newest file was quarantined (the directory's time when its
    /// manifest says nothing).
    pub newest: DateTime<Utc>,
}

/// A label removed, as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    pub label: String,
    pub files: u64,
    pub bytes: u64,
    pub newest: DateTime<Utc>,
    pub at: DateTime<Utc>,
    /// `retention` or `maxBytes`.
    pub why: String,
}

/// What the quarantine holds now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub labels: u64,
    pub files: u64,
    pub bytes: u64,
}

/// The limits: `spec.fileSync.quarantine`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub retention: chrono::Duration,
    pub max_bytes: Option<u64>,
}

/// Which labels to remove and why, oldest first. `busy` is a label a resync
/// is writing now: never removed.
pub fn plan(labels: &[Label], limits: Limits, now: DateTime<Utc>, busy: Option<&str>) -> Vec<(String, &'static str)> {
    let mut by_age: Vec<&Label> = labels.iter().collect();
    by_age.sort_by(|a, b| a.newest.cmp(&b.newest).then(a.name.cmp(&b.name)));
    let newest = by_age.last().map(|l| l.name.clone());
    let mut out = Vec::new();
    let mut total: u64 = labels.iter().map(|l| l.bytes).sum();
    for l in &by_age {
        if busy == Some(l.name.as_str()) {
            continue;
        }
        let expired = now - l.newest >= limits.retention;
        let over = newest.as_deref() != Some(l.name.as_str()) && limits.max_bytes.is_some_and(|max| total > max);
        let why = match (expired, over) {
            (true, _) => "retention",
            (false, true) => "maxBytes",
            (false, false) => continue,
        };
        total = total.saturating_sub(l.bytes);
        out.push((l.name.clone(), why));
    }
    out
}

/// Reads the quarantine's labels, each from its manifest (files, bytes, the
/// newest record), and remembers each label by its manifest's length and
/// time so that a pass over an unchanged quarantine reads no manifest again.
/// A label without a manifest is measured by walking its files.
#[derive(Default)]
pub struct Scanner {
    seen: std::collections::HashMap<String, (u64, std::time::SystemTime, Label)>,
}

impl Scanner {
    /// The labels under `root`'s quarantine.
    pub fn scan(&mut self, root: &Path) -> io::Result<Vec<Label>> {
        let dir = quarantine_root(root);
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r?,
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if !e.file_type()?.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let manifest = std::fs::metadata(e.path().join("MANIFEST.jsonl")).ok();
            let key = manifest.as_ref().and_then(|m| Some((m.len(), m.modified().ok()?)));
            if let (Some(k), Some((l, t, label))) = (key, self.seen.get(&name))
                && k == (*l, *t)
            {
                out.push(label.clone());
                continue;
            }
            let records = quarantine_records(root, &name).unwrap_or_default();
            let label = match records.iter().map(|r| r.at).max() {
                Some(newest) => Label {
                    name: name.clone(),
                    files: records.len() as u64,
                    bytes: records.iter().map(|r| r.size).sum(),
                    newest,
                },
                None => {
                    let (files, bytes) = tree_size(&e.path().join("files"))?;
                    Label { name: name.clone(), files, bytes, newest: DateTime::<Utc>::from(e.metadata()?.modified()?) }
                }
            };
            if let Some((len, at)) = key {
                self.seen.insert(name, (len, at, label.clone()));
            }
            out.push(label);
        }
        self.seen.retain(|n, _| out.iter().any(|l| &l.name == n));
        Ok(out)
    }
}

fn tree_size(dir: &Path) -> io::Result<(u64, u64)> {
    let mut stack = vec![dir.to_path_buf()];
    let (mut files, mut bytes) = (0, 0);
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r?,
        };
        for e in entries.flatten() {
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files += 1;
                bytes += e.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}

/// Where the record of removed labels is kept.
pub fn pruned_log(root: &Path) -> std::path::PathBuf {
    root.join(super::path::STATE_DIR).join("quarantine-pruned.jsonl")
}

/// What one pruning pass did.
#[derive(Debug)]
pub struct Outcome {
    pub removed: Vec<Pruned>,
    /// What is left.
    pub usage: Usage,
    /// Labels that could not be removed, and why.
    pub failed: Vec<(String, io::Error)>,
}

/// Prunes `root`'s quarantine by `limits`: records each label, then removes
/// it. Returns what was removed, what is left, and the labels that could
/// not be removed (each is tried again next time; the others go on).
pub fn prune(
    root: &Path,
    limits: Limits,
    now: DateTime<Utc>,
    busy: Option<&str>,
    scanner: &mut Scanner,
) -> io::Result<Outcome> {
    let labels = scanner.scan(root)?;
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for (name, why) in plan(&labels, limits, now, busy) {
        let Some(l) = labels.iter().find(|l| l.name == name) else { continue };
        let p = Pruned { label: name, files: l.files, bytes: l.bytes, newest: l.newest, at: now, why: why.into() };
        match remove_recorded(root, &p) {
            Ok(()) => removed.push(p),
            Err(e) => failed.push((p.label, e)),
        }
    }
    let left = labels.iter().filter(|l| !removed.iter().any(|p| p.label == l.name));
    let usage = left.fold(Usage::default(), |u, l| Usage {
        labels: u.labels + 1,
        files: u.files + l.files,
        bytes: u.bytes + l.bytes,
    });
    Ok(Outcome { removed, usage, failed })
}

/// The record first (appended, fsynced), then the label.
fn remove_recorded(root: &Path, p: &Pruned) -> io::Result<()> {
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(pruned_log(root))?;
    let mut line = serde_json::to_vec(p).map_err(io::Error::other)?;
    line.push(b'\n');
    log.write_all(&line)?;
    log.sync_all()?;
    std::fs::remove_dir_all(quarantine_root(root).join(&p.label))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::path::tests::tempdir;

    fn label(name: &str, days_ago: i64, bytes: u64, now: DateTime<Utc>) -> Label {
        Label { name: name.into(), files: 1, bytes, newest: now - chrono::Duration::days(days_ago) }
    }

    #[test]
    fn labels_go_past_their_retention_or_oldest_first_past_the_size_but_never_the_newest_or_a_busy_one() {
        let now = Utc::now();
        let limits = |max: Option<u64>| Limits { retention: chrono::Duration::days(30), max_bytes: max };
        let labels =
            vec![label("a", 40, 10, now), label("b", 20, 10, now), label("c", 10, 10, now), label("d", 1, 50, now)];
        assert_eq!(plan(&labels, limits(None), now, None), [("a".to_string(), "retention")]);
        // 80 bytes, at most 60: after a (retention) 70 is left, b goes too.
        assert_eq!(
            plan(&labels, limits(Some(60)), now, None),
            [("a".to_string(), "retention"), ("b".to_string(), "maxBytes")]
        );
        // Even a limit the newest label alone exceeds keeps the newest.
        let all_but_newest = plan(&labels, limits(Some(1)), now, None);
        assert_eq!(all_but_newest.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        // A label a resync is writing is left alone.
        assert!(plan(&labels, limits(Some(1)), now, Some("b")).iter().all(|(n, _)| n != "b"));
        // The newest label past its retention goes too: nothing is newer.
        assert_eq!(plan(&[label("old", 31, 5, now)], limits(None), now, None), [("old".to_string(), "retention")]);
        assert!(plan(&[], limits(Some(0)), now, None).is_empty());
    }

    #[test]
    fn pruning_records_each_label_before_it_goes_and_reports_what_is_left() {
        let root = tempdir();
        let now = Utc::now();
        for (name, days) in [("resync-1", 45), ("resync-2", 2)] {
            let files = quarantine_root(&root).join(name).join("files/sub");
            std::fs::create_dir_all(&files).unwrap();
            std::fs::write(files.join("f.txt"), b"12345").unwrap();
            let at = now - chrono::Duration::days(days);
            let rec = serde_json::json!({"path": "sub/f.txt", "reason": "onlyOnTarget", "member": "primary",
                                          "size": 5, "hash": "x", "mtime": 0, "at": at});
            std::fs::write(quarantine_root(&root).join(name).join("MANIFEST.jsonl"), format!("{rec}\n")).unwrap();
        }
        let limits = Limits { retention: chrono::Duration::days(30), max_bytes: None };
        let mut scanner = Scanner::default();
        let Outcome { removed, usage, failed } = prune(&root, limits, now, None, &mut scanner).unwrap();
        assert!(failed.is_empty());
        assert_eq!(
            removed.iter().map(|p| (p.label.as_str(), p.files, p.bytes)).collect::<Vec<_>>(),
            [("resync-1", 1, 5)]
        );
        assert!(!quarantine_root(&root).join("resync-1").exists());
        assert!(quarantine_root(&root).join("resync-2/files/sub/f.txt").exists());
        assert_eq!(usage, Usage { labels: 1, files: 1, bytes: 5 });
        let log = std::fs::read_to_string(pruned_log(&root)).unwrap();
        let p: Pruned = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        assert_eq!((p.label.as_str(), p.why.as_str()), ("resync-1", "retention"));
        // Again: nothing more to do.
        assert!(prune(&root, limits, now, None, &mut scanner).unwrap().removed.is_empty());
    }
}
