//! `HighAvailabilityPairSpec`: what the user asks for. Every field has a
//! default or a reason to be required, and every bound is checked at
//! admission (schema ranges and CEL rules on the types below).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::operation::OperationRequest;
use super::settings::*;
use super::status::HighAvailabilityPairStatus;
use super::storage::*;

/// An application run as an active/standby pair: two member pods, one active
/// behind the pair's Service (the virtual IP), one standby ready to take over.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hapair.dev",
    version = "v1alpha1",
    kind = "HighAvailabilityPair",
    doc = "An application run as an active/standby pair: exactly one member serves behind the pair's Service.",
    plural = "highavailabilitypairs",
    singular = "highavailabilitypair",
    namespaced,
    shortname = "hap",
    shortname = "hapair",
    status = "HighAvailabilityPairStatus",
    printcolumn(name = "Active", type_ = "string", json_path = ".status.activeMember", description = "Member serving behind the pair's Service"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode", description = "NotConfigured, Initializing, Enabled, Alone, SplitBrain or Paused"),
    printcolumn(name = "Standby", type_ = "string", json_path = ".status.standbyMember", description = "Member ready to take over"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch", description = "Fencing token: bumps on every change of active member"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40")
        .message("the pair's name must be a lowercase DNS label of at most 40 characters that starts with a letter: it names the pair's Service, pods and Jobs"),
    validation = Rule::new("!has(oldSelf.spec.operation) || !has(self.spec.operation) || self.spec.operation.id == oldSelf.spec.operation.id || (has(self.status) && has(self.status.operations) && self.status.operations.exists(o, o.id == oldSelf.spec.operation.id && o.phase in ['Succeeded', 'Refused', 'Failed']))")
        .message(Message::Expression("'spec.operation: request ' + oldSelf.spec.operation.id + ' is still pending; wait until status.operations shows it Succeeded, Refused or Failed before submitting another'".into())),
    validation = Rule::new("!has(self.spec.operation) || (has(oldSelf.spec.operation) && oldSelf.spec.operation.id == self.spec.operation.id) || !has(self.status) || !has(self.status.operations) || !self.status.operations.exists(o, o.id == self.spec.operation.id)")
        .message(Message::Expression("'spec.operation.id: ' + self.spec.operation.id + ' was already used for an earlier request; choose a new id'".into())),
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.mode) || oldSelf.status.mode != 'SplitBrain' || self.spec.splitBrain.policy == oldSelf.spec.splitBrain.policy")
        .message("spec.splitBrain.policy cannot change while a split brain is being resolved (status.mode is SplitBrain); resolve it first"),
)]
#[x_kube(
    validation = Rule::new("!has(self.fileSync) || size(self.fileSync.paths) == 0 || has(self.storage)")
        .message("spec.fileSync needs spec.storage: synced paths are directories of each member's data volume"),
    validation = Rule::new("has(self.storage) == has(oldSelf.storage)")
        .message("spec.storage cannot be added or removed after creation: members' data volumes would be lost or orphaned; create a new pair instead"),
    validation = Rule::new("!has(self.persistentVolumeClaimRetentionPolicy) || has(self.storage)")
        .message("spec.persistentVolumeClaimRetentionPolicy needs spec.storage: without it the pair has no claims to keep or delete"),
    validation = Rule::new("self.service.ports.all(p, (has(p.targetPort) ? p.targetPort : p.port) != self.agent.port)")
        .message("spec.agent.port is used by a port of spec.service; choose another agent port"),
)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailabilityPairSpec {
    /// Pod template for the application. Each member pod gets these
    /// containers plus the injected `hapair-agent` sidecar, which publishes
    /// the member's role in `/var/run/hapair/role`.
    #[x_kube(
        validation = Rule::new("has(self.spec) && size(self.spec.containers) > 0").message("spec.template.spec.containers must list at least one application container"),
        validation = Rule::new("!has(self.spec) || self.spec.containers.all(c, c.name != 'hapair-agent')").message("spec.template: the container name hapair-agent is reserved for the injected sidecar; rename your container"),
        validation = Rule::new("!has(self.spec) || !has(self.spec.restartPolicy) || self.spec.restartPolicy == 'Always'").message("spec.template.spec.restartPolicy must be Always (or unset): members run until the operator replaces them"),
        validation = Rule::new("!has(self.metadata) || !has(self.metadata.labels) || self.metadata.labels.all(k, !k.startsWith('hapair.dev/'))").message("spec.template.metadata.labels: keys under hapair.dev/ are set by the operator; remove them"),
    )]
    pub template: PodTemplateSpec,

    /// A persistent volume per member (`<pair>-primary-data`,
    /// `<pair>-secondary-data`), mounted into every application container.
    /// Cannot be changed after creation.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.storage is immutable: a member's claim cannot be resized or moved in place; create a new pair instead"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// What deleting the pair does to the members' claims. Unset, or
    /// `whenDeleted: Retain`: they stay, data and all, and are not deleted by
    /// a `kubectl delete` of the wrong object; delete them by name
    /// (`<pair>-primary-data`, `<pair>-secondary-data`) when the data is no
    /// longer wanted. `whenDeleted: Delete`: they go with the pair. May be
    /// changed at any time; the claims' owner references follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_retention_policy: Option<ClaimRetentionPolicy>,

    /// The pair's Service: the virtual IP that always reaches the active member.
    pub service: ServiceSpec,

    /// How often members report and how many missed reports make a failure.
    #[serde(default)]
    pub heartbeat: HeartbeatSpec,

    /// When and how the standby takes over.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// Whether the active role returns to the configured primary once it is
    /// back and in sync.
    #[serde(default)]
    pub failback: FailbackSpec,

    /// Check of the application's critical process. Failing it on the active
    /// member is a confirmed failure: the standby takes over at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,

    /// Directories of the data volume kept in step from active to standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sync: Option<FileSyncSpec>,

    /// Rules for reconciling two members' files after a failover or split brain.
    #[serde(default)]
    pub resync: ResyncSpec,

    /// Largest clock difference between the members, in seconds, before the
    /// pair reports `ClockSkew` and refuses newest-wins resync.
    #[serde(default = "default_max_clock_skew")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_clock_skew_seconds: i32,

    /// What to do when both members have acted as active.
    #[serde(default)]
    pub split_brain: SplitBrainSpec,

    /// Limits on how long and how far the standby may fall behind while it is
    /// unreachable; warnings at 75 % and 90 %, then mode `Alone` and a full
    /// resync when it returns.
    #[serde(default)]
    pub standby_outage: StandbyOutageSpec,

    /// Settings of the injected `hapair-agent` sidecar.
    #[serde(default)]
    pub agent: AgentSpec,

    /// The pair's certificates (the members' mutual TLS, the manuals'
    /// "authentication key").
    #[serde(default)]
    pub certificates: CertificatesSpec,

    /// `Removed` runs the pair as one member on purpose (the manuals'
    /// "remove HA"): the member that is standby when it is set is stopped —
    /// its pod deleted, its claim kept — and the active serves alone, mode
    /// `NotConfigured`, with no standby alerts; no failover, switchover,
    /// failback or resync until it is `Enabled` again, which registers the
    /// standby anew (mode `Initializing` until it has synced, then
    /// `Enabled`).
    #[serde(default)]
    pub standby: StandbyPresence,

    /// Maintenance mode: the operator keeps observing and reporting but
    /// changes nothing, not even on a failure.
    #[serde(default)]
    pub paused: bool,

    /// An administrator's request (switchover, failover, failback,
    /// go-standby, split-brain resolution, resync). Performed once per `id` and
    /// acknowledged in `status.operations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationRequest>,
}

