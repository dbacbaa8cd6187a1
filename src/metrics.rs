//! Prometheus metrics, one struct per component, each registered into the
//! component's own registry and served on its `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::api::Role;

/// The name of every metric hapair exports (operator and agent).
pub fn metric_names() -> Vec<String> {
    let (agent, operator) = (Registry::new(), Registry::new());
    let mut all = AgentMetrics::register(&agent).expect("agent metrics").collectors();
    all.extend(OperatorMetrics::register(&operator).expect("operator metrics").collectors());
    all.iter().flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())).collect()
}

pub struct AgentMetrics {
    pub lease_renew_failures: IntCounter,
    pub fenced_total: IntCounter,
    pub health_check_failures: IntCounter,
    /// Writes of the role files that failed (each is retried).
    pub role_file_failures: IntCounter,
    role: IntGaugeVec,
    pub fenced: IntGauge,
    /// Serving past the renewal deadline on the peer's promise.
    pub failsafe_serving: IntGauge,
    /// Promises this member asked its peer for, by `result`.
    pub failsafe_requests: IntCounterVec,
    /// Promises this member was asked for, by `result`.
    pub failsafe_promises: IntCounterVec,
    /// States of the Lease a member that does not hold it took, by `via`
    /// (`read`: a GET; `watch`: delivered by its watch).
    pub lease_views: IntCounterVec,
    /// Watches of the Lease that failed (the member reads it meanwhile).
    pub lease_watch_errors: IntCounter,
}

impl AgentMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let m = AgentMetrics {
            lease_renew_failures: IntCounter::new(
                "hapair_agent_lease_renew_failures_total",
                "Lease renewals that failed or timed out",
            )?,
            fenced_total: IntCounter::new(
                "hapair_agent_fenced_total",
                "Times the agent fenced itself at its renew deadline",
            )?,
            health_check_failures: IntCounter::new(
                "hapair_agent_health_check_failures_total",
                "Application health checks that failed",
            )?,
            role_file_failures: IntCounter::new(
                "hapair_agent_role_file_failures_total",
                "Writes of the role files that failed; the agent retries them and reports the role the files may still show",
            )?,
            role: IntGaugeVec::new(Opts::new("hapair_agent_role", "1 for the member's current role"), &["role"])?,
            fenced: IntGauge::new("hapair_agent_fenced", "1 while the agent is fenced")?,
            failsafe_serving: IntGauge::new(
                "hapair_agent_failsafe_serving",
                "1 while the member serves past its renewal deadline on its peer's promise (API server unreachable)",
            )?,
            failsafe_requests: IntCounterVec::new(
                Opts::new(
                    "hapair_agent_failsafe_requests_total",
                    "Promises asked of the peer while renewals failed, by result (granted, refused, unreachable)",
                ),
                &["result"],
            )?,
            failsafe_promises: IntCounterVec::new(
                Opts::new(
                    "hapair_agent_failsafe_promises_total",
                    "Promises not to act as active asked of this member, by result (granted, refused, malformed)",
                ),
                &["result"],
            )?,
            lease_views: IntCounterVec::new(
                Opts::new(
                    "hapair_agent_lease_views_total",
                    "States of the pair's Lease a member not holding it took, by how they came (read: a request; watch: its watch)",
                ),
                &["via"],
            )?,
            lease_watch_errors: IntCounter::new(
                "hapair_agent_lease_watch_errors_total",
                "Watches of the pair's Lease that failed; the member reads the Lease every interval until its watch is back",
            )?,
        };
        for c in m.collectors() {
            r.register(c)?;
        }
        Ok(m)
    }

    /// Every metric, for registration and for checks of what dashboards
    /// and alerts may use.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.lease_renew_failures.clone()),
            Box::new(self.fenced_total.clone()),
            Box::new(self.health_check_failures.clone()),
            Box::new(self.role_file_failures.clone()),
            Box::new(self.role.clone()),
            Box::new(self.fenced.clone()),
            Box::new(self.failsafe_serving.clone()),
            Box::new(self.failsafe_requests.clone()),
            Box::new(self.failsafe_promises.clone()),
            Box::new(self.lease_views.clone()),
            Box::new(self.lease_watch_errors.clone()),
        ]
    }

    pub fn set_role(&self, role: Role) {
        for r in [Role::Active, Role::Standby, Role::Fenced, Role::Unknown] {
            self.role.with_label_values(&[crate::agent::role_word(r)]).set(i64::from(r == role));
        }
        self.fenced.set(i64::from(role == Role::Fenced));
    }
}

