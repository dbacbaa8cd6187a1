//! Observe: read what the cluster and the agents say about one pair into a
//! plain [`Observed`] value. Times that matter for safety are durations on
//! the operator's own monotonic clock, measured by the pair's worker; no
//! two machines' wall clocks are ever compared.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use super::build::{ANN_HASH, applied_hash};
use crate::api::{AGENT_CONTAINER, LABEL_SERVICE_NAME, LABEL_SLICE_MANAGED_BY, Member};
use crate::proto::{
    ANN_DRAINING, ANN_INTERVAL, ANN_MISSED, ANN_OPERATION, ANN_RELEASED, ANN_RELEASED_BY, AgentStatus, parse_identity,
};

/// One member pod as far as decisions go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodObs {
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub running: bool,
    pub deleting: bool,
    /// An application container has terminated or is crash-looping.
    pub app_down: bool,
    pub hash: Option<String>,
    pub role_label: Option<String>,
    /// The pod's `Ready` condition is true (every container ready).
    pub ready: bool,
    pub node: Option<String>,
}

impl PodObs {
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.clone().unwrap_or_default();
        let app_down = status.container_statuses.iter().flatten().any(|c| {
            c.name != AGENT_CONTAINER
                && c.state.as_ref().is_some_and(|s| {
                    s.terminated.is_some()
                        || s.waiting.as_ref().is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
                })
        });
        PodObs {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            ip: status.pod_ip.clone().filter(|ip| !ip.is_empty()),
            running: status.phase.as_deref() == Some("Running"),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            app_down,
            hash: applied_hash(&pod.metadata).map(str::to_string),
            role_label: pod.labels().get(crate::api::LABEL_ROLE).cloned(),
            ready: status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True"),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        }
    }
}

/// What the operator's pod cache keeps of a member pod: what [`PodObs::of`]
/// reads and nothing else. A member's spec (its containers, their
/// environment, probes and volumes) and each container's image, IDs and
/// last state were three quarters of a cached pod, held twice per pair;
/// the operator builds every pod it writes anew, so it never needs them.
pub fn slim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec};
    pod.metadata.managed_fields = None;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(PodSpec { node_name, ..Default::default() });
    if let Some(status) = pod.status.as_mut() {
        for c in status.container_statuses.iter_mut().flatten() {
            let (name, state) = (std::mem::take(&mut c.name), c.state.take());
            let (ready, restart_count) = (c.ready, c.restart_count);
            *c = ContainerStatus { name, state, ready, restart_count, ..Default::default() };
        }
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// What polling a member's agent has shown.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentObs {
    /// The last answer, if any.
    pub last: Option<AgentStatus>,
    /// Polls missed in a row since that answer.
    pub missed: u32,
    /// Time since the last answer (operator clock).
    pub since_answer: Option<Duration>,
    /// Answers that could not be parsed (a member sending garbage).
    pub malformed: u64,
    /// Estimated clock skew of the member against the operator.
    pub skew_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberObs {
    pub pod: Option<PodObs>,
    pub agent: AgentObs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseObs {
    /// Holder member and its pod UID; `None` when released or empty.
    pub holder: Option<(Member, String)>,
    pub epoch: i64,
    pub resource_version: String,
    pub duration: Duration,
    pub released_reason: Option<String>,
    /// Member that released the Lease.
    pub released_by: Option<Member>,
    /// Operation request whose takeover made the current holder, if any.
    pub operation_id: Option<String>,
    /// The epoch at which the holder's agent marked the Lease drained.
    pub drained_at: Option<i64>,
    /// How long the Lease has gone without any change, on the operator's clock.
    pub unchanged_for: Duration,
    /// How long ago its `renewTime` was, on the operator's wall clock against
    /// the renewing agent's. Only for telling a cold start (an operator that
    /// started after the holder stopped has no `unchanged_for` to go by);
    /// never for deciding that a holder failed.
    pub renewed_ago: Option<Duration>,
    /// Heartbeat settings written on the Lease.
    pub interval_seconds: Option<i32>,
    pub missed_threshold: Option<i32>,
}

impl LeaseObs {
    pub fn of(lease: &Lease, unchanged_for: Duration, now: chrono::DateTime<chrono::Utc>) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let renewed_ago = spec.renew_time.as_ref().and_then(|t| (now - chrono_of(t.0)?).to_std().ok());
        let ann = lease.annotations();
        let holder = spec.holder_identity.as_deref().and_then(parse_identity).map(|(m, uid)| (m, uid.to_string()));
        LeaseObs {
            holder,
            epoch: i64::from(spec.lease_transitions.unwrap_or(0)),
            resource_version: lease.resource_version().unwrap_or_default(),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64),
            released_reason: ann.get(ANN_RELEASED).cloned(),
            released_by: ann.get(ANN_RELEASED_BY).and_then(|m| m.parse().ok()),
            operation_id: ann.get(ANN_OPERATION).cloned(),
            drained_at: ann.get(ANN_DRAINING).and_then(|v| v.parse().ok()),
            unchanged_for,
            renewed_ago,
            interval_seconds: ann.get(ANN_INTERVAL).and_then(|v| v.parse().ok()),
            missed_threshold: ann.get(ANN_MISSED).and_then(|v| v.parse().ok()),
        }
    }
}

