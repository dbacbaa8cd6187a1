//! Shared helpers for tests that run against the testbed's real API server
//! (`make integration` starts it and sets `HAPAIR_TESTBED_KUBECONFIG`).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hapair::api::{self, HighAvailabilityPair};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

pub const FIELD_MANAGER: &str = "hapair-test";

/// A tool built from its pinned Go module (`e2e/tools/build.sh`).
pub fn tool(name: &str) -> std::path::PathBuf {
    let build = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/tools/build.sh");
    let out = std::process::Command::new(build).output().expect("e2e/tools/build.sh runs");
    assert!(out.status.success(), "building the tools failed: {}", String::from_utf8_lossy(&out.stderr));
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join(name)
}

/// Runs `cmd`: whether it succeeded, its stdout and its stderr.
pub fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Path of the testbed's kubeconfig. Refuses to run against whatever
/// `KUBECONFIG` points to: these tests create and delete cluster objects.
pub fn kubeconfig_path() -> String {
    std::env::var("HAPAIR_TESTBED_KUBECONFIG")
        .expect("HAPAIR_TESTBED_KUBECONFIG is not set: run these tests with `make integration` (it starts the testbed)")
}

pub async fn config() -> Config {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("testbed kubeconfig readable");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("testbed kubeconfig valid")
}

pub async fn client() -> Client {
    Client::try_from(config().await).expect("client for the testbed")
}

/// Installs (or updates) the generated CRD and waits until it is served.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = api::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
        .await
        .expect("the generated CRD is accepted by the API server");
    for _ in 0..100 {
        let got = crds.get(&name).await.unwrap();
        let established = got
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            // Discovery can lag the condition by a moment.
            let pairs: Api<HighAvailabilityPair> = Api::all(client.clone());
            if pairs.list(&Default::default()).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("CRD {name} not established within 10s");
}

/// A namespace of its own for one test, deleted when dropped (in the background).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("{prefix}-{}-{}-{:x}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), nanos);
        let name: String = name.chars().take(63).collect::<String>().trim_end_matches('-').to_string();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create test namespace");
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    /// Deletes the namespace. The test's runtime is already winding down
    /// here, so the delete runs on a runtime (and client) of its own.
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let api = Api::<Namespace>::all(client().await);
                let _ = api.delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

/// Untyped access to pairs, for objects the Rust types cannot even express.
pub fn dynamic_pairs(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<HighAvailabilityPair>(&());
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The smallest valid pair.
pub fn minimal_pair(name: &str) -> Value {
    json!({
        "apiVersion": "hapair.dev/v1alpha1",
        "kind": "HighAvailabilityPair",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"containers": [{"name": "app", "image": "registry.example/app:1.0"}]}},
            "service": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }
    })
}

/// RFC 7386 JSON merge patch, to derive variants of a base object.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Server-side apply, as `kubectl apply --server-side` does.
pub async fn apply(api: &Api<DynamicObject>, obj: &Value) -> Result<DynamicObject, kube::Error> {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let obj: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await
}

/// The API server's message for a refused request.
pub fn refusal(result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Ok(obj) => panic!("expected the API server to refuse, but it stored {}", serde_json::to_string(&obj).unwrap()),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected 422 Invalid, got {status:?}");
            status.message.clone()
        }
        Err(e) => panic!("expected a validation error, got {e}"),
    }
}
