//! The HighAvailabilityPair API on a real API server: the generated CRD
//! installs, valid pairs round-trip with their defaults, and bad pairs are
//! refused at apply time with a message that says what to fix. Also the
//! agent's Lease patches, whose meaning rests on how the API server applies
//! JSON patch `test`, `add` and `remove`.

mod common;

use common::*;
use hapair::api::{HighAvailabilityPair, Member};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// A pair that is wrong in one way, and the words the refusal must contain.
struct Bad {
    what: &'static str,
    patch: Value,
    expect: &'static [&'static str],
}

fn bad_pairs() -> Vec<Bad> {
    let storage = json!({"size": "1Gi"});
    vec![
        Bad {
            what: "heartbeat interval below range",
            patch: json!({"spec": {"heartbeat": {"intervalSeconds": 0}}}),
            expect: &["spec.heartbeat.intervalSeconds", "greater than or equal to 1"],
        },
        Bad {
            what: "heartbeat interval above range",
            patch: json!({"spec": {"heartbeat": {"intervalSeconds": 601}}}),
            expect: &["spec.heartbeat.intervalSeconds", "less than or equal to 600"],
        },
        Bad {
            what: "missed threshold below range",
            patch: json!({"spec": {"heartbeat": {"missedThreshold": 1}}}),
            expect: &["spec.heartbeat.missedThreshold", "greater than or equal to 2"],
        },
        Bad {
            what: "unknown failover mode",
            patch: json!({"spec": {"failover": {"mode": "Sometimes"}}}),
            expect: &["spec.failover.mode", "Unsupported value: \"Sometimes\"", "\"Automatic\"", "\"Manual\""],
        },
        Bad {
            what: "unknown split-brain policy",
            patch: json!({"spec": {"splitBrain": {"policy": "Toss"}}}),
            expect: &["spec.splitBrain.policy", "Unsupported value: \"Toss\""],
        },
        Bad {
            what: "absolute sync path",
            patch: json!({"spec": {"storage": storage, "fileSync": {"paths": [{"path": "/etc"}]}}}),
            expect: &["spec.fileSync.paths[0].path", "must be relative to the data volume"],
        },
        Bad {
            what: "sync path escaping with ..",
            patch: json!({"spec": {"storage": storage, "fileSync": {"paths": [{"path": "uploads/../../etc"}]}}}),
            expect: &["spec.fileSync.paths[0].path", "must not contain '..'"],
        },
        Bad {
            what: "unclean sync path",
            patch: json!({"spec": {"storage": storage, "fileSync": {"paths": [{"path": "uploads/"}]}}}),
            expect: &["must be a clean path"],
        },
        Bad {
            what: "nested sync paths",
            patch: json!({"spec": {"storage": storage, "fileSync": {"paths": [{"path": "a"}, {"path": "a/b"}]}}}),
            expect: &["spec.fileSync", "must not nest"],
        },
        Bad {
            what: "whole volume beside another sync path",
            patch: json!({"spec": {"storage": storage, "fileSync": {"paths": [{"path": "."}, {"path": "uploads"}]}}}),
            expect: &["spec.fileSync", "'.' is the whole volume and must be the only path listed"],
        },
        Bad {
            what: "duplicate sync path",
            patch: json!({"spec": {"storage": storage, "fileSync": {"paths": [{"path": "a"}, {"path": "a", "class": "batch"}]}}}),
            expect: &["spec.fileSync.paths[1]", "Duplicate value"],
        },
        Bad {
            what: "realtime interval not shorter than batch",
            patch: json!({"spec": {"storage": storage, "fileSync": {"paths": [{"path": "a"}], "realtimeIntervalSeconds": 600, "batchIntervalSeconds": 500}}}),
            expect: &["realtimeIntervalSeconds must be shorter than batchIntervalSeconds"],
        },
        Bad {
            what: "file sync without storage",
            patch: json!({"spec": {"fileSync": {"paths": [{"path": "a"}]}}}),
            expect: &["spec.fileSync needs spec.storage"],
        },
        Bad {
            what: "two actions in one operation",
            patch: json!({"spec": {"operation": {"id": "op-1", "switchover": {}, "failback": {}}}}),
            expect: &["spec.operation", "exactly one action"],
        },
        Bad {
            what: "operation naming no action",
            patch: json!({"spec": {"operation": {"id": "op-1"}}}),
            expect: &["spec.operation", "exactly one action"],
        },
        Bad {
            what: "operation id with bad characters",
            patch: json!({"spec": {"operation": {"id": "Switch_Over", "switchover": {}}}}),
            expect: &["spec.operation.id", "should match"],
        },
        Bad {
            what: "go-standby without a member",
            patch: json!({"spec": {"operation": {"id": "op-1", "goStandby": {}}}}),
            expect: &["spec.operation.goStandby.member", "Required value"],
        },
        Bad {
            what: "go-standby naming an unknown member",
            patch: json!({"spec": {"operation": {"id": "op-1", "goStandby": {"member": "tertiary"}}}}),
            expect: &["spec.operation.goStandby.member", "Unsupported value: \"tertiary\""],
        },
        Bad {
            what: "missing template",
            patch: json!({"spec": {"template": null}}),
            expect: &["spec.template", "Required value"],
        },
        Bad {
            what: "template without containers",
            patch: json!({"spec": {"template": {"spec": {"containers": []}}}}),
            expect: &["spec.template", "at least one application container"],
        },
        Bad {
            what: "container named like the sidecar",
            patch: json!({"spec": {"template": {"spec": {"containers": [{"name": "hapair-agent", "image": "x"}]}}}}),
            expect: &["spec.template", "hapair-agent is reserved"],
        },
        Bad {
            what: "template setting an operator label",
            patch: json!({"spec": {"template": {"metadata": {"labels": {"hapair.dev/member": "primary"}}}}}),
            expect: &["spec.template", "keys under hapair.dev/ are set by the operator"],
        },
        Bad {
            what: "template restart policy Never",
            patch: json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}),
            expect: &["restartPolicy must be Always"],
        },
        Bad {
            what: "health check with two probes",
            patch: json!({"spec": {"healthCheck": {"httpGet": {"port": 8080}, "tcpSocket": {"port": 8080}}}}),
            expect: &["spec.healthCheck", "exactly one of httpGet, tcpSocket or exec"],
        },
        Bad {
            what: "health check timeout longer than period",
            patch: json!({"spec": {"healthCheck": {"tcpSocket": {"port": 8080}, "periodSeconds": 2, "timeoutSeconds": 5}}}),
            expect: &["timeoutSeconds must not exceed periodSeconds"],
        },
        Bad {
            what: "a claim retention policy without storage",
            patch: json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}}),
            expect: &["spec.persistentVolumeClaimRetentionPolicy needs spec.storage"],
        },
        Bad {
            what: "a claim retention policy of another name",
            patch: json!({"spec": {"storage": storage, "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Orphan"}}}),
            expect: &["whenDeleted", "Unsupported value: \"Orphan\""],
        },
        Bad {
            what: "a standby neither enabled nor removed",
            patch: json!({"spec": {"standby": "Off"}}),
            expect: &["spec.standby", "Unsupported value: \"Off\"", "\"Enabled\", \"Removed\""],
        },
        Bad {
            what: "repair job with a policy that never resyncs",
            patch: json!({"spec": {"splitBrain": {"policy": "IsolateSecondary", "repairJob": {"name": "repair", "image": "x"}}}}),
            expect: &["spec.splitBrain", "repairJob runs after a resync"],
        },
        Bad {
            what: "a quarantine limit below one byte",
            patch: json!({"spec": {"storage": {"size": "1Gi", "mountPath": "/data"},
                                   "fileSync": {"paths": [{"path": "."}], "quarantine": {"maxBytes": "500m"}}}}),
            expect: &["spec.fileSync.quarantine.maxBytes must be at least one byte"],
        },
        Bad {
            what: "isolate-secondary keeping the most recent writer",
            patch: json!({"spec": {"splitBrain": {"policy": "IsolateSecondary", "keep": "MostRecent"}}}),
            expect: &["spec.splitBrain.keep cannot be MostRecent or MostChanges"],
        },
        Bad {
            what: "agent port without room for its probe port",
            patch: json!({"spec": {"agent": {"port": 65535}}}),
            expect: &["spec.agent.port", "65534"],
        },
        Bad {
            what: "agent port taken by the application",
            patch: json!({"spec": {"agent": {"port": 8080}}}),
            expect: &["spec.agent.port is used by a port of spec.service"],
        },
        Bad {
            what: "service without ports",
            patch: json!({"spec": {"service": {"ports": []}}}),
            expect: &["spec.service.ports", "at least 1 items"],
        },
        Bad {
            what: "node port on a ClusterIP service",
            patch: json!({"spec": {"service": {"ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}}),
            expect: &["nodePort needs spec.service.type NodePort or LoadBalancer"],
        },
        Bad {
            what: "zero-sized storage",
            patch: json!({"spec": {"storage": {"size": "0"}}}),
            expect: &["spec.storage.size must be a positive quantity"],
        },
        Bad {
            what: "relative mount path",
            patch: json!({"spec": {"storage": {"size": "1Gi", "mountPath": "data"}}}),
            expect: &["spec.storage.mountPath must be an absolute path"],
        },
        Bad {
            what: "clock skew limit out of range",
            patch: json!({"spec": {"maxClockSkewSeconds": 0}}),
            expect: &["spec.maxClockSkewSeconds", "greater than or equal to 1"],
        },
        Bad {
            what: "flap window shorter than a minute",
            patch: json!({"spec": {"failover": {"flapBudget": {"windowSeconds": 10}}}}),
            expect: &["spec.failover.flapBudget.windowSeconds", "greater than or equal to 60"],
        },
        Bad {
            what: "non-positive standby backlog limit",
            patch: json!({"spec": {"standbyOutage": {"maxBacklog": "-1Gi"}}}),
            expect: &["spec.standbyOutage.maxBacklog must be a positive quantity"],
        },
    ]
}

/// The run is against the Kubernetes it was meant for: the testbed's, or
/// the oldest supported one under `make test-compat` (a compat run that
/// fell back to the testbed's binaries would prove nothing).
#[tokio::test]
async fn the_api_server_is_the_pinned_kubernetes() {
    let want = std::env::var("HAPAIR_TESTBED_KUBE_VERSION")
        .expect("HAPAIR_TESTBED_KUBE_VERSION is not set: run with `make integration` or `make test-compat`");
    let info = client().await.apiserver_version().await.expect("/version");
    assert_eq!(info.git_version, want, "{info:?}");
}

#[tokio::test]
async fn every_bad_pair_is_refused_with_a_message_that_says_what_to_fix() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "bad").await;
    let pairs = dynamic_pairs(&client, &ns.name);
    let cases = bad_pairs();
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for case in &cases {
        let mut obj = minimal_pair("db");
        merge(&mut obj, &case.patch);
        // A create, as `kubectl apply` sends for a pair that does not exist yet.
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        match pairs.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(status)) if status.code == 422 => {
                let missing: Vec<_> = case.expect.iter().filter(|w| !status.message.contains(*w)).collect();
                if !missing.is_empty() {
                    failures.push(format!("{}: message lacks {missing:?}: {}", case.what, status.message));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", case.what)),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[tokio::test]
async fn bad_pair_names_are_refused() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "names").await;
    let pairs = dynamic_pairs(&client, &ns.name);
    for name in ["a-name-far-too-long-for-the-derived-objects-x", "1db"] {
        let msg = refusal(apply(&pairs, &minimal_pair(name)).await);
        assert!(msg.contains("lowercase DNS label of at most 40 characters"), "{name}: {msg}");
    }
    apply(&pairs, &minimal_pair(&"d".repeat(40))).await.expect("a 40-character name is fine");
}

#[tokio::test]
async fn a_minimal_pair_round_trips_with_every_default_filled_in() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "minimal").await;
    apply(&dynamic_pairs(&client, &ns.name), &minimal_pair("web")).await.expect("minimal pair accepted");
    let pair = Api::<HighAvailabilityPair>::namespaced(client.clone(), &ns.name).get("web").await.unwrap();
    let spec = &pair.spec;
    assert_eq!(spec.heartbeat.interval_seconds, 5);
    assert_eq!(spec.heartbeat.missed_threshold, 3);
    assert_eq!(spec.failover.mode, hapair::api::FailoverMode::Automatic);
    assert_eq!(spec.failover.flap_budget.max_automatic_failovers, 3);
    assert_eq!(spec.failback.mode, hapair::api::FailbackMode::Manual);
    assert_eq!(spec.failback.delay_seconds, 300);
    assert_eq!(spec.max_clock_skew_seconds, 30);
    assert_eq!(spec.resync.only_on_target, hapair::api::OnlyOnTarget::Quarantine);
    assert_eq!(spec.resync.conflict, hapair::api::ConflictRule::SourceWins);
    assert_eq!(spec.split_brain.policy, hapair::api::SplitBrainPolicy::ForceSecondaryStandby);
    assert_eq!(spec.standby_outage.max_duration_seconds, Some(86400));
    assert_eq!(spec.agent.port, 7443);
    assert!(!spec.paused);
    assert!(pair.status.is_none(), "nobody has written status yet");
}

