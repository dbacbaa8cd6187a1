//! The state machine's file-sync side, without a cluster: resync Jobs and
//! requests, split-brain policies and repair Jobs, standby-outage limits.

use std::time::Duration;

use super::tests::{clock, condition, enabled, lease, member, op_status, registered, spec, with_op};
use chrono::{DateTime, Utc};

use super::*;
use crate::api::{ConditionStatus, Mode, OperationPhase, Role};
use crate::operator::observe::MemberObs;

#[test]
fn a_diverged_returning_member_gets_one_resync_job_whose_outcome_lands_in_status() {
    use crate::api::ResyncPhase;
    use crate::operator::observe::{JobObs, JobPhase};
    let s = spec("storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}");
    let mut obs = enabled();
    obs.secondary.agent.last.as_mut().unwrap().sync = Some(crate::proto::SyncStatus {
        diverged: [(".".to_string(), "changes of epoch 1 the active never had".to_string())].into(),
        ..Default::default()
    });
    let plan = decide(&s, None, &obs, &clock());
    let (target, order) = plan.start_resync.clone().expect("a resync is ordered");
    assert_eq!((target, order.label.as_str(), order.dry_run), (Member::Secondary, "resync-1", false));
    // Once its Job exists, no second one: the outcome is recorded instead.
    let job = |phase, failed_runs, message: Option<&str>| JobObs {
        name: "db-resync-1".into(),
        label: "resync-1".into(),
        target: Some(Member::Secondary),
        dry_run: false,
        created: Some(Utc::now()),
        phase,
        failed_runs,
        message: message.map(str::to_string),
        finished: None,
    };
    obs.resync_jobs = vec![job(JobPhase::Running, 0, None)];
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(plan.start_resync, None);
    let r = plan.status.resync.clone().unwrap();
    assert_eq!((r.job.as_str(), r.phase, r.target), ("db-resync-1", ResyncPhase::Running, Some(Member::Secondary)));
    assert!(plan.events.iter().any(|e| e.reason == "ResyncStarted"));
    // The target reports what it did; the Job completes.
    let started = Utc::now();
    obs.secondary.agent.last.as_mut().unwrap().sync.as_mut().unwrap().resync = Some(crate::proto::ResyncReport {
        label: "resync-1".into(),
        dry_run: false,
        done: true,
        started_at: started,
        finished_at: Some(started + chrono::Duration::milliseconds(250)),
        summary: crate::sync::Summary {
            copies: 3,
            updates: 1,
            quarantines: 2,
            conflicts: 1,
            bytes: 99,
            ..Default::default()
        },
        warnings: vec![],
        actions: vec![],
    });
    obs.resync_jobs = vec![job(JobPhase::Succeeded, 1, None)];
    let done = decide(&s, Some(&plan.status), &obs, &clock());
    let r = done.status.resync.clone().unwrap();
    assert_eq!((r.phase, r.copied, r.quarantined, r.conflicts, r.bytes), (ResyncPhase::Succeeded, 4, 2, 1, 99));
    assert_eq!((r.failed_runs, r.duration_millis), (1, Some(250)), "a retried run is counted");
    let ev = done.events.iter().find(|e| e.reason == "ResyncSucceeded").expect("an Event");
    assert!(ev.note.contains("4 copied, 2 quarantined"), "{}", ev.note);
    assert!(!done.events.iter().any(|e| e.reason == "ResyncStarted"), "started once");
    // Seen again: no new Event.
    assert!(decide(&s, Some(&done.status), &obs, &clock()).events.iter().all(|e| !e.reason.starts_with("Resync")));
    // A Job that failed for good is reported as a warning, and not re-run.
    obs.resync_jobs =
        vec![job(JobPhase::Failed, 5, Some("BackoffLimitExceeded: Job has reached the specified backoff limit"))];
    let failed = decide(&s, Some(&plan.status), &obs, &clock());
    assert_eq!(failed.status.resync.as_ref().unwrap().phase, ResyncPhase::Failed);
    let ev = failed.events.iter().find(|e| e.reason == "ResyncFailed").expect("a warning Event");
    assert!(ev.warning && ev.note.contains("after 5 run(s): BackoffLimitExceeded"), "{}", ev.note);
    assert_eq!(failed.start_resync, None);
}

