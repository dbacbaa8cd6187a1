//! What a sync or a resync does, as a pure function of two manifests.
//!
//! - **Mirror** (continuous sync of a standby that holds nothing of its
//!   own): the target becomes a copy of the source; files the source no
//!   longer has are deleted.
//! - **Resync** (a member whose files may hold changes the source lacks):
//!   only on the source → copied; only on the target → per
//!   `resync.onlyOnTarget` (quarantined by default); on both and different
//!   → per `resync.conflict`, and the losing version is quarantined.
//!   `NewestWins` compares modification times in UTC and is refused —
//!   falling back to `SourceWins` with a warning — while the clocks are
//!   skewed beyond the limit, because an mtime from a skewed clock says
//!   nothing about which write came last.

use serde::{Deserialize, Serialize};

use super::manifest::{Entry, Files};
use crate::api::{ConflictRule, OnlyOnTarget};

/// One step of a plan, for one relative path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Fetch the source's file to the target (new there).
    Copy { path: String },
    /// Replace the target's differing file with the source's; the target's
    /// version is quarantined first when `quarantine` is set.
    Update { path: String, quarantine: bool },
    /// Move the target-only file into the target's quarantine.
    Quarantine { path: String },
    /// Delete the target-only file.
    Delete { path: String },
    /// Copy the target-only file to the source.
    CopyBack { path: String },
    /// The target's differing version is newer (`NewestWins`): it goes to
    /// the source, whose version is quarantined there.
    UpdateSource { path: String },
}

impl Action {
    pub fn path(&self) -> &str {
        match self {
            Action::Copy { path }
            | Action::Update { path, .. }
            | Action::Quarantine { path }
            | Action::Delete { path }
            | Action::CopyBack { path }
            | Action::UpdateSource { path } => path,
        }
    }
    /// Whether it changes the source (the active member).
    pub fn writes_source(&self) -> bool {
        matches!(self, Action::CopyBack { .. } | Action::UpdateSource { .. })
    }
}

/// Counts of a plan, as shown in status and printed by a dry run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub copies: u64,
    pub updates: u64,
    pub quarantines: u64,
    pub deletions: u64,
    pub copy_backs: u64,
    pub conflicts: u64,
    /// Bytes to transfer, both ways.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub summary: Summary,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// How a resync treats what differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub only_on_target: OnlyOnTarget,
    pub conflict: ConflictRule,
    /// Whether the members' clocks agree within the limit (NewestWins is
    /// refused otherwise).
    pub clocks_agree: bool,
}

/// The continuous-sync plan: make the target a copy of the source.
pub fn mirror(source: &Files, target: &Files) -> Plan {
    let mut plan = Plan::default();
    for (p, s) in source {
        match target.get(p) {
            None => push(&mut plan, Action::Copy { path: p.clone() }, s.size),
            Some(t) if !t.same_content(s) => {
                push(&mut plan, Action::Update { path: p.clone(), quarantine: false }, s.size)
            }
            Some(_) => {}
        }
    }
    for p in target.keys().filter(|p| !source.contains_key(*p)) {
        push(&mut plan, Action::Delete { path: p.clone() }, 0);
    }
    plan
}

/// The resync plan from `source` (the active member) to `target`.
pub fn resync(source: &Files, target: &Files, rules: &Rules) -> Plan {
    let mut plan = Plan::default();
    let newest = match (rules.conflict, rules.clocks_agree) {
        (ConflictRule::NewestWins, true) => true,
        (ConflictRule::NewestWins, false) => {
            plan.warnings.push(
                "NewestWins refused: the members' clocks differ by more than maxClockSkewSeconds; \
                 conflicts resolved as SourceWins"
                    .into(),
            );
            false
        }
        (ConflictRule::SourceWins, _) => false,
    };
    for (p, s) in source {
        match target.get(p) {
            None => push(&mut plan, Action::Copy { path: p.clone() }, s.size),
            Some(t) if t.same_content(s) => {}
            Some(t) => {
                plan.summary.conflicts += 1;
                if newest && t.mtime > s.mtime {
                    push(&mut plan, Action::UpdateSource { path: p.clone() }, t.size);
                } else {
                    push(&mut plan, Action::Update { path: p.clone(), quarantine: true }, s.size);
                }
            }
        }
    }
    for (p, t) in target.iter().filter(|(p, _)| !source.contains_key(*p)) {
        let a = match rules.only_on_target {
            OnlyOnTarget::Quarantine => Action::Quarantine { path: p.clone() },
            OnlyOnTarget::Delete => Action::Delete { path: p.clone() },
            OnlyOnTarget::CopyBack => Action::CopyBack { path: p.clone() },
        };
        let bytes = if matches!(a, Action::CopyBack { .. }) { t.size } else { 0 };
        push(&mut plan, a, bytes);
    }
    plan
}

