//! The agent's side of the leader Lease: read it, renew it while holding it,
//! release it on an application failure.
//!
//! Renew and release are JSON patches that start with `test` operations on
//! the holder and the epoch (`leaseTransitions`): the API server applies the
//! write only if this member still holds the Lease at the epoch it is active
//! at. A failover by the operator bumps the epoch, so a late renew by the old
//! active fails instead of overwriting it.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::proto::{ANN_DRAINING, ANN_INTERVAL, ANN_MISSED, ANN_RELEASED, ANN_RELEASED_BY};

pub const FIELD_MANAGER: &str = "hapair-agent";

/// What the Lease says, as far as the agent cares.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub epoch: i64,
    pub interval_seconds: Option<i32>,
    pub missed_threshold: Option<i32>,
    /// `renewTime` as written: which renewal this is (compared, never read
    /// as a time — it is the writer's clock).
    pub renewed: Option<String>,
    /// The previous holder's last renewal, as the takeover that named the
    /// current holder recorded it.
    pub replaced: Option<String>,
    /// The drain mark ([`ANN_DRAINING`]) as written.
    pub drain_mark: Option<String>,
    /// Whether the Lease has annotations at all (a JSON patch adds a key
    /// only to a map that exists).
    pub annotated: bool,
    /// Which version of the object this is: a watch starts from it.
    pub resource_version: Option<String>,
}

impl LeaseView {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let ann = lease.metadata.annotations.clone().unwrap_or_default();
        let num = |k: &str| ann.get(k).and_then(|v| v.parse::<i32>().ok()).filter(|v| *v > 0);
        LeaseView {
            renewed: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            replaced: ann.get(crate::proto::ANN_REPLACED_RENEWAL).cloned(),
            drain_mark: ann.get(ANN_DRAINING).cloned(),
            annotated: lease.metadata.annotations.is_some(),
            resource_version: lease.metadata.resource_version.clone(),
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            epoch: i64::from(spec.lease_transitions.unwrap_or(0)),
            interval_seconds: num(ANN_INTERVAL),
            missed_threshold: num(ANN_MISSED),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The Lease is no longer ours at our epoch (a `test` failed, or it is gone).
    #[error("lease lost: {0}")]
    Lost(String),
    /// The API server could not be asked; the outcome is unknown.
    #[error("lease unreachable: {0}")]
    Unreachable(String),
}

fn classify(e: kube::Error) -> LeaseError {
    match &e {
        kube::Error::Api(s) if matches!(s.code, 404 | 409 | 422) => LeaseError::Lost(s.message.clone()),
        _ => LeaseError::Unreachable(e.to_string()),
    }
}

pub async fn read(api: &Api<Lease>, name: &str) -> Result<Option<LeaseView>, LeaseError> {
    match api.get_opt(name).await {
        Ok(lease) => Ok(lease.as_ref().map(LeaseView::of)),
        Err(e) => Err(LeaseError::Unreachable(e.to_string())),
    }
}

fn params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

fn guarded(identity: &str, epoch: i64, ops: serde_json::Value) -> json_patch::Patch {
    let mut all = vec![
        json!({"op": "test", "path": "/spec/holderIdentity", "value": identity}),
        json!({"op": "test", "path": "/spec/leaseTransitions", "value": epoch}),
    ];
    all.extend(ops.as_array().cloned().unwrap_or_default());
    serde_json::from_value(serde_json::Value::Array(all)).expect("static JSON patch shape")
}

/// What a renewal does with the drain mark ([`ANN_DRAINING`]).
#[derive(Debug, Clone, PartialEq)]
pub enum MarkOp {
    /// Leave it: it already says what it should.
    Leave,
    /// Write it at the renewal's epoch (drained for a handover);
    /// `new_map` when the Lease has no annotations at all.
    Set { new_map: bool },
    /// Remove it (it reads this value): the member serves, or serves again.
    Clear(String),
    /// Write it empty, which reads as no mark: serving again without
    /// knowing whether a mark is there (a write of it that timed out may
    /// have landed all the same). The next renewal removes the empty one.
    Blank,
}

/// The JSON patch of a renewal: `renewTime`, the lease duration, and the
/// drain mark as `mark` says, all behind the holder and epoch tests.
pub fn renewal_patch(identity: &str, epoch: i64, lease_duration_seconds: i32, mark: &MarkOp) -> json_patch::Patch {
    let now = crate::clock::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let key = format!("/metadata/annotations/{}", ANN_DRAINING.replace('/', "~1"));
    let mut ops = vec![
        json!({"op": "replace", "path": "/spec/renewTime", "value": now}),
        json!({"op": "replace", "path": "/spec/leaseDurationSeconds", "value": lease_duration_seconds}),
    ];
    match mark {
        MarkOp::Leave => {}
        MarkOp::Set { new_map: false } => ops.push(json!({"op": "add", "path": key, "value": epoch.to_string()})),
        MarkOp::Set { new_map: true } => {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {ANN_DRAINING: epoch.to_string()}}))
        }
        MarkOp::Blank => ops.push(json!({"op": "add", "path": key, "value": ""})),
        MarkOp::Clear(was) => {
            ops.push(json!({"op": "test", "path": key, "value": was}));
            ops.push(json!({"op": "remove", "path": key}));
        }
    }
    guarded(identity, epoch, serde_json::Value::Array(ops))
}

/// Renews the Lease if `identity` holds it at `epoch`; publishes the lease
/// duration the agent fences against and sets or clears the drain mark.
/// Returns the Lease as written.
pub async fn renew(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    epoch: i64,
    lease_duration_seconds: i32,
    mark: &MarkOp,
) -> Result<LeaseView, LeaseError> {
    let patch = renewal_patch(identity, epoch, lease_duration_seconds, mark);
    api.patch(name, &params(), &Patch::<()>::Json(patch)).await.map(|l| LeaseView::of(&l)).map_err(classify)
}

/// Gives the Lease up (holder cleared, reason recorded) so the operator can
/// promote the standby at once. Only if `identity` still holds it at `epoch`.
pub async fn release(api: &Api<Lease>, name: &str, identity: &str, epoch: i64, reason: &str) -> Result<(), LeaseError> {
    let key = ANN_RELEASED.replace('/', "~1");
    let by_key = ANN_RELEASED_BY.replace('/', "~1");
    let member = identity.split('/').next().unwrap_or_default();
    let patch = guarded(
        identity,
        epoch,
        json!([
            {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
            {"op": "add", "path": format!("/metadata/annotations/{key}"), "value": reason},
            {"op": "add", "path": format!("/metadata/annotations/{by_key}"), "value": member},
        ]),
    );
    api.patch(name, &params(), &Patch::<()>::Json(patch)).await.map(|_| ()).map_err(classify)
}
