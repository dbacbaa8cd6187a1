//! The API reference in the README, generated from the CRD's schema so the
//! two cannot disagree: one row per field with its type, default, bounds and
//! description, then every admission rule's message.

use std::fmt::Write;

use serde_json::Value;

use super::crd::crd;

/// Fields whose children are upstream Kubernetes types, documented upstream.
const UPSTREAM: &[(&str, &str)] = &[
    ("spec.template", "core/v1 PodTemplateSpec"),
    ("spec.splitBrain.repairJob", "core/v1 Container"),
    ("spec.agent.resources", "core/v1 ResourceRequirements"),
];

/// Markdown for the README's API reference section.
pub fn markdown() -> String {
    let crd = serde_json::to_value(crd()).expect("the CRD serializes");
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut out = String::new();
    for (section, title) in [("spec", "Spec"), ("status", "Status")] {
        let _ = writeln!(out, "#### {title}\n\n| field | type | default | description |\n|---|---|---|---|");
        walk(&mut out, section, &root["properties"][section]);
        out.push('\n');
    }
    out.push_str("#### Admission rules\n\nBesides the bounds above, the API server refuses a pair that breaks one of these rules, with this message:\n\n");
    let mut rules = Vec::new();
    collect_rules(root, "", &mut rules);
    for (path, message) in rules {
        let at = if path.is_empty() { "the pair".to_string() } else { format!("`{path}`") };
        let _ = writeln!(out, "- {at}: {message}");
    }
    out
}

fn walk(out: &mut String, path: &str, node: &Value) {
    let Some(props) = node["properties"].as_object() else { return };
    for (name, child) in props {
        let field = format!("{path}.{name}");
        let upstream = UPSTREAM.iter().find(|(p, _)| *p == field).map(|(_, t)| *t);
        let _ = writeln!(
            out,
            "| `{field}` | {} | {} | {} |",
            upstream.map_or_else(|| type_of(child, node, name), |t| t.to_string()),
            child.get("default").map_or(String::new(), |d| format!("`{}`", compact(d))),
            cell(child["description"].as_str().unwrap_or("")),
        );
        if upstream.is_none() {
            let element = if child["type"] == "array" { &child["items"] } else { child };
            walk(out, &format!("{field}{}", if child["type"] == "array" { "[]" } else { "" }), element);
        }
    }
}

fn type_of(node: &Value, parent: &Value, name: &str) -> String {
    let mut t = match (node["type"].as_str(), node.get("x-kubernetes-int-or-string")) {
        (_, Some(Value::Bool(true))) => "quantity".to_string(),
        (Some("array"), _) => format!("list of {}", node["items"]["type"].as_str().unwrap_or("object")),
        (Some(t), _) => t.to_string(),
        (None, _) => "object".to_string(),
    };
    if let Some(values) = node["enum"].as_array() {
        let values: Vec<_> = values.iter().filter_map(Value::as_str).collect();
        t = format!("one of {}", values.join(", "));
    }
    let bound = |k: &str| node[k].as_f64().map(|v| v as i64);
    match (bound("minimum"), bound("maximum")) {
        (Some(lo), Some(hi)) => t.push_str(&format!(" ({lo}–{hi})")),
        (Some(lo), None) => t.push_str(&format!(" (≥ {lo})")),
        _ => {}
    }
    if let Some(max) = node["maxItems"].as_u64() {
        t.push_str(&format!(" (at most {max})"));
    }
    let required = parent["required"].as_array().is_some_and(|r| r.iter().any(|v| v == name));
    if required {
        t.push_str(", required");
    }
    t
}

fn collect_rules(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if let Some(rules) = node["x-kubernetes-validations"].as_array() {
        for rule in rules {
            let message = rule["message"]
                .as_str()
                .map(str::to_string)
                .or_else(|| rule["messageExpression"].as_str().map(|e| format!("(computed) `{e}`")))
                .unwrap_or_else(|| format!("failed rule `{}`", rule["rule"].as_str().unwrap_or("")));
            out.push((path.to_string(), message));
        }
    }
    if let Some(props) = node["properties"].as_object() {
        for (name, child) in props {
            let field = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            collect_rules(child, &field, out);
        }
    }
    if node["type"] == "array" {
        collect_rules(&node["items"], &format!("{path}[]"), out);
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A description as one table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lists_our_fields_with_bounds_and_defaults_but_not_upstream_internals() {
        let md = markdown();
        assert!(md.contains("| `spec.heartbeat.intervalSeconds` | integer (1–600) | `5` |"), "{md}");
        assert!(md.contains("| `spec.failover.mode` | one of Automatic, Manual |"));
        assert!(md.contains("| `spec.template` | core/v1 PodTemplateSpec"));
        assert!(!md.contains("| `spec.template.spec"), "upstream fields are not listed");
        assert!(md.contains("`spec.fileSync.paths[].path`: spec.fileSync.paths[].path must not contain '..'"));
    }

    #[test]
    fn every_admission_rule_has_a_message_for_people() {
        let md = markdown();
        assert!(!md.contains("failed rule"), "a CEL rule without a message: {md}");
    }
}
