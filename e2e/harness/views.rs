//! The applications' own view of their role, from their logs: the e2e
//! application prints every change of the role it reads (`view role=R
//! epoch=E wall_ms=T until_ms=D`, repeated every 100 ms), and
//! the kubelet writes those lines to the container's log on the node's disk.
//! A follower reads every new line of both members' logs as they are written
//! (the kubelet removes a dead container's log when it collects the
//! container, so reading only at the end would lose them), and the check
//! finds the moments when both applications took themselves for active.
//!
//! A view of `active` lasts from its line to the next line of the same
//! container or its deadline `D`, whichever comes first — a frozen
//! application's view ends at its deadline even though it cannot print. The
//! last line of a container that has since been replaced (killed,
//! restarted) lasts at most one repeat period more. Lines are printed within
//! 10 ms of a change, so overlaps up to [`GRACE`] are the logging's
//! resolution, not two actives.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hapair::api::Member;

/// Where the testbed's kubelets write container logs: each node its own
/// `nodes/N/pod-logs` beside the testbed's kubeconfig (a kubelet removes
/// the log directories of pods it does not run from the directory it
/// writes to, so nodes sharing one would delete each other's logs).
/// None found is an error, not an empty answer: a checker that reads no
/// log would pass whatever the applications did.
pub fn pod_log_dirs() -> Vec<PathBuf> {
    let kubeconfig = PathBuf::from(crate::common::kubeconfig_path());
    let state = kubeconfig.parent().map(|p| p.join("nodes")).unwrap_or_default();
    let nodes = std::fs::read_dir(&state).into_iter().flatten().flatten();
    let mut dirs: Vec<PathBuf> = nodes.map(|n| n.path().join("pod-logs")).filter(|d| d.is_dir()).collect();
    assert!(!dirs.is_empty(), "no node's pod-logs directory under {}: is the testbed up?", state.display());
    dirs.sort();
    dirs
}

/// Every pod's log directory (`<ns>_<pod>_<uid>`) in `dirs`.
pub fn pod_log_entries(dirs: &[PathBuf]) -> impl Iterator<Item = std::fs::DirEntry> + '_ {
    dirs.iter().flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
}

/// The logging's resolution: overlaps shorter than this are not counted.
pub const GRACE: Duration = Duration::from_millis(50);

/// How long a replaced container's last `active` line is taken to last.
const REPEAT: u64 = 150;

#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub role: String,
    pub epoch: i64,
    pub wall_ms: u64,
    pub until_ms: u64,
    /// When the container runtime wrote the line to the log (the CRI line's
    /// own time stamp, wall ms; 0 when unreadable): far behind `wall_ms`
    /// means the log, not the application, was late.
    pub logged_ms: u64,
}

/// One `view …` line out of a CRI log line (`TIME stdout F view …`).
pub fn parse(line: &str) -> Option<Line> {
    let rest = &line[line.find("view role=")? + 5..];
    let logged_ms = line
        .split_whitespace()
        .next()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_millis().max(0) as u64);
    let mut l = Line { role: String::new(), epoch: 0, wall_ms: 0, until_ms: 0, logged_ms };
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "role" => l.role = v.to_string(),
            "epoch" => l.epoch = v.parse().ok()?,
            "wall_ms" => l.wall_ms = v.parse().ok()?,
            "until_ms" => l.until_ms = v.parse().ok()?,
            _ => {}
        }
    }
    Some(l)
}

/// One container instance's lines (one log file), in order.
#[derive(Clone, Debug, Default)]
pub struct Instance {
    pub lines: Vec<Line>,
    /// Whatever else the container printed (a panic, say), with the log's
    /// time stamp; the last few only, for the evidence.
    pub other: Vec<String>,
    /// The kubelet reports this container gone (its pod replaced, or the
    /// container restarted since): its view ended with its last line.
    pub dead: bool,
    /// While its lines stopped coming (0.7 s and more), what its threads
    /// were doing: the last few samples, for the evidence.
    pub stalls: Vec<String>,
    stall_sampled_ms: u64,
    offset: u64,
    partial: String,
}

/// A span of time one member's application took itself for active.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub member: Member,
    pub epoch: i64,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// The active spans of one member's container instances. An instance whose
