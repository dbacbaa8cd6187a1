//! Prometheus metrics, one struct per component, each registered into the
//! component's own registry and served on its `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::api::Role;

pub struct AgentMetrics {
    pub lease_renew_failures: IntCounter,
    pub fenced_total: IntCounter,
    pub health_check_failures: IntCounter,
    role: IntGaugeVec,
    pub fenced: IntGauge,
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
            role: IntGaugeVec::new(Opts::new("hapair_agent_role", "1 for the member's current role"), &["role"])?,
            fenced: IntGauge::new("hapair_agent_fenced", "1 while the agent is fenced")?,
        };
        r.register(Box::new(m.lease_renew_failures.clone()))?;
        r.register(Box::new(m.fenced_total.clone()))?;
        r.register(Box::new(m.health_check_failures.clone()))?;
        r.register(Box::new(m.role.clone()))?;
        r.register(Box::new(m.fenced.clone()))?;
        Ok(m)
    }

    pub fn set_role(&self, role: Role) {
        for r in [Role::Active, Role::Standby, Role::Fenced, Role::Unknown] {
            self.role.with_label_values(&[crate::agent::role_word(r)]).set(i64::from(r == role));
        }
        self.fenced.set(i64::from(role == Role::Fenced));
    }
}

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
    pub leader: IntGauge,
}

impl OperatorMetrics {
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
            leader: IntGauge::new("hapair_operator_leader", "1 while this replica leads")?,
        };
        r.register(Box::new(m.reconciles.clone()))?;
        r.register(Box::new(m.reconcile_errors.clone()))?;
        r.register(Box::new(m.reconcile_duration.clone()))?;
        r.register(Box::new(m.failovers.clone()))?;
        r.register(Box::new(m.failover_duration.clone()))?;
        r.register(Box::new(m.mode.clone()))?;
        r.register(Box::new(m.epoch.clone()))?;
        r.register(Box::new(m.active_member.clone()))?;
        r.register(Box::new(m.missed_heartbeats.clone()))?;
        r.register(Box::new(m.heartbeat_age.clone()))?;
        r.register(Box::new(m.split_brain.clone()))?;
        r.register(Box::new(m.sync_lag.clone()))?;
        r.register(Box::new(m.clock_skew.clone()))?;
        r.register(Box::new(m.resync_phase.clone()))?;
        r.register(Box::new(m.standby_outage.clone()))?;
        r.register(Box::new(m.resync_files.clone()))?;
        r.register(Box::new(m.leader.clone()))?;
        Ok(m)
    }
}
