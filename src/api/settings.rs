//! The parts of a pair's spec besides storage ([`super::storage`]):
//! Service, heartbeat, failover and failback policy, health check, file
//! sync, resync and split-brain rules, standby-outage limits, agent
//! settings. Defaults follow classic HA
//! appliances where they have one (heartbeat every 5 s, 3 missed; realtime
//! sync every 11 s, batch every 500 s; 30 s clock skew).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pair's Service (the virtual IP).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'ClusterIP' || self.ports.all(p, !has(p.nodePort))").message("spec.service.ports[].nodePort needs spec.service.type NodePort or LoadBalancer"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Ports of the application reachable through the pair's Service.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub ports: Vec<ServicePort>,
    /// Also create `<pair>-standby`, a Service that reaches only the standby
    /// (for read-only traffic or external replication).
    #[serde(default)]
    pub standby: bool,
    /// Annotations for the Services (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service type of the pair's Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// One port of the pair's Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name, unique in the list (a DNS label).
    #[schemars(length(min = 1, max = 15), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Port on the Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Port of the application container; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: Option<i32>,
    /// Protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Node port, for type NodePort or LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
}

/// IP protocol of a port.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

/// Heartbeats between the members, the agents and the operator. The leader
/// Lease lasts `intervalSeconds × missedThreshold`; the active member fences
/// itself after `(missedThreshold − 1) × intervalSeconds` without renewing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// Seconds between heartbeats.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 600))]
    pub interval_seconds: i32,
    /// Heartbeats missed in a row before a member counts as failed.
    #[serde(default = "default_missed")]
    #[schemars(range(min = 2, max = 30))]
    pub missed_threshold: i32,
}

fn default_interval() -> i32 {
    5
}
fn default_missed() -> i32 {
    3
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        HeartbeatSpec { interval_seconds: default_interval(), missed_threshold: default_missed() }
    }
}

/// Failover policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// `Automatic`: the standby takes over on a failure. `Manual`: the
    /// operator raises `FailoverRequired` and waits for a failover request.
    #[serde(default)]
    pub mode: FailoverMode,
    /// Extra seconds to wait after a failure is established before failing
    /// over (rides out brief blips at the cost of a longer outage).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub delay_seconds: i32,
    /// Refuse an automatic failover to a standby whose files are older than
    /// this many seconds (needs `fileSync`); unset: no limit. A forced
    /// failover request ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub max_sync_lag_seconds: Option<i32>,
    /// Limit on automatic failovers, so a flapping pair stops bouncing and
    /// waits for an administrator.
    #[serde(default)]
    pub flap_budget: FlapBudget,
}

/// Automatic or manual failover.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailoverMode {
    #[default]
    Automatic,
    Manual,
}

/// At most `maxAutomaticFailovers` automatic failovers in any `windowSeconds`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlapBudget {
    /// Automatic failovers allowed per window.
    #[serde(default = "default_max_failovers")]
    #[schemars(range(min = 1, max = 100))]
    pub max_automatic_failovers: i32,
    /// Length of the sliding window in seconds.
    #[serde(default = "default_flap_window")]
    #[schemars(range(min = 60, max = 604800))]
    pub window_seconds: i32,
}

fn default_max_failovers() -> i32 {
    3
}
fn default_flap_window() -> i32 {
    3600
}

impl Default for FlapBudget {
    fn default() -> Self {
        FlapBudget { max_automatic_failovers: default_max_failovers(), window_seconds: default_flap_window() }
    }
}

/// Failback policy: return the active role to the configured primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailbackSpec {
    /// `Manual` (the usual appliance default): wait for a failback request.
    /// `Automatic`: fail back once the primary has been healthy and in sync
    /// for `delaySeconds`.
    #[serde(default)]
    pub mode: FailbackMode,
    /// Seconds of continuous health and sync the primary needs before an
    /// automatic failback (hysteresis against a flapping primary).
    #[serde(default = "default_failback_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub delay_seconds: i32,
}

fn default_failback_delay() -> i32 {
    300
}

impl Default for FailbackSpec {
    fn default() -> Self {
        FailbackSpec { mode: FailbackMode::default(), delay_seconds: default_failback_delay() }
    }
}

/// Manual or automatic failback.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailbackMode {
    #[default]
    Manual,
    Automatic,
}

/// Check of the application's critical process, run by the agent. Exactly
/// one of `httpGet`, `tcpSocket` and `exec`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("[has(self.httpGet), has(self.tcpSocket), has(self.exec)].filter(x, x).size() == 1").message("spec.healthCheck needs exactly one of httpGet, tcpSocket or exec"),
    validation = Rule::new("self.timeoutSeconds <= self.periodSeconds").message("spec.healthCheck.timeoutSeconds must not exceed periodSeconds"),
)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// HTTP GET against the application; 2xx and 3xx are healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetCheck>,
    /// TCP connect to the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketCheck>,
    /// Command run in the agent container (it shares the pod's network and
    /// volumes); exit status 0 is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
    /// Seconds between checks.
    #[serde(default = "default_check_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// Seconds before a check counts as failed.
    #[serde(default = "default_check_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
    /// Failed checks in a row before the application counts as failed.
    #[serde(default = "default_check_failures")]
    #[schemars(range(min = 1, max = 30))]
    pub failure_threshold: i32,
}

