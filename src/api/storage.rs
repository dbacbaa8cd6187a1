//! A pair's storage: each member's claim, and what becomes of the claims
//! when the pair is deleted.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Per-member persistent volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("quantity(self.size).isGreaterThan(quantity('0'))").message("spec.storage.size must be a positive quantity such as 10Gi"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's claim, e.g. `10Gi`.
    pub size: Quantity,
    /// StorageClass of the claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Where the volume is mounted in every application container.
    #[serde(default = "default_mount_path")]
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')").message("spec.storage.mountPath must be an absolute path without '..'"))]
    pub mount_path: String,
}

fn default_mount_path() -> String {
    "/data".into()
}

/// What becomes of the members' claims (`spec.storage`) when the pair is
/// deleted, in the manner of a StatefulSet's policy of the same name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRetentionPolicy {
    /// `Retain`: deleting the pair leaves both claims and their data, and a
    /// pair created again with the same name in the same namespace uses
    /// them. `Delete`: the claims belong to the pair (owner references) and
    /// are garbage-collected with it.
    #[serde(default)]
    pub when_deleted: ClaimRetention,
}

/// Kept or deleted with the pair.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClaimRetention {
    #[default]
    Retain,
    Delete,
}
