//! The kubelet's run-to-completion pods: a resync Job's (`hapair resync`)
//! and a split-brain repair Job's, run on the host and reported Succeeded or
//! Failed with their termination message.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::process::{Child, Command};

use super::{Kubelet, mounts};

/// A run-to-completion pod (a resync or repair Job's): one process on the host.
pub(super) struct JobRun {
    pub(super) uid: String,
    pub(super) child: Option<Child>,
    pub(super) dir: PathBuf,
    pub(super) reported: Option<serde_json::Value>,
}

impl Kubelet {
    /// Runs a resync Job's pod to completion: `hapair` with the container's
    /// arguments and environment, on the host (it only talks to agents),
    /// then reports the pod Succeeded or Failed with the termination message.
    pub(super) async fn tend_job(&self, pod: &Pod) -> Result<(), Box<dyn std::error::Error>> {
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            if let Some(mut run) = self.jobs.lock().unwrap().remove(&name)
                && let Some(child) = run.child.as_mut()
            {
                let _ = child.start_kill();
            }
            let _ = self
                .pods_api()
                .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                .await;
            return Ok(());
        }
        if phase == "Succeeded" || phase == "Failed" {
            return Ok(());
        }
        let known = self.jobs.lock().unwrap().get(&name).is_some_and(|r| r.uid == uid);
        if !known {
            let spec = pod.spec.clone().unwrap_or_default();
            if spec.node_name.is_none() {
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                                     "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}});
                let _: Result<serde_json::Value, _> =
                    self.pods_api().create_subresource("binding", &name, &PostParams::default(), &binding).await;
            }
            let dir = self.root.join(&name).join(&uid);
            let volumes = self.volumes(&spec, &dir).await?;
            let c = &spec.containers[0];
            let mut env = self.env(c, pod, Ipv4Addr::LOCALHOST, &mounts(c, &volumes));
            env.insert("HAPAIR_TERMINATION_LOG".into(), dir.join("termination-log").display().to_string());
            env.insert("RUST_LOG".into(), "info".into());
            let child = Command::new(&self.hapair_bin)
                .args(c.args.clone().unwrap_or_default())
                .env_clear()
                .envs(env)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("stdout.log"))?)
                .stderr(std::fs::File::create(dir.join("stderr.log"))?)
                .kill_on_drop(true)
                .spawn()?;
            self.jobs.lock().unwrap().insert(name.clone(), JobRun { uid, child: Some(child), dir, reported: None });
        }
        let status = {
            let mut jobs = self.jobs.lock().unwrap();
            let Some(run) = jobs.get_mut(&name) else { return Ok(()) };
            let image = pod.spec.as_ref().and_then(|s| s.containers[0].image.clone()).unwrap_or_default();
            let exit = run.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).map(|e| e.code().unwrap_or(137));
            let (phase, state) = match exit {
                None => ("Running", json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})),
                Some(code) => {
                    run.child = None;
                    let message = std::fs::read_to_string(run.dir.join("termination-log"))
                        .or_else(|_| std::fs::read_to_string(run.dir.join("stderr.log")))
                        .unwrap_or_default();
                    let tail: String = message.chars().rev().take(4096).collect::<Vec<_>>().into_iter().rev().collect();
                    (
                        if code == 0 { "Succeeded" } else { "Failed" },
                        json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                               "message": tail, "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:00Z"}}),
                    )
                }
            };
            let status = json!({
                "phase": phase,
                "hostIP": "127.0.0.1",
                "startTime": "2026-01-01T00:00:00Z",
                "containerStatuses": [{"name": pod.spec.as_ref().map_or(String::new(), |s| s.containers[0].name.clone()), "image": image, "imageID": "",
                    "ready": false, "restartCount": 0, "started": phase == "Running", "state": state}],
            });
            if run.reported.as_ref() == Some(&status) {
                None
            } else {
                run.reported = Some(status.clone());
                Some(status)
            }
        };
        if let Some(status) = status {
            self.pods_api()
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                .await?;
        }
        Ok(())
    }

    /// Kills a running resync Job pod's process (a Job killed mid-copy).
    pub fn kill_job_pods(&self) -> usize {
        let mut n = 0;
        for run in self.jobs.lock().unwrap().values_mut() {
            if let Some(c) = run.child.as_mut() {
                let _ = c.start_kill();
                n += 1;
            }
        }
        n
    }
}