fn default_check_period() -> i32 {
    5
}
fn default_check_timeout() -> i32 {
    2
}
fn default_check_failures() -> i32 {
    3
}

/// HTTP GET health check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetCheck {
    /// Request path.
    #[serde(default = "default_http_path")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("spec.healthCheck.httpGet.path must start with '/'"))]
    pub path: String,
    /// Application port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP or HTTPS (the certificate is not verified: the check is local).
    #[serde(default)]
    pub scheme: HttpScheme,
}

fn default_http_path() -> String {
    "/".into()
}

/// URL scheme of an HTTP check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HttpScheme {
    #[default]
    HTTP,
    HTTPS,
}

/// TCP connect health check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpSocketCheck {
    /// Application port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Command health check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecCheck {
    /// Program and arguments, run without a shell.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
}

/// Continuous file sync from the active member to the standby.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.realtimeIntervalSeconds < self.batchIntervalSeconds").message("spec.fileSync.realtimeIntervalSeconds must be shorter than batchIntervalSeconds"),
    validation = Rule::new("self.paths.all(a, self.paths.all(b, a.path == b.path || !b.path.startsWith(a.path + '/')))").message("spec.fileSync.paths must not nest: one listed directory lies inside another"),
    validation = Rule::new("!self.paths.exists(p, p.path == '.') || size(self.paths) == 1").message("spec.fileSync.paths: '.' is the whole volume and must be the only path listed"),
)]
#[serde(rename_all = "camelCase")]
pub struct FileSyncSpec {
    /// Directories of the data volume to keep in step, relative to
    /// `spec.storage.mountPath`.
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["path".into()]))]
    pub paths: Vec<FileSyncPath>,
    /// Seconds between syncs of `realtime` paths.
    #[serde(default = "default_realtime")]
    #[schemars(range(min = 1, max = 3600))]
    pub realtime_interval_seconds: i32,
    /// Seconds between syncs of `batch` paths.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 2, max = 86400))]
    pub batch_interval_seconds: i32,
    /// How long quarantined files are kept and how much room they may take.
    #[serde(default)]
    pub quarantine: QuarantineSpec,
}

fn default_realtime() -> i32 {
    11
}
fn default_batch() -> i32 {
    500
}

/// One synced directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileSyncPath {
    /// Directory relative to the data volume, e.g. `uploads` or
    /// `config/templates`; `.` is the whole volume.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(
        validation = Rule::new("!self.startsWith('/')").message("spec.fileSync.paths[].path must be relative to the data volume, not absolute"),
        validation = Rule::new("!self.split('/').exists(s, s == '..')").message("spec.fileSync.paths[].path must not contain '..'"),
        validation = Rule::new("self.startsWith('/') || self == '.' || !self.split('/').exists(s, s == '' || s == '.')").message("spec.fileSync.paths[].path must be a clean path: no empty or '.' segments, no trailing '/'"),
    )]
    pub path: String,
    /// `realtime` (every `realtimeIntervalSeconds`) or `batch` (every
    /// `batchIntervalSeconds`).
    #[serde(default)]
    pub class: SyncClass,
}

/// How often a directory is synced.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncClass {
    #[default]
    Realtime,
    Batch,
}

/// How a resync reconciles the returning member (target) with the active
/// member (source).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResyncSpec {
    /// Files only on the target: `Quarantine` (moved aside with a manifest of
    /// where each came from), `Delete`, or `CopyBack` to the source.
    #[serde(default)]
    pub only_on_target: OnlyOnTarget,
    /// Files on both that differ: `SourceWins`, or `NewestWins` by modification
    /// time in UTC (refused while clock skew exceeds `maxClockSkewSeconds`).
    /// The losing version is quarantined.
    #[serde(default)]
    pub conflict: ConflictRule,
}

/// Rule for files found only on the resync target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnlyOnTarget {
    #[default]
    Quarantine,
    Delete,
    CopyBack,
}

/// Rule for files that differ between source and target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConflictRule {
    #[default]
    SourceWins,
    NewestWins,
}

/// Quarantine limits: how long quarantined files are kept and how much
/// room they may take on each member's volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.maxBytes) || quantity(self.maxBytes).compareTo(quantity('1')) >= 0").message("spec.fileSync.quarantine.maxBytes must be at least one byte, a quantity such as 5Gi"))]
#[serde(rename_all = "camelCase")]
pub struct QuarantineSpec {
    /// Days a resync's quarantined files are kept after the newest of them
    /// was moved there; then the whole resync's quarantine is removed (and
    /// recorded, and told as an Event).
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub retention_days: i32,
    /// Room the quarantine may take on a member's volume, e.g. `5Gi`: past
    /// it the oldest resyncs' quarantines are removed, never the newest.
    /// Unset: no limit but the retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Quantity>,
}

impl Default for QuarantineSpec {
    fn default() -> Self {
        QuarantineSpec { retention_days: default_retention_days(), max_bytes: None }
    }
}

