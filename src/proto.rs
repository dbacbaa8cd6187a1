//! What agents and the operator say to each other: the JSON of the agent's
//! `/v1/status`, and the names both sides agree on (Lease identity and
//! annotations).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::{Member, Role};

/// Lease annotation: heartbeat interval the active agent must use (set by
/// the operator from the spec).
pub const ANN_INTERVAL: &str = "hapair.dev/heartbeat-interval-seconds";
/// Lease annotation: missed-heartbeat threshold (set by the operator).
pub const ANN_MISSED: &str = "hapair.dev/missed-threshold";
/// Lease annotation: why the last holder released the Lease (set by the agent).
pub const ANN_RELEASED: &str = "hapair.dev/released-reason";
/// Lease annotation: the operation request whose takeover set the current
/// holder (set by the operator at the compare-and-swap, so it survives a
/// crash right after it).
pub const ANN_OPERATION: &str = "hapair.dev/operation-id";
/// Lease annotation: which member released the Lease (set by the agent).
pub const ANN_RELEASED_BY: &str = "hapair.dev/released-by";

/// A member's Lease identity: its configured role and its pod's UID, so a
/// recreated pod never mistakes its predecessor's Lease for its own.
pub fn lease_identity(member: Member, pod_uid: &str) -> String {
    format!("{member}/{pod_uid}")
}

/// Splits a Lease identity into member and pod UID.
pub fn parse_identity(identity: &str) -> Option<(Member, &str)> {
    let (member, uid) = identity.split_once('/')?;
    Some((member.parse().ok()?, uid))
}

/// The agent's answer to `GET /v1/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub member: Member,
    pub pod_uid: String,
    /// Current role as the agent enforces it (role file).
    pub role: Role,
    /// Epoch the agent is active at, or was last active at (0: never).
    pub epoch: i64,
    /// Outcome of the application health check; `None` without a check or
    /// before the first one.
    pub app_healthy: Option<bool>,
    /// The agent's wall clock when it answered.
    pub wall_clock: DateTime<Utc>,
    /// Whether the agent's last heartbeat to its peer got an answer.
    pub peer_reachable: Option<bool>,
    /// Generation of synced data the member holds.
    pub sync_generation: i64,
    /// Lease renewals that failed since the agent started.
    pub lease_renew_failures: u64,
    /// Why the agent released the Lease, if it did.
    pub released: Option<String>,
    /// Holding the Lease but no longer serving: a planned handover is under
    /// way and the application has stopped taking writes.
    #[serde(default)]
    pub draining: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_garbage_is_rejected() {
        let id = lease_identity(Member::Secondary, "0b5c-11");
        assert_eq!(parse_identity(&id), Some((Member::Secondary, "0b5c-11")));
        assert_eq!(parse_identity(""), None);
        assert_eq!(parse_identity("tertiary/x"), None);
        assert_eq!(parse_identity("primary"), None);
    }
}