#[test]
fn a_resync_request_runs_one_job_and_ends_with_it() {
    use crate::operator::observe::{JobObs, JobPhase};
    let files = "storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}";
    let s = with_op(files, "{id: rs-1, resync: {dryRun: true}}");
    let mut obs = enabled();
    // A standby that does not report file sync cannot be resynced.
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(op_status(&plan).reason.as_deref(), Some("StandbyUnreachable"));
    obs.secondary.agent.last.as_mut().unwrap().sync = Some(Default::default());
    let plan = decide(&with_op(&format!("{files}\npaused: true"), "{id: rs-1, resync: {}}"), None, &obs, &clock());
    assert_eq!(op_status(&plan).reason.as_deref(), Some("Paused"));
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(op_status(&plan).phase, OperationPhase::Running);
    let (target, order) = plan.start_resync.clone().expect("the Job is started");
    assert_eq!(
        (target, order.label.as_str(), order.dry_run, order.full),
        (Member::Secondary, "resync-1-rs-1", true, true)
    );
    let job = |phase, message: Option<&str>, finished_ago: Option<i64>| JobObs {
        name: "db-resync-1-rs-1".into(),
        label: "resync-1-rs-1".into(),
        target: Some(Member::Secondary),
        dry_run: true,
        created: Some(Utc::now()),
        phase,
        failed_runs: 0,
        message: message.map(str::to_string),
        finished: finished_ago.map(|s| Utc::now() - chrono::Duration::seconds(s)),
    };
    obs.resync_jobs = vec![job(JobPhase::Running, None, None)];
    let running = decide(&s, Some(&plan.status), &obs, &clock());
    assert_eq!((running.start_resync.as_ref(), op_status(&running).phase), (None, OperationPhase::Running), "one Job");
    // The Job is done before this operator has polled the target's report:
    // the request waits for it (a few heartbeat intervals at most).
    obs.resync_jobs = vec![job(JobPhase::Succeeded, None, Some(0))];
    let early = decide(&s, Some(&running.status), &obs, &clock());
    assert_eq!(op_status(&early).phase, OperationPhase::Running, "waits for the report");
    let mut reported = obs.clone();
    reported.secondary.agent.last.as_mut().unwrap().sync.as_mut().unwrap().resync = Some(crate::proto::ResyncReport {
        label: "resync-1-rs-1".into(),
        dry_run: true,
        done: true,
        started_at: Utc::now(),
        finished_at: Some(Utc::now()),
        summary: crate::sync::plan::Summary { quarantines: 1, ..Default::default() },
        warnings: vec![],
        actions: vec!["quarantine stray.txt".into()],
    });
    let done = decide(&s, Some(&running.status), &reported, &clock());
    let op = op_status(&done);
    assert_eq!(op.phase, OperationPhase::Succeeded);
    let message = op.message.as_deref().unwrap();
    assert!(message.contains("dry run, nothing changed") && message.contains("1 quarantined"), "{message}");
    assert_eq!(done.status.resync.as_ref().unwrap().plan, ["quarantine stray.txt"], "status carries the plan");
    // A target that lost its report (restarted) does not hold the request up.
    obs.resync_jobs = vec![job(JobPhase::Succeeded, None, Some(60))];
    let lost = decide(&s, Some(&running.status), &obs, &clock());
    assert_eq!(op_status(&lost).phase, OperationPhase::Succeeded);
    assert!(op_status(&lost).message.as_deref().unwrap().contains("no longer reports"));
    obs.resync_jobs = vec![job(JobPhase::Succeeded, None, None)];
    let untimed = decide(&s, Some(&running.status), &obs, &clock());
    assert_eq!(op_status(&untimed).phase, OperationPhase::Succeeded, "no finish time: nothing to wait out");
    obs.resync_jobs = vec![job(JobPhase::Failed, Some("BackoffLimitExceeded"), Some(0))];
    let failed = decide(&s, Some(&running.status), &obs, &clock());
    assert_eq!(
        (op_status(&failed).phase, op_status(&failed).reason.as_deref()),
        (OperationPhase::Failed, Some("ResyncFailed"))
    );
}

