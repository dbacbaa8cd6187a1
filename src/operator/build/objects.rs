//! Member pods (application containers plus the injected agent), claims,
//! the VIP and standby Services, the leader Lease, the agent's RBAC and TLS
//! Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, Probe, Secret, SecretVolumeSource, ServiceAccount, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role as RbacRole, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::{AGENT_CONTAINER, HighAvailabilityPair, LABEL_MEMBER, LABEL_ROLE, Member};
use crate::proto::{ANN_INTERVAL, ANN_MISSED, lease_identity};
use crate::tls;

use super::common::*;

pub fn tls_secret(pair: &HighAvailabilityPair, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta(pair, tls_secret_name(&pair.name_any())),
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    }
}

/// The agent may read, watch and renew its own pair's Lease, and nothing
/// else (a list or watch with a `metadata.name` field selector is
/// authorized against `resourceNames`).
pub fn agent_rbac(pair: &HighAvailabilityPair) -> (Option<ServiceAccount>, RbacRole, RoleBinding) {
    let name = pair.name_any();
    let role_name = super::common::agent_object_name(&name);
    let sa_name = service_account_name(pair);
    let own_sa = pair.spec.template.spec.as_ref().and_then(|s| s.service_account_name.as_ref()).is_none();
    let sa = own_sa.then(|| ServiceAccount { metadata: meta(pair, sa_name.clone()), ..Default::default() });
    let mut role = RbacRole {
        metadata: meta(pair, role_name.clone()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            resource_names: Some(vec![name.clone()]),
            verbs: vec!["get".into(), "list".into(), "watch".into(), "patch".into()],
            ..Default::default()
        }]),
    };
    stamp(&mut role, |r| &mut r.metadata);
    let mut binding = RoleBinding {
        metadata: meta(pair, role_name.clone()),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: role_name },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa_name,
            namespace: pair.namespace(),
            ..Default::default()
        }]),
    };
    stamp(&mut binding, |b| &mut b.metadata);
    (sa, role, binding)
}