/// A condition's `type`, `status` and `reason` labels.
pub type ConditionSeries = [String; 3];

pub struct OperatorMetrics {
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
    pub failovers: IntCounterVec,
    pub failover_duration: Histogram,
    pub mode: IntGaugeVec,
    pub epoch: IntGaugeVec,
    pub active_member: IntGaugeVec,
    pub missed_heartbeats: IntGaugeVec,
    pub heartbeat_age: prometheus::GaugeVec,
    pub split_brain: IntGaugeVec,
    pub sync_lag: prometheus::GaugeVec,
    pub clock_skew: prometheus::GaugeVec,
    pub resync_phase: IntGaugeVec,
    pub standby_outage: prometheus::GaugeVec,
    pub resync_files: IntGaugeVec,
    pub condition: IntGaugeVec,
    pub member_fenced: IntGaugeVec,
    pub member_failsafe: IntGaugeVec,
    pub quarantine_bytes: IntGaugeVec,
    pub volume_used_ratio: prometheus::GaugeVec,
    pub volume_available_bytes: IntGaugeVec,
    pub certificate_expiry: prometheus::GaugeVec,
    pub last_transition: prometheus::GaugeVec,
    pub leader: IntGauge,
    pub invalid: IntGaugeVec,
    /// The condition series last published per pair, to drop stale ones
    /// when a condition's status or reason changes.
    pub published_conditions: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<ConditionSeries>>>,
}

