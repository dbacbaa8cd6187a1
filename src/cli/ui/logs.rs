//! The manual's "Download log files": the operator's and both agents' logs
//! for a pair, as one text file with a header before each part. A part
//! that cannot be read (no permission, a pod that is not there) says why
//! in its place rather than failing the download.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};

use crate::api::{AGENT_CONTAINER, Member};

/// Lines kept from each container's log.
const TAIL: i64 = 10_000;

pub async fn collect(client: &Client, ns: &str, pair: &str, operator_namespace: &str) -> String {
    let mut out = format!(
        "hapair logs for pair {ns}/{pair}, collected {}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for m in Member::BOTH {
        let name = m.pod_name(pair);
        part(&mut out, &format!("agent of {m} (pod {ns}/{name}, container {AGENT_CONTAINER})"), async {
            log(&pods, &name, AGENT_CONTAINER).await
        })
        .await;
    }
    let operators: Api<Pod> = Api::namespaced(client.clone(), operator_namespace);
    let selector = "app.kubernetes.io/name=hapair,app.kubernetes.io/component=operator";
    match operators.list(&ListParams::default().labels(selector)).await {
        Ok(list) if list.items.is_empty() => {
            part(&mut out, &format!("operator (namespace {operator_namespace})"), async {
                Err(format!("no pod labelled {selector} in namespace {operator_namespace} (--operator-namespace)"))
            })
            .await
        }
        Ok(list) => {
            for p in list.items {
                let name = p.name_any();
                let container = p.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone());
                let container = container.unwrap_or_default();
                part(&mut out, &format!("operator (pod {operator_namespace}/{name})"), async {
                    log(&operators, &name, &container).await
                })
                .await;
            }
        }
        Err(e) => {
            part(&mut out, &format!("operator (namespace {operator_namespace})"), async {
                Err(format!("cannot list its pods: {e}"))
            })
            .await
        }
    }
    out
}

async fn part(out: &mut String, title: &str, text: impl Future<Output = Result<String, String>>) {
    out.push_str(&format!("\n===== {title} =====\n"));
    match text.await {
        Ok(t) => {
            out.push_str(&t);
            if !t.ends_with('\n') {
                out.push('\n');
            }
        }
        Err(why) => out.push_str(&format!("(not available: {why})\n")),
    }
}

async fn log(pods: &Api<Pod>, name: &str, container: &str) -> Result<String, String> {
    let params =
        LogParams { container: Some(container.into()), tail_lines: Some(TAIL), timestamps: true, ..Default::default() };
    pods.logs(name, &params).await.map_err(|e| match e {
        kube::Error::Api(s) => s.message,
        e => e.to_string(),
    })
}
