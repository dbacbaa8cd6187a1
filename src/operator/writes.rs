//! How the operator writes to the API server: server-side apply under its
//! own field manager (forced: the objects are the operator's), and the two
//! answers a write may shrug off.

use kube::api::PatchParams;

pub const FIELD_MANAGER: &str = "hapair-operator";

pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// A compare-and-swap or a create lost a race (409).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// A delete of something already gone succeeded.
pub fn not_found(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}