/// Enabled, with the secondary reporting files changed while standby (first
/// seen at `since`) and the primary having last written at `active_wrote`.
fn split(since: DateTime<Utc>, active_wrote: Option<DateTime<Utc>>) -> (Observed, String) {
    let mut obs = enabled();
    obs.primary.agent.last.as_mut().unwrap().sync =
        Some(crate::proto::SyncStatus { last_change_at: active_wrote, ..Default::default() });
    obs.secondary.agent.last.as_mut().unwrap().sync = Some(crate::proto::SyncStatus {
        changed_while_standby: [(".".to_string(), since)].into(),
        ..Default::default()
    });
    (obs, format!("splitbrain-1-{}", since.timestamp()))
}

fn files(extra: &str) -> HighAvailabilityPairSpec {
    spec(&format!("storage: {{size: 1Gi, mountPath: /data}}\nfileSync: {{paths: [{{path: .}}]}}\n{extra}"))
}

fn finished_job(label: &str, dry_run: bool) -> crate::operator::observe::JobObs {
    crate::operator::observe::JobObs {
        name: format!("db-{label}"),
        label: label.into(),
        target: Some(Member::Secondary),
        dry_run,
        created: Some(Utc::now()),
        phase: crate::operator::observe::JobPhase::Succeeded,
        failed_runs: 0,
        message: None,
        finished: None,
    }
}

fn diff_report(obs: &mut Observed, label: &str, only_standby: u64, only_active: u64) {
    let s = obs.secondary.agent.last.as_mut().unwrap().sync.as_mut().unwrap();
    s.resync = Some(crate::proto::ResyncReport {
        label: label.into(),
        dry_run: true,
        done: true,
        started_at: Utc::now(),
        finished_at: Some(Utc::now()),
        summary: crate::sync::Summary { quarantines: only_standby, copies: only_active, ..Default::default() },
        warnings: vec![],
        actions: vec!["quarantine notes.txt".into()],
    });
}

#[test]
fn a_standby_written_behind_the_pairs_back_is_a_split_brain_resynced_from_the_kept_primary() {
    let t = Utc::now() - chrono::Duration::seconds(30);
    let (obs, label) = split(t, Some(Utc::now()));
    let plan = decide(&files(""), None, &obs, &clock());
    assert_eq!(plan.status.mode, Some(Mode::SplitBrain));
    assert_eq!(condition(&plan, "SplitBrain"), (ConditionStatus::True, "ChangedWhileStandby".into()));
    assert!(plan.events.iter().any(|e| e.reason == "SplitBrain" && e.warning));
    let (target, order) = plan.start_resync.clone().expect("the loser is resynced");
    assert_eq!(
        (target, order.label.as_str(), order.dry_run, order.full),
        (Member::Secondary, label.as_str(), false, true)
    );
    assert_eq!(plan.lease, None, "the kept side is already active");
    // Its Job ran and the evidence is gone: Enabled again, with an Event.
    let mut obs = enabled();
    obs.resync_jobs = vec![finished_job(&label, false)];
    let after = decide(&files(""), Some(&plan.status), &obs, &clock());
    assert_eq!(after.status.mode, Some(Mode::Enabled));
    assert!(after.events.iter().any(|e| e.reason == "SplitBrainResolved"));
}

