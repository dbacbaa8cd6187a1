//! `status.resync`: the pair's latest resync Job as its target reported it,
//! with an Event when the Job starts, succeeds or fails.

use super::model::{Decision, Notice, ResyncLabel};
use super::observe::Observed;

/// `status.resync` from the newest resync Job and what its target reported;
/// an Event when a Job starts, succeeds or fails. Without any Job the last
/// recorded one stays.
pub fn resync(obs: &Observed, plan: &mut Decision) {
    use super::observe::JobPhase;
    use crate::api::{ResyncPhase, ResyncStatus};
    // The user's repair Jobs are reported by the SplitBrain condition.
    let Some(job) = obs.resync_jobs.iter().rfind(|j| !matches!(j.label.parse(), Ok(ResyncLabel::Repair(_)))) else {
        return;
    };
    let prev = plan.status.resync.clone().filter(|r| r.job == job.name);
    let report = job
        .target
        .and_then(|t| obs.member(t).agent.last.as_ref()?.sync.as_ref()?.resync_report(&job.label).cloned())
        .filter(|r| r.dry_run == job.dry_run);
    let mut r = prev.clone().unwrap_or_else(|| ResyncStatus {
        job: job.name.clone(),
        label: job.label.clone(),
        target: job.target,
        dry_run: job.dry_run,
        start_time: job.created,
        ..Default::default()
    });
    r.phase = match job.phase {
        JobPhase::Running => ResyncPhase::Running,
        JobPhase::Succeeded => ResyncPhase::Succeeded,
        JobPhase::Failed => ResyncPhase::Failed,
    };
    r.failed_runs = job.failed_runs;
    r.message = job.message.clone().map(|m| m.chars().take(1024).collect());
    r.completion_time = job.finished;
    if let Some(rep) = report {
        let x = &rep.summary;
        (r.copied, r.quarantined, r.deleted, r.copied_back, r.conflicts, r.bytes) =
            (x.copies + x.updates, x.quarantines, x.deletions, x.copy_backs, x.conflicts, x.bytes);
        r.warnings = rep.warnings.iter().take(16).cloned().collect();
        r.plan = rep.actions.iter().take(50).cloned().collect();
        r.duration_millis = rep.finished_at.map(|f| (f - rep.started_at).num_milliseconds());
    }
    let target = r.target.map_or("the target".to_string(), |t| t.to_string());
    let what = if r.dry_run { "plans a resync of" } else { "reconciles" };
    if prev.is_none() {
        plan.events.push(Notice {
            warning: false,
            reason: "ResyncStarted".into(),
            note: format!("Job {} {what} {target}'s files with the active member's", r.job),
        });
    }
    if prev.as_ref().is_none_or(|p| p.phase != r.phase) {
        match r.phase {
            ResyncPhase::Succeeded => plan.events.push(Notice {
                warning: false,
                reason: "ResyncSucceeded".into(),
                note: format!(
                    "Job {}{}: {} copied, {} quarantined, {} deleted, {} copied back, {} conflicts, {} bytes",
                    r.job,
                    if r.dry_run { " (dry run, nothing changed)" } else { "" },
                    r.copied,
                    r.quarantined,
                    r.deleted,
                    r.copied_back,
                    r.conflicts,
                    r.bytes
                ),
            }),
            ResyncPhase::Failed => plan.events.push(Notice {
                warning: true,
                reason: "ResyncFailed".into(),
                note: format!(
                    "Job {} failed after {} run(s): {}",
                    r.job,
                    r.failed_runs,
                    r.message.as_deref().unwrap_or("no reason given")
                ),
            }),
            ResyncPhase::Running => {}
        }
    }
    plan.status.resync = Some(r);
}
