//! `HighAvailabilityPairStatus`: what the operator observed and did. Only the
//! operator writes it, through the status subresource, and only when
//! something changed.

use chrono::{DateTime, Utc};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::operation::OperationStatus;
use super::spec::Member;
use super::timings::EffectiveTimings;

/// Longest `status.history`; older transitions are dropped first.
pub const MAX_HISTORY: usize = 20;
/// Longest `status.operations`; older acknowledgements are dropped first.
pub const MAX_OPERATIONS: usize = 16;

/// Observed state of a pair.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilityPairStatus {
    /// `metadata.generation` of the spec this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Mode of the pair as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Member holding the leader Lease and serving behind the pair's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_member: Option<Member>,
    /// Member ready to take over, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_member: Option<Member>,
    /// Fencing token: the leader Lease's `leaseTransitions`. Bumps on every
    /// change of active member; a member acts as active only at the current
    /// epoch.
    #[serde(default)]
    pub epoch: i64,
    /// Per-member state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub members: Vec<MemberStatus>,
    /// Conditions: `Ready`, `Available`, `Synced`, `Degraded`, `SplitBrain`,
    /// `ClockSkew`, `FailoverRequired`, `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The most recent change of active member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Transition>,
    /// Recent changes of active member, newest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub history: Vec<Transition>,
    /// Worst-case detection and failover times implied by the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_timings: Option<EffectiveTimings>,
    /// Acknowledged operation requests, newest first (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub operations: Vec<OperationStatus>,
    /// Member whose pod is stopped by `splitBrain.policy: IsolateSecondary`
    /// until a resolve request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated_member: Option<Member>,
    /// Member stopped by `spec.standby: Removed` (the one that was standby
    /// when it was set) until `spec.standby` is `Enabled` again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_member: Option<Member>,
    /// When the automatic failovers within the flap budget's window
    /// happened, newest first: the budget is counted here, not in the
    /// history, which keeps only the last 20 transitions of any kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub automatic_failovers: Vec<DateTime<Utc>>,
    /// The most recent resync Job and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncStatus>,
    /// Where the pair's Service sends clients, read back from its
    /// EndpointSlice as stored (what kube-proxy follows), not from what the
    /// operator meant to write: the two differ for a moment after a
    /// failover, and for longer only if something is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// When the pair's certificates (its Secret `<pair>-tls`) stop being
    /// valid: past that, the agents cannot reach each other or be polled,
    /// and no failover is possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<CertificatesStatus>,
}

/// Expiry of the pair's certificates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesStatus {
    /// The pair's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<DateTime<Utc>>,
    /// The earliest of the members' and the operator's certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_not_after: Option<DateTime<Utc>>,
    /// When the operator renews them (two-thirds through their life,
    /// `spec.certificates.lifetimeSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<DateTime<Utc>>,
    /// When the operator rotates the CA (half through its life; a
    /// `rotateCertificates` request does it at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_renew_after: Option<DateTime<Utc>>,
    /// A CA rotation under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<CertificateRotation>,
}

/// A CA rotation under way: which step, since when, and whose agents it
/// waits for (each step goes on once every running agent has loaded the
/// one before, which takes the kubelet about a minute per step).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRotation {
    /// `Trusting` (the new CA is trusted beside the old) or `Presenting`
    /// (the certificates in use are the new CA's; the old CA goes next).
    pub stage: String,
    /// What started it: a request's id, or `automatic` (the CA half
    /// through its life, or its key unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// When this step was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Members whose agents have not loaded this step yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub waiting_for: Vec<Member>,
}

/// What the pair's Service routes to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// The member whose pod the endpoint names; unset when it names none,
    /// or a pod that is not one of the pair's members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Member>,
    /// The addresses clients are sent to (endpoints marked ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub addresses: Vec<String>,
}

/// A resync Job (`<pair>-resync-<epoch>`) and its outcome: what the target
/// member's agent reported doing, by the pair's `resync` rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResyncStatus {
    /// The Job's name.
    #[schemars(length(max = 63))]
    pub job: String,
    /// Names the quarantine directory on the target:
    /// `.hapair/quarantine/<label>/` under its data volume.
    #[schemars(length(max = 100))]
    pub label: String,
    /// The member whose files were reconciled with the active member's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Member>,
    /// Only planned, nothing changed.
    #[serde(default)]
    pub dry_run: bool,
    pub phase: ResyncPhase,
    /// Runs that failed and were retried (the Job's back-off).
    #[serde(default)]
    pub failed_runs: i32,
    /// Files copied to the target (new and updated).
    #[serde(default)]
    pub copied: u64,
    /// Target files moved to quarantine (only there, or the losing side of a conflict).
    #[serde(default)]
    pub quarantined: u64,
    #[serde(default)]
    pub deleted: u64,
    /// Target files copied back to the active member (`onlyOnTarget: CopyBack`).
    #[serde(default)]
    pub copied_back: u64,
    /// Files on both sides that differed.
    #[serde(default)]
    pub conflicts: u64,
    #[serde(default)]
    pub bytes: u64,
    /// E.g. NewestWins refused while clocks disagree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub warnings: Vec<String>,
    /// Dry run: the first planned actions, as `action path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub plan: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    /// Milliseconds the target took, as it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_millis: Option<i64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Phase of a resync Job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResyncPhase {
    #[default]
    Running,
    Succeeded,
    Failed,
}