/// A claim as the watch cache holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    Missing,
    /// Being deleted: held by `pvc-protection` while a pod uses it.
    Deleting,
    /// Its PersistentVolume is gone: the data is lost.
    Lost,
    Usable,
}

pub fn claim_state(claim: Option<&PersistentVolumeClaim>) -> ClaimState {
    match claim {
        None => ClaimState::Missing,
        Some(c) if c.metadata.deletion_timestamp.is_some() => ClaimState::Deleting,
        Some(c) if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost") => ClaimState::Lost,
        Some(_) => ClaimState::Usable,
    }
}

/// A resync Job, as far as decisions and status go.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObs {
    pub name: String,
    /// The order's label (`resync-<epoch>`, or the request's).
    pub label: String,
    pub target: Option<Member>,
    pub dry_run: bool,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    pub phase: JobPhase,
    /// Runs that failed so far (each retried by the Job controller).
    pub failed_runs: i32,
    /// Why it failed for good (the Job's Failed condition).
    pub message: Option<String>,
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    Running,
    Succeeded,
    Failed,
}

/// An API timestamp on chrono's clock.
fn chrono_of(t: k8s_openapi::jiff::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

impl JobObs {
    /// `None` for a Job that is not a resync Job.
    pub fn of(job: &Job) -> Option<Self> {
        use super::build::{ANN_RESYNC_DRY_RUN, ANN_RESYNC_LABEL, ANN_RESYNC_TARGET};
        let ann = job.annotations();
        let status = job.status.clone().unwrap_or_default();
        let condition =
            |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t && c.status == "True").cloned();
        let (phase, message, finished) = if let Some(c) = condition("Complete") {
            (JobPhase::Succeeded, None, c.last_transition_time.and_then(|t| chrono_of(t.0)))
        } else if let Some(c) = condition("Failed") {
            let why = [c.reason, c.message].into_iter().flatten().collect::<Vec<_>>().join(": ");
            (JobPhase::Failed, Some(why), c.last_transition_time.and_then(|t| chrono_of(t.0)))
        } else {
            (JobPhase::Running, None, None)
        };
        Some(JobObs {
            name: job.name_any(),
            label: ann.get(ANN_RESYNC_LABEL)?.clone(),
            target: ann.get(ANN_RESYNC_TARGET).and_then(|m| m.parse().ok()),
            dry_run: ann.get(ANN_RESYNC_DRY_RUN).is_some_and(|v| v == "true"),
            created: job.metadata.creation_timestamp.as_ref().and_then(|t| chrono_of(t.0)),
            phase,
            failed_runs: status.failed.unwrap_or(0),
            message,
            finished,
        })
    }
}

