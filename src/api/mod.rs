//! The `HighAvailabilityPair` API (`hapair.dev/v1alpha1`): spec, status,
//! operation requests and the CRD generated from them.
//!
//! Validation lives in the types as schema bounds and CEL rules, so the API
//! server refuses a bad pair at `kubectl apply` with a message that says what
//! to fix; the operator never has to guess what a field means.

mod crd;
mod operation;
pub mod reference;
mod settings;
mod spec;
mod status;
mod storage;
mod timings;

pub use crd::{crd, crd_yaml};
pub use operation::*;
pub use settings::*;
pub use spec::*;
pub use status::*;
pub use storage::*;
pub use timings::EffectiveTimings;

/// API group of every hapair resource.
pub const GROUP: &str = "hapair.dev";
/// Label on every object the operator creates for a pair: the pair's name.
pub const LABEL_PAIR: &str = "hapair.dev/pair";
/// Label on a member pod: its configured role (`primary` or `secondary`).
/// Network policies and people select on it together with [`LABEL_PAIR`].
pub const LABEL_MEMBER: &str = "hapair.dev/member";
/// Label naming the Service an EndpointSlice serves (Kubernetes' own).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming who manages an EndpointSlice (Kubernetes' own).
pub const LABEL_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// [`LABEL_SLICE_MANAGED_BY`] on the slices the operator writes.
pub const SLICE_MANAGER: &str = "operator.hapair.dev";
/// Label on a member pod: its current role (`active`, `standby`, `fenced`).
pub const LABEL_ROLE: &str = "hapair.dev/role";
/// Name of the sidecar the operator injects into each member pod; an
/// application container may not use it.
pub const AGENT_CONTAINER: &str = "hapair-agent";
/// Longest pair name: the longest derived name, `<pair>-resync-<epoch>` (a
/// Job, whose name must fit a 63-character label), leaves room for a
/// ten-digit epoch.
pub const MAX_PAIR_NAME: usize = 40;