fn push(plan: &mut Plan, a: Action, bytes: u64) {
    let s = &mut plan.summary;
    match &a {
        Action::Copy { .. } => s.copies += 1,
        Action::Update { quarantine, .. } => {
            s.updates += 1;
            s.quarantines += u64::from(*quarantine);
        }
        Action::Quarantine { .. } => s.quarantines += 1,
        Action::Delete { .. } => s.deletions += 1,
        Action::CopyBack { .. } => s.copy_backs += 1,
        Action::UpdateSource { .. } => {
            s.updates += 1;
            s.quarantines += 1;
        }
    }
    s.bytes += bytes;
    plan.actions.push(a);
}

/// Applies a plan to in-memory trees, as the executor does to files:
/// returns the new source, the new target and the quarantined versions
/// (side, path, entry). The model the property tests check the planner
/// against.
pub fn apply_model(source: &Files, target: &Files, plan: &Plan) -> (Files, Files, Vec<(Side, String, Entry)>) {
    let (mut src, mut tgt, mut quarantine) = (source.clone(), target.clone(), Vec::new());
    for a in &plan.actions {
        match a {
            Action::Copy { path } => {
                tgt.insert(path.clone(), source[path].clone());
            }
            Action::Update { path, quarantine: q } => {
                let old = tgt.insert(path.clone(), source[path].clone());
                if *q && let Some(old) = old {
                    quarantine.push((Side::Target, path.clone(), old));
                }
            }
            Action::Quarantine { path } => {
                if let Some(old) = tgt.remove(path) {
                    quarantine.push((Side::Target, path.clone(), old));
                }
            }
            Action::Delete { path } => {
                tgt.remove(path);
            }
            Action::CopyBack { path } => {
                src.insert(path.clone(), target[path].clone());
            }
            Action::UpdateSource { path } => {
                let newer = target[path].clone();
                if let Some(old) = src.insert(path.clone(), newer) {
                    quarantine.push((Side::Source, path.clone(), old));
                }
            }
        }
    }
    (src, tgt, quarantine)
}

