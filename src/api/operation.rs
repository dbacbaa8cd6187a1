//! Declarative operation requests (`spec.operation`) and their
//! acknowledgements (`status.operations`).
//!
//! An HA appliance's buttons (Failover Now, Failback, Go Standby, resync) become a
//! request written into the pair with a unique id, so `kubectl`, the plugin
//! and a GitOps commit all drive the pair the same way. The operator performs
//! each id once and records its outcome.

use chrono::{DateTime, Utc};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::spec::Member;

/// A request for one operation. Name exactly one action.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("[has(self.switchover), has(self.failover), has(self.failback), has(self.goStandby), has(self.resolveSplitBrain), has(self.resync), has(self.rotateCertificates)].filter(x, x).size() == 1")
        .message("spec.operation must name exactly one action: switchover, failover, failback, goStandby, resolveSplitBrain, resync or rotateCertificates"),
    validation = Rule::new("self.id != oldSelf.id || self == oldSelf")
        .message("spec.operation cannot be changed once submitted; submit a new request with a new id"),
)]
#[serde(rename_all = "camelCase")]
pub struct OperationRequest {
    /// Unique id of this request, e.g. `switchover-2026-11-21`. A request is
    /// performed once per id.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub id: String,
    /// Why the request was made; recorded in the pair's history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
    /// Planned handover to the standby with no data loss: the active stops
    /// writes, the standby catches up, then the role moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverRequest>,
    /// Fail over to the standby now (also the way to act on
    /// `FailoverRequired` in manual mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverRequest>,
    /// Return the active role to the configured primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<FailbackRequest>,
    /// Force a member to standby (an appliance's Go Standby button).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_standby: Option<GoStandbyRequest>,
    /// Resolve a split brain by keeping one side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_split_brain: Option<ResolveSplitBrainRequest>,
    /// Resync the standby's files from the active member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncRequest>,
    /// Replace the pair's CA and every certificate now (the manuals' key
    /// reset), with an overlap: nothing restarts, fails over or stops
    /// trusting its peer. Done once both agents present the new CA's
    /// certificates and the old CA is trusted no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_certificates: Option<RotateCertificatesRequest>,
}

/// Certificate rotation request (no options).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RotateCertificatesRequest {}

/// Planned switchover (no options).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SwitchoverRequest {}

/// Failover request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRequest {
    /// Skip the health and sync checks on the standby; the history records
    /// that data may be missing.
    #[serde(default)]
    pub force: bool,
}

/// Failback request (no options).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct FailbackRequest {}

/// Go-standby request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GoStandbyRequest {
    /// Member forced to standby.
    pub member: Member,
}

/// Split-brain resolution.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolveSplitBrainRequest {
    /// Member whose data is kept; the other is resynced from it.
    pub keep: Member,
}

/// Resync request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResyncRequest {
    /// Compute and report the plan without changing any file.
    #[serde(default)]
    pub dry_run: bool,
}

/// Kind of an operation, as recorded in status.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    Switchover,
    Failover,
    Failback,
    GoStandby,
    ResolveSplitBrain,
    Resync,
    RotateCertificates,
}

impl OperationRequest {
    /// The action this request names, or `None` when it names none or
    /// several (admission refuses both; this guards against an older CRD).
    pub fn kind(&self) -> Option<OperationKind> {
        let named = [
            (self.switchover.is_some(), OperationKind::Switchover),
            (self.failover.is_some(), OperationKind::Failover),
            (self.failback.is_some(), OperationKind::Failback),
            (self.go_standby.is_some(), OperationKind::GoStandby),
            (self.resolve_split_brain.is_some(), OperationKind::ResolveSplitBrain),
            (self.resync.is_some(), OperationKind::Resync),
            (self.rotate_certificates.is_some(), OperationKind::RotateCertificates),
        ];
        let mut set = named.iter().filter(|(on, _)| *on).map(|(_, k)| *k);
        match (set.next(), set.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    }
}

/// Progress of an acknowledged request.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationPhase {
    /// Seen and accepted; not started yet.
    Accepted,
    /// In progress.
    Running,
    /// Done.
    Succeeded,
    /// Not performed; `reason` says why.
    Refused,
    /// Started but did not complete; `reason` says why.
    Failed,
}

impl OperationPhase {
    /// Whether the request is over (a new request may be submitted).
    pub fn is_terminal(self) -> bool {
        matches!(self, OperationPhase::Succeeded | OperationPhase::Refused | OperationPhase::Failed)
    }
}

/// The operator's acknowledgement of a request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// The request's id.
    #[schemars(length(min = 1, max = 63))]
    pub id: String,
    /// The action requested.
    pub kind: OperationKind,
    /// Where it stands.
    pub phase: OperationPhase,
    /// Machine-readable reason for a refusal or failure, e.g. `StandbyNotHealthy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reason: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// Member the operation makes active, once chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Member>,
    /// Epoch when the operation was accepted; a Lease move past it is the
    /// operation's commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_epoch: Option<i64>,
    /// When the operator accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When it reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(yaml: &str) -> OperationRequest {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_request_names_its_one_action() {
        assert_eq!(request("{id: a, switchover: {}}").kind(), Some(OperationKind::Switchover));
        assert_eq!(request("{id: a, failover: {force: true}}").kind(), Some(OperationKind::Failover));
        assert_eq!(request("{id: a, goStandby: {member: secondary}}").kind(), Some(OperationKind::GoStandby));
        assert_eq!(
            request("{id: a, resolveSplitBrain: {keep: primary}}").kind(),
            Some(OperationKind::ResolveSplitBrain)
        );
        assert_eq!(request("{id: a, resync: {dryRun: true}}").kind(), Some(OperationKind::Resync));
    }

    #[test]
    fn a_request_naming_none_or_two_actions_has_no_kind() {
        assert_eq!(request("{id: a}").kind(), None);
        assert_eq!(request("{id: a, switchover: {}, failback: {}}").kind(), None);
    }

    #[test]
    fn only_finished_phases_are_terminal() {
        assert!(!OperationPhase::Accepted.is_terminal());
        assert!(!OperationPhase::Running.is_terminal());
        assert!(OperationPhase::Succeeded.is_terminal());
        assert!(OperationPhase::Refused.is_terminal());
        assert!(OperationPhase::Failed.is_terminal());
    }
}
