//! The optional NetworkPolicy guarding a pair's agent port
//! (`--agent-network-policy`): only the pair's own pods (the peer agent, the
//! pair's Jobs) and this operator's pods may reach it. Every other port of the
//! member pods stays as open as without the policy, so the application's
//! traffic and the probe port (kubelet, Prometheus) are not affected.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::common::{OperatorPods, meta, stamp};
use crate::api::{HighAvailabilityPair, LABEL_MEMBER, LABEL_PAIR};

/// `a=b,c=d` → labels; `None` for anything else (the flag is refused).
pub fn parse_selector(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=')?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.contains(['!', ' ']) || v.contains(['!', '=', ' ']) {
            return None;
        }
        out.insert(k.to_string(), v.to_string());
    }
    (!out.is_empty()).then_some(out)
}

pub fn name(pair: &str) -> String {
    super::common::agent_object_name(pair)
}

fn port(protocol: &str, from: i32, to: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(from)),
        end_port: (to > from).then_some(to),
    }
}

pub fn agent_network_policy(pair: &HighAvailabilityPair, operator: &OperatorPods) -> NetworkPolicy {
    let pair_name = pair.name_any();
    let agent = pair.spec.agent.port;
    let mut members = LabelSelector {
        match_labels: Some(BTreeMap::from([(LABEL_PAIR.to_string(), pair_name.clone())])),
        ..Default::default()
    };
    members.match_expressions =
        Some(vec![LabelSelectorRequirement { key: LABEL_MEMBER.into(), operator: "Exists".into(), values: None }]);
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(LABEL_PAIR.to_string(), pair_name.clone())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let operator_pods = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                operator.namespace.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector { match_labels: Some(operator.labels.clone()), ..Default::default() }),
        ..Default::default()
    };
    // Every port but the agent's, from anywhere.
    let mut others = Vec::new();
    if agent > 1 {
        others.push(port("TCP", 1, agent - 1));
    }
    if agent < 65535 {
        others.push(port("TCP", agent + 1, 65535));
    }
    others.push(port("UDP", 1, 65535));
    others.push(port("SCTP", 1, 65535));
    let mut np = NetworkPolicy {
        metadata: meta(pair, name(&pair_name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![own_pods, operator_pods]),
                    ports: Some(vec![port("TCP", agent, agent)]),
                },
                NetworkPolicyIngressRule { from: None, ports: Some(others) },
            ]),
            egress: None,
        }),
    };
    stamp(&mut np, |n| &mut n.metadata);
    np
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(port: i32) -> HighAvailabilityPair {
        let mut p: HighAvailabilityPair = serde_yaml::from_str(
            "apiVersion: hapair.dev/v1alpha1\nkind: HighAvailabilityPair\nmetadata: {name: db, namespace: shop, uid: u1}\n\
             spec:\n  template: {spec: {containers: [{name: app, image: x}]}}\n  service: {ports: [{name: pg, port: 5432}]}\n",
        )
        .unwrap();
        p.spec.agent.port = port;
        p
    }

    fn operator() -> OperatorPods {
        OperatorPods {
            namespace: "hapair-system".into(),
            labels: parse_selector("app.kubernetes.io/name=hapair").unwrap(),
        }
    }

    #[test]
    fn only_the_pairs_pods_and_the_operator_reach_the_agent_port_and_every_other_port_stays_open() {
        let np = agent_network_policy(&pair(7443), &operator());
        assert_eq!(np.metadata.name.as_deref(), Some("db-hapair-agent"));
        assert!(np.metadata.owner_references.is_some(), "deleted with the pair");
        let spec = np.spec.unwrap();
        let sel = spec.pod_selector.unwrap();
        assert_eq!(sel.match_labels.unwrap()["hapair.dev/pair"], "db");
        assert_eq!(sel.match_expressions.unwrap()[0].key, "hapair.dev/member", "members only, not Job pods");
        let rules = spec.ingress.unwrap();
        let agent = &rules[0];
        assert_eq!(agent.ports.as_ref().unwrap(), &vec![port("TCP", 7443, 7443)]);
        let from = agent.from.as_ref().unwrap();
        assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["hapair.dev/pair"], "db");
        assert!(from[0].namespace_selector.is_none(), "the pair's own namespace");
        assert_eq!(
            from[1].namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "hapair-system"
        );
        let open = &rules[1];
        assert!(open.from.is_none(), "from anywhere");
        let ports = open.ports.as_ref().unwrap();
        assert_eq!(ports[0], port("TCP", 1, 7442));
        assert_eq!(ports[1], port("TCP", 7444, 65535), "the probe port (agent + 1) among them");
        assert!(ports.iter().all(|p| {
            let from = match p.port {
                Some(IntOrString::Int(i)) => i,
                _ => 0,
            };
            p.protocol.as_deref() != Some("TCP") || !(from..=p.end_port.unwrap_or(from)).contains(&7443)
        }));
        // At the top of the port range the rest is a single port.
        let edge = agent_network_policy(&pair(65534), &operator()).spec.unwrap().ingress.unwrap();
        let ports = edge[1].ports.as_ref().unwrap();
        assert_eq!((&ports[0], &ports[1]), (&port("TCP", 1, 65533), &port("TCP", 65535, 65535)));
        assert_eq!(ports[1].end_port, None, "no empty or one-port range");
    }

    #[test]
    fn an_operator_selector_is_a_plain_label_list() {
        assert_eq!(parse_selector("a=b, c=d").unwrap().len(), 2);
        for bad in ["", "a", "a!=b", "a=b=c", "=b"] {
            assert!(parse_selector(bad).is_none(), "{bad}");
        }
    }
}