impl OperatorMetrics {
    /// Publishes the pair's conditions (`[]` forgets them all).
    pub fn set_conditions(&self, ns: &str, pair: &str, now: Vec<[String; 3]>) {
        let mut published = self.published_conditions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ns.to_string(), pair.to_string());
        for old in published.get(&key).into_iter().flatten().filter(|o| !now.contains(o)) {
            let _ = self.condition.remove_label_values(&[ns, pair, &old[0], &old[1], &old[2]]);
        }
        for c in &now {
            self.condition.with_label_values(&[ns, pair, &c[0], &c[1], &c[2]]).set(1);
        }
        if now.is_empty() {
            published.remove(&key);
        } else {
            published.insert(key, now);
        }
    }

    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let pair = &["namespace", "pair"];
        let m = OperatorMetrics {
            reconciles: IntCounterVec::new(Opts::new("hapair_reconciles_total", "Reconciles of a pair"), pair)?,
            reconcile_errors: IntCounterVec::new(
                Opts::new("hapair_reconcile_errors_total", "Reconciles that failed, by error"),
                &["namespace", "pair", "error"],
            )?,
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new("hapair_reconcile_duration_seconds", "Time for one reconcile")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            )?,
            failovers: IntCounterVec::new(
                Opts::new("hapair_failovers_total", "Changes of active member, by type and reason"),
                &["namespace", "pair", "type", "reason"],
            )?,
            failover_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "hapair_failover_duration_seconds",
                    "From the first sign of failure to the Service selector move",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0, 80.0]),
            )?,
            mode: IntGaugeVec::new(
                Opts::new("hapair_mode", "1 for the pair's current mode"),
                &["namespace", "pair", "mode"],
            )?,
            epoch: IntGaugeVec::new(Opts::new("hapair_epoch", "The pair's epoch (fencing token)"), pair)?,
            active_member: IntGaugeVec::new(
                Opts::new("hapair_active_member", "1 for the member holding the Lease"),
                &["namespace", "pair", "member"],
            )?,
            missed_heartbeats: IntGaugeVec::new(
                Opts::new("hapair_missed_heartbeats", "Heartbeats missed in a row, per member"),
                &["namespace", "pair", "member"],
            )?,
            heartbeat_age: prometheus::GaugeVec::new(
                Opts::new("hapair_heartbeat_age_seconds", "Seconds since the member's agent last answered"),
                &["namespace", "pair", "member"],
            )?,
            split_brain: IntGaugeVec::new(
                Opts::new(
                    "hapair_split_brain",
                    "1 while the pair has a split brain (both members active, or changes made on a standby)",
                ),
                pair,
            )?,
            sync_lag: prometheus::GaugeVec::new(
                Opts::new("hapair_sync_lag_seconds", "How far the standby's files are behind the active member's"),
                &["namespace", "pair", "member"],
            )?,
            clock_skew: prometheus::GaugeVec::new(
                Opts::new(
                    "hapair_clock_skew_seconds",
                    "Estimated difference between a member's clock and the operator's",
                ),
                &["namespace", "pair", "member"],
            )?,
            standby_outage: prometheus::GaugeVec::new(
                Opts::new(
                    "hapair_standby_outage_ratio",
                    "Share of the standby-outage budget used (1 = spec.standbyOutage limit reached)",
                ),
                pair,
            )?,
            resync_phase: IntGaugeVec::new(
                Opts::new("hapair_resync_phase", "1 for the phase of the pair's latest resync Job"),
                &["namespace", "pair", "phase"],
            )?,
            resync_files: IntGaugeVec::new(
                Opts::new("hapair_resync_files", "Files the pair's latest resync Job handled, by action"),
                &["namespace", "pair", "action"],
            )?,
            condition: IntGaugeVec::new(
                Opts::new("hapair_condition", "1 for each of the pair's status conditions, with its status and reason"),
                &["namespace", "pair", "type", "status", "reason"],
            )?,
            member_fenced: IntGaugeVec::new(
                Opts::new("hapair_member_fenced", "1 while the member's agent reports itself fenced"),
                &["namespace", "pair", "member"],
            )?,
            member_failsafe: IntGaugeVec::new(
                Opts::new(
                    "hapair_member_failsafe",
                    "1 while the member's agent serves on its peer's promise: the API server does not hear its renewals",
                ),
                &["namespace", "pair", "member"],
            )?,
            quarantine_bytes: IntGaugeVec::new(
                Opts::new(
                    "hapair_quarantine_bytes",
                    "Bytes of quarantined files on the member's volume, as its agent reports",
                ),
                &["namespace", "pair", "member"],
            )?,
            volume_used_ratio: prometheus::GaugeVec::new(
                Opts::new(
                    "hapair_volume_used_ratio",
                    "Share of the member's data volume in use, of what the application can use (as df counts), as its agent measures it",
                ),
                &["namespace", "pair", "member"],
            )?,
            volume_available_bytes: IntGaugeVec::new(
                Opts::new(
                    "hapair_volume_available_bytes",
                    "Bytes the application can still write to the member's data volume, as its agent measures it",
                ),
                &["namespace", "pair", "member"],
            )?,
            certificate_expiry: prometheus::GaugeVec::new(
                Opts::new(
                    "hapair_certificate_expiry_timestamp_seconds",
                    "When the pair's certificates stop being valid: certificate=ca, or members (the earliest of the members' and the operator's)",
                ),
                &["namespace", "pair", "certificate"],
            )?,
            last_transition: prometheus::GaugeVec::new(
                Opts::new(
                    "hapair_last_transition_timestamp_seconds",
                    "When the active member last changed, by transition type (from the pair's history)",
                ),
                &["namespace", "pair", "type"],
            )?,
            leader: IntGauge::new("hapair_operator_leader", "1 while this replica leads")?,
            invalid: IntGaugeVec::new(
                Opts::new(
                    "hapair_pair_invalid",
                    "1 while the pair's stored object cannot be read by this operator (the pair is held)",
                ),
                pair,
            )?,
            published_conditions: Default::default(),
        };
        for c in m.collectors() {
            r.register(c)?;
        }
        Ok(m)
    }

    /// Every metric labelled by namespace and pair: the one list that both
    /// registers them and forgets a deleted pair's series, so the two cannot
    /// drift apart.
    fn per_pair(&self) -> [&dyn PairSeries; 23] {
        [
            &self.invalid,
            &self.reconciles,
            &self.reconcile_errors,
            &self.failovers,
            &self.mode,
            &self.epoch,
            &self.active_member,
            &self.missed_heartbeats,
            &self.heartbeat_age,
            &self.split_brain,
            &self.sync_lag,
            &self.clock_skew,
            &self.resync_phase,
            &self.condition,
            &self.member_fenced,
            &self.member_failsafe,
            &self.quarantine_bytes,
            &self.volume_used_ratio,
            &self.volume_available_bytes,
            &self.certificate_expiry,
            &self.last_transition,
            &self.standby_outage,
            &self.resync_files,
        ]
    }

    /// Every metric, for registration and for checks of what dashboards
    /// and alerts may use.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let mut all: Vec<Box<dyn prometheus::core::Collector>> =
            self.per_pair().iter().map(|m| m.collector()).collect();
        all.push(Box::new(self.reconcile_duration.clone()));
        all.push(Box::new(self.failover_duration.clone()));
        all.push(Box::new(self.leader.clone()));
        all
    }

    /// Removes every series of a pair (it was deleted, or this replica
    /// stopped watching it).
    pub fn forget_pair(&self, ns: &str, pair: &str) {
        for m in self.per_pair() {
            m.forget(ns, pair);
        }
        self.published_conditions.lock().unwrap_or_else(|p| p.into_inner()).remove(&(ns.to_string(), pair.to_string()));
    }
}

