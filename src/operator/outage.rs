//! The standby-outage budget (`spec.standbyOutage`, an appliance's
//! replication-log thresholds): how much of it the standby has used, and
//! the full resync a standby gets when it returns after going past it.

use super::model::{Reason, ResyncLabel, resync_order, syncs_files};
use super::observe::{JobPhase, Observed};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::{Condition, HighAvailabilityPairSpec, HighAvailabilityPairStatus, Member};
use crate::proto::ResyncOrder;

/// How much of its outage budget (`spec.standbyOutage`) the standby has
/// used: the longer of the time its agent has been silent (operator clock)
/// against `maxDurationSeconds`, and the bytes the active member holds that
/// it lacks against `maxBacklog` (an appliance's replication-log thresholds).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outage {
    pub ratio: f64,
    pub message: String,
}

impl Outage {
    /// 0, 75, 90 or 100: the highest threshold reached.
    pub fn level(&self) -> u8 {
        match self.ratio {
            r if r >= 1.0 => 100,
            r if r >= 0.9 => 90,
            r if r >= 0.75 => 75,
            _ => 0,
        }
    }
}

/// How long the status says the standby has been away: since its
/// `lastSeenTime` (set when its agent stopped answering, kept in the status
/// across operator restarts); `None` while it answers.
pub fn recorded_away(
    status: &HighAvailabilityPairStatus,
    active: Option<Member>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let standby = active?.peer();
    let since = status.members.iter().find(|m| m.name == standby)?.last_seen_time?;
    Some((now - since).to_std().unwrap_or_default())
}

/// The threshold a `StandbyOutage` reason stands for (0 for the others).
pub fn outage_rank(reason: &str) -> u8 {
    match reason.parse() {
        Ok(Reason::LimitExceeded) => 100,
        Ok(Reason::Above90Percent) => 90,
        Ok(Reason::Above75Percent) => 75,
        _ => 0,
    }
}

pub fn standby_outage(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    active: Option<Member>,
    recorded_away: Option<Duration>,
) -> Outage {
    let Some(a) = active else { return Outage::default() };
    let standby = a.peer();
    let limits = &spec.standby_outage;
    let mut parts = Vec::new();
    let mut ratio: f64 = 0.0;
    let silent = &obs.member(standby).agent;
    let answering = silent.missed == 0 && silent.last.is_some();
    if let Some(max) = limits.max_duration_seconds.filter(|m| *m > 0)
        && !answering
    {
        // The longer of what this worker heard (time since the last answer)
        // and what the status recorded (when the standby was last seen):
        // the record survives an operator restart and a standby pod without
        // an address, which the poller cannot even ask.
        let heard = silent.since_answer.filter(|_| silent.missed > 0);
        let away = heard.into_iter().chain(recorded_away).max().unwrap_or_default().as_secs_f64();
        ratio = ratio.max(away / max as f64);
        parts.push(format!("{standby} unreachable for {away:.0}s of {max}s allowed"));
    }
    let backlog = obs.member(a).agent.last.as_ref().and_then(|x| x.sync.as_ref()).map_or(0, |y| y.pending_bytes);
    if let Some(max) = limits.max_backlog.as_ref().and_then(|q| quantity_bytes(&q.0)).filter(|m| *m > 0)
        && syncs_files(spec)
    {
        ratio = ratio.max(backlog as f64 / max as f64);
        parts.push(format!("{standby} lacks {backlog} bytes of {max} allowed"));
    }
    let mut message = parts.join("; ");
    if ratio >= 1.0 {
        message.push_str(
            "; limit reached: a failover now would lose what the standby lacks (it catches up by comparing \
             whole manifests when it returns: nothing overflows)",
        );
    }
    Outage { ratio, message }
}

pub use crate::api::quantity_bytes;

/// Where the full resync after an outage past the limit stands.
#[derive(Debug, Clone, PartialEq)]
pub struct OutageResync {
    /// Start this resync Job (the standby is back).
    pub order: Option<(Member, ResyncOrder)>,
    /// The `StandbyOutage` condition's reason and message meanwhile.
    pub reason: Reason,
    pub message: String,
}

/// A standby that comes back after its outage went past the
/// `standbyOutage` limit gets a full resync (every directory, by the
/// `resync` rules, so what only it holds is quarantined rather than
/// deleted) instead of the usual incremental pull; the pair reports
/// `StandbyOutage` (`FullResync`) until that Job has succeeded. `condition`:
/// the pair's current `StandbyOutage` condition.
pub fn resync_after(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    active: Option<Member>,
    condition: Option<&Condition>,
) -> Option<OutageResync> {
    let standby = active?.peer();
    let c = condition.filter(|c| {
        matches!(c.reason.parse(), Ok(Reason::LimitExceeded | Reason::FullResync | Reason::FullResyncFailed))
    })?;
    let epoch = obs.lease.as_ref().map_or(0, |l| l.epoch);
    let label = ResyncLabel::Outage { epoch, since: c.last_transition_time.timestamp() }.to_string();
    let back = {
        let x = &obs.member(standby).agent;
        x.missed == 0 && x.last.as_ref().is_some_and(|l| l.sync.is_some())
    };
    let (order, reason, message) = match obs.resync_jobs.iter().find(|j| j.label == label) {
        None if back && !spec.paused && syncs_files(spec) => (
            Some((standby, resync_order(spec, obs, label.clone(), false, true))),
            Reason::FullResync,
            format!("{standby} is back: full resync {label} starting"),
        ),
        None => (None, Reason::LimitExceeded, format!("{standby} is still away past the outage limit")),
        Some(j) if j.phase == JobPhase::Running => {
            (None, Reason::FullResync, format!("{standby} is back: full resync Job {} running", j.name))
        }
        Some(j) if j.phase == JobPhase::Failed => (
            None,
            Reason::FullResyncFailed,
            format!("the full resync Job {} failed; request a resync to try again", j.name),
        ),
        Some(_) => return None,
    };
    Some(OutageResync { order, reason, message })
}