#[test]
fn after_a_partition_the_default_keeps_the_lawfully_elected_active_and_resyncs_the_fenced_primary() {
    // The secondary was promoted while the primary was cut off; back, the
    // primary (standby now) holds files written while it was fenced.
    let after_partition = secondary_active_primary_diverged;
    let plan = decide(&files(""), None, &after_partition(), &clock());
    assert_eq!(condition(&plan, "SplitBrain").0, ConditionStatus::True);
    assert_eq!((plan.lease, plan.drain), (None, None), "the role stays where clients were sent");
    let (target, order) = plan.start_resync.expect("the fenced side is resynced");
    assert_eq!((target, order.dry_run), (Member::Primary, false), "from the active, its own versions to quarantine");
    // Keeping the configured primary instead is a choice, and moves the role.
    let plan = decide(&files("splitBrain: {keep: Primary}"), None, &after_partition(), &clock());
    assert_eq!(plan.drain, Some((Member::Secondary, 2)), "the secondary drains for the primary");
}

#[test]
fn keeping_the_most_recent_writer_hands_the_role_to_a_standby_that_wrote_last() {
    let s = files("splitBrain: {keep: MostRecent}");
    let (obs, _) = split(Utc::now(), Some(Utc::now() - chrono::Duration::seconds(60)));
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(plan.drain, Some((Member::Primary, 1)), "the active drains first");
    let mut drained = obs.clone();
    drained.primary.agent.last.as_mut().unwrap().draining = true;
    drained.lease.as_mut().unwrap().drained_at = Some(1);
    let plan = decide(&s, None, &drained, &clock());
    let Some(LeaseAction::Takeover { to, transition, .. }) = plan.lease else { panic!("{:?}", plan.lease) };
    assert_eq!((to, transition.type_), (Member::Secondary, TransitionType::SplitBrainResolved));
    // The active wrote last: it is kept, the standby resynced.
    let (obs, _) = split(Utc::now() - chrono::Duration::seconds(60), Some(Utc::now()));
    assert_eq!(decide(&s, None, &obs, &clock()).start_resync.map(|r| r.0), Some(Member::Secondary));
}

#[test]
fn the_most_recent_writer_is_not_judged_by_clocks_that_disagree() {
    // The standby's clock runs a minute ahead: its writes look the newest.
    let s = files("splitBrain: {keep: MostRecent}");
    let (mut obs, _) = split(Utc::now(), Some(Utc::now() - chrono::Duration::seconds(1)));
    obs.secondary.agent.skew_ms = Some(60_000);
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(plan.drain, None, "the role stays with the active");
    assert_eq!(plan.start_resync.map(|r| r.0), Some(Member::Secondary), "the standby is resynced from it");
    // Within maxClockSkewSeconds (30 s) the writes decide again.
    obs.secondary.agent.skew_ms = Some(20_000);
    assert_eq!(decide(&s, None, &obs, &clock()).drain, Some((Member::Primary, 1)));
}

#[test]
fn keeping_the_side_with_most_changes_computes_the_difference_first() {
    let s = files("splitBrain: {keep: MostChanges}");
    let (mut obs, label) = split(Utc::now(), None);
    let diff = format!("{label}-diff");
    let plan = decide(&s, None, &obs, &clock());
    let (_, order) = plan.start_resync.expect("a dry run first");
    assert_eq!((order.label.as_str(), order.dry_run), (diff.as_str(), true));
    obs.resync_jobs = vec![finished_job(&diff, true)];
    diff_report(&mut obs, &diff, 5, 1);
    assert_eq!(decide(&s, None, &obs, &clock()).drain, Some((Member::Primary, 1)), "the standby changed more");
    diff_report(&mut obs, &diff, 1, 5);
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(
        plan.start_resync.map(|r| (r.0, r.1.label)),
        Some((Member::Secondary, label)),
        "the active changed more"
    );
}

