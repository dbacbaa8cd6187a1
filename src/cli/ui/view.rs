//! What the Health Monitor page shows of a pair, and which actions it
//! offers: only those possible now, each with the question the page asks
//! before it writes the request. The server refuses an action that is not
//! possible (any more) with the same reason, so a page left open while the
//! pair changed cannot write a request the pair no longer admits.

use serde::Serialize;
use serde_json::{Value, json};

use k8s_openapi::api::core::v1::Event;

use crate::api::{HighAvailabilityPair, Member, Mode, StandbyPresence};

/// One action as the page offers it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Action {
    /// What the page posts back (`action`, and `member`/`keep` where named).
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<Member>,
    /// The button's text.
    pub label: String,
    /// The question asked before the request is written.
    pub confirm: String,
}

/// What a page may ask for: an action and its argument.
#[derive(serde::Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Call {
    pub namespace: String,
    pub name: String,
    pub action: String,
    #[serde(default)]
    pub member: Option<Member>,
}

/// What the call writes into the pair: `spec.operation`'s action, or a
/// setting of the spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Operation(Value),
    Spec(Value),
}

fn holder(p: &HighAvailabilityPair) -> Option<Member> {
    p.status.as_ref().and_then(|s| s.active_member)
}

fn syncs_files(p: &HighAvailabilityPair) -> bool {
    p.spec.storage.is_some() && p.spec.file_sync.as_ref().is_some_and(|f| !f.paths.is_empty())
}

/// Why no request can be written now (one is under way, the pair is
/// paused), if so.
fn busy(p: &HighAvailabilityPair) -> Option<String> {
    if p.spec.paused {
        return Some("the pair is paused (spec.paused): resume it first".into());
    }
    let op = p.spec.operation.as_ref()?;
    let status = p.status.as_ref();
    let record = status.and_then(|s| s.operations.iter().find(|o| o.id == op.id));
    match record {
        Some(r) if r.phase.is_terminal() => None,
        _ => Some(format!("operation {} is still in progress", op.id)),
    }
}