fn default_retention_days() -> i32 {
    30
}

/// Bytes in a Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`); `None`
/// for anything else.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let (n, mult) = match num.parse::<f64>() {
        Ok(n) => (n, mult),
        // `E` is also the exa suffix (`2E`), not only an exponent.
        Err(_) if suffix.is_empty() && num.ends_with('E') => (num[..num.len() - 1].parse().ok()?, 1e18),
        Err(_) => return None,
    };
    let bytes = n * mult;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Split-brain handling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("self.policy != 'IsolateSecondary' || self.keep == 'Active' || self.keep == 'Primary'").message("spec.splitBrain.keep cannot be MostRecent or MostChanges with policy IsolateSecondary: that policy always keeps the primary"),
    validation = Rule::new("self.policy != 'IsolateSecondary' || !has(self.repairJob)").message("spec.splitBrain.repairJob runs after a resync, which policy IsolateSecondary never does; use ForceSecondaryStandby or Manual, or remove repairJob"),
)]
#[serde(rename_all = "camelCase")]
pub struct SplitBrainSpec {
    /// `ForceSecondaryStandby` (default): the losing side goes standby and is
    /// resynced from the kept side. `Manual`: stop, show the difference, wait
    /// for a resolve request. `IsolateSecondary`: stop the secondary's pod and
    /// run alone until a resolve request.
    #[serde(default)]
    pub policy: SplitBrainPolicy,
    /// Side kept by `ForceSecondaryStandby`: the `Active` member (default:
    /// the one holding the Lease, which clients were told serves), the
    /// configured `Primary`, the `MostRecent` writer, or the one with
    /// `MostChanges` since the split.
    #[serde(default)]
    pub keep: KeepSide,
    /// A container run as a Job after the file resync (e.g. a database repair
    /// command), with `HAPAIR_KEPT_MEMBER`, `HAPAIR_EPOCH` and both members'
    /// addresses in its environment. The pair returns to `Enabled` only when
    /// it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_job: Option<Container>,
}

/// Split-brain policy (the three classic methods: force standby and resync, stop and reconcile by hand, isolate the secondary).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SplitBrainPolicy {
    #[default]
    ForceSecondaryStandby,
    Manual,
    IsolateSecondary,
}

/// Which side a split-brain repair keeps.
///
/// `Active` is the default because after a partition the member holding the
/// Lease is the one that was lawfully elected: the VIP sent clients to it and
/// it acknowledged their writes, while the other side was fenced and could
/// only have been written behind hapair's back. Keeping the `Primary` by
/// default would hand the role back to the fenced side and move the
/// acknowledged writes to quarantine.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeepSide {
    #[default]
    Active,
    Primary,
    MostRecent,
    MostChanges,
}

/// Limits on a standby outage (like an appliance's replication-log thresholds).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.maxBacklog) || quantity(self.maxBacklog).isGreaterThan(quantity('0'))").message("spec.standbyOutage.maxBacklog must be a positive quantity such as 10Gi"))]
#[serde(rename_all = "camelCase")]
pub struct StandbyOutageSpec {
    /// Bytes of changes the standby may fall behind, e.g. `10Gi`; unset: no
    /// byte limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backlog: Option<Quantity>,
    /// Seconds the standby may be unreachable; unset: no time limit.
    #[serde(default = "default_outage_duration", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 31536000))]
    pub max_duration_seconds: Option<i64>,
}

fn default_outage_duration() -> Option<i64> {
    Some(86400)
}

impl Default for StandbyOutageSpec {
    fn default() -> Self {
        StandbyOutageSpec { max_backlog: None, max_duration_seconds: default_outage_duration() }
    }
}

/// The injected sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Port of the agent's mTLS endpoint (status, file sync); must not be used
    /// by the application. The next port is the agent's plain probe and
    /// metrics port, so at most 65534.
    #[serde(default = "default_agent_port")]
    #[schemars(range(min = 1024, max = 65534))]
    pub port: i32,
    /// Resources of the sidecar. Unset, it requests 20m of CPU and 32Mi of
    /// memory and has no limits: without a request the kubelet gives the
    /// agent the smallest CPU weight there is, and on a busy node it can
    /// then wait seconds for a CPU — long enough to miss its renewals; a CPU
    /// limit would throttle it the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How much the agent logs (to its container's log); `info` when unset.
    /// Changing it replaces the standby's pod at once and the active's only
    /// once it is no longer active, like any change to the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
}

/// A log level, most to least severe.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

fn default_agent_port() -> i32 {
    7443
}

impl AgentSpec {
    /// The sidecar's resources: those set, or the default requests (see
    /// `resources`).
    pub fn effective_resources(&self) -> ResourceRequirements {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        self.resources.clone().unwrap_or_else(|| ResourceRequirements {
            requests: Some(
                [("cpu".to_string(), Quantity("20m".into())), ("memory".to_string(), Quantity("32Mi".into()))].into(),
            ),
            ..Default::default()
        })
    }
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec { port: default_agent_port(), resources: None, log_level: None }
    }
}