#[test]
fn manual_policy_shows_the_difference_and_waits_for_a_resolve_request() {
    let s = files("splitBrain: {policy: Manual}");
    let (mut obs, label) = split(Utc::now(), None);
    let diff = format!("{label}-diff");
    assert_eq!(decide(&s, None, &obs, &clock()).start_resync.map(|r| r.1.dry_run), Some(true));
    obs.resync_jobs = vec![finished_job(&diff, true)];
    diff_report(&mut obs, &diff, 1, 0);
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!((plan.start_resync.as_ref(), plan.drain, plan.lease.as_ref()), (None, None, None), "nothing changes");
    let (st, reason) = condition(&plan, "SplitBrain");
    assert_eq!((st, reason.as_str()), (ConditionStatus::True, "ChangedWhileStandby"));
    let msg = &plan.status.conditions.iter().find(|c| c.type_ == "SplitBrain").unwrap().message;
    assert!(msg.contains("resolveSplitBrain"), "{msg}");
    // Resolve, keeping the secondary: the active drains and hands over.
    let r = with_op(
        "storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}\nsplitBrain: {policy: Manual}",
        "{id: rs-1, resolveSplitBrain: {keep: secondary}}",
    );
    let plan = decide(&r, None, &obs, &clock());
    assert_eq!((op_status(&plan).phase, plan.drain), (OperationPhase::Running, Some((Member::Primary, 1))));
    // Nothing to resolve on a healthy pair.
    let plan = decide(&r, None, &enabled(), &clock());
    assert_eq!(op_status(&plan).reason.as_deref(), Some("NoSplitBrain"));
}

#[test]
fn isolate_secondary_stops_it_until_a_resolve_request() {
    let s = files("splitBrain: {policy: IsolateSecondary}");
    let (obs, _) = split(Utc::now(), None);
    let plan = decide(&s, Some(&registered()), &obs, &clock());
    assert_eq!(plan.status.isolated_member, Some(Member::Secondary));
    assert_eq!(plan.status.mode, Some(Mode::Alone));
    assert_eq!(condition(&plan, "SplitBrain").1, "SecondaryIsolated");
    assert_eq!((plan.start_resync.as_ref(), plan.lease.as_ref()), (None, None));
    // It stays isolated (its pod gone, its agent silent).
    let mut gone = enabled();
    gone.secondary = MemberObs::default();
    let plan = decide(&s, Some(&plan.status), &gone, &clock());
    assert_eq!(plan.status.isolated_member, Some(Member::Secondary));
    // A resolve request lets it back.
    let r = with_op(
        "storage: {size: 1Gi, mountPath: /data}\nfileSync: {paths: [{path: .}]}\nsplitBrain: {policy: IsolateSecondary}",
        "{id: rs-1, resolveSplitBrain: {keep: primary}}",
    );
    let back = decide(&r, Some(&plan.status), &gone, &clock());
    assert_eq!((back.status.isolated_member, op_status(&back).phase), (None, OperationPhase::Running));
    // Back, but still holding its stray files: not resolved yet.
    let (returned, _) = split(Utc::now(), None);
    let running = decide(&r, Some(&back.status), &returned, &clock());
    assert_eq!(op_status(&running).phase, OperationPhase::Running);
    assert!(running.start_resync.is_some(), "its files are resynced from the primary");
    let mut followed = enabled();
    followed.secondary.agent.last.as_mut().unwrap().sync = Some(Default::default());
    let restarted = decide(&r, Some(&running.status), &followed, &clock());
    assert_eq!(op_status(&restarted).phase, OperationPhase::Running, "no sync completed since it started");
    followed.secondary.agent.last.as_mut().unwrap().sync.as_mut().unwrap().in_sync_at = Some(Utc::now());
    let done = decide(&r, Some(&running.status), &followed, &clock());
    assert_eq!(op_status(&done).phase, OperationPhase::Succeeded);
}