#[tokio::test]
async fn a_pair_using_every_field_round_trips_unchanged() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "full").await;
    let mut obj = minimal_pair("files");
    merge(
        &mut obj,
        &json!({"spec": {
            "storage": {"size": "5Gi", "storageClassName": "fast", "mountPath": "/var/lib/app"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"},
            "standby": "Removed",
            "service": {"type": "LoadBalancer", "standby": true, "annotations": {"lb.example/internal": "true"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}, {"name": "metrics", "port": 9090, "protocol": "TCP"}]},
            "heartbeat": {"intervalSeconds": 1, "missedThreshold": 3},
            "failover": {"mode": "Manual", "delaySeconds": 2, "maxSyncLagSeconds": 60, "flapBudget": {"maxAutomaticFailovers": 2, "windowSeconds": 600}},
            "failback": {"mode": "Automatic", "delaySeconds": 30},
            "healthCheck": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
            "fileSync": {"paths": [{"path": "uploads"}, {"path": "config/templates", "class": "batch"}], "realtimeIntervalSeconds": 5, "batchIntervalSeconds": 120},
            "resync": {"onlyOnTarget": "CopyBack", "conflict": "NewestWins"},
            "maxClockSkewSeconds": 10,
            "splitBrain": {"policy": "Manual", "keep": "MostChanges", "repairJob": {"name": "repair", "image": "registry.example/app:1.0", "command": ["app", "repair"]}},
            "standbyOutage": {"maxBacklog": "10Gi", "maxDurationSeconds": 7200},
            "agent": {"port": 9443},
            "paused": true,
            "operation": {"id": "resync-1", "reason": "nightly check", "resync": {"dryRun": true}}
        }}),
    );
    apply(&dynamic_pairs(&client, &ns.name), &obj).await.expect("full pair accepted");
    let pair = Api::<HighAvailabilityPair>::namespaced(client.clone(), &ns.name).get("files").await.unwrap();
    // What we sent comes back, field for field, through the typed API.
    let sent: HighAvailabilityPair = serde_json::from_value(obj).unwrap();
    assert_eq!(pair.spec, sent.spec);
    let op = pair.spec.operation.unwrap();
    assert_eq!(op.kind(), Some(hapair::api::OperationKind::Resync));
}