/// Mode of the pair (an HA appliance's configuration modes).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The spec cannot be acted on; see the `Ready` condition.
    NotConfigured,
    /// Members are starting; no member has been made active yet.
    Initializing,
    /// One active, one standby in step with it.
    Enabled,
    /// One member serves without a usable standby.
    Alone,
    /// Both members have acted as active; see the `SplitBrain` condition.
    SplitBrain,
    /// `spec.paused` is set: observing only.
    Paused,
}

/// Current role of a member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
    /// Stopped serving because it could not renew the Lease in time.
    Fenced,
    Unknown,
}

/// Per-member state, named after a classic HA appliance's state table.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// HA is not configured: both members of a pair run as one member
    /// (`spec.standby: Removed`) — the one serving and the one stopped.
    StandAlone,
    HaInitializing,
    PrimaryActive,
    PrimaryAlone,
    PrimaryLostSecondary,
    PrimarySyncing,
    PrimaryPreparingForFailback,
    PrimaryFailover,
    PrimaryFailback,
    PrimaryUncertain,
    SecondarySyncing,
    SecondaryActive,
    SecondaryAlone,
    SecondaryLostPrimary,
    SecondaryFailover,
    SecondaryFailback,
    SecondaryPostFailback,
    SecondaryUncertain,
    /// Stopped serving at its renew deadline.
    Fenced,
    /// Stopped by the split-brain policy `IsolateSecondary`.
    Isolated,
    /// Pod missing or not running.
    Down,
}

/// Observed state of one member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Configured role.
    pub name: Member,
    /// Pod name.
    #[schemars(length(max = 253))]
    pub pod: String,
    /// Current role.
    pub role: Role,
    /// State in classic HA appliance terms.
    pub state: MemberState,
    /// Whether the application passes `spec.healthCheck` (unset: unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Epoch the member's agent last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Heartbeats missed in a row (0 while the agent answers).
    #[serde(default)]
    pub missed_heartbeats: i32,
    /// Last time the agent answered, recorded when it stops answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_time: Option<DateTime<Utc>>,
    /// Estimated difference between the member's clock and the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<i64>,
    /// Generation of the member's synced files (the active numbers each
    /// change; a standby holds the generation it last copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_generation: Option<i64>,
    /// How far the standby's files are behind the active's: seconds since
    /// the first change it does not have (0: it has everything). Standby
    /// only, as the active member last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_lag_seconds: Option<i64>,
    /// How full the member's data volume is, in percent of what the
    /// application can use (as `df` counts), as its agent last measured it.
    /// At 80 % and 90 % the pair reports `VolumeSpaceLow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub volume_used_percent: Option<i32>,
    /// What the member's quarantine holds (file sync), bounded by
    /// `spec.fileSync.quarantine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineStatus>,
}

/// A member's quarantine: one directory per resync that kept files aside.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineStatus {
    /// Resyncs whose kept files are still there.
    #[schemars(range(min = 0))]
    pub resyncs: i64,
    #[schemars(range(min = 0))]
    pub files: i64,
    #[schemars(range(min = 0))]
    pub bytes: i64,
}

/// A change of active member (or the first choice of one).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// What kind of change.
    #[serde(rename = "type")]
    pub type_: TransitionType,
    /// Previous active member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Member>,
    /// New active member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Member>,
    /// Epoch after the change.
    pub epoch: i64,
    /// Machine-readable cause, e.g. `AppHealthCheckFailed`, `LeaseExpired`.
    #[schemars(length(max = 128))]
    pub reason: String,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// When the Lease moved (the commit point).
    pub time: DateTime<Utc>,
    /// Milliseconds from the first sign of failure to the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_millis: Option<i64>,
    /// Milliseconds from the Lease move to the write that moved the VIP's
    /// EndpointSlice to the new active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_to_selector_millis: Option<i64>,
    /// Whether acknowledged data may be missing on the new active member
    /// (a forced failover, or a standby that was behind).
    #[serde(default)]
    pub data_loss_possible: bool,
    /// Operation request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub operation_id: Option<String>,
}

/// Kind of transition.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionType {
    Bootstrap,
    Failover,
    Switchover,
    Failback,
    GoStandby,
    SplitBrainResolved,
}

/// A condition, as `metav1.Condition`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 64))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable reason in CamelCase.
    #[schemars(length(min = 1, max = 128))]
    pub reason: String,
    /// Details for people.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// Last time `status` changed.
    pub last_transition_time: DateTime<Utc>,
    /// Generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Truth value of a condition.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}