/// Every action the page knows, each with whether it is possible now
/// (`Err`: why not).
pub fn availability(p: &HighAvailabilityPair) -> Vec<(Action, Result<(), String>)> {
    let s = p.status.clone().unwrap_or_default();
    let busy = busy(p);
    let removed = s.removed_member.is_some() || p.spec.standby == StandbyPresence::Removed;
    let active = holder(p);
    let peer = active.map(Member::peer);
    let split = s.mode == Some(Mode::SplitBrain) || s.isolated_member.is_some();
    let op = |ok: Result<(), String>| match &busy {
        Some(why) => Err(why.clone()),
        None => ok,
    };
    let need = |cond: bool, why: &str| if cond { Ok(()) } else { Err(why.to_string()) };
    let to_standby = match (active, removed) {
        (None, _) => Err("no member is active".to_string()),
        (_, true) => Err("the pair runs one member (spec.standby: Removed)".to_string()),
        (Some(_), false) => Ok(()),
    };
    let who = |m: Option<Member>| m.map_or("?".to_string(), |m| m.to_string());
    let mut out = vec![
        (
            Action {
                action: "switchover",
                member: None,
                label: "Switchover".into(),
                confirm: format!(
                    "Hand the active role from {} to {} with no data loss? The active stops writes, the standby catches up, then the role moves.",
                    who(active),
                    who(peer)
                ),
            },
            op(to_standby.clone()),
        ),
        (
            Action {
                action: "failover",
                member: None,
                label: "Failover".into(),
                confirm: format!(
                    "Fail over to {} now? The standby's health and sync lag are checked first.",
                    who(peer)
                ),
            },
            op(to_standby.clone()),
        ),
        (
            Action {
                action: "forceFailover",
                member: None,
                label: "Forced failover".into(),
                confirm: format!(
                    "Force a failover to {} without checking its health or sync? Data written on {} since the last sync may be missing; the history records it.",
                    who(peer),
                    who(active)
                ),
            },
            op(to_standby.clone()),
        ),
        (
            Action {
                action: "failback",
                member: None,
                label: "Failback".into(),
                confirm: "Return the active role to the primary?".into(),
            },
            op(if removed {
                Err("the pair runs one member (spec.standby: Removed)".into())
            } else {
                need(active == Some(Member::Secondary), "the primary is already active, or no member is")
            }),
        ),
    ];
    if let Some(m) = active {
        out.push((
            Action {
                action: "goStandby",
                member: Some(m),
                label: format!("Go standby: {m}"),
                confirm: format!("Make {m} standby? The role moves to {} by a planned handover.", m.peer()),
            },
            op(to_standby.clone()),
        ));
    }
    for keep in Member::BOTH {
        out.push((
            Action {
                action: "resolveSplitBrain",
                member: Some(keep),
                label: format!("Resolve split brain: keep {keep}"),
                confirm: format!(
                    "Keep {keep}'s data? {} becomes standby and is resynced from it; its differing files go to its quarantine.",
                    keep.peer()
                ),
            },
            op(need(split, "there is no split brain")),
        ));
    }
    let resync = if !syncs_files(p) {
        Err("the pair syncs no files (spec.storage and spec.fileSync.paths)".to_string())
    } else {
        to_standby.clone()
    };
    out.push((
        Action {
            action: "resyncDryRun",
            member: None,
            label: "Resync (dry run)".into(),
            confirm: format!("Plan a resync of {}'s files from {} without changing anything?", who(peer), who(active)),
        },
        op(resync.clone()),
    ));
    out.push((
        Action {
            action: "resync",
            member: None,
            label: "Resync".into(),
            confirm: format!(
                "Resync {}'s files from {}? Files only the standby holds go to its quarantine.",
                who(peer),
                who(active)
            ),
        },
        op(resync),
    ));
    out.push((
        Action {
            action: "rotateCertificates",
            member: None,
            label: "Rotate certificates".into(),
            confirm: "Replace the pair's CA and every certificate now? Nothing restarts; it takes a few minutes."
                .into(),
        },
        op(Ok(())),
    ));
    out.push((
        Action {
            action: "pause",
            member: None,
            label: "Pause".into(),
            confirm: "Pause the pair? The operator keeps reporting but changes nothing, and fails nothing over, until it is resumed.".into(),
        },
        need(!p.spec.paused, "the pair is paused already"),
    ));
    out.push((
        Action {
            action: "resume",
            member: None,
            label: "Resume".into(),
            confirm: "Resume the pair? The operator acts on what it observes again.".into(),
        },
        need(p.spec.paused, "the pair is not paused"),
    ));
    out
}

/// The actions possible now.
pub fn actions(p: &HighAvailabilityPair) -> Vec<Action> {
    availability(p).into_iter().filter(|(_, ok)| ok.is_ok()).map(|(a, _)| a).collect()
}

/// What `call` writes into `p`, or why it cannot be done now.
pub fn write_for(p: &HighAvailabilityPair, call: &Call) -> Result<Write, String> {
    let all = availability(p);
    let found = all.iter().find(|(a, _)| a.action == call.action && (a.member.is_none() || a.member == call.member));
    let Some((action, ok)) = found else {
        let known = call.action.as_str();
        return Err(if all.iter().any(|(a, _)| a.action == known) {
            format!("{known} names no such member here")
        } else {
            format!("no such action: {known}")
        });
    };
    if let Err(why) = ok {
        return Err(format!("{} is not possible now: {why}", action.label));
    }
    Ok(match action.action {
        "switchover" => Write::Operation(json!({"switchover": {}})),
        "failover" => Write::Operation(json!({"failover": {"force": false}})),
        "forceFailover" => Write::Operation(json!({"failover": {"force": true}})),
        "failback" => Write::Operation(json!({"failback": {}})),
        "goStandby" => Write::Operation(json!({"goStandby": {"member": action.member}})),
        "resolveSplitBrain" => Write::Operation(json!({"resolveSplitBrain": {"keep": action.member}})),
        "resyncDryRun" => Write::Operation(json!({"resync": {"dryRun": true}})),
        "resync" => Write::Operation(json!({"resync": {"dryRun": false}})),
        "rotateCertificates" => Write::Operation(json!({"rotateCertificates": {}})),
        "pause" => Write::Spec(json!({"paused": true})),
        _ => Write::Spec(json!({"paused": false})),
    })
}