/// A metric vector whose series carry `namespace` and `pair` labels.
trait PairSeries: Send + Sync {
    fn collector(&self) -> Box<dyn prometheus::core::Collector>;
    /// Removes the series of one pair, whatever its other labels.
    fn forget(&self, ns: &str, pair: &str);
}

impl<T: prometheus::core::MetricVecBuilder + 'static> PairSeries for prometheus::core::MetricVec<T> {
    fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        Box::new(self.clone())
    }

    fn forget(&self, ns: &str, pair: &str) {
        use prometheus::core::Collector;
        for family in self.collect() {
            for metric in family.get_metric() {
                let labels: std::collections::HashMap<&str, &str> =
                    metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
                if labels.get("namespace") == Some(&ns) && labels.get("pair") == Some(&pair) {
                    let _ = self.remove(&labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod condition_tests {
    use super::*;

    fn series(r: &Registry) -> Vec<String> {
        r.gather()
            .iter()
            .filter(|f| f.name() == "hapair_condition")
            .flat_map(|f| {
                f.get_metric()
                    .iter()
                    .map(|x| x.get_label().iter().map(|l| l.value()).collect::<Vec<_>>().join("/"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_condition_that_changes_reason_leaves_no_stale_series() {
        let r = Registry::new();
        let m = OperatorMetrics::register(&r).unwrap();
        let c = |t: &str, s: &str, why: &str| [t.to_string(), s.to_string(), why.to_string()];
        m.set_conditions(
            "ns",
            "db",
            vec![c("StandbyOutage", "True", "Over75Percent"), c("Paused", "False", "Running")],
        );
        m.set_conditions(
            "ns",
            "db",
            vec![c("StandbyOutage", "True", "Over90Percent"), c("Paused", "False", "Running")],
        );
        let mut got = series(&r);
        got.sort();
        // Labels come sorted by name: namespace, pair, reason, status, type.
        assert_eq!(got, ["ns/db/Over90Percent/True/StandbyOutage", "ns/db/Running/False/Paused"]);
        m.set_conditions("ns", "db", vec![]);
        assert!(series(&r).is_empty(), "a deleted pair leaves nothing behind");
    }
}
