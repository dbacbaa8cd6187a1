//! The pair's Services (no selector) and the EndpointSlice behind each.

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::common::*;
use crate::api::{HighAvailabilityPair, LABEL_SERVICE_NAME, LABEL_SLICE_MANAGED_BY, Member, SLICE_MANAGER};
use crate::operator::observe::PodObs;

fn service(pair: &HighAvailabilityPair, name: String) -> Service {
    let spec = &pair.spec.service;
    let mut m = meta(pair, name);
    if !spec.annotations.is_empty() {
        m.annotations = Some(spec.annotations.clone());
    }
    let mut svc = Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some(format!("{:?}", spec.type_)),
            // No selector: the operator writes the Service's EndpointSlice
            // itself (see `endpoint_slice`).
            selector: None,
            ports: Some(
                spec.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: p.port,
                        target_port: Some(IntOrString::Int(p.target_port.unwrap_or(p.port))),
                        protocol: Some(format!("{:?}", p.protocol)),
                        node_port: p.node_port,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    stamp(&mut svc, |s| &mut s.metadata);
    svc
}

/// The pair's Service (the VIP). It has no selector: its one
/// EndpointSlice, [`endpoint_slice`], names the active member.
pub fn vip_service(pair: &HighAvailabilityPair) -> Service {
    service(pair, pair.name_any())
}

/// The optional Service reaching the standby, the same way.
pub fn standby_service(pair: &HighAvailabilityPair) -> Service {
    service(pair, standby_service_name(&pair.name_any()))
}

/// Name of the EndpointSlice the operator writes for one of the pair's
/// Services.
pub fn slice_name(service: &str) -> String {
    format!("{service}-hapair")
}

/// The EndpointSlice behind the pair's Service `service`: the pod of the
/// member it routes to, or no endpoint (`None`, or a pod without an IP yet).
///
/// Why the operator writes it rather than give the Service a selector and
/// let kube-controller-manager's EndpointSlice controller follow: the route
/// then moves in the operator's own write right after the Lease's, not at
/// that controller's next turn — which the chaos suite measured at over 2 s
/// after an API-server outage, with clients sent to a member that no longer
/// held the role. The endpoint's conditions follow the pod's `Ready`
/// condition and its deletion, as that controller's would, so kube-proxy
/// treats it the same way.
///
/// `family` is the address type to keep when there is no endpoint (the
/// stored slice's: it cannot change without recreating the slice).
pub fn endpoint_slice(
    pair: &HighAvailabilityPair,
    service: &str,
    member: Option<Member>,
    pod: Option<&PodObs>,
    family: Option<&str>,
) -> EndpointSlice {
    let mut m = meta(pair, slice_name(service));
    let labels = m.labels.get_or_insert_with(Default::default);
    labels.insert(LABEL_SERVICE_NAME.into(), service.into());
    labels.insert(LABEL_SLICE_MANAGED_BY.into(), SLICE_MANAGER.into());
    let target = member.zip(pod).and_then(|(member, pod)| {
        let ip: std::net::IpAddr = pod.ip.as_deref()?.parse().ok()?;
        Some((member, pod, ip))
    });
    let address_type = match target {
        Some((_, _, std::net::IpAddr::V6(_))) => "IPv6".to_string(),
        Some((_, _, std::net::IpAddr::V4(_))) => "IPv4".to_string(),
        None => family.unwrap_or("IPv4").to_string(),
    };
    let endpoints = target
        .map(|(member, pod, ip)| Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(pod.ready && !pod.deleting),
                serving: Some(pod.ready),
                terminating: Some(pod.deleting),
            }),
            hostname: None,
            node_name: pod.node.clone(),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pair.namespace(),
                name: Some(member.pod_name(&pair.name_any())),
                uid: Some(pod.uid.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .into_iter()
        .collect();
    let ports = pair
        .spec
        .service
        .ports
        .iter()
        .map(|p| EndpointPort {
            name: Some(p.name.clone()),
            port: Some(p.target_port.unwrap_or(p.port)),
            protocol: Some(format!("{:?}", p.protocol)),
            app_protocol: None,
        })
        .collect();
    let mut slice = EndpointSlice { metadata: m, address_type, endpoints, ports: Some(ports) };
    stamp(&mut slice, |s| &mut s.metadata);
    slice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vip_has_no_selector_and_its_slice_names_the_active_pod_or_nothing() {
        let p = super::super::objects::tests::pair("");
        let svc = vip_service(&p);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.selector, None, "a selector would let the endpoint controller route too");
        assert_eq!(spec.ports.unwrap()[0].target_port, Some(IntOrString::Int(5432)));
        let pod = |ip: &str, ready: bool, deleting: bool| PodObs {
            name: "db-secondary".into(),
            uid: "uid-2".into(),
            ip: Some(ip.into()),
            ready,
            deleting,
            node: Some("node-b".into()),
            ..Default::default()
        };
        let ready = pod("10.1.2.3", true, false);
        let s = endpoint_slice(&p, "db", Some(Member::Secondary), Some(&ready), None);
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "db");
        assert_eq!(labels[LABEL_SLICE_MANAGED_BY], SLICE_MANAGER);
        for v in labels.values() {
            let ok = v.len() <= 63
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric());
            assert!(ok, "{v:?} is not a valid label value: the API server would refuse the slice");
        }
        assert_eq!(s.metadata.name.as_deref(), Some("db-hapair"));
        assert_eq!(s.address_type, "IPv4");
        let e = &s.endpoints[0];
        assert_eq!(e.addresses, ["10.1.2.3"]);
        let c = e.conditions.clone().unwrap();
        assert_eq!((c.ready, c.serving, c.terminating), (Some(true), Some(true), Some(false)));
        let target = e.target_ref.as_ref().unwrap();
        assert_eq!((target.name.as_deref(), target.uid.as_deref()), (Some("db-secondary"), Some("uid-2")));
        assert_eq!(e.node_name.as_deref(), Some("node-b"));
        let port = &s.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.protocol.as_deref()),
            (Some(5432), Some("TCP")),
            "the target port, not the Service's"
        );
        // An unready or leaving pod is listed as such, as the endpoint
        // controller would, so kube-proxy sends it nothing new.
        let c = |pod: &PodObs| {
            endpoint_slice(&p, "db", Some(Member::Secondary), Some(pod), None).endpoints[0].conditions.clone().unwrap()
        };
        assert_eq!(c(&pod("10.1.2.3", false, false)).ready, Some(false));
        let leaving = c(&pod("10.1.2.3", true, true));
        assert_eq!((leaving.ready, leaving.serving, leaving.terminating), (Some(false), Some(true), Some(true)));
        // No active, or no IP yet: no endpoint; the address type is kept.
        assert!(endpoint_slice(&p, "db", None, Some(&ready), None).endpoints.is_empty());
        let no_ip = PodObs { ip: None, ..ready.clone() };
        let empty = endpoint_slice(&p, "db", Some(Member::Secondary), Some(&no_ip), Some("IPv6"));
        assert!(empty.endpoints.is_empty());
        assert_eq!(empty.address_type, "IPv6");
        assert_eq!(
            endpoint_slice(&p, "db", Some(Member::Secondary), Some(&pod("fd00::5", true, false)), None).address_type,
            "IPv6"
        );
    }
}