impl HighAvailabilityPairSpec {
    /// Whether the members' claims are deleted with the pair.
    pub fn claims_deleted_with_pair(&self) -> bool {
        self.persistent_volume_claim_retention_policy.as_ref().is_some_and(|p| p.when_deleted == ClaimRetention::Delete)
    }
}

/// The pair's certificates.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesSpec {
    /// How long the members' and the operator's certificates are made
    /// for. They are renewed when two-thirds through (by the pair's CA,
    /// without a restart or a failover): at least 300 s, which leaves the
    /// kubelet its minute to bring a renewed Secret into the pods.
    #[serde(default = "default_certificate_lifetime")]
    #[schemars(range(min = 300, max = 315_360_000))]
    pub lifetime_seconds: i64,
}

impl Default for CertificatesSpec {
    fn default() -> Self {
        CertificatesSpec { lifetime_seconds: default_certificate_lifetime() }
    }
}

fn default_certificate_lifetime() -> i64 {
    crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS
}

/// Whether the pair has its standby (`spec.standby`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StandbyPresence {
    #[default]
    Enabled,
    Removed,
}

fn default_max_clock_skew() -> i32 {
    30
}

/// Configured role of a member. Fixed for the member's life; the current
/// role (active or standby) moves between them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Member {
    Primary,
    Secondary,
}

impl Member {
    pub const BOTH: [Member; 2] = [Member::Primary, Member::Secondary];

    pub fn as_str(self) -> &'static str {
        match self {
            Member::Primary => "primary",
            Member::Secondary => "secondary",
        }
    }

    pub fn peer(self) -> Member {
        match self {
            Member::Primary => Member::Secondary,
            Member::Secondary => Member::Primary,
        }
    }

    /// Name of the member's pod: `<pair>-primary` or `<pair>-secondary`.
    pub fn pod_name(self, pair: &str) -> String {
        format!("{pair}-{}", self.as_str())
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Member {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(Member::Primary),
            "secondary" => Ok(Member::Secondary),
            other => Err(format!("unknown member {other:?}: expected primary or secondary")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_named_after_the_pair_and_each_has_the_other_as_peer() {
        assert_eq!(Member::Primary.pod_name("db"), "db-primary");
        assert_eq!(Member::Secondary.pod_name("db"), "db-secondary");
        for m in Member::BOTH {
            assert_eq!(m.peer().peer(), m);
            assert_ne!(m.peer(), m);
            assert_eq!(m.as_str().parse::<Member>(), Ok(m));
        }
        assert!("Primary".parse::<Member>().is_err());
    }

    #[test]
    fn a_spec_with_only_the_required_fields_gets_the_documented_defaults() {
        let spec: HighAvailabilityPairSpec = serde_yaml::from_str(
            "template: {spec: {containers: [{name: app, image: x}]}}\nservice: {ports: [{name: http, port: 80}]}",
        )
        .unwrap();
        assert_eq!(spec.heartbeat, HeartbeatSpec { interval_seconds: 5, missed_threshold: 3 });
        assert_eq!(spec.max_clock_skew_seconds, 30);
        assert_eq!(spec.failback.delay_seconds, 300);
        assert_eq!(spec.standby_outage.max_duration_seconds, Some(86400));
        let sync: FileSyncSpec = serde_yaml::from_str("paths: [{path: uploads}]").unwrap();
        assert_eq!((sync.realtime_interval_seconds, sync.batch_interval_seconds), (11, 500));
        assert_eq!(sync.paths[0].class, SyncClass::Realtime);
    }
}