/// last line is followed by a later instance's first line was replaced.
pub fn spans(member: Member, instances: &[&Instance], now_ms: u64) -> Vec<Span> {
    let mut out = Vec::new();
    for inst in instances {
        let last = inst.lines.last().map_or(0, |l| l.wall_ms);
        let replaced = inst.dead
            || instances.iter().any(|o| o.lines.first().is_some_and(|f| f.wall_ms > last && !std::ptr::eq(*o, *inst)));
        for (i, l) in inst.lines.iter().enumerate() {
            if l.role != "active" {
                continue;
            }
            let end = match inst.lines.get(i + 1) {
                Some(next) => next.wall_ms.min(l.until_ms),
                None if replaced => (l.wall_ms + REPEAT).min(l.until_ms),
                None => l.until_ms.min(now_ms),
            };
            if end <= l.wall_ms {
                continue;
            }
            // Consecutive repeats of one view make one span.
            match out.last_mut() {
                Some(Span { epoch, to_ms, .. }) if *epoch == l.epoch && *to_ms >= l.wall_ms => {
                    *to_ms = (*to_ms).max(end);
                }
                _ => out.push(Span { member, epoch: l.epoch, from_ms: l.wall_ms, to_ms: end }),
            }
        }
    }
    out
}

/// Times both members' applications took themselves for active, longer
/// than [`GRACE`]: when each began (wall ms) and in words.
pub fn overlaps(a: &[Span], b: &[Span]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let (from, to) = (x.from_ms.max(y.from_ms), x.to_ms.min(y.to_ms));
            if to > from && to - from > GRACE.as_millis() as u64 {
                out.push((from, format!(
                    "both applications took themselves for active for {} ms: {} at epoch {} (wall ms {}..{}) and {} \
                     at epoch {} ({}..{})",
                    to - from,
                    x.member,
                    x.epoch,
                    x.from_ms,
                    x.to_ms,
                    y.member,
                    y.epoch,
                    y.from_ms,
                    y.to_ms
                )));
            }
        }
    }
    out
}