/// A member's claim. Owned by the pair (and deleted with it) only when
/// `persistentVolumeClaimRetentionPolicy.whenDeleted` is `Delete`.
pub fn pvc(pair: &HighAvailabilityPair, member: Member) -> Option<PersistentVolumeClaim> {
    let storage = pair.spec.storage.as_ref()?;
    let mut m = meta(pair, pvc_name(&pair.name_any(), member));
    m.labels.get_or_insert_with(Default::default).insert(LABEL_MEMBER.into(), member.to_string());
    m.owner_references = claim_owners(pair, None);
    Some(PersistentVolumeClaim {
        metadata: m,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), storage.size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The owner references a member's claim should carry: those it has
/// (`current`), with the pair's own added when its claims go with it, and
/// removed when they are kept. `None` when that leaves none.
pub fn claim_owners(pair: &HighAvailabilityPair, current: Option<&[OwnerReference]>) -> Option<Vec<OwnerReference>> {
    let ours = owner(pair);
    let mut refs: Vec<OwnerReference> =
        current.unwrap_or_default().iter().filter(|r| r.uid != ours.uid).cloned().collect();
    if pair.spec.claims_deleted_with_pair() {
        refs.push(ours);
    }
    (!refs.is_empty()).then_some(refs)
}

/// A member pod: the user's template, the role volume mounted read-only into
/// every application container, and the agent sidecar.
pub fn member_pod(pair: &HighAvailabilityPair, member: Member, ctx: &BuildContext) -> Pod {
    let name = pair.name_any();
    let spec = &pair.spec;
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();

    let run_mount = VolumeMount {
        name: "hapair-run".into(),
        mount_path: RUN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let data_mount = spec.storage.as_ref().map(|s| VolumeMount {
        name: "hapair-data".into(),
        mount_path: s.mount_path.clone(),
        ..Default::default()
    });
    for c in &mut pod_spec.containers {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        mounts.push(run_mount.clone());
        mounts.extend(data_mount.clone());
    }
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: "hapair-run".into(),
        empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let (cert, key) = tls::member_cert_key(member);
    volumes.push(Volume {
        name: "hapair-tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tls_secret_name(&name)),
            items: Some(vec![
                KeyToPath { key: tls::CA_CERT.into(), path: "ca.crt".into(), ..Default::default() },
                KeyToPath { key: cert, path: "tls.crt".into(), ..Default::default() },
                KeyToPath { key, path: "tls.key".into(), ..Default::default() },
            ]),
            default_mode: Some(TLS_FILE_MODE),
            ..Default::default()
        }),
        ..Default::default()
    });
    volumes.push(api_credential_volume());
    if spec.storage.is_some() {
        volumes.push(Volume {
            name: "hapair-data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(&name, member),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let agent_port = spec.agent.port;
    let probe_port = agent_port + 1;
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(probe_port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(1),
        ..Default::default()
    };
    let mut agent_env = vec![
        env("HAPAIR_PAIR", name.clone()),
        field_env("HAPAIR_NAMESPACE", "metadata.namespace"),
        env("HAPAIR_MEMBER", member.as_str()),
        field_env("HAPAIR_POD_UID", "metadata.uid"),
        field_env("HAPAIR_BIND", "status.podIP"),
        field_env("HAPAIR_APP_HOST", "status.podIP"),
        env("HAPAIR_AGENT_PORT", agent_port.to_string()),
        env("HAPAIR_PROBE_PORT", probe_port.to_string()),
        env("HAPAIR_INTERVAL_SECONDS", spec.heartbeat.interval_seconds.to_string()),
        env("HAPAIR_MISSED_THRESHOLD", spec.heartbeat.missed_threshold.to_string()),
        env("HAPAIR_RUN_DIR", RUN_DIR),
        env("HAPAIR_TLS_DIR", TLS_DIR),
    ];
    if let Some(hc) = &spec.health_check {
        agent_env.push(env("HAPAIR_HEALTH_CHECK", serde_json::to_string(hc).unwrap_or_default()));
    }
    // Only when set: a pod built before the setting existed keeps its hash.
    if let Some(level) = spec.agent.log_level {
        agent_env.push(env("HAPAIR_LOG_LEVEL", level.as_str()));
    }
    let mut agent_mounts = vec![
        VolumeMount { name: "hapair-run".into(), mount_path: RUN_DIR.into(), ..Default::default() },
        VolumeMount {
            name: API_CREDENTIAL_VOLUME.into(),
            mount_path: SERVICE_ACCOUNT_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "hapair-tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    if spec.storage.is_some() {
        agent_mounts.push(VolumeMount {
            name: "hapair-data".into(),
            mount_path: AGENT_DATA_DIR.into(),
            ..Default::default()
        });
        agent_env.push(env("HAPAIR_DATA_DIR", AGENT_DATA_DIR));
        if let Some(fs) = spec.file_sync.as_ref().filter(|f| !f.paths.is_empty()) {
            agent_env.push(env("HAPAIR_FILE_SYNC", serde_json::to_string(fs).unwrap_or_default()));
        }
    }
    pod_spec.containers.push(Container {
        name: AGENT_CONTAINER.into(),
        image: Some(ctx.agent_image.clone()),
        args: Some(vec!["agent".into()]),
        env: Some(agent_env),
        ports: Some(vec![
            ContainerPort { name: Some("hapair-mtls".into()), container_port: agent_port, ..Default::default() },
            ContainerPort { name: Some("hapair-probe".into()), container_port: probe_port, ..Default::default() },
        ]),
        readiness_probe: Some(probe("/readyz", 1)),
        liveness_probe: Some(Probe { failure_threshold: Some(3), ..probe("/healthz", 5) }),
        resources: Some(spec.agent.effective_resources()),
        volume_mounts: Some(agent_mounts),
        security_context: Some(restricted_security_context()),
        ..Default::default()
    });
    pod_spec.service_account_name = Some(service_account_name(pair));
    // The pod's service account may patch the pair's Lease: its token goes
    // to the agent container alone (the projected volume above), never to
    // the application's containers, which could otherwise forge the holder
    // or the epoch.
    pod_spec.automount_service_account_token = Some(false);
    pod_spec.hostname.get_or_insert_with(|| member.to_string());
    super::placement::spread_members(&mut pod_spec, &name);

    let mut labels = tmeta.labels.clone().unwrap_or_default();
    labels.extend(self::labels(&name));
    labels.insert(LABEL_MEMBER.into(), member.to_string());
    labels.insert(LABEL_ROLE.into(), "standby".into());
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(member.pod_name(&name)),
            namespace: pair.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations.clone(),
            owner_references: Some(vec![owner(pair)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        ..Default::default()
    };
    // The role label moves with failovers; it must not make the pod look outdated.
    let hash = {
        let mut for_hash = pod.clone();
        if let Some(l) = for_hash.metadata.labels.as_mut() {
            l.remove(LABEL_ROLE);
        }
        hash_of(&for_hash)
    };
    pod.metadata.annotations.get_or_insert_with(Default::default).insert(ANN_HASH.into(), hash);
    pod
}

/// Where Kubernetes clients look for in-cluster credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The volume holding the agent's API credential.
pub const API_CREDENTIAL_VOLUME: &str = "hapair-api-credential";

/// What the kubelet would mount into every container with automounting on
/// (a bound, rotated token, the cluster's CA, the namespace), as a volume
/// mounted into the agent container only.
fn api_credential_volume() -> Volume {
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, ObjectFieldSelector, ProjectedVolumeSource,
        ServiceAccountTokenProjection, VolumeProjection,
    };
    Volume {
        name: API_CREDENTIAL_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(TLS_FILE_MODE),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

/// The leader Lease, granted to `holder` (a member and its pod's UID) at `epoch`.
pub fn lease(pair: &HighAvailabilityPair, holder: Member, pod_uid: &str, epoch: i64) -> Lease {
    let hb = &pair.spec.heartbeat;
    let mut m = meta(pair, pair.name_any());
    m.annotations = Some(BTreeMap::from([
        (ANN_INTERVAL.to_string(), hb.interval_seconds.to_string()),
        (ANN_MISSED.to_string(), hb.missed_threshold.to_string()),
    ]));
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    Lease {
        metadata: m,
        spec: Some(LeaseSpec {
            holder_identity: Some(lease_identity(holder, pod_uid)),
            lease_duration_seconds: Some(hb.interval_seconds * hb.missed_threshold),
            lease_transitions: Some(epoch as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::operator::build::jobs::*;

    pub(in crate::operator::build) fn pair(extra: &str) -> HighAvailabilityPair {
        let mut p: HighAvailabilityPair = serde_yaml::from_str(&format!(
            "apiVersion: hapair.dev/v1alpha1\nkind: HighAvailabilityPair\nmetadata: {{name: db, namespace: prod, uid: u1}}\n\
             spec:\n  template: {{metadata: {{labels: {{app: db}}}}, spec: {{containers: [{{name: app, image: x}}]}}}}\n  \
             service: {{ports: [{{name: pg, port: 5432}}]}}\n{extra}"
        ))
        .unwrap();
        p.metadata.uid = Some("u1".into());
        p
    }

    fn ctx() -> BuildContext {
        BuildContext { agent_image: "hapair:test".into(), agent_network_policy: None }
    }

    #[test]
    fn the_agent_logs_at_the_level_the_pair_asks_for_and_a_pair_without_one_is_built_as_before() {
        let agent_env = |p: &HighAvailabilityPair| {
            let pod = member_pod(p, Member::Primary, &ctx());
            let c = pod.spec.unwrap().containers.into_iter().find(|c| c.name == AGENT_CONTAINER).unwrap();
            c.env.unwrap_or_default().into_iter().map(|e| (e.name, e.value)).collect::<Vec<_>>()
        };
        let plain = pair("");
        assert!(!agent_env(&plain).iter().any(|(n, _)| n == "HAPAIR_LOG_LEVEL"));
        let debug = pair("  agent: {logLevel: debug}\n");
        assert!(agent_env(&debug).contains(&("HAPAIR_LOG_LEVEL".to_string(), Some("debug".to_string()))));
        let (a, b) = (member_pod(&plain, Member::Primary, &ctx()), member_pod(&debug, Member::Primary, &ctx()));
        assert_ne!(applied_hash(&a.metadata), applied_hash(&b.metadata), "a new level replaces the pods");
    }

    #[test]
    fn claims_are_owned_by_the_pair_only_when_they_go_with_it() {
        let kept = pair("  storage: {size: 1Gi}\n");
        let claim = pvc(&kept, Member::Primary).unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("db-primary-data"));
        assert_eq!(claim.metadata.owner_references, None, "kept by default");
        let gone = pair("  storage: {size: 1Gi}\n  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete}\n");
        let claim = pvc(&gone, Member::Secondary).unwrap();
        assert_eq!(claim.metadata.owner_references, Some(vec![owner(&gone)]));
        assert!(pvc(&pair(""), Member::Primary).is_none(), "no storage, no claim");
        // A claim that exists: someone else's reference stays either way;
        // the pair's own follows the policy, added once and removed.
        let other = OwnerReference { uid: "u-other".into(), name: "backup".into(), controller: None, ..owner(&kept) };
        assert_eq!(claim_owners(&kept, Some(&[other.clone(), owner(&kept)])), Some(vec![other.clone()]));
        assert_eq!(claim_owners(&kept, Some(&[owner(&kept)])), None);
        assert_eq!(claim_owners(&kept, None), None);
        assert_eq!(claim_owners(&gone, Some(std::slice::from_ref(&other))), Some(vec![other.clone(), owner(&gone)]));
        assert_eq!(claim_owners(&gone, Some(&[owner(&gone)])), Some(vec![owner(&gone)]));
    }

    #[test]
    fn the_resync_job_says_exactly_what_the_resync_program_reads() {
        use clap::{Args, FromArgMatches};
        let order = crate::proto::ResyncOrder {
            label: "resync-4".into(),
            only_on_target: crate::api::OnlyOnTarget::CopyBack,
            conflict: crate::api::ConflictRule::NewestWins,
            clocks_agree: true,
            dry_run: false,
            full: true,
        };
        let addr: std::net::SocketAddr = "10.1.2.3:7443".parse().unwrap();
        let job = resync_job(&pair(""), Member::Primary, addr, &order, &ctx());
        assert_eq!(job.metadata.name.as_deref(), Some("db-resync-4"));
        assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(4));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false), "the Job needs no API access");
        let c = &pod.containers[0];
        assert_eq!(c.security_context, Some(restricted_security_context()));
        // Every variable is one the program reads; together they give back the order.
        let cmd = crate::resync::Config::augment_args(clap::Command::new("resync"));
        let mut argv = vec!["resync".to_string()];
        for e in c.env.iter().flatten() {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|v| v == e.name.as_str()))
                .unwrap_or_else(|| panic!("{} is read by nobody", e.name));
            let value = e.value.clone().unwrap_or_else(|| "prod".into());
            let long = format!("--{}", arg.get_long().unwrap());
            match value.as_str() {
                "true" => argv.push(long),
                "false" => {}
                v => argv.extend([long, v.to_string()]),
            }
        }
        let matches = cmd.try_get_matches_from(argv).unwrap();
        let config = crate::resync::Config::from_arg_matches(&matches).unwrap();
        assert_eq!(config.order(), order);
        assert_eq!((config.target, config.target_address, config.pair.as_str()), (Member::Primary, addr, "db"));
        // Long names are cut to a valid label value, and stay unique.
        let long = resync_job_name(&"p".repeat(60), "resync-12");
        assert!(long.len() <= 63 && long != resync_job_name(&"p".repeat(60), "resync-13"));
    }

    #[test]
    fn a_member_pod_keeps_the_app_and_gains_the_agent_with_its_role_volume() {
        let pod = member_pod(&pair(""), Member::Secondary, &ctx());
        assert_eq!(pod.metadata.name.as_deref(), Some("db-secondary"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "db");
        assert_eq!(labels[crate::api::LABEL_PAIR], "db");
        assert_eq!(labels[LABEL_MEMBER], "secondary");
        let spec = pod.spec.unwrap();
        let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", AGENT_CONTAINER]);
        let app = &spec.containers[0];
        assert!(
            app.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == RUN_DIR && m.read_only == Some(true))
        );
        let agent = &spec.containers[1];
        let env: BTreeMap<_, _> =
            agent.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e.value.clone())).collect();
        assert_eq!(env["HAPAIR_MEMBER"].as_deref(), Some("secondary"));
        assert_eq!(env["HAPAIR_AGENT_PORT"].as_deref(), Some("7443"));
        assert_eq!(agent.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
        assert_eq!(spec.service_account_name.as_deref(), Some("db-hapair"));
        // The account may patch the Lease: only the agent holds its token.
        assert_eq!(spec.automount_service_account_token, Some(false));
        let has_credential =
            |c: &Container| c.volume_mounts.iter().flatten().any(|m| m.mount_path == SERVICE_ACCOUNT_DIR);
        assert!(!has_credential(app) && has_credential(agent));
        let volume = spec.volumes.iter().flatten().find(|v| v.name == API_CREDENTIAL_VOLUME).unwrap();
        let sources = volume.projected.as_ref().unwrap().sources.as_ref().unwrap();
        assert!(sources.iter().any(|s| s.service_account_token.as_ref().is_some_and(|t| t.path == "token")));
        assert_eq!(spec.topology_spread_constraints.map(|c| c.len()), Some(1), "members spread over nodes");
        assert_eq!(pod.metadata.owner_references.unwrap()[0].name, "db");
    }

    #[test]
    fn the_agent_requests_cpu_and_memory_unless_told_otherwise_and_has_no_limits() {
        let agent = |p: &HighAvailabilityPair| {
            member_pod(p, Member::Primary, &ctx()).spec.unwrap().containers.pop().unwrap().resources.unwrap()
        };
        let default = agent(&pair(""));
        let requests = default.requests.unwrap();
        assert_eq!((requests["cpu"].0.as_str(), requests["memory"].0.as_str()), ("20m", "32Mi"));
        assert_eq!(default.limits, None, "a CPU limit throttles the agent into missed renewals");
        let set = agent(&pair("  agent: {resources: {requests: {cpu: 100m}, limits: {memory: 256Mi}}}\n"));
        assert_eq!(set.requests.unwrap()["cpu"].0, "100m");
        assert_eq!(set.limits.unwrap()["memory"].0, "256Mi");
    }

    #[test]
    fn the_pod_hash_ignores_the_role_label_but_sees_the_template() {
        let p = pair("");
        let a = member_pod(&p, Member::Primary, &ctx());
        let mut relabeled = a.clone();
        relabeled.metadata.labels.as_mut().unwrap().insert(LABEL_ROLE.into(), "active".into());
        let other = member_pod(&pair("  agent: {port: 9443}\n"), Member::Primary, &ctx());
        assert_eq!(applied_hash(&a.metadata), applied_hash(&member_pod(&p, Member::Primary, &ctx()).metadata));
        assert_ne!(applied_hash(&a.metadata), applied_hash(&other.metadata));
    }

    #[test]
    fn the_agent_role_reaches_only_its_own_lease() {
        let (sa, role, binding) = agent_rbac(&pair(""));
        assert_eq!(sa.unwrap().metadata.name.as_deref(), Some("db-hapair"));
        let rule = &role.rules.unwrap()[0];
        assert_eq!(rule.resource_names.as_deref(), Some(&["db".to_string()][..]));
        assert_eq!(rule.verbs, ["get", "list", "watch", "patch"]);
        assert_eq!(binding.subjects.unwrap()[0].name, "db-hapair");
    }

    #[test]
    fn the_lease_carries_the_heartbeat_and_the_epoch() {
        let l = lease(&pair("  heartbeat: {intervalSeconds: 2, missedThreshold: 4}\n"), Member::Primary, "uid-1", 1);
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("primary/uid-1"));
        assert_eq!(spec.lease_duration_seconds, Some(8));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(l.metadata.annotations.unwrap()[ANN_INTERVAL], "2");
    }
}
