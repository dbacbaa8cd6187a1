//! The members' claims (`spec.storage`), watched: one deleted is created
//! again at once, its owner references follow the retention policy, and a
//! standby whose claim is being deleted or whose volume is lost (its
//! PersistentVolume gone) is given a new one — the manuals' "replace a
//! failed server" without a manual step: its pod is replaced, it starts on
//! an empty volume and pulls everything from the active member.
//!
//! The active member's claim is never taken from under it: while it
//! serves, a claim being deleted stays in use (the API server's
//! `pvc-protection` holds it) and the operator logs a warning each round;
//! after a switchover it is replaced like any standby's.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use tracing::{info, warn};

use super::act::{self, ActError};
use super::build;
use super::context::Context;
use super::observe::Observed;
use super::writes::not_found;
use crate::api::{HighAvailabilityPair, Member};

/// A claim as the watch cache holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    Missing,
    /// Being deleted: held by `pvc-protection` while a pod uses it.
    Deleting,
    /// Its PersistentVolume is gone: the data is lost.
    Lost,
    Usable,
}

pub fn state(claim: Option<&PersistentVolumeClaim>) -> ClaimState {
    match claim {
        None => ClaimState::Missing,
        Some(c) if c.metadata.deletion_timestamp.is_some() => ClaimState::Deleting,
        Some(c) if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost") => ClaimState::Lost,
        Some(_) => ClaimState::Usable,
    }
}

/// Whether a claim of the pair is missing or owned against the retention
/// policy: the supporting objects are ensured again now rather than on the
/// five-minute pass. (A claim being deleted or lost is [`replace_lost`]'s,
/// which works from the cache every round; it counts here once it is gone.)
pub fn drifted(ctx: &Context, pair: &HighAvailabilityPair) -> bool {
    let ns = pair.namespace().unwrap_or_default();
    Member::BOTH.into_iter().filter_map(|m| build::pvc(pair, m)).any(|built| {
        let Some(cur) = ctx.claim(&ns, &built.name_any()) else { return true };
        let owners = cur.metadata.owner_references.as_deref();
        build::claim_owners(pair, owners).as_deref().unwrap_or_default() != owners.unwrap_or_default()
    })
}

/// Replaces what stands on a member's lost or deleted claim: the standby's
/// pod (so the claim can go), and a lost claim itself. `holder` is the
/// member the Lease names; its claim is left alone, and so is that of a
/// member whose agent last said it serves (a Lease deleted by hand names
/// nobody, which must not make the active member fair game).
pub async fn replace_lost(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    obs: &Observed,
    holder: Option<Member>,
) -> Result<(), ActError> {
    let ns = pair.namespace().unwrap_or_default();
    for m in Member::BOTH {
        let Some(built) = build::pvc(pair, m) else { continue };
        let name = built.name_any();
        let Some(claim) = ctx.claim(&ns, &name) else { continue };
        let st = state(Some(&claim));
        if !matches!(st, ClaimState::Deleting | ClaimState::Lost) {
            continue;
        }
        let why = if st == ClaimState::Lost { "its volume is lost" } else { "its claim is being deleted" };
        let serving = obs.member(m).agent.last.as_ref().is_some_and(|a| a.role == crate::api::Role::Active);
        if holder == Some(m) || serving {
            warn!(member = %m, claim = %name, "the active member's {why}: it keeps serving; switch over to replace it");
            continue;
        }
        if st == ClaimState::Lost {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: claim.uid(), resource_version: None }),
                ..Default::default()
            };
            claims.delete(&name, &dp).await.map(|_| ()).or_else(not_found)?;
        }
        if let Some(p) = obs.member(m).pod.as_ref().filter(|p| !p.deleting) {
            info!(member = %m, pod = %p.name, claim = %name, "{why}: replacing the standby on a new volume");
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(p.uid.clone()), resource_version: None }),
                ..Default::default()
            };
            pods.delete(&p.name, &dp).await.map(|_| ()).or_else(not_found)?;
            act::warn(
                ctx,
                pair,
                "MemberVolumeReplaced",
                format!(
                    "{m}'s {why} ({name}): its pod is replaced and it starts on a new, empty volume, then copies \
                     every synced file from the active member"
                ),
            )
            .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_usable_missing_deleting_or_lost() {
        let claim = |json: serde_json::Value| -> PersistentVolumeClaim { serde_json::from_value(json).unwrap() };
        assert_eq!(state(None), ClaimState::Missing);
        assert_eq!(state(Some(&claim(serde_json::json!({"status": {"phase": "Bound"}})))), ClaimState::Usable);
        assert_eq!(state(Some(&claim(serde_json::json!({"status": {"phase": "Pending"}})))), ClaimState::Usable);
        assert_eq!(state(Some(&claim(serde_json::json!({"status": {"phase": "Lost"}})))), ClaimState::Lost);
        let deleting = claim(serde_json::json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
                                                "status": {"phase": "Lost"}}));
        assert_eq!(state(Some(&deleting)), ClaimState::Deleting);
    }
}