/// Follows both members' application logs until dropped.
pub struct Views {
    files: Arc<Mutex<BTreeMap<PathBuf, (Member, Instance)>>>,
    task: tokio::task::JoinHandle<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Views {
    pub fn start(client: kube::Client, ns: &str, pair: &str) -> Self {
        let files: Arc<Mutex<BTreeMap<PathBuf, (Member, Instance)>>> = Arc::default();
        let (f, prefixes) = (files.clone(), Member::BOTH.map(|m| (m, format!("{ns}_{}_", m.pod_name(pair)))));
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, ns);
        let pair = pair.to_string();
        // Found here, in the test's own task: a testbed without them fails
        // the test, not a follower nobody awaits.
        let log_dirs = pod_log_dirs();
        let task = tokio::spawn(async move {
            loop {
                // What the kubelet says runs: `<ns>_<pod>_<uid>/app/N.log` is
                // alive only while that pod is the member's and the app
                // container has restarted N times. A killed application may
                // not have a successor that printed yet; its view must not
                // be taken to last until its deadline meanwhile.
                let mut running: Vec<(Member, String, u32, bool)> = Vec::new();
                for m in Member::BOTH {
                    if let Ok(Some(pod)) = pods.get_opt(&m.pod_name(&pair)).await {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        let app = pod.status.as_ref().and_then(|st| st.container_statuses.as_ref()).and_then(|cs| {
                            cs.iter().find(|c| c.name == "app").map(|c| (c.restart_count.max(0) as u32, ended(c)))
                        });
                        if let Some((n, ended)) = app {
                            running.push((m, format!("{}_{uid}", m.pod_name(&pair)), n, ended));
                        }
                    }
                }
                for pod_dir in pod_log_entries(&log_dirs) {
                    let name = pod_dir.file_name().to_string_lossy().into_owned();
                    let Some((m, _)) = prefixes.iter().find(|(_, p)| name.starts_with(p.as_str())) else {
                        continue;
                    };
                    let logs = std::fs::read_dir(pod_dir.path().join("app")).into_iter().flatten().flatten();
                    for log in logs {
                        let path = log.path();
                        // Only `N.log`: rotated copies repeat what was read.
                        if path.extension().is_none_or(|e| e != "log") {
                            continue;
                        }
                        let mut all = f.lock().unwrap();
                        let (_, inst) = all.entry(path.clone()).or_insert_with(|| (*m, Instance::default()));
                        read_new(&path, inst);
                    }
                }
                // Dead once the kubelet counts a later restart of this
                // pod's container, or reports this one terminated (its
                // successor has not started yet), or the member's pod is
                // another one — for
                // every instance read so far, its log still there or not
                // (the kubelet may remove a dead container's log before its
                // restart is counted). A pod that could not be read this
                // time, or a restart not counted yet, proves nothing.
                for (path, (m, inst)) in f.lock().unwrap().iter_mut() {
                    let dir = path.parent().and_then(|p| p.parent()).and_then(|p| p.file_name());
                    let dir = dir.map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
                    let number: Option<u32> = path.file_stem().and_then(|n| n.to_str()?.parse().ok());
                    inst.dead |= running.iter().find(|(rm, ..)| rm == m).is_some_and(|(_, pod, n, ended)| {
                        !dir.ends_with(pod.as_str()) || number.is_some_and(|k| k < *n || (k == *n && *ended))
                    });
                }
                // A live instance whose lines stopped: what are its threads
                // doing? (Waiting for a CPU, blocked in the kernel, or gone.)
                let now = now_ms();
                for (path, (_, inst)) in f.lock().unwrap().iter_mut() {
                    let last = inst.lines.last().map_or(0, |l| l.wall_ms);
                    if inst.dead || last == 0 || now < last + 700 || now < inst.stall_sampled_ms + 500 {
                        continue;
                    }
                    inst.stall_sampled_ms = now;
                    if inst.stalls.len() >= 16 {
                        inst.stalls.remove(0);
                    }
                    // A log file gone under a live process is the logging's fault,
                    // not the application's.
                    let log = if path.exists() { "" } else { " [its log file is gone]" };
                    inst.stalls.push(format!("{now} (silent {} ms){log}: {}", now - last, threads_of(path)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Views { files, task }
    }

    /// Every time both applications took themselves for active, and how
    /// many view lines were read (so a test can show there was something).
    pub fn check(&self) -> (Vec<String>, usize) {
        let files = self.files.lock().unwrap();
        let now = now_ms();
        let per = |m: Member| -> Vec<Span> {
            let insts: Vec<&Instance> = files.values().filter(|(mm, _)| *mm == m).map(|(_, i)| i).collect();
            spans(m, &insts, now)
        };
        let lines = files.values().map(|(_, i)| i.lines.len()).sum();
        let found = overlaps(&per(Member::Primary), &per(Member::Secondary));
        let evidence = |(at, msg): (u64, String)| -> String {
            // The lines read around the overlap, each with its log file: the
            // kubelet may have deleted the files by the time anyone looks.
            let mut around: Vec<String> = files
                .iter()
                .flat_map(|(path, (m, inst))| {
                    let file = path.iter().rev().take(3).collect::<Vec<_>>();
                    let file: Vec<String> = file.iter().rev().map(|p| p.to_string_lossy().into_owned()).collect();
                    let file = file.join("/");
                    inst.lines
                        .iter()
                        .filter(move |l| l.wall_ms + 3000 >= at && l.wall_ms <= at + 3000)
                        .map(move |l| format!("{} {m} {file}: {} {} until {}", l.wall_ms, l.role, l.epoch, l.until_ms))
                })
                .collect();
            around.sort();
            around.truncate(200);
            let logs: Vec<String> = files
                .iter()
                .map(|(path, (m, inst))| format!("{m} {}: {}", path.display(), log_summary(inst, at)))
                .collect();
            format!("{msg}\n    {}\n  the logs:\n    {}", around.join("\n    "), logs.join("\n    "))
        };
        (found.into_iter().map(evidence).collect(), lines)
    }
}

/// Whether the kubelet reports a container's current instance (the one its
/// restart count names) terminated: the runtime saw its process exit, and
/// no successor has started yet. (Not `waiting` after a termination: by
/// then the count may already name a successor that is about to print.)
fn ended(c: &k8s_openapi::api::core::v1::ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.terminated.is_some())
}

/// The threads of the application whose log is `path`
/// (`<ns>_<pod>_<uid>/app/N.log`), found through its pod's freezer cgroup
/// on whichever node: per thread its state, kernel wait channel, and CPU
/// and run-queue wait time so far (ms, from `schedstat`) — a wait that
/// grows through a silence is a process starved of CPU, a `D` state one
/// blocked in the kernel.
fn threads_of(path: &std::path::Path) -> String {
    let dir =
        path.parent().and_then(|p| p.parent()).and_then(|p| p.file_name()).map(|d| d.to_string_lossy().into_owned());
    let Some(uid) = dir.as_deref().and_then(|d| d.rsplit('_').next()) else { return "no pod uid".into() };
    let mut pids: Vec<String> = Vec::new();
    for node in std::fs::read_dir("/sys/fs/cgroup/freezer").into_iter().flatten().flatten() {
        let kubepods = node.path().join("kubepods");
        for class in ["", "burstable", "besteffort"] {
            let pod = kubepods.join(class).join(format!("pod{uid}"));
            for container in std::fs::read_dir(&pod).into_iter().flatten().flatten() {
                let procs = std::fs::read_to_string(container.path().join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.lines().map(str::to_string));
            }
        }
    }
    let app: Vec<&String> = pids
        .iter()
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.windows(8).any(|w| w == b"--listen")))
        .collect();
    if app.is_empty() {
        return format!("no application process in pod {uid}");
    }
    describe_threads(&app)
}

/// Each thread of `pids`: its id, state, wait channel, CPU and run-queue
/// wait so far (ms).
fn describe_threads(pids: &[&String]) -> String {
    let mut out = Vec::new();
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let t = task.path();
            let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
            let stat = read("stat");
            // The state follows the command name's closing parenthesis.
            let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("?").to_string();
            let sched: Vec<u64> = read("schedstat").split_whitespace().filter_map(|n| n.parse().ok()).collect();
            let (cpu, wait) = (sched.first().map_or(0, |n| n / 1_000_000), sched.get(1).map_or(0, |n| n / 1_000_000));
            out.push(format!(
                "{} {state} wchan={} cpu={cpu} wait={wait}",
                task.file_name().to_string_lossy(),
                read("wchan").trim()
            ));
        }
    }
    out.join("; ")
}

/// Appends what was written to `path` since the last read.
fn read_new(path: &std::path::Path, inst: &mut Instance) {
    let Ok(mut f) = std::fs::File::open(path) else { return };
    let len = f.metadata().map_or(0, |m| m.len());
    if len < inst.offset {
        // Truncated or replaced (a new container reusing the name): start over.
        *inst = Instance::default();
    }
    if f.seek(SeekFrom::Start(inst.offset)).is_err() {
        return;
    }
    let mut buf = String::new();
    let Ok(n) = f.read_to_string(&mut buf) else { return };
    inst.offset += n as u64;
    let text = std::mem::take(&mut inst.partial) + &buf;
    let (complete, rest) = match text.rfind('\n') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => ("", text.as_str()),
    };
    inst.partial = rest.to_string();
    for line in complete.lines() {
        match parse(line) {
            Some(l) => inst.lines.push(l),
            None => {
                if inst.other.len() >= 20 {
                    inst.other.remove(0);
                }
                inst.other.push(line.to_string());
            }
        }
    }
}

