//! Observe: read what the cluster and the agents say about one pair into a
//! plain [`Observed`] value. Times that matter for safety are durations on
//! the operator's own monotonic clock, measured by the pair's worker; no
//! two machines' wall clocks are ever compared.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;

use super::build::{ANN_HASH, applied_hash};
use crate::api::{AGENT_CONTAINER, LABEL_MEMBER, Member};
use crate::proto::{
    ANN_INTERVAL, ANN_MISSED, ANN_OPERATION, ANN_RELEASED, ANN_RELEASED_BY, AgentStatus, parse_identity,
};

/// One member pod as far as decisions go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodObs {
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub running: bool,
    pub deleting: bool,
    /// An application container has terminated or is crash-looping.
    pub app_down: bool,
    pub hash: Option<String>,
    pub role_label: Option<String>,
}

impl PodObs {
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let app_down = status.container_statuses.iter().flatten().any(|c| {
            c.name != AGENT_CONTAINER
                && c.state.as_ref().is_some_and(|s| {
                    s.terminated.is_some()
                        || s.waiting.as_ref().is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
                })
        });
        PodObs {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ip: status.pod_ip.clone().filter(|ip| !ip.is_empty()),
            running: status.phase.as_deref() == Some("Running"),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            app_down,
            hash: applied_hash(&pod.metadata).map(str::to_string),
            role_label: pod.labels().get(crate::api::LABEL_ROLE).cloned(),
        }
    }
}

/// What polling a member's agent has shown.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentObs {
    /// The last answer, if any.
    pub last: Option<AgentStatus>,
    /// Polls missed in a row since that answer.
    pub missed: u32,
    /// Time since the last answer (operator clock).
    pub since_answer: Option<Duration>,
    /// Answers that could not be parsed (a member sending garbage).
    pub malformed: u64,
    /// Estimated clock skew of the member against the operator.
    pub skew_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberObs {
    pub pod: Option<PodObs>,
    pub agent: AgentObs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseObs {
    /// Holder member and its pod UID; `None` when released or empty.
    pub holder: Option<(Member, String)>,
    pub epoch: i64,
    pub resource_version: String,
    pub duration: Duration,
    pub released_reason: Option<String>,
    /// Member that released the Lease.
    pub released_by: Option<Member>,
    /// Operation request whose takeover made the current holder, if any.
    pub operation_id: Option<String>,
    /// How long the Lease has gone without any change, on the operator's clock.
    pub unchanged_for: Duration,
    /// Heartbeat settings written on the Lease.
    pub interval_seconds: Option<i32>,
    pub missed_threshold: Option<i32>,
}

impl LeaseObs {
    pub fn of(lease: &Lease, unchanged_for: Duration) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let ann = lease.annotations();
        let holder = spec.holder_identity.as_deref().and_then(parse_identity).map(|(m, uid)| (m, uid.to_string()));
        LeaseObs {
            holder,
            epoch: i64::from(spec.lease_transitions.unwrap_or(0)),
            resource_version: lease.resource_version().unwrap_or_default(),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
            released_reason: ann.get(ANN_RELEASED).cloned(),
            released_by: ann.get(ANN_RELEASED_BY).and_then(|m| m.parse().ok()),
            operation_id: ann.get(ANN_OPERATION).cloned(),
            unchanged_for,
            interval_seconds: ann.get(ANN_INTERVAL).and_then(|v| v.parse().ok()),
            missed_threshold: ann.get(ANN_MISSED).and_then(|v| v.parse().ok()),
        }
    }
}

/// A resync Job, as far as decisions and status go.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObs {
    pub name: String,
    /// The order's label (`resync-<epoch>`, or the request's).
    pub label: String,
    pub target: Option<Member>,
    pub dry_run: bool,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    pub phase: JobPhase,
    /// Runs that failed so far (each retried by the Job controller).
    pub failed_runs: i32,
    /// Why it failed for good (the Job's Failed condition).
    pub message: Option<String>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    Running,
    Succeeded,
    Failed,
}

/// An API timestamp on chrono's clock.
fn chrono_of(t: k8s_openapi::jiff::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

impl JobObs {
    /// `None` for a Job that is not a resync Job.
    pub fn of(job: &Job) -> Option<Self> {
        use super::build::{ANN_RESYNC_DRY_RUN, ANN_RESYNC_LABEL, ANN_RESYNC_TARGET};
        let ann = job.annotations();
        let status = job.status.clone().unwrap_or_default();
        let condition =
            |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t && c.status == "True").cloned();
        let (phase, message, finished) = if let Some(c) = condition("Complete") {
            (JobPhase::Succeeded, None, c.last_transition_time.and_then(|t| chrono_of(t.0)))
        } else if let Some(c) = condition("Failed") {
            let why = [c.reason, c.message].into_iter().flatten().collect::<Vec<_>>().join(": ");
            (JobPhase::Failed, Some(why), c.last_transition_time.and_then(|t| chrono_of(t.0)))
        } else {
            (JobPhase::Running, None, None)
        };
        Some(JobObs {
            name: job.name_any(),
            label: ann.get(ANN_RESYNC_LABEL)?.clone(),
            target: ann.get(ANN_RESYNC_TARGET).and_then(|m| m.parse().ok()),
            dry_run: ann.get(ANN_RESYNC_DRY_RUN).is_some_and(|v| v == "true"),
            created: job.metadata.creation_timestamp.as_ref().and_then(|t| chrono_of(t.0)),
            phase,
            failed_runs: status.failed.unwrap_or(0),
            message,
            finished,
        })
    }
}

/// Everything `decide` looks at for one pair.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub primary: MemberObs,
    pub secondary: MemberObs,
    pub lease: Option<LeaseObs>,
    /// Member the VIP Service selects (`None`: nobody, or no Service).
    pub vip_member: Option<Member>,
    pub vip_exists: bool,
    pub vip_hash: Option<String>,
    pub standby_member: Option<Member>,
    pub standby_exists: bool,
    /// How long this worker has watched the pair without a Lease.
    pub without_lease_for: Duration,
    /// How long the current failure of the active member has been seen.
    pub failure_for: Option<Duration>,
    /// How long the primary has been continuously able to serve (for the
    /// automatic failback's hysteresis).
    pub primary_usable_for: Option<Duration>,
    /// The pair's resync Jobs, oldest first.
    pub resync_jobs: Vec<JobObs>,
}

impl Observed {
    pub fn member(&self, m: Member) -> &MemberObs {
        match m {
            Member::Primary => &self.primary,
            Member::Secondary => &self.secondary,
        }
    }
    pub fn member_mut(&mut self, m: Member) -> &mut MemberObs {
        match m {
            Member::Primary => &mut self.primary,
            Member::Secondary => &mut self.secondary,
        }
    }
}

/// The member a Service selects.
pub fn selected_member(svc: &Service) -> Option<Member> {
    svc.spec.as_ref()?.selector.as_ref()?.get(LABEL_MEMBER)?.parse().ok()
}

pub fn service_hash(svc: &Service) -> Option<String> {
    svc.metadata.annotations.as_ref()?.get(ANN_HASH).cloned()
}