#[test]
fn a_long_standby_outage_warns_at_75_and_90_percent_and_at_the_limit() {
    use crate::operator::outage::quantity_bytes;
    let s = files("standbyOutage: {maxDurationSeconds: 100, maxBacklog: 1Ki}");
    let away = |secs: u64, backlog: u64| {
        let mut obs = enabled();
        obs.secondary.agent.missed = 3;
        obs.secondary.agent.since_answer = Some(Duration::from_secs(secs));
        obs.primary.agent.last.as_mut().unwrap().sync =
            Some(crate::proto::SyncStatus { pending_bytes: backlog, ..Default::default() });
        obs
    };
    let within = decide(&s, None, &away(10, 0), &clock());
    assert_eq!(condition(&within, "StandbyOutage"), (ConditionStatus::False, "WithinLimits".into()));
    let mut status = within.status.clone();
    for (secs, backlog, reason) in [(80, 0, "Above75Percent"), (50, 950, "Above90Percent"), (120, 0, "LimitExceeded")] {
        let plan = decide(&s, Some(&status), &away(secs, backlog), &clock());
        assert_eq!(condition(&plan, "StandbyOutage"), (ConditionStatus::True, reason.into()), "{secs}s {backlog}B");
        let ev = plan.events.iter().find(|e| e.reason == format!("StandbyOutage{reason}")).expect("an Event");
        assert!(ev.warning);
        // Seen again at the same level: no second Event.
        let again = decide(&s, Some(&plan.status), &away(secs, backlog), &clock());
        assert!(again.events.iter().all(|e| !e.reason.starts_with("StandbyOutage")));
        status = plan.status;
    }
    assert_eq!(
        (quantity_bytes("10Gi"), quantity_bytes("1.5k"), quantity_bytes("2e3"), quantity_bytes("12")),
        (Some(10 << 30), Some(1500), Some(2000), Some(12))
    );
    assert_eq!(quantity_bytes("2E"), Some(2_000_000_000_000_000_000));
    for bad in ["", "Gi", "10Zi", "-1", "ten"] {
        assert_eq!(quantity_bytes(bad), None, "{bad}");
    }
}

#[test]
fn the_users_repair_job_runs_after_the_split_brain_resync_and_gates_enabled() {
    use crate::operator::observe::JobPhase;
    let s = files("splitBrain: {repairJob: {name: fix, image: db-tools, args: [reindex]}}");
    let t = Utc::now() - chrono::Duration::seconds(30);
    let (_, label) = split(t, None);
    let mut obs = enabled();
    let mut resync = finished_job(&label, false);
    resync.phase = JobPhase::Running;
    obs.resync_jobs = vec![resync];
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(
        (plan.repair.as_ref(), plan.status.mode),
        (None, Some(Mode::SplitBrain)),
        "files repaired, Job not done"
    );
    obs.resync_jobs = vec![finished_job(&label, false)];
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(plan.repair.as_deref(), Some(label.as_str()));
    assert_eq!(plan.status.mode, Some(Mode::SplitBrain), "not Enabled before the repair Job succeeds");
    assert_eq!(condition(&plan, "SplitBrain"), (ConditionStatus::True, "RepairJobRunning".into()));
    let mut repair = finished_job(&format!("{label}-repair"), false);
    repair.phase = JobPhase::Running;
    obs.resync_jobs.push(repair.clone());
    let plan = decide(&s, Some(&registered()), &obs, &clock());
    assert_eq!((plan.repair.as_ref(), plan.status.mode), (None, Some(Mode::SplitBrain)));
    assert_eq!(plan.status.resync.as_ref().unwrap().label, label, "status.resync stays the file resync");
    repair.phase = JobPhase::Failed;
    repair.message = Some("BackoffLimitExceeded".into());
    *obs.resync_jobs.last_mut().unwrap() = repair.clone();
    let failed = decide(&s, Some(&registered()), &obs, &clock());
    assert_eq!(condition(&failed, "SplitBrain"), (ConditionStatus::True, "RepairJobFailed".into()));
    repair.phase = JobPhase::Succeeded;
    *obs.resync_jobs.last_mut().unwrap() = repair;
    let done = decide(&s, Some(&failed.status), &obs, &clock());
    assert_eq!(done.status.mode, Some(Mode::Enabled));
    assert!(done.events.iter().any(|e| e.reason == "SplitBrainResolved"));
    // Without a repairJob, nothing waits.
    obs.resync_jobs.truncate(1);
    assert_eq!(decide(&files(""), Some(&registered()), &obs, &clock()).status.mode, Some(Mode::Enabled));
    // The Job: the user's container with the repair's facts in its environment.
    let pair: crate::api::HighAvailabilityPair = serde_json::from_value(serde_json::json!({
        "apiVersion": "hapair.dev/v1alpha1", "kind": "HighAvailabilityPair",
        "metadata": {"name": "db", "namespace": "prod", "uid": "u1"},
        "spec": serde_json::to_value(&s).unwrap()
    }))
    .unwrap();
    let addr = Some("10.0.0.1:7443".parse().unwrap());
    let job = crate::operator::build::repair_job(
        &pair,
        s.split_brain.repair_job.as_ref().unwrap(),
        &label,
        Member::Primary,
        1,
        [addr, None],
    );
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    let env: std::collections::BTreeMap<_, _> =
        c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default())).collect();
    assert_eq!((env["HAPAIR_KEPT_MEMBER"].as_str(), env["HAPAIR_EPOCH"].as_str()), ("primary", "1"));
    assert_eq!(
        (env["HAPAIR_PRIMARY_ADDRESS"].as_str(), env["HAPAIR_SECONDARY_ADDRESS"].as_str()),
        ("10.0.0.1:7443", "")
    );
    assert_eq!(c.args.as_deref(), Some(&["reindex".to_string()][..]));
}