/// What the page shows of every pair in view: its spec's settings, its
/// status as the operator wrote it, the actions possible now, and its
/// Events newest first.
pub fn snapshot(pairs: &[std::sync::Arc<HighAvailabilityPair>], events: &[std::sync::Arc<Event>]) -> Value {
    use kube::ResourceExt;
    let mut pairs: Vec<_> = pairs.iter().collect();
    pairs.sort_by_key(|p| (p.namespace(), p.name_any()));
    let shown: Vec<Value> = pairs
        .iter()
        .map(|p| {
            let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
            let mut mine: Vec<&Event> = events
                .iter()
                .map(|e| e.as_ref())
                .filter(|e| {
                    e.involved_object.name.as_deref() == Some(name.as_str())
                        && e.involved_object.namespace.as_deref() == Some(ns.as_str())
                })
                .collect();
            mine.sort_by_key(|e| std::cmp::Reverse(event_time(e)));
            let events: Vec<Value> = mine
                .iter()
                .take(MAX_EVENTS)
                .map(|e| {
                    json!({"time": event_time(e), "type": e.type_, "reason": e.reason, "message": e.message,
                           "count": e.count.unwrap_or(1)})
                })
                .collect();
            json!({
                "namespace": ns,
                "name": name,
                "failoverMode": p.spec.failover.mode,
                "paused": p.spec.paused,
                "standby": p.spec.standby,
                "syncsFiles": syncs_files(p),
                "status": p.status,
                "actions": actions(p),
                "events": events,
            })
        })
        .collect();
    json!({"pairs": shown, "time": chrono::Utc::now()})
}

/// Events shown per pair.
const MAX_EVENTS: usize = 40;