/// Applies `first`, then `second`, and returns the refusal of the second.
async fn refused_update(prefix: &str, first: Value, second: Value, status: Option<Value>) -> String {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, prefix).await;
    let pairs = dynamic_pairs(&client, &ns.name);
    apply(&pairs, &first).await.expect("first version accepted");
    if let Some(status) = status {
        pairs
            .patch_status("db", &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await
            .expect("status written");
    }
    refusal(apply(&pairs, &second).await)
}

fn with(patch: Value) -> Value {
    let mut obj = minimal_pair("db");
    merge(&mut obj, &patch);
    obj
}

#[tokio::test]
async fn storage_cannot_change_after_creation() {
    let one = with(json!({"spec": {"storage": {"size": "1Gi"}}}));
    let two = with(json!({"spec": {"storage": {"size": "2Gi"}}}));
    let msg = refused_update("storage-resize", one.clone(), two, None).await;
    assert!(msg.contains("spec.storage is immutable"), "{msg}");
    let msg = refused_update("storage-add", minimal_pair("db"), one, None).await;
    assert!(msg.contains("spec.storage cannot be added or removed"), "{msg}");
}

#[tokio::test]
async fn a_second_operation_is_refused_while_the_first_is_pending() {
    let first = with(json!({"spec": {"operation": {"id": "op-1", "switchover": {}}}}));
    let second = with(json!({"spec": {"operation": {"id": "op-2", "failback": {}}}}));
    let msg = refused_update("op-pending", first.clone(), second.clone(), None).await;
    assert!(msg.contains("request op-1 is still pending"), "{msg}");
    // Running is not over either.
    let running = json!({"operations": [{"id": "op-1", "kind": "Switchover", "phase": "Running"}]});
    let msg = refused_update("op-running", first, second, Some(running)).await;
    assert!(msg.contains("request op-1 is still pending"), "{msg}");
}