/// Everything `decide` looks at for one pair.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub primary: MemberObs,
    pub secondary: MemberObs,
    pub lease: Option<LeaseObs>,
    pub vip_exists: bool,
    /// What the VIP Service is, as far as routing goes.
    pub vip_shape: Option<ServiceShape>,
    /// The VIP's EndpointSlice as stored (what kube-proxy routes by).
    pub vip_slice: Option<SliceShape>,
    pub standby_exists: bool,
    pub standby_shape: Option<ServiceShape>,
    pub standby_slice: Option<SliceShape>,
    /// Another EndpointSlice names one of the pair's Services (made by
    /// kube-controller-manager for a selector someone added, or mirrored
    /// from an Endpoints object): kube-proxy routes by it too.
    pub foreign_slices: bool,
    /// How long this worker has watched the pair without a Lease.
    pub without_lease_for: Duration,
    /// How long the current failure of the active member has been seen.
    pub failure_for: Option<Duration>,
    /// How long the primary has been continuously able to serve (for the
    /// automatic failback's hysteresis).
    pub primary_usable_for: Option<Duration>,
    /// The pair's resync Jobs, oldest first.
    pub resync_jobs: Vec<JobObs>,
    /// The expiry of the pair's certificates, once its Secret was read.
    pub certificates: Option<crate::tls::Expiry>,
    /// The CA rotations the Secret records.
    pub rotation: RotationObs,
}

/// The CA rotations the pair's TLS Secret records: what started the
/// latest, and the one under way.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RotationObs {
    pub last_cause: Option<String>,
    pub under_way: Option<crate::api::CertificateRotation>,
}

impl Observed {
    pub fn member(&self, m: Member) -> &MemberObs {
        match m {
            Member::Primary => &self.primary,
            Member::Secondary => &self.secondary,
        }
    }
    /// The pair as one member (`spec.standby: Removed`): `m` counts as
    /// absent to every rule — it is not taken over by, asked for or
    /// waited on.
    pub fn without(&self, m: Member) -> Observed {
        let mut o = self.clone();
        *o.member_mut(m) = MemberObs::default();
        o
    }

    pub fn member_mut(&mut self, m: Member) -> &mut MemberObs {
        match m {
            Member::Primary => &mut self.primary,
            Member::Secondary => &mut self.secondary,
        }
    }
}

/// What decides where a Service routes: its selector, type and ports, and
/// the hash of what the operator last applied. A hand edit of any of these
/// (a selector pointed at the standby, say) leaves the hash as it was, so
/// the hash alone cannot tell that the object drifted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceShape {
    pub hash: Option<String>,
    pub selector: std::collections::BTreeMap<String, String>,
    pub type_: Option<String>,
    pub ports: Vec<PortShape>,
}

/// A Service port as routing sees it: name, port, target port, protocol,
/// node port.
pub type PortShape = (Option<String>, i32, Option<String>, Option<String>, Option<i32>);

impl ServiceShape {
    pub fn of(svc: &Service) -> Self {
        let spec = svc.spec.clone().unwrap_or_default();
        ServiceShape {
            hash: service_hash(svc),
            selector: spec.selector.unwrap_or_default(),
            type_: spec.type_,
            ports: spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let target = p.target_port.map(|t| match t {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
                    });
                    (p.name, p.port, target, p.protocol, p.node_port)
                })
                .collect(),
        }
    }

    /// Whether this Service routes as `desired` says: same applied hash,
    /// selector, type and ports (a node port the API server picked counts as
    /// matching one the spec leaves open).
    pub fn matches(&self, desired: &Service) -> bool {
        let want = ServiceShape::of(desired);
        let ports_match = self.ports.len() == want.ports.len()
            && self.ports.iter().zip(&want.ports).all(|(have, want)| {
                (&have.0, have.1, &have.2, &have.3) == (&want.0, want.1, &want.2, &want.3)
                    && (want.4.is_none() || have.4 == want.4)
            });
        self.hash == want.hash && self.selector == want.selector && self.type_ == want.type_ && ports_match
    }
}

/// What decides where an EndpointSlice the operator writes sends clients:
/// its address type, the Service it serves and who manages it (labels),
/// each endpoint's address, conditions and pod, its ports, and the hash of
/// what the operator last applied. A hand edit of any of these is drift.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SliceShape {
    pub hash: Option<String>,
    pub address_type: String,
    pub service: Option<String>,
    pub managed_by: Option<String>,
    pub endpoints: Vec<EndpointShape>,
    pub ports: Vec<(Option<String>, Option<i32>, Option<String>)>,
}