#[test]
fn a_standby_back_from_an_outage_past_the_limit_gets_a_full_resync_then_the_pair_recovers() {
    use crate::operator::observe::JobPhase;
    let s = files("standbyOutage: {maxDurationSeconds: 100}");
    let mut away = enabled();
    away.secondary.agent.missed = 3;
    away.secondary.agent.since_answer = Some(Duration::from_secs(150));
    let past = decide(&s, Some(&registered()), &away, &clock());
    assert_eq!(condition(&past, "StandbyOutage"), (ConditionStatus::True, "LimitExceeded".into()));
    assert_eq!(past.start_resync, None, "nothing to resync while it is away");
    // Back: a full resync, by the resync rules.
    let mut back = enabled();
    back.secondary.agent.last.as_mut().unwrap().sync = Some(Default::default());
    let plan = decide(&s, Some(&past.status), &back, &clock());
    let (target, order) = plan.start_resync.clone().expect("a full resync");
    assert_eq!((target, order.full, order.dry_run), (Member::Secondary, true, false));
    assert!(order.label.starts_with("outage-1-"), "{}", order.label);
    assert_eq!(condition(&plan, "StandbyOutage"), (ConditionStatus::True, "FullResync".into()));
    let mut job = finished_job(&order.label, false);
    job.phase = JobPhase::Running;
    back.resync_jobs = vec![job.clone()];
    let running = decide(&s, Some(&plan.status), &back, &clock());
    assert_eq!((running.start_resync.as_ref(), condition(&running, "StandbyOutage").1.as_str()), (None, "FullResync"));
    job.phase = JobPhase::Succeeded;
    back.resync_jobs = vec![job];
    let done = decide(&s, Some(&running.status), &back, &clock());
    assert_eq!(condition(&done, "StandbyOutage"), (ConditionStatus::False, "WithinLimits".into()));
    assert_eq!(done.status.mode, Some(Mode::Enabled));
}