fn event_time(e: &Event) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0)).or(e
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0))?;
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(spec: Value, status: Value) -> HighAvailabilityPair {
        let mut s = json!({"template": {"spec": {"containers": [{"name": "app", "image": "app"}]}},
                           "service": {"ports": [{"name": "http", "port": 80}]}});
        if let (Some(s), Value::Object(extra)) = (s.as_object_mut(), spec) {
            s.extend(extra);
        }
        serde_json::from_value(json!({
            "apiVersion": "hapair.dev/v1alpha1", "kind": "HighAvailabilityPair",
            "metadata": {"name": "web", "namespace": "apps"}, "spec": s, "status": status,
        }))
        .unwrap()
    }

    fn offered(p: &HighAvailabilityPair) -> Vec<String> {
        actions(p).iter().map(|a| a.label.clone()).collect()
    }

    fn call(action: &str, member: Option<Member>) -> Call {
        Call { namespace: "apps".into(), name: "web".into(), action: action.into(), member }
    }

    const ENABLED: &str = r#"{"mode": "Enabled", "activeMember": "primary", "standbyMember": "secondary"}"#;

    #[test]
    fn a_healthy_pair_on_its_primary_offers_the_handovers_but_no_failback_or_repair() {
        let p = pair(json!({}), serde_json::from_str(ENABLED).unwrap());
        assert_eq!(
            offered(&p),
            ["Switchover", "Failover", "Forced failover", "Go standby: primary", "Rotate certificates", "Pause"]
        );
        assert_eq!(write_for(&p, &call("switchover", None)), Ok(Write::Operation(json!({"switchover": {}}))));
        assert_eq!(
            write_for(&p, &call("failback", None)),
            Err("Failback is not possible now: the primary is already active, or no member is".into())
        );
        assert_eq!(write_for(&p, &call("explode", None)), Err("no such action: explode".into()));
        // Go standby names the active member, and only it.
        assert_eq!(
            write_for(&p, &call("goStandby", Some(Member::Secondary))),
            Err("goStandby names no such member here".into())
        );
    }

    #[test]
    fn on_the_secondary_with_files_failback_and_resync_are_offered() {
        let spec = json!({"storage": {"size": "1Gi", "mountPath": "/data"}, "fileSync": {"paths": [{"path": "."}]}});
        let status = json!({"mode": "Enabled", "activeMember": "secondary", "standbyMember": "primary"});
        let p = pair(spec, status);
        let labels = offered(&p);
        assert!(labels.contains(&"Failback".to_string()), "{labels:?}");
        assert!(labels.contains(&"Resync (dry run)".to_string()), "{labels:?}");
        assert_eq!(
            write_for(&p, &call("resyncDryRun", None)),
            Ok(Write::Operation(json!({"resync": {"dryRun": true}})))
        );
    }

    #[test]
    fn a_paused_pair_offers_only_resume_and_says_why_to_the_rest() {
        let p = pair(json!({"paused": true}), serde_json::from_str(ENABLED).unwrap());
        assert_eq!(offered(&p), ["Resume"]);
        assert_eq!(
            write_for(&p, &call("switchover", None)),
            Err("Switchover is not possible now: the pair is paused (spec.paused): resume it first".into())
        );
        assert_eq!(write_for(&p, &call("resume", None)), Ok(Write::Spec(json!({"paused": false}))));
    }

    #[test]
    fn a_request_in_progress_holds_every_other_request_and_a_split_brain_offers_its_resolution() {
        let mut status: Value = serde_json::from_str(ENABLED).unwrap();
        status["operations"] = json!([{"id": "sw-1", "kind": "Switchover", "phase": "Running"}]);
        let p = pair(json!({"operation": {"id": "sw-1", "switchover": {}}}), status);
        assert_eq!(offered(&p), ["Pause"]);
        assert!(write_for(&p, &call("failover", None)).unwrap_err().ends_with("operation sw-1 is still in progress"));

        let p = pair(json!({}), json!({"mode": "SplitBrain", "activeMember": "primary"}));
        let labels = offered(&p);
        assert!(labels.contains(&"Resolve split brain: keep primary".to_string()), "{labels:?}");
        assert_eq!(
            write_for(&p, &call("resolveSplitBrain", Some(Member::Secondary))),
            Ok(Write::Operation(json!({"resolveSplitBrain": {"keep": "secondary"}})))
        );
    }

    #[test]
    fn the_snapshot_holds_each_pair_with_its_own_events_newest_first() {
        let p = std::sync::Arc::new(pair(json!({}), serde_json::from_str(ENABLED).unwrap()));
        let event = |name: &str, reason: &str, at: &str| {
            std::sync::Arc::new(
                serde_json::from_value::<Event>(json!({
                    "metadata": {"name": format!("{name}.{reason}"), "namespace": "apps"},
                    "involvedObject": {"kind": "HighAvailabilityPair", "name": name, "namespace": "apps"},
                    "reason": reason, "message": "m", "type": "Normal", "lastTimestamp": at,
                }))
                .unwrap(),
            )
        };
        let events = [
            event("web", "Old", "2026-01-01T00:00:00Z"),
            event("db", "Other", "2026-01-03T00:00:00Z"),
            event("web", "New", "2026-01-02T00:00:00Z"),
        ];
        let s = snapshot(&[p], &events);
        let reasons: Vec<&str> =
            s["pairs"][0]["events"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, ["New", "Old"]);
        assert_eq!(s["pairs"][0]["status"]["activeMember"], "primary");
        assert_eq!(s["pairs"][0]["actions"][0]["action"], "switchover");
    }

    #[test]
    fn one_member_on_purpose_and_no_active_member_offer_no_handover() {
        let p = pair(
            json!({"standby": "Removed"}),
            json!({"mode": "NotConfigured", "activeMember": "primary", "removedMember": "secondary"}),
        );
        assert_eq!(offered(&p), ["Rotate certificates", "Pause"]);
        let p = pair(json!({}), json!({}));
        assert_eq!(offered(&p), ["Rotate certificates", "Pause"]);
        // A page's call with fields it should not have is refused whole.
        assert!(
            serde_json::from_value::<Call>(json!({"namespace": "a", "name": "b", "action": "pause", "x": 1})).is_err()
        );
    }
}