/// One endpoint: addresses, (ready, serving, terminating), the pod's name
/// and UID.
pub type EndpointShape = (Vec<String>, (Option<bool>, Option<bool>, Option<bool>), Option<String>, Option<String>);

impl SliceShape {
    pub fn of(slice: &EndpointSlice) -> Self {
        let labels = slice.labels();
        SliceShape {
            hash: slice.metadata.annotations.as_ref().and_then(|a| a.get(ANN_HASH).cloned()),
            address_type: slice.address_type.clone(),
            service: labels.get(LABEL_SERVICE_NAME).cloned(),
            managed_by: labels.get(LABEL_SLICE_MANAGED_BY).cloned(),
            endpoints: slice
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    let pod = e.target_ref.as_ref();
                    (
                        e.addresses.clone(),
                        (c.ready, c.serving, c.terminating),
                        pod.and_then(|r| r.name.clone()),
                        pod.and_then(|r| r.uid.clone()),
                    )
                })
                .collect(),
            ports: slice.ports.iter().flatten().map(|p| (p.name.clone(), p.port, p.protocol.clone())).collect(),
        }
    }

    /// Whether the stored slice routes as `desired` says.
    pub fn matches(&self, desired: &EndpointSlice) -> bool {
        *self == SliceShape::of(desired)
    }

    /// The addresses clients are sent to: endpoints not marked unready.
    pub fn ready_addresses(&self) -> Vec<String> {
        self.endpoints.iter().filter(|e| e.1.0 != Some(false)).flat_map(|e| e.0.clone()).collect()
    }
}

