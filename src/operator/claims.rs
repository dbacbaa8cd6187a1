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
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tracing::{info, warn};

use super::act::{self, ActError};
use super::build;
use super::context::Context;
use super::observe::{ClaimState, Observed, claim_state as state};
use super::writes::{is_conflict, not_found};
use crate::api::{HighAvailabilityPair, Member};

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

/// Both members' claims (see [`ensure_claim`]).
pub async fn ensure(ctx: &Context, pair: &HighAvailabilityPair) -> Result<(), ActError> {
    for m in Member::BOTH {
        if let Some(claim) = build::pvc(pair, m) {
            ensure_claim(ctx, pair, &claim).await?;
        }
    }
    Ok(())
}

/// A member's claim: created when missing; a claim that exists (kept from
/// an earlier pair of the same name, or this pair's own) is used as it is,
/// its owner references made to follow the retention policy — the pair's
/// added for `Delete`, removed for `Retain` — with a merge patch that
/// carries the resourceVersion it read, so a concurrent change fails the
/// pass (retried like any failed write) rather than being overwritten.
async fn ensure_claim(
    ctx: &Context,
    pair: &HighAvailabilityPair,
    claim: &PersistentVolumeClaim,
) -> Result<(), ActError> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &pair.namespace().unwrap_or_default());
    let name = claim.name_any();
    let Some(current) = pvcs.get_opt(&name).await? else {
        pvcs.create(&PostParams::default(), claim)
            .await
            .map(|_| ())
            .or_else(|e| if is_conflict(&e) { Ok(()) } else { Err(e) })?;
        return Ok(());
    };
    let owners = build::claim_owners(pair, current.metadata.owner_references.as_deref());
    if owners.as_deref().unwrap_or_default() == current.metadata.owner_references.as_deref().unwrap_or_default() {
        return Ok(());
    }
    let keep = !pair.spec.claims_deleted_with_pair();
    info!(claim = %name, keep, "the claim's owner references follow the retention policy");
    let patch = json!({"metadata": {"resourceVersion": current.resource_version(), "ownerReferences": owners}});
    pvcs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
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
