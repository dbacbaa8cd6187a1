//! Where a pair's members run: apart, on different nodes, whenever the
//! cluster lets them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::api::{LABEL_MEMBER, LABEL_PAIR, Member};

/// Keeps the two members on different nodes whenever another node can take
/// one, so one node failing takes one member, not the pair. A topology
/// spread rather than a required anti-affinity: nodes the pod cannot run on
/// (taints, node affinity) are not counted, so with one usable node both
/// members still run there instead of one staying Pending — a pair with one
/// node left is degraded, not down. A template that spreads over hostnames
/// itself is left as written.
pub fn spread_members(pod_spec: &mut PodSpec, pair: &str) {
    let spreads = pod_spec.topology_spread_constraints.get_or_insert_with(Vec::new);
    if spreads.iter().any(|c| c.topology_key == HOSTNAME_TOPOLOGY) {
        return;
    }
    spreads.push(TopologySpreadConstraint {
        max_skew: 1,
        topology_key: HOSTNAME_TOPOLOGY.into(),
        when_unsatisfiable: "DoNotSchedule".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(LABEL_PAIR.to_string(), pair.to_string())])),
            // Members only: the pair's Job pods share its label.
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: LABEL_MEMBER.into(),
                operator: "In".into(),
                values: Some(Member::BOTH.iter().map(|m| m.to_string()).collect()),
            }]),
        }),
        node_affinity_policy: Some("Honor".into()),
        node_taints_policy: Some("Honor".into()),
        ..Default::default()
    });
}

const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_spec() -> PodSpec {
        let mut spec = PodSpec::default();
        spread_members(&mut spec, "db");
        spec
    }

    #[test]
    fn members_spread_over_nodes_unless_the_template_spreads_them_itself() {
        let spec = pod_spec();
        let spreads = spec.topology_spread_constraints.unwrap();
        assert_eq!(spreads.len(), 1);
        let c = &spreads[0];
        assert_eq!(
            (c.topology_key.as_str(), c.max_skew, c.when_unsatisfiable.as_str()),
            (HOSTNAME_TOPOLOGY, 1, "DoNotSchedule")
        );
        assert_eq!(c.node_taints_policy.as_deref(), Some("Honor"), "a NotReady node must not hold a member Pending");
        let sel = c.label_selector.as_ref().unwrap();
        assert_eq!(sel.match_labels.as_ref().unwrap()[LABEL_PAIR], "db");
        assert_eq!(sel.match_expressions.as_ref().unwrap()[0].values.as_ref().unwrap(), &["primary", "secondary"]);

        let mut own = PodSpec {
            topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                max_skew: 2,
                topology_key: HOSTNAME_TOPOLOGY.into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        spread_members(&mut own, "db");
        let spreads = own.topology_spread_constraints.unwrap();
        assert_eq!(spreads.len(), 1);
        assert_eq!(spreads[0].max_skew, 2, "the user's own spread is kept as written");
    }
}
