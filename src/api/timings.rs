//! Timings implied by a spec: how long the Lease lasts, when the active member
//! fences itself, and the worst-case time to fail over. Published in
//! `status.effectiveTimings` so users see what their settings mean.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::spec::HighAvailabilityPairSpec;

/// Worst-case timings derived from the spec, in seconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveTimings {
    /// Lease duration: `heartbeat.intervalSeconds × missedThreshold`.
    pub lease_duration_seconds: i64,
    /// The active member stops serving after this long without renewing the
    /// Lease: `(missedThreshold − 1) × intervalSeconds`, always one interval
    /// before the standby may be promoted.
    pub fence_after_seconds: i64,
    /// Time for the health check to establish an application failure:
    /// `periodSeconds × failureThreshold` (0 without a health check).
    pub health_check_detection_seconds: i64,
    /// Worst case from an application failure seen by its agent (or a
    /// deleted pod) to the standby's promotion: health-check detection plus
    /// `failover.delaySeconds`.
    pub confirmed_failover_seconds: i64,
    /// Worst case from a silent failure (member unreachable) to the standby's
    /// promotion: a full Lease duration without renewal, observed on the
    /// operator's own clock, plus `failover.delaySeconds`.
    pub unconfirmed_failover_seconds: i64,
}

impl EffectiveTimings {
    pub fn of(spec: &HighAvailabilityPairSpec) -> Self {
        let interval = i64::from(spec.heartbeat.interval_seconds);
        let missed = i64::from(spec.heartbeat.missed_threshold);
        let delay = i64::from(spec.failover.delay_seconds);
        let lease = interval * missed;
        let check =
            spec.health_check.as_ref().map_or(0, |c| i64::from(c.period_seconds) * i64::from(c.failure_threshold));
        EffectiveTimings {
            lease_duration_seconds: lease,
            fence_after_seconds: (missed - 1) * interval,
            health_check_detection_seconds: check,
            confirmed_failover_seconds: check + delay,
            unconfirmed_failover_seconds: lease + delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> HighAvailabilityPairSpec {
        let base =
            "template: {spec: {containers: [{name: app, image: x}]}}\nservice: {ports: [{name: http, port: 80}]}\n";
        serde_yaml::from_str(&format!("{base}{yaml}")).unwrap()
    }

    #[test]
    fn defaults_give_a_fifteen_second_lease_and_fence_at_ten() {
        let t = EffectiveTimings::of(&spec(""));
        assert_eq!(t.lease_duration_seconds, 15);
        assert_eq!(t.fence_after_seconds, 10);
        assert_eq!(t.health_check_detection_seconds, 0);
        assert_eq!(t.confirmed_failover_seconds, 0);
        assert_eq!(t.unconfirmed_failover_seconds, 15);
    }

    #[test]
    fn the_active_fences_a_full_interval_before_the_standby_may_be_promoted() {
        for interval in [1, 5, 600] {
            for missed in [2, 3, 30] {
                let t = EffectiveTimings::of(&spec(&format!(
                    "heartbeat: {{intervalSeconds: {interval}, missedThreshold: {missed}}}"
                )));
                assert_eq!(t.lease_duration_seconds - t.fence_after_seconds, i64::from(interval));
            }
        }
    }

    #[test]
    fn health_check_and_delay_add_to_the_failover_times() {
        let t = EffectiveTimings::of(&spec(
            "heartbeat: {intervalSeconds: 1, missedThreshold: 3}\n\
             failover: {delaySeconds: 2}\n\
             healthCheck: {tcpSocket: {port: 80}, periodSeconds: 2, failureThreshold: 3}",
        ));
        assert_eq!(t.health_check_detection_seconds, 6);
        assert_eq!(t.confirmed_failover_seconds, 8);
        assert_eq!(t.unconfirmed_failover_seconds, 5);
    }
}