#[tokio::test]
async fn a_submitted_operation_cannot_be_edited_under_the_same_id() {
    let first = with(json!({"spec": {"operation": {"id": "op-1", "switchover": {}}}}));
    let second = with(json!({"spec": {"operation": {"id": "op-1", "failover": {"force": true}}}}));
    let msg = refused_update("op-edit", first, second, None).await;
    assert!(msg.contains("cannot be changed once submitted"), "{msg}");
}

#[tokio::test]
async fn a_new_operation_is_accepted_once_the_last_one_finished_but_not_under_a_used_id() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-next").await;
    let pairs = dynamic_pairs(&client, &ns.name);
    apply(&pairs, &with(json!({"spec": {"operation": {"id": "op-1", "switchover": {}}}}))).await.unwrap();
    let done = json!({"status": {"operations": [{"id": "op-1", "kind": "Switchover", "phase": "Succeeded"}]}});
    pairs.patch_status("db", &PatchParams::default(), &Patch::Merge(done)).await.unwrap();
    apply(&pairs, &with(json!({"spec": {"operation": {"id": "op-2", "failback": {}}}})))
        .await
        .expect("a new request after the last one succeeded");
    let refused = json!({"status": {"operations": [
        {"id": "op-2", "kind": "Failback", "phase": "Refused", "reason": "AlreadyOnPrimary"},
        {"id": "op-1", "kind": "Switchover", "phase": "Succeeded"}]}});
    pairs.patch_status("db", &PatchParams::default(), &Patch::Merge(refused)).await.unwrap();
    let msg = refusal(apply(&pairs, &with(json!({"spec": {"operation": {"id": "op-1", "switchover": {}}}}))).await);
    assert!(msg.contains("op-1 was already used"), "{msg}");
    // Withdrawing the request is always allowed.
    let stored = apply(&pairs, &minimal_pair("db")).await.expect("operation removed");
    assert!(stored.data["spec"].get("operation").is_none());
}

