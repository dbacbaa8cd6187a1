//! What every builder shares: names, labels, owner references, the
//! applied-hash annotation, environment helpers and the restricted security
//! context. Imports nothing from its sibling builders.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, EnvVarSource, ObjectFieldSelector, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{HighAvailabilityPair, LABEL_PAIR, Member};

/// Annotation with a hash of what the operator last applied to an object;
/// equal hash, nothing to write.
pub const ANN_HASH: &str = "hapair.dev/applied-hash";
pub const RUN_DIR: &str = "/var/run/hapair";
pub const TLS_DIR: &str = "/var/run/hapair-tls";
pub const AGENT_DATA_DIR: &str = "/var/lib/hapair/data";

/// What the builders need besides the pair.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Image of the agent sidecar: the operator's own image.
    pub agent_image: String,
    /// With `--agent-network-policy`: the operator's pods, the agents' other
    /// allowed clients.
    pub agent_network_policy: Option<OperatorPods>,
}

/// Where the operator's own pods run: the other allowed client of the agents.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

pub fn owner(pair: &HighAvailabilityPair) -> OwnerReference {
    pair.controller_owner_ref(&()).expect("a stored pair has a name and uid")
}

pub fn labels(pair: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_PAIR.to_string(), pair.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "hapair".to_string()),
    ])
}

/// The name of the agent's Role and RoleBinding and of the pair's
/// NetworkPolicy.
pub fn agent_object_name(pair: &str) -> String {
    format!("{pair}-hapair-agent")
}

pub fn meta(pair: &HighAvailabilityPair, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: pair.namespace(),
        labels: Some(labels(&pair.name_any())),
        owner_references: Some(vec![owner(pair)]),
        ..Default::default()
    }
}

/// Stamps `ANN_HASH` with a hash of the object as built.
pub fn stamp<T: serde::Serialize>(obj: &mut T, meta: impl Fn(&mut T) -> &mut ObjectMeta) {
    let hash = hash_of(&*obj);
    meta(obj).annotations.get_or_insert_with(Default::default).insert(ANN_HASH.to_string(), hash);
}

pub fn hash_of<T: serde::Serialize>(obj: &T) -> String {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub fn applied_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations.as_ref()?.get(ANN_HASH).map(String::as_str)
}

pub fn tls_secret_name(pair: &str) -> String {
    format!("{pair}-tls")
}
pub fn service_account_name(pair: &HighAvailabilityPair) -> String {
    pair.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| format!("{}-hapair", pair.name_any()))
}
pub fn pvc_name(pair: &str, member: Member) -> String {
    format!("{pair}-{member}-data")
}
pub fn standby_service_name(pair: &str) -> String {
    format!("{pair}-standby")
}

pub fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// Pod Security "restricted" settings for every container hapair adds.
/// Mode of the files of the pair's TLS volume. Without an `fsGroup` (which
/// hapair does not impose: it would also chown the user's data volume) the
/// kubelet leaves them owned by root, and the agent and Job containers run as
/// the image's non-root user: the files must be readable by others. Only the
/// container that mounts the volume sees them — the agent, or the Job's own
/// container, never the application.
pub const TLS_FILE_MODE: i32 = 0o444;

pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}