/// What one container instance's log shows around `at` (wall ms) beyond
/// its lines: the longest gap between consecutive lines within 5 s of it,
/// how far behind the log wrote them at worst, the first line after the
/// window, and anything else the container printed. A gap the log wrote
/// promptly on both sides was the process not running its logger; lines
/// written long after their time were the log being late.
fn log_summary(inst: &Instance, at: u64) -> String {
    let near: Vec<&Line> = inst.lines.iter().filter(|l| l.wall_ms + 5000 >= at && l.wall_ms <= at + 5000).collect();
    let gap = near.windows(2).map(|w| (w[1].wall_ms.saturating_sub(w[0].wall_ms), w[0].wall_ms)).max();
    let late = near.iter().filter(|l| l.logged_ms > 0).map(|l| l.logged_ms.saturating_sub(l.wall_ms)).max();
    let after = inst.lines.iter().find(|l| l.wall_ms > at + 3000);
    let mut out = format!(
        "{} line(s) within 5 s; longest gap {:?} ms (after the line at {:?}); written to the log at most {:?} ms late; \
         first line past the window: {:?}; dead: {}",
        near.len(),
        gap.map(|g| g.0),
        gap.map(|g| g.1),
        late,
        after.map(|l| (l.wall_ms, l.role.as_str(), l.epoch, l.logged_ms)),
        inst.dead
    );
    for o in &inst.other {
        out.push_str(&format!("\n      printed: {o}"));
    }
    for st in inst.stalls.iter().filter(|st| {
        st.split(' ').next().and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t + 10_000 >= at && t <= at + 10_000)
    }) {
        out.push_str(&format!("\n      while silent: {st}"));
    }
    out
}

