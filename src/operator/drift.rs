//! Whether the objects that change only with the spec — the agent's Role
//! and RoleBinding, the pair's NetworkPolicy — still say what the operator
//! built. They are watched, so a hand edit wakes the pair, and compared by
//! what they grant, not by the hash annotation the operator stamped (an
//! edit keeps the annotation): a Role widened, a binding pointed at another
//! account or a NetworkPolicy opened is put back in the next reconcile.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use serde_json::Value;

use super::build;
use super::context::Context;
use crate::api::HighAvailabilityPair;

/// `a` and `b` serialize to the same content, where a missing field, a
/// `null` and an empty list or map mean the same (the API server drops
/// empty ones; builders may write either).
pub fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    let norm = |v: &T| normalized(serde_json::to_value(v).unwrap_or(Value::Null));
    norm(a) == norm(b)
}

fn normalized(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalized(v))).filter(|(_, v)| !empty(v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalized).collect()),
        v => v,
    }
}

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

pub fn role_matches(current: &Role, built: &Role) -> bool {
    same(&current.rules, &built.rules)
}

pub fn binding_matches(current: &RoleBinding, built: &RoleBinding) -> bool {
    same(&current.role_ref, &built.role_ref) && same(&current.subjects, &built.subjects)
}

pub fn network_policy_matches(current: &NetworkPolicy, built: &NetworkPolicy) -> bool {
    same(&current.spec, &built.spec)
}

/// The resource versions of the pair's Role, RoleBinding and NetworkPolicy
/// in the watch caches: while they stay the same, what was found matching
/// still matches, and the comparison need not run again.
pub fn versions(ctx: &Context, pair: &HighAvailabilityPair) -> [Option<String>; 3] {
    let ns = pair.namespace().unwrap_or_default();
    let name = build::agent_object_name(&pair.name_any());
    [
        ctx.role(&ns, &name).and_then(|r| r.metadata.resource_version.clone()),
        ctx.role_binding(&ns, &name).and_then(|b| b.metadata.resource_version.clone()),
        ctx.network_policy(&ns, &name).and_then(|p| p.metadata.resource_version.clone()),
    ]
}

/// Whether any of the pair's supporting objects is missing from the watch
/// caches or differs from what the operator builds.
pub fn supporting_drifted(ctx: &Context, pair: &HighAvailabilityPair) -> bool {
    let ns = pair.namespace().unwrap_or_default();
    let (_, role, binding) = build::agent_rbac(pair);
    let role_ok = ctx.role(&ns, &role.name_any()).is_some_and(|r| role_matches(&r, &role));
    let binding_ok = ctx.role_binding(&ns, &binding.name_any()).is_some_and(|b| binding_matches(&b, &binding));
    let policy_ok = match &ctx.build.agent_network_policy {
        Some(operator) => {
            let np = build::netpol::agent_network_policy(pair, operator);
            ctx.network_policy(&ns, &np.name_any()).is_some_and(|c| network_policy_matches(&c, &np))
        }
        None => true,
    };
    !(role_ok && binding_ok && policy_ok)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};

    use super::*;

    fn pair() -> HighAvailabilityPair {
        serde_yaml::from_str(
            "apiVersion: hapair.dev/v1alpha1\nkind: HighAvailabilityPair\nmetadata: {name: db, namespace: prod, uid: u1}\n\
             spec:\n  template: {spec: {containers: [{name: app, image: x}]}}\n  service: {ports: [{name: pg, port: 5432}]}\n",
        )
        .unwrap()
    }

    #[test]
    fn what_the_api_server_stores_matches_what_was_built_and_an_edit_does_not() {
        let (_, role, binding) = build::agent_rbac(&pair());
        // Round-tripped as the API server answers: empty lists dropped.
        let stored: Role = serde_json::from_value(normalized(serde_json::to_value(&role).unwrap())).unwrap();
        assert!(role_matches(&stored, &role));
        let mut wider = stored.clone();
        wider.rules.as_mut().unwrap()[0].verbs.push("update".into());
        assert!(!role_matches(&wider, &role), "a verb added by hand");
        let mut any_lease = stored.clone();
        any_lease.rules.as_mut().unwrap()[0].resource_names = None;
        assert!(!role_matches(&any_lease, &role), "every Lease instead of the pair's");
        let mut more = stored;
        more.rules.as_mut().unwrap().push(PolicyRule { verbs: vec!["get".into()], ..Default::default() });
        assert!(!role_matches(&more, &role));

        assert!(binding_matches(&binding.clone(), &binding));
        let mut other = binding.clone();
        other.subjects.as_mut().unwrap().push(Subject {
            kind: "ServiceAccount".into(),
            name: "default".into(),
            namespace: Some("prod".into()),
            ..Default::default()
        });
        assert!(!binding_matches(&other, &binding), "another account bound by hand");
    }

    #[test]
    fn a_network_policy_opened_by_hand_no_longer_matches() {
        let operator =
            build::OperatorPods { namespace: "hapair-system".into(), labels: [("app".into(), "op".into())].into() };
        let np = build::netpol::agent_network_policy(&pair(), &operator);
        assert!(network_policy_matches(&np.clone(), &np));
        let mut open = np.clone();
        open.spec.as_mut().unwrap().ingress = Some(vec![Default::default()]);
        assert!(!network_policy_matches(&open, &np));
    }
}
