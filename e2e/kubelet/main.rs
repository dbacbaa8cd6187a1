//! `hapair-e2e-kubelet NAMESPACE`: the e2e harness's kubelet stand-in as a
//! process of its own, for `make demo`: runs the member pods of every pair
//! in NAMESPACE as local processes (each in its own network namespace) until
//! stopped. Reads the kubeconfig from HAPAIR_TESTBED_KUBECONFIG.
#![forbid(unsafe_code)]

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../harness/kubelet.rs"]
mod kubelet;
#[path = "../harness/netns.rs"]
mod netns;
#[path = "../harness/proxy.rs"]
mod proxy;

use std::path::PathBuf;

#[tokio::main]
async fn main() {
    let ns = std::env::args().nth(1).expect("usage: hapair-e2e-kubelet NAMESPACE");
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().expect("examples dir");
    let hapair = dir.parent().expect("profile dir").join("hapair");
    let app = dir.join("hapair-e2e-app");
    let root = PathBuf::from(std::env::var("HAPAIR_DEMO_DIR").unwrap_or_else(|_| "target/demo".into())).join("pods");
    std::fs::create_dir_all(&root).expect("pods dir");
    let text = std::fs::read_to_string(common::kubeconfig_path()).expect("kubeconfig");
    let v: serde_json::Value = serde_yaml::from_str(&text).expect("kubeconfig yaml");
    let cluster = &v["clusters"][0]["cluster"];
    let upstream = cluster["server"].as_str().unwrap().trim_start_matches("https://").parse().unwrap();
    let ca = cluster["certificate-authority-data"].as_str().unwrap().to_string();
    let client = common::client().await;
    let _kubelet = kubelet::Kubelet::start(client, &ns, root.canonicalize().unwrap(), hapair, app, upstream, ca).await;
    eprintln!("kubelet: running the pods of namespace {ns}");
    let _ = tokio::signal::ctrl_c().await;
}