/// The secondary active at epoch 2; the primary, standby, holds changes
/// made while standby.
fn secondary_active_primary_diverged() -> Observed {
    let mut obs = enabled();
    obs.primary = member(Member::Primary, Role::Standby, Some(true));
    obs.secondary = member(Member::Secondary, Role::Active, Some(true));
    obs.lease = Some(lease(Member::Secondary, 2, Duration::from_secs(1)));
    obs.primary.agent.last.as_mut().unwrap().sync = Some(crate::proto::SyncStatus {
        changed_while_standby: [(".".to_string(), Utc::now())].into(),
        ..Default::default()
    });
    obs
}

#[test]
fn isolate_secondary_with_the_secondary_active_hands_over_then_isolates_it() {
    let s = files("splitBrain: {policy: IsolateSecondary}");
    let obs = secondary_active_primary_diverged();
    let plan = decide(&s, None, &obs, &clock());
    assert_eq!(plan.drain, Some((Member::Secondary, 2)), "the secondary drains for the primary");
    assert_eq!(plan.status.isolated_member, Some(Member::Secondary), "and is isolated once it no longer holds");
    assert_eq!(condition(&plan, "SplitBrain").1, "SecondaryIsolated");
}

#[test]
fn the_standby_outage_clock_survives_an_operator_restart_and_a_standby_without_an_address() {
    let s = files("standbyOutage: {maxDurationSeconds: 100}");
    // The standby's pod lost its address: the poller cannot even ask, so
    // nothing is "missed"; a fresh worker has heard nothing either.
    let mut away = enabled();
    away.secondary.pod.as_mut().unwrap().ip = None;
    away.secondary.agent = Default::default();
    let first = decide(&s, None, &away, &clock());
    let seen = first.status.members.iter().find(|m| m.name == Member::Secondary).unwrap().last_seen_time;
    assert!(seen.is_some(), "the status records when the standby was last seen");
    assert_eq!(condition(&first, "StandbyOutage"), (ConditionStatus::False, "WithinLimits".into()));
    // 120 s later, from the status alone (as after an operator restart).
    let later = RoundInputs { now: Utc::now() + chrono::Duration::seconds(120), ..clock() };
    let plan = decide(&s, Some(&first.status), &away, &later);
    assert_eq!(condition(&plan, "StandbyOutage"), (ConditionStatus::True, "LimitExceeded".into()));
    // Back and answering: the record is cleared and the clock stops.
    let back = decide(&s, Some(&plan.status), &enabled(), &later);
    assert_eq!(back.status.members.iter().find(|m| m.name == Member::Secondary).unwrap().last_seen_time, None);
}

#[test]
fn a_standby_that_cannot_store_the_files_says_why_once() {
    let s = files("");
    let mut obs = enabled();
    obs.primary.agent.last.as_mut().unwrap().sync =
        Some(crate::proto::SyncStatus { peer_lag_seconds: Some(60.0), pending_files: 4, ..Default::default() });
    let enospc = "copy ./f: No space left on device (os error 28)";
    obs.secondary.agent.last.as_mut().unwrap().sync =
        Some(crate::proto::SyncStatus { failing: Some(enospc.into()), ..Default::default() });
    let first = decide(&s, None, &obs, &clock());
    assert_eq!(condition(&first, "Synced"), (ConditionStatus::False, "SyncFailing".to_string()));
    let message = &first.status.conditions.iter().find(|c| c.type_ == "Synced").unwrap().message;
    assert!(message.contains(enospc) && message.contains("60s behind"), "{message}");
    assert_eq!(first.events.iter().filter(|e| e.reason == "SyncFailing" && e.warning).count(), 1);
    // Still failing: no second Event.
    assert!(decide(&s, Some(&first.status), &obs, &clock()).events.iter().all(|e| e.reason != "SyncFailing"));
    // Behind for another reason (catching up): plainly behind.
    obs.secondary.agent.last.as_mut().unwrap().sync.as_mut().unwrap().failing = None;
    assert_eq!(condition(&decide(&s, Some(&first.status), &obs, &clock()), "Synced").1, "Behind");
}