impl Drop for Views {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_process_is_described_thread_by_thread() {
        let me = std::process::id().to_string();
        let text = describe_threads(&[&me]);
        let first = text.split("; ").next().unwrap();
        // `<tid> <state> wchan=… cpu=… wait=…`; the thread reading, running.
        assert!(first.starts_with(&me) && first.contains(" wchan=") && first.contains(" cpu="), "{text}");
        assert!(text.contains(" R wchan="), "{text}");
    }

    fn line(role: &str, epoch: i64, at: u64, until: u64) -> Line {
        Line { role: role.into(), epoch, wall_ms: at, until_ms: until, logged_ms: 0 }
    }

    #[test]
    fn a_log_line_is_read_and_spans_end_at_the_next_line_or_the_deadline() {
        let l = parse("2026-11-29T18:00:00.1Z stdout F view role=active epoch=3 wall_ms=1000 until_ms=3000");
        assert_eq!(l, Some(Line { logged_ms: 1_795_975_200_100, ..line("active", 3, 1000, 3000) }));
        assert_eq!(parse("2026-11-29T18:00:00.1Z stderr F something else"), None);
        // Active, renewed, then standby: one span to the standby line.
        let live = Instance {
            lines: vec![line("active", 3, 1000, 3000), line("active", 3, 1100, 3100), line("standby", 4, 1500, 0)],
            ..Default::default()
        };
        assert_eq!(spans(Member::Primary, &[&live], 9000)[0].to_ms, 1500);
        // Frozen: nothing printed after its last line; the deadline ends it.
        let frozen =
            Instance { lines: vec![line("active", 3, 1000, 3000), line("expired", 3, 8000, 0)], ..Default::default() };
        assert_eq!(spans(Member::Primary, &[&frozen], 9000)[0].to_ms, 3000);
        // Killed and restarted: its last view lasts one repeat period.
        let next = Instance { lines: vec![line("standby", 4, 5000, 0)], ..Default::default() };
        let killed = Instance { lines: vec![line("active", 3, 1000, 3000)], ..Default::default() };
        assert_eq!(spans(Member::Primary, &[&killed, &next], 9000)[0].to_ms, 1000 + REPEAT);
        // Killed, its successor not printing yet: the kubelet's restart count
        // says it is dead, and its view ends with its last line all the same;
        // without that word it lasts to its deadline (a frozen one's does).
        let dead = Instance { dead: true, ..killed.clone() };
        assert_eq!(spans(Member::Primary, &[&dead], 9000)[0].to_ms, 1000 + REPEAT);
        assert_eq!(spans(Member::Primary, &[&killed], 9000)[0].to_ms, 3000);
    }

    #[test]
    fn only_overlaps_past_the_grace_are_breaches() {
        let a = [Span { member: Member::Primary, epoch: 3, from_ms: 0, to_ms: 1000 }];
        let near = [Span { member: Member::Secondary, epoch: 4, from_ms: 1000 - 40, to_ms: 2000 }];
        assert!(overlaps(&a, &near).is_empty());
        let far = [Span { member: Member::Secondary, epoch: 4, from_ms: 500, to_ms: 2000 }];
        assert_eq!(overlaps(&a, &far).len(), 1, "{:?}", overlaps(&a, &far));
    }
}