#[tokio::test]
async fn split_brain_policy_is_frozen_while_a_split_brain_is_being_resolved() {
    let first = with(json!({"spec": {"splitBrain": {"policy": "Manual"}}}));
    let second = with(json!({"spec": {"splitBrain": {"policy": "ForceSecondaryStandby"}}}));
    let msg = refused_update("sb-frozen", first, second, Some(json!({"mode": "SplitBrain"}))).await;
    assert!(msg.contains("cannot change while a split brain is being resolved"), "{msg}");
}

#[tokio::test]
async fn status_is_written_only_through_the_status_subresource() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "status").await;
    let pairs = dynamic_pairs(&client, &ns.name);
    let mut obj = minimal_pair("db");
    obj["status"] = json!({"mode": "Enabled", "activeMember": "secondary", "epoch": 7});
    apply(&pairs, &obj).await.unwrap();
    let typed = Api::<HighAvailabilityPair>::namespaced(client.clone(), &ns.name);
    assert!(typed.get("db").await.unwrap().status.is_none(), "status in a create is dropped");

    let through_main = json!({"status": {"mode": "Enabled", "epoch": 3}});
    typed.patch("db", &PatchParams::default(), &Patch::Merge(&through_main)).await.unwrap();
    assert!(typed.get("db").await.unwrap().status.is_none(), "status through the main resource is ignored");

    let through_status =
        json!({"status": {"mode": "Enabled", "activeMember": "primary", "epoch": 1}, "spec": {"paused": true}});
    typed.patch_status("db", &PatchParams::default(), &Patch::Merge(&through_status)).await.unwrap();
    let pair = typed.get("db").await.unwrap();
    let status = pair.status.expect("status through the subresource is stored");
    assert_eq!(status.active_member, Some(Member::Primary));
    assert_eq!(status.epoch, 1);
    assert!(!pair.spec.paused, "spec through the status subresource is ignored");
}

#[tokio::test]
async fn kubectl_apply_shows_the_refusal_to_the_user() {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "kubectl").await;
    let bin = std::env::var("HAPAIR_TESTBED_BIN").expect("HAPAIR_TESTBED_BIN is set by `make integration`");
    let dir = std::env::temp_dir().join(format!("hapair-kubectl-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pair.yaml");
    let obj = with(json!({"spec": {"heartbeat": {"intervalSeconds": 900}}}));
    std::fs::write(&file, serde_yaml::to_string(&obj).unwrap()).unwrap();
    let out = std::process::Command::new(format!("{bin}/kubectl"))
        .args(["--kubeconfig", &kubeconfig_path(), "-n", &ns.name, "apply", "-f"])
        .arg(&file)
        .output()
        .expect("kubectl runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kubectl apply of a bad pair must fail");
    assert!(
        stderr.contains("spec.heartbeat.intervalSeconds") && stderr.contains("less than or equal to 600"),
        "{stderr}"
    );
}

