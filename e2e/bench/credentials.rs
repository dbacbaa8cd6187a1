//! The bench's operator and agents with the credentials they have when
//! deployed, not the admin's: the API server then classifies their requests
//! as in production (API Priority and Fairness exempts the admin's).
//!
//! - The operator: the chart's ServiceAccount, its Roles for the watched
//!   namespace and its FlowSchema (the leader Lease's renewals at the
//!   `leader-election` level), rendered by helm from the chart itself, and a
//!   token from the TokenRequest API in a kubeconfig of its own.
//! - Each member's agent: a token for the ServiceAccount its pod names (the
//!   one the operator made for the pair, bound by the operator's Role to
//!   the pair's Lease), requested as the kubelet requests a pod's projected
//!   token; its requests go with every other service account's, to
//!   `workload-low`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, discovery};
use serde_json::Value;

use crate::common;
use crate::harness::helm;

/// How long the tokens last: longer than any run of the bench.
const TOKEN_SECONDS: i64 = 12 * 3600;

/// The chart's release name: the operator's ServiceAccount and leader Lease
/// are named after it.
pub const RELEASE: &str = "hapair";

/// The kinds of the chart that give the operator its identity and rights.
const KINDS: [&str; 5] = ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "FlowSchema"];

/// What the chart grants an operator watching `ns` (its release in `ns`
/// too), applied; the returned kubeconfig authenticates as its
/// ServiceAccount. The FlowSchema is cluster-scoped: [`remove`] deletes it.
pub async fn operator(client: &Client, ns: &str, dir: &Path) -> PathBuf {
    let docs = helm::render(ns, &[&format!("watchNamespaces={{{ns}}}")]);
    let mut applied = 0;
    for doc in docs.iter().filter(|d| KINDS.iter().any(|k| d["kind"] == *k)) {
        apply(client, ns, doc).await;
        applied += 1;
    }
    assert!(
        docs.iter().any(|d| d["kind"] == "FlowSchema") && applied >= 4,
        "the chart renders no FlowSchema or too few RBAC objects"
    );
    let token = token(client, ns, RELEASE).await.unwrap_or_else(|e| panic!("the operator's token: {e}"));
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, kubeconfig(&token)).expect("the operator's kubeconfig written");
    path
}

/// Deletes the chart's FlowSchema for `ns` (the namespace's deletion takes
/// everything else).
pub async fn remove(client: &Client, ns: &str) {
    use k8s_openapi::api::flowcontrol::v1::FlowSchema;
    let schemas: Api<FlowSchema> = Api::all(client.clone());
    let _ = schemas.delete(&format!("{RELEASE}-{ns}-leader-election"), &Default::default()).await;
}

/// A client authenticated as ServiceAccount `sa` in `ns`.
pub async fn client(admin: &Client, ns: &str, sa: &str) -> Result<Client, String> {
    let token = token(admin, ns, sa).await?;
    let mut config = common::config().await;
    config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
    Client::try_from(config).map_err(|e| format!("a client for {sa}: {e}"))
}

async fn token(client: &Client, ns: &str, sa: &str) -> Result<String, String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(TOKEN_SECONDS), ..Default::default() },
        ..Default::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("a token for {ns}/{sa}: {e}"))?;
    answer.status.map(|s| s.token).ok_or_else(|| format!("the token request for {ns}/{sa} came back without one"))
}

/// The testbed's kubeconfig with its user replaced by `token`.
fn kubeconfig(token: &str) -> String {
    let admin = std::fs::read_to_string(common::kubeconfig_path()).expect("the testbed's kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("the testbed's kubeconfig is YAML");
    let user = "operator";
    config["users"] = serde_yaml::to_value(vec![serde_json::json!({"name": user, "user": {"token": token}})]).unwrap();
    if let Some(contexts) = config["contexts"].as_sequence_mut() {
        for c in contexts {
            c["context"]["user"] = user.into();
        }
    }
    serde_yaml::to_string(&config).unwrap()
}

async fn apply(client: &Client, ns: &str, doc: &Value) {
    let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("a rendered object");
    let types = obj.types.clone().expect("rendered with apiVersion and kind");
    let gvk = kube::api::GroupVersionKind::try_from(&types).expect("a group, version and kind");
    let (ar, caps): (ApiResource, _) = discovery::pinned_kind(client, &gvk).await.expect("a served kind");
    let api: Api<DynamicObject> = match caps.scope {
        discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), obj.metadata.namespace.as_deref().unwrap_or(ns), &ar)
        }
        discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let name = obj.metadata.name.clone().expect("a rendered name");
    let pp = PatchParams::apply("hapair-bench-scale").force();
    api.patch(&name, &pp, &Patch::Apply(&obj)).await.unwrap_or_else(|e| panic!("{} {name}: {e}", types.kind));
}
