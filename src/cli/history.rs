//! A pair's history as the plugin shows it: the transitions its status
//! records and the Events told about it, merged newest first, as lines for
//! a person or as rows for a script (`events -o json|yaml`).

use std::fmt::Write as _;

use chrono::Utc;
use k8s_openapi::api::core::v1::Event;

use crate::api::{HighAvailabilityPair, Member};

/// One line of a pair's history: a recorded transition or an Event.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    pub time: chrono::DateTime<Utc>,
    /// `transition` (from the pair's status) or `event` (a Kubernetes Event).
    pub source: &'static str,
    /// The transition's type, or the Event's (`Normal`, `Warning`).
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    pub message: String,
    /// How many times the Event was reported (Events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i32>,
}

/// Transition history and Events, newest first.
pub fn history_rows(pair: &HighAvailabilityPair, events: &[Event]) -> Vec<HistoryRow> {
    let mut rows = Vec::new();
    for t in pair.status.iter().flat_map(|s| s.history.iter()) {
        rows.push(HistoryRow {
            time: t.time,
            source: "transition",
            type_: format!("{:?}", t.type_),
            reason: t.reason.clone(),
            from: t.from,
            to: t.to,
            epoch: Some(t.epoch),
            message: t.message.clone().unwrap_or_else(|| t.reason.clone()),
            count: None,
        });
    }
    for e in events {
        let time = e
            .last_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(Utc::now);
        rows.push(HistoryRow {
            time,
            source: "event",
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            from: None,
            to: None,
            epoch: None,
            message: e.message.clone().unwrap_or_default(),
            count: e.count,
        });
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.time));
    rows
}

/// Transition history and Events, newest first, one line each.
pub fn events_screen(pair: &HighAvailabilityPair, events: &[Event]) -> String {
    let mut out = String::new();
    for r in history_rows(pair, events) {
        let when = r.time.format("%Y-%m-%d %H:%M:%S");
        let _ = match r.source {
            "transition" => writeln!(
                out,
                "{when}  transition  {} {} -> {} epoch {}: {}",
                r.type_,
                r.from.map_or("-".into(), |m| m.to_string()),
                r.to.map_or("-".into(), |m| m.to_string()),
                r.epoch.unwrap_or_default(),
                r.message
            ),
            _ => writeln!(out, "{when}  event       {} {}: {}", r.type_, r.reason, r.message),
        };
    }
    if out.is_empty() {
        out.push_str("no transitions or events yet\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_pair as pair;

    #[test]
    fn history_rows_merge_transitions_and_events_newest_first_in_every_format() {
        let p = pair(serde_json::json!({"history": [
            {"time": "2026-01-01T10:00:00Z", "type": "Bootstrap", "to": "primary", "epoch": 1, "reason": "Bootstrap"},
            {"time": "2026-01-01T10:05:00Z", "type": "Failover", "from": "primary", "to": "secondary", "epoch": 2,
             "reason": "ActiveFailed", "message": "primary's application exited"},
        ]}));
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web.1", "namespace": "apps"}, "involvedObject": {},
            "type": "Warning", "reason": "StandbyUnavailable", "message": "primary is not reachable",
            "lastTimestamp": "2026-01-01T10:04:00Z", "count": 3,
        }))
        .unwrap();
        let rows = history_rows(&p, &[event]);
        let order: Vec<(&str, &str)> = rows.iter().map(|r| (r.source, r.reason.as_str())).collect();
        assert_eq!(
            order,
            [("transition", "ActiveFailed"), ("event", "StandbyUnavailable"), ("transition", "Bootstrap")]
        );
        let json: serde_json::Value = serde_json::from_str(&super::super::Output::Json.render(&rows)).unwrap();
        assert_eq!(json[0]["type"], "Failover");
        assert_eq!((json[0]["from"].clone(), json[0]["epoch"].clone()), (serde_json::json!("primary"), 2.into()));
        assert_eq!((json[1]["count"].clone(), json[1].get("epoch")), (3.into(), None));
        let yaml: serde_json::Value = serde_yaml::from_str(&super::super::Output::Yaml.render(&rows)).unwrap();
        assert_eq!(yaml, json);
        let text = events_screen(&p, &[]);
        assert!(text.starts_with("2026-01-01 10:05:00  transition  Failover primary -> secondary epoch 2"), "{text}");
    }
}