/// Free space the target's volume needs to carry out `plan`: what it will
/// hold more once done (copies, and the new versions of updated files less
/// the old versions they replace; a quarantined old version stays on the
/// volume, a deleted file frees its size), plus the old versions still
/// there while up to `in_flight` updates are being written beside them.
/// A standby refuses a pull this does not fit rather than fill its volume.
pub fn space_needed(plan: &Plan, source: &Files, target: &Files, in_flight: usize) -> u64 {
    let size = |f: &Files, p: &str| i128::from(f.get(p).map_or(0, |e| e.size));
    let mut net: i128 = 0;
    let mut beside: Vec<u64> = Vec::new();
    for a in &plan.actions {
        match a {
            Action::Copy { path } => net += size(source, path),
            Action::Update { path, quarantine } => {
                net += size(source, path);
                if !quarantine {
                    net -= size(target, path);
                    beside.push(target.get(path).map_or(0, |e| e.size));
                }
            }
            Action::Delete { path } => net -= size(target, path),
            Action::Quarantine { .. } | Action::CopyBack { .. } | Action::UpdateSource { .. } => {}
        }
    }
    beside.sort_unstable_by(|a, b| b.cmp(a));
    let peak: i128 = beside.iter().take(in_flight).map(|b| i128::from(*b)).sum();
    (net + peak).clamp(0, i128::from(u64::MAX)) as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn e(hash: &str, mtime: i64) -> Entry {
        Entry { size: hash.len() as u64, mtime, mode: 0o644, hash: hash.into() }
    }
    fn files(list: &[(&str, Entry)]) -> Files {
        list.iter().map(|(p, e)| (p.to_string(), e.clone())).collect()
    }
    pub(super) fn content(f: &Files) -> BTreeMap<String, (u64, String)> {
        f.iter().map(|(p, e)| (p.clone(), (e.size, e.hash.clone()))).collect()
    }
    fn rules(only: OnlyOnTarget, conflict: ConflictRule, clocks_agree: bool) -> Rules {
        Rules { only_on_target: only, conflict, clocks_agree }
    }

    /// only-on-source, only-on-target, both-equal, both-different (target
    /// newer) and both-different (source newer), in one pair of trees.
    fn trees() -> (Files, Files) {
        let source = files(&[("s", e("S", 1)), ("eq", e("E", 1)), ("tn", e("A", 1)), ("sn", e("B", 9))]);
        let target = files(&[("t", e("T", 1)), ("eq", e("E", 5)), ("tn", e("a", 9)), ("sn", e("b", 1))]);
        (source, target)
    }

    #[test]
    fn mirror_copies_updates_and_deletes_without_quarantine() {
        let (s, t) = trees();
        let p = mirror(&s, &t);
        assert_eq!(
            p.actions,
            vec![
                Action::Copy { path: "s".into() },
                Action::Update { path: "sn".into(), quarantine: false },
                Action::Update { path: "tn".into(), quarantine: false },
                Action::Delete { path: "t".into() },
            ]
        );
        assert_eq!(content(&apply_model(&s, &t, &p).1), content(&s));
        assert!(mirror(&s, &s).is_empty());
    }

    #[test]
    fn every_rule_for_every_case() {
        use ConflictRule::*;
        use OnlyOnTarget::*;
        let (s, t) = trees();
        let only_target = |o| match o {
            Quarantine => Action::Quarantine { path: "t".into() },
            Delete => Action::Delete { path: "t".into() },
            CopyBack => Action::CopyBack { path: "t".into() },
        };
        for only in [Quarantine, Delete, CopyBack] {
            for (conflict, agree) in [(SourceWins, true), (SourceWins, false), (NewestWins, true), (NewestWins, false)]
            {
                let p = resync(&s, &t, &rules(only, conflict, agree));
                let newest = conflict == NewestWins && agree;
                let tn = if newest {
                    Action::UpdateSource { path: "tn".into() }
                } else {
                    Action::Update { path: "tn".into(), quarantine: true }
                };
                let expected = vec![
                    Action::Copy { path: "s".into() },
                    Action::Update { path: "sn".into(), quarantine: true },
                    tn,
                    only_target(only),
                ];
                assert_eq!(p.actions, expected, "{only:?} {conflict:?} clocks agree: {agree}");
                assert_eq!(p.summary.conflicts, 2);
                assert_eq!(p.warnings.len(), usize::from(conflict == NewestWins && !agree), "{conflict:?} {agree}");
                assert!(!p.actions.iter().any(|a| a.path() == "eq"), "equal files are left alone");
            }
        }
        // Run twice, the second run changes nothing.
        let r = rules(Quarantine, SourceWins, true);
        let (_, after, _) = apply_model(&s, &t, &resync(&s, &t, &r));
        assert!(resync(&s, &after, &r).is_empty());
    }

    #[test]
    fn the_space_a_pull_needs_counts_what_stays_on_the_volume() {
        let sized = |n: u64, hash: &str| Entry { size: n, mtime: 0, mode: 0o644, hash: hash.into() };
        let source = files(&[("new", sized(100, "n")), ("big", sized(500, "b2")), ("same", sized(7, "s"))]);
        let target = files(&[("big", sized(400, "b1")), ("same", sized(7, "s")), ("gone", sized(50, "g"))]);
        // Mirror: +100 copied, +500 -400 updated, -50 deleted; the old `big`
        // stays beside its new version until that one is in place.
        assert_eq!(space_needed(&mirror(&source, &target), &source, &target, 8), 100 + 100 - 50 + 400);
        assert_eq!(space_needed(&mirror(&source, &target), &source, &target, 0), 150);
        // A resync quarantines the old `big` and the target-only `gone`:
        // both stay on the volume.
        let p = resync(&source, &target, &rules(OnlyOnTarget::Quarantine, ConflictRule::SourceWins, true));
        assert_eq!(space_needed(&p, &source, &target, 8), 600);
        // Only deletions (or nothing): nothing is needed.
        let empty = Files::new();
        assert_eq!(space_needed(&mirror(&empty, &target), &empty, &target, 8), 0);
        assert_eq!(space_needed(&mirror(&target, &target), &target, &target, 8), 0);
        // Of several updates, only as many old versions as are written at
        // once count, the largest first.
        let src = files(&[("a", sized(10, "a2")), ("b", sized(20, "b2")), ("c", sized(30, "c2"))]);
        let tgt = files(&[("a", sized(10, "a1")), ("b", sized(20, "b1")), ("c", sized(30, "c1"))]);
        assert_eq!(space_needed(&mirror(&src, &tgt), &src, &tgt, 2), 50);
    }

    #[test]
    fn the_summary_counts_what_moves() {
        let (s, t) = trees();
        let p = resync(&s, &t, &rules(OnlyOnTarget::CopyBack, ConflictRule::SourceWins, true));
        assert_eq!(
            p.summary,
            Summary { copies: 1, updates: 2, quarantines: 2, deletions: 0, copy_backs: 1, conflicts: 2, bytes: 4 }
        );
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::tests::content;
    use super::*;

    fn entry() -> impl Strategy<Value = Entry> {
        // Few distinct contents, so equal and different files both occur.
        (0u8..4, 0i64..4).prop_map(|(c, m)| Entry { size: 1, mtime: m, mode: 0o644, hash: format!("{c}") })
    }
    fn tree() -> impl Strategy<Value = Files> {
        prop::collection::btree_map("[abc]{1,2}(/[ab])?", entry(), 0..12)
    }
    fn any_rules() -> impl Strategy<Value = Rules> {
        (0..3u8, any::<bool>(), any::<bool>()).prop_map(|(o, newest, clocks_agree)| Rules {
            only_on_target: [OnlyOnTarget::Quarantine, OnlyOnTarget::Delete, OnlyOnTarget::CopyBack][o as usize],
            conflict: if newest { ConflictRule::NewestWins } else { ConflictRule::SourceWins },
            clocks_agree,
        })
    }

    proptest! {
        #[test]
        fn a_resync_leaves_both_sides_equal_and_loses_no_byte(source in tree(), target in tree(), rules in any_rules()) {
            let plan = resync(&source, &target, &rules);
            let (src, tgt, quarantine) = apply_model(&source, &target, &plan);
            prop_assert_eq!(content(&src), content(&tgt));
            // Every original version is still somewhere, unless the user
            // chose to delete target-only files.
            for (side, tree) in [(Side::Source, &source), (Side::Target, &target)] {
                for (p, e) in tree {
                    let deleted = side == Side::Target
                        && rules.only_on_target == OnlyOnTarget::Delete
                        && !source.contains_key(p);
                    let kept = src.get(p).is_some_and(|x| x.same_content(e))
                        || tgt.get(p).is_some_and(|x| x.same_content(e))
                        || quarantine.iter().any(|(s, q, qe)| *s == side && q == p && qe.same_content(e));
                    prop_assert!(kept || deleted, "{:?} {} lost", side, p);
                }
            }
            // Without NewestWins in force the source is never changed except by CopyBack.
            if !(rules.conflict == ConflictRule::NewestWins && rules.clocks_agree) {
                for (p, e) in &source {
                    prop_assert!(src.get(p).is_some_and(|x| x.same_content(e)));
                }
            }
            prop_assert!(resync(&src, &tgt, &rules).is_empty(), "a second run changes nothing");
        }

        #[test]
        fn a_mirror_makes_the_target_the_source(source in tree(), target in tree()) {
            let (_, tgt, q) = apply_model(&source, &target, &mirror(&source, &target));
            prop_assert_eq!(content(&tgt), content(&source));
            prop_assert!(q.is_empty());
        }
    }
}