pub fn service_hash(svc: &Service) -> Option<String> {
    svc.metadata.annotations.as_ref()?.get(ANN_HASH).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slimmed_pod_reads_as_the_whole_one() {
        let pod = |terminated: bool, ready: &str| -> Pod {
            let state = if terminated {
                serde_json::json!({"terminated": {"exitCode": 137, "reason": "Error"}})
            } else {
                serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
            };
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-primary", "uid": "u1", "labels": {"hapair.dev/role": "active"},
                             "annotations": {"hapair.dev/applied-hash": "h1"},
                             "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
                "spec": {"nodeName": "n1", "containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "x"}]},
                    {"name": "hapair-agent", "image": "hapair:1"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.5",
                           "conditions": [{"type": "Ready", "status": ready}],
                           "containerStatuses": [
                    {"name": "app", "image": "app:1", "imageID": "sha256:1", "containerID": "containerd://1",
                     "ready": ready == "True", "restartCount": 2, "state": state,
                     "lastState": {"terminated": {"exitCode": 1}}},
                    {"name": "hapair-agent", "image": "hapair:1", "imageID": "sha256:2", "ready": true,
                     "restartCount": 0, "state": {"running": {}}}]}
            }))
            .unwrap()
        };
        for (terminated, ready) in [(false, "True"), (true, "False")] {
            let whole = pod(terminated, ready);
            let mut slim = whole.clone();
            slim_pod(&mut slim);
            assert_eq!(PodObs::of(&slim), PodObs::of(&whole));
            assert_eq!(PodObs::of(&slim).app_down, terminated);
            assert!(slim.spec.as_ref().unwrap().containers.is_empty());
            let statuses = slim.status.as_ref().unwrap().container_statuses.as_ref().unwrap();
            assert!(statuses.iter().all(|c| c.image.is_empty() && c.last_state.is_none()));
            assert!(slim.metadata.managed_fields.is_none());
        }
    }

    fn vip(pair: &str, member: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": pair, "annotations": {"hapair.dev/applied-hash": "h1"}},
            "spec": {"type": "ClusterIP", "selector": {"hapair.dev/pair": pair, "hapair.dev/member": member},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_slice_drifts_when_its_endpoints_ports_or_labels_are_edited() {
        let desired: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-hapair", "annotations": {"hapair.dev/applied-hash": "h1"},
                         "labels": {"kubernetes.io/service-name": "db", "endpointslice.kubernetes.io/managed-by": "operator.hapair.dev"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
                           "targetRef": {"kind": "Pod", "name": "db-primary", "uid": "u1"}, "nodeName": "n1"}],
            "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]
        }))
        .unwrap();
        let mut stored = desired.clone();
        stored.metadata.resource_version = Some("7".into());
        stored.metadata.generation = Some(2);
        assert!(SliceShape::of(&stored).matches(&desired), "what the API server adds is not drift");
        assert_eq!(SliceShape::of(&stored).ready_addresses(), ["10.0.0.5"]);
        let edited = |f: &dyn Fn(&mut EndpointSlice)| {
            let mut s = stored.clone();
            f(&mut s);
            SliceShape::of(&s).matches(&desired)
        };
        assert!(!edited(&|s| s.endpoints[0].addresses = vec!["10.0.0.6".into()]), "pointed elsewhere");
        assert!(!edited(&|s| s.endpoints[0].target_ref.as_mut().unwrap().name = Some("db-secondary".into())));
        assert!(!edited(&|s| s.endpoints[0].conditions.as_mut().unwrap().ready = Some(false)), "marked unready");
        assert!(!edited(&|s| s.endpoints.clear()), "emptied");
        assert!(!edited(&|s| s.ports.as_mut().unwrap()[0].port = Some(9999)), "a port");
        assert!(
            !edited(&|s| {
                s.metadata.labels.as_mut().unwrap().remove("kubernetes.io/service-name");
            }),
            "detached from its Service"
        );
        assert!(
            !edited(&|s| {
                s.metadata.labels.as_mut().unwrap().insert("endpointslice.kubernetes.io/managed-by".into(), "x".into());
            }),
            "claimed by another manager"
        );
    }

    #[test]
    fn a_service_drifts_when_its_selector_type_or_ports_are_edited_not_when_the_server_fills_defaults() {
        let desired = vip("db", "primary");
        let mut stored = desired.clone();
        let spec = stored.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.10".into());
        spec.session_affinity = Some("None".into());
        spec.ip_families = Some(vec!["IPv4".into()]);
        assert!(ServiceShape::of(&stored).matches(&desired), "defaults the API server fills in are not drift");

        let edited = |f: &dyn Fn(&mut Service)| {
            let mut s = stored.clone();
            f(&mut s);
            ServiceShape::of(&s).matches(&desired)
        };
        assert!(
            !edited(&|s| {
                s.spec
                    .as_mut()
                    .unwrap()
                    .selector
                    .as_mut()
                    .unwrap()
                    .insert("hapair.dev/member".into(), "secondary".into());
            }),
            "the selector pointed at the standby by hand"
        );
        assert!(!edited(&|s| s.spec.as_mut().unwrap().type_ = Some("NodePort".into())), "the type");
        assert!(
            !edited(&|s| {
                s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9090));
            }),
            "a target port"
        );
        assert!(
            !edited(&|s| {
                s.metadata.annotations.as_mut().unwrap().insert("hapair.dev/applied-hash".into(), "h0".into());
            }),
            "an older applied spec"
        );
        assert!(!ServiceShape::of(&vip("db", "secondary")).matches(&desired), "the active moved");
    }

    #[test]
    fn only_a_drain_mark_naming_an_epoch_counts() {
        let lease = |mark: Option<&str>| {
            let mut ann = serde_json::json!({"hapair.dev/heartbeat-interval-seconds": "1"});
            if let Some(m) = mark {
                ann["hapair.dev/draining"] = m.into();
            }
            serde_json::from_value::<Lease>(serde_json::json!({
                "metadata": {"name": "db", "annotations": ann},
                "spec": {"holderIdentity": "primary/uid", "leaseTransitions": 7}
            }))
            .unwrap()
        };
        let at = |mark| LeaseObs::of(&lease(mark), Duration::ZERO, chrono::Utc::now()).drained_at;
        assert_eq!(at(Some("7")), Some(7));
        assert_eq!(at(Some("")), None, "a blanked mark is no mark");
        assert_eq!(at(Some("seven")), None);
        assert_eq!(at(None), None);
    }
}
