//! The Helm chart on the testbed: rendering it, installing it with the
//! pinned helm, and waiting for the operator it installs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Api;
use serde::Deserialize;
use serde_json::Value;

use crate::common::{run, tool};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart() -> PathBuf {
    repo().join("charts/hapair")
}

/// `helm template` of the chart with `--set` values; the rendered documents.
pub fn render(ns: &str, sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "hapair"]).arg(chart()).args(["--namespace", ns]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "helm template {sets:?}: {err}");
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// helm against the testbed, in namespace `ns`.
pub fn helm(ns: &str) -> Command {
    let mut c = Command::new(tool("helm"));
    c.env("KUBECONFIG", crate::common::kubeconfig_path())
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("hapair-helm-cache"));
    c.args(["--namespace", ns]);
    c
}

/// The operator's Deployment, once its pods run and one of them leads.
pub async fn wait_operator(h: &super::Harness, deployment: &str) {
    use k8s_openapi::api::apps::v1::Deployment;
    let api: Api<Deployment> = Api::namespaced(h.client.clone(), &h.ns.name);
    let start = Instant::now();
    loop {
        let d = api.get_opt(deployment).await.unwrap();
        let ready = d.as_ref().and_then(|d| d.status.as_ref()?.ready_replicas).unwrap_or(0);
        if ready >= 1 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{deployment}: no ready replica: {:?}",
            d.and_then(|d| d.status)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
