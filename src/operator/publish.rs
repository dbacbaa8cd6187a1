//! The pair's metrics, published from its status and what was observed
//! after each round. A deleted pair's series go with
//! [`OperatorMetrics::forget_pair`], driven by the same list that
//! registers them.

use kube::ResourceExt;

use super::observe::Observed;
use crate::api::{HighAvailabilityPair, HighAvailabilityPairStatus, Member, Mode};
use crate::metrics::OperatorMetrics;

/// Sets every per-pair series for one round.
pub fn publish(
    metrics: &OperatorMetrics,
    pair: &HighAvailabilityPair,
    status: &HighAvailabilityPairStatus,
    obs: &Observed,
) {
    let ns = pair.namespace().unwrap_or_default();
    let name = pair.name_any();
    for mode in [Mode::NotConfigured, Mode::Initializing, Mode::Enabled, Mode::Alone, Mode::SplitBrain, Mode::Paused] {
        let mode_name = format!("{mode:?}");
        metrics.mode.with_label_values(&[&ns, &name, &mode_name]).set(i64::from(status.mode == Some(mode)));
    }
    metrics.epoch.with_label_values(&[&ns, &name]).set(status.epoch);
    if let Some(c) = &status.certificates {
        for (which, at) in [("ca", c.ca_not_after), ("members", c.members_not_after)] {
            if let Some(at) = at {
                metrics.certificate_expiry.with_label_values(&[&ns, &name, which]).set(at.timestamp() as f64);
            }
        }
    }
    let conditions =
        status.conditions.iter().map(|c| [c.type_.clone(), format!("{:?}", c.status), c.reason.clone()]).collect();
    metrics.set_conditions(&ns, &name, conditions);
    // History is newest first: the first of each type is its latest.
    let mut seen = Vec::new();
    for t in &status.history {
        let type_ = format!("{:?}", t.type_);
        if !seen.contains(&type_) {
            let at = t.time.timestamp_millis() as f64 / 1000.0;
            metrics.last_transition.with_label_values(&[&ns, &name, &type_]).set(at);
            seen.push(type_);
        }
    }
    let split = status.mode == Some(Mode::SplitBrain)
        || status.conditions.iter().any(|c| c.type_ == "SplitBrain" && c.status == crate::api::ConditionStatus::True);
    metrics.split_brain.with_label_values(&[&ns, &name]).set(i64::from(split));
    for ms in &status.members {
        let member = ms.name.to_string();
        match ms.sync_lag_seconds {
            Some(lag) => metrics.sync_lag.with_label_values(&[&ns, &name, &member]).set(lag as f64),
            None => {
                let _ = metrics.sync_lag.remove_label_values(&[&ns, &name, &member]);
            }
        }
        if let Some(skew) = ms.clock_skew_seconds {
            metrics.clock_skew.with_label_values(&[&ns, &name, &member]).set(skew as f64);
        }
    }
    let away = super::outage::recorded_away(status, status.active_member, chrono::Utc::now());
    let active = status.active_member.filter(|_| status.removed_member.is_none());
    let outage = super::outage::standby_outage(&pair.spec, obs, active, away);
    metrics.standby_outage.with_label_values(&[&ns, &name]).set(outage.ratio);
    if let Some(r) = &status.resync {
        for (phase, word) in [
            (crate::api::ResyncPhase::Running, "Running"),
            (crate::api::ResyncPhase::Succeeded, "Succeeded"),
            (crate::api::ResyncPhase::Failed, "Failed"),
        ] {
            metrics.resync_phase.with_label_values(&[&ns, &name, word]).set(i64::from(r.phase == phase));
        }
        for (action, n) in [
            ("copied", r.copied),
            ("quarantined", r.quarantined),
            ("deleted", r.deleted),
            ("copiedBack", r.copied_back),
            ("conflicts", r.conflicts),
        ] {
            metrics.resync_files.with_label_values(&[&ns, &name, action]).set(n as i64);
        }
    }
    for m in Member::BOTH {
        let member = m.to_string();
        metrics.active_member.with_label_values(&[&ns, &name, &member]).set(i64::from(status.active_member == Some(m)));
        let a = &obs.member(m).agent;
        let fenced = a.last.as_ref().is_some_and(|s| s.role == crate::api::Role::Fenced);
        metrics.member_fenced.with_label_values(&[&ns, &name, &member]).set(i64::from(fenced));
        let failsafe = a.last.as_ref().is_some_and(|s| s.failsafe);
        metrics.member_failsafe.with_label_values(&[&ns, &name, &member]).set(i64::from(failsafe));
        if let Some(q) = a.last.as_ref().and_then(|s| s.sync.as_ref()).map(|s| s.quarantine.bytes) {
            metrics.quarantine_bytes.with_label_values(&[&ns, &name, &member]).set(q.min(i64::MAX as u64) as i64);
        }
        // A report that cannot be true is not published (nor trusted).
        match a.last.as_ref().and_then(|s| s.volume).filter(|v| v.used_percent().is_some()) {
            Some(v) => {
                let ratio = v.used_bytes as f64 / (v.used_bytes + v.available_bytes) as f64;
                metrics.volume_used_ratio.with_label_values(&[&ns, &name, &member]).set(ratio);
                let free = v.available_bytes.min(i64::MAX as u64) as i64;
                metrics.volume_available_bytes.with_label_values(&[&ns, &name, &member]).set(free);
            }
            None => {
                let _ = metrics.volume_used_ratio.remove_label_values(&[&ns, &name, &member]);
                let _ = metrics.volume_available_bytes.remove_label_values(&[&ns, &name, &member]);
            }
        }
        metrics.missed_heartbeats.with_label_values(&[&ns, &name, &member]).set(i64::from(a.missed));
        if let Some(age) = a.since_answer {
            metrics.heartbeat_age.with_label_values(&[&ns, &name, &member]).set(age.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use prometheus::Registry;
    use serde_json::json;

    use super::*;
    use crate::operator::observe::{AgentObs, MemberObs};

    fn pair(name: &str) -> HighAvailabilityPair {
        serde_json::from_value(json!({
            "apiVersion": "hapair.dev/v1alpha1", "kind": "HighAvailabilityPair",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("{name}-uid")},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}},
                     "service": {"ports": [{"name": "http", "port": 80}]},
                     "standbyOutage": {"maxDurationSeconds": 60}},
        }))
        .unwrap()
    }

    /// A status that sets every per-pair series: mode, conditions, history,
    /// lag and skew of both members, a resync.
    fn status() -> HighAvailabilityPairStatus {
        let member = |name: &str, state: &str| {
            json!({"name": name, "pod": format!("db-{name}"), "role": "Standby", "state": state,
                   "clockSkewSeconds": 0, "syncLagSeconds": 2})
        };
        serde_json::from_value(json!({
            "mode": "Enabled", "epoch": 3, "activeMember": "primary",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Enabled", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "history": [{"type": "Failover", "to": "primary", "epoch": 3, "reason": "PodGone",
                         "time": "2026-01-01T00:00:00Z"}],
            "members": [member("primary", "PrimaryActive"), member("secondary", "SecondarySyncing")],
            "resync": {"job": "db-resync-3", "label": "resync-3", "phase": "Succeeded"},
            "certificates": {"caNotAfter": "2036-01-01T00:00:00Z", "membersNotAfter": "2031-01-01T00:00:00Z"},
        }))
        .unwrap()
    }

    /// Metric names with a series for the pair.
    fn series_of(r: &Registry, pair: &str) -> BTreeSet<String> {
        r.gather()
            .into_iter()
            .filter(|f| {
                f.get_metric().iter().any(|m| m.get_label().iter().any(|l| l.name() == "pair" && l.value() == pair))
            })
            .map(|f| f.name().to_string())
            .collect()
    }

    #[test]
    fn a_volume_is_published_as_a_ratio_and_a_report_that_cannot_be_true_is_not() {
        let r = Registry::new();
        let m = OperatorMetrics::register(&r).unwrap();
        let report = |volume: serde_json::Value| {
            serde_json::from_value(json!({
                "member": "primary", "podUid": "u", "role": "Standby", "epoch": 3,
                "wallClock": "2026-01-01T00:00:00Z", "syncGeneration": 1, "leaseRenewFailures": 0, "volume": volume,
            }))
            .unwrap()
        };
        let mut obs = Observed::default();
        obs.primary.agent.last = Some(report(json!({"capacityBytes": 1000, "usedBytes": 800, "availableBytes": 200})));
        obs.secondary.agent.last = Some(report(json!({"capacityBytes": 1000, "usedBytes": 5000, "availableBytes": 0})));
        publish(&m, &pair("a"), &status(), &obs);
        assert_eq!(m.volume_used_ratio.with_label_values(&["ns", "a", "primary"]).get(), 0.8);
        assert_eq!(m.volume_available_bytes.with_label_values(&["ns", "a", "primary"]).get(), 200);
        let members = |name: &str| -> Vec<String> {
            r.gather()
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric().iter())
                .flat_map(|x| x.get_label().iter().filter(|l| l.name() == "member").map(|l| l.value().to_string()))
                .collect()
        };
        assert_eq!(members("hapair_volume_used_ratio"), vec!["primary"]);
        assert_eq!(members("hapair_volume_available_bytes"), vec!["primary"]);
    }

    #[test]
    fn a_forgotten_pair_leaves_no_series_and_its_neighbour_keeps_all_of_its_own() {
        let r = Registry::new();
        let m = OperatorMetrics::register(&r).unwrap();
        // Every metric that carries a pair label: all must be exercised below.
        let per_pair: BTreeSet<String> = m
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned().collect::<Vec<_>>())
            .filter(|d| d.variable_labels.iter().any(|l| l == "pair"))
            .map(|d| d.fq_name)
            .collect();
        let mut obs = Observed::default();
        for (member, name) in [(&mut obs.primary, "primary"), (&mut obs.secondary, "secondary")] {
            let last = serde_json::from_value(json!({
                "member": name, "podUid": "u", "role": "Standby", "epoch": 3, "appHealthy": true,
                "wallClock": "2026-01-01T00:00:00Z", "peerReachable": true, "syncGeneration": 1,
                "leaseRenewFailures": 0, "released": null,
                "sync": {"point": {"epoch": 3, "generation": 1}, "pendingFiles": 0, "pendingBytes": 0, "diverged": {}, "changedWhileStandby": {}, "copiedFiles": 0, "copiedBytes": 0, "errors": 0,
                         "refused": 0, "garbage": 0, "quarantine": {"labels": 1, "files": 2, "bytes": 30}},
                "volume": {"capacityBytes": 1000, "usedBytes": 800, "availableBytes": 150},
            }))
            .unwrap();
            *member = MemberObs {
                pod: None,
                agent: AgentObs {
                    last: Some(last),
                    missed: 2,
                    since_answer: Some(Duration::from_secs(9)),
                    ..Default::default()
                },
            };
        }
        for name in ["a", "b"] {
            publish(&m, &pair(name), &status(), &obs);
            m.reconciles.with_label_values(&["ns", name]).inc();
            m.reconcile_errors.with_label_values(&["ns", name, "kube"]).inc();
            m.failovers.with_label_values(&["ns", name, "Failover", "PodGone"]).inc();
            m.invalid.with_label_values(&["ns", name]).set(0);
        }
        assert_eq!(series_of(&r, "a"), per_pair, "the test sets every per-pair metric");
        m.forget_pair("ns", "a");
        assert_eq!(series_of(&r, "a"), BTreeSet::new(), "a deleted pair leaves nothing behind");
        assert_eq!(series_of(&r, "b"), per_pair, "the other pair keeps every series");
    }
}