/// The agent's renewal patch on a real API server: it applies only while
/// the member holds the Lease at its epoch, sets the drain mark (on a Lease
/// with annotations or without any), and clears it only when it reads what
/// the agent last saw; each refusal is the "lost" answer (409/422), never an
/// error the agent would take for an unreachable server.
#[tokio::test]
async fn the_agent_renewal_sets_and_clears_the_drain_mark_only_while_it_holds_the_lease() {
    use hapair::agent::lease::{LeaseError, MarkOp, renew};
    use k8s_openapi::api::coordination::v1::Lease;
    let client = client().await;
    let ns = TestNamespace::new(&client, "drain-mark").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let me = "primary/uid-1";
    let lease = |annotations: Option<Value>| {
        let mut l = json!({"metadata": {"name": "db"},
            "spec": {"holderIdentity": me, "leaseTransitions": 4, "leaseDurationSeconds": 3}});
        if let Some(a) = annotations {
            l["metadata"]["annotations"] = a;
        }
        serde_json::from_value::<Lease>(l).unwrap()
    };
    leases
        .create(&PostParams::default(), &lease(Some(json!({"hapair.dev/heartbeat-interval-seconds": "1"}))))
        .await
        .unwrap();
    let mark = |l: &Lease| l.metadata.annotations.as_ref().and_then(|a| a.get("hapair.dev/draining").cloned());

    let set = renew(&leases, "db", me, 4, 3, &MarkOp::Set { new_map: false }).await.expect("renewed");
    assert_eq!(set.drain_mark.as_deref(), Some("4"));
    let stored = leases.get("db").await.unwrap();
    assert_eq!(mark(&stored).as_deref(), Some("4"));
    assert_eq!(
        stored.metadata.annotations.unwrap().get("hapair.dev/heartbeat-interval-seconds").map(String::as_str),
        Some("1"),
        "other annotations kept"
    );
    // Not the holder, or not at its epoch: nothing applies.
    for (who, epoch) in [("secondary/uid-2", 4), (me, 3)] {
        let r = renew(&leases, "db", who, epoch, 3, &MarkOp::Clear("4".into())).await;
        assert!(matches!(r, Err(LeaseError::Lost(_))), "{who} at {epoch}: {r:?}");
    }
    assert_eq!(mark(&leases.get("db").await.unwrap()).as_deref(), Some("4"));
    // A clear that expects another value (someone changed the mark) is refused.
    let r = renew(&leases, "db", me, 4, 3, &MarkOp::Clear("3".into())).await;
    assert!(matches!(r, Err(LeaseError::Lost(_))), "{r:?}");
    let cleared = renew(&leases, "db", me, 4, 3, &MarkOp::Clear("4".into())).await.expect("cleared");
    assert_eq!(cleared.drain_mark, None);
    assert_eq!(mark(&leases.get("db").await.unwrap()), None);
    // Blanked whether or not a mark is there; the blank is then removed.
    for _ in 0..2 {
        let blank = renew(&leases, "db", me, 4, 3, &MarkOp::Blank).await.expect("blanked");
        assert_eq!(blank.drain_mark.as_deref(), Some(""));
    }
    renew(&leases, "db", me, 4, 3, &MarkOp::Clear(String::new())).await.expect("blank removed");
    assert_eq!(mark(&leases.get("db").await.unwrap()), None);

    // A Lease with no annotations at all: the mark comes as a new map.
    leases.delete("db", &Default::default()).await.unwrap();
    leases.create(&PostParams::default(), &lease(None)).await.unwrap();
    let bare = renew(&leases, "db", me, 4, 3, &MarkOp::Leave).await.expect("renewed");
    assert!(!bare.annotated);
    let set = renew(&leases, "db", me, 4, 3, &MarkOp::Set { new_map: true }).await.expect("renewed");
    assert_eq!((set.drain_mark.as_deref(), set.annotated), (Some("4"), true));
}
