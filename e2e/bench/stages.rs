//! The stages of one failover as `make bench-scale` sees them from outside,
//! and the observer that stamps the Lease's move.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, WatchEvent, WatchParams};
use tokio::sync::oneshot;

use crate::stats::report;

/// Per run, ms from the fault: the kubelet's report accepted by the API
/// server, the Lease naming another holder, the new active's role file.
#[derive(Default)]
pub struct Stages {
    pub reported: Vec<f64>,
    pub moved: Vec<f64>,
    pub serving: Vec<f64>,
}

impl Stages {
    pub fn extend(&mut self, other: Stages) {
        self.reported.extend(other.reported);
        self.moved.extend(other.moved);
        self.serving.extend(other.serving);
    }

    /// From the kubelet's report to the new active's role file: what the
    /// operator and the agents took, without the (stand-in) kubelet's own
    /// write, per run.
    pub fn after_report(&self) -> Vec<f64> {
        self.serving.iter().zip(&self.reported).map(|(s, r)| s - r).collect()
    }

    /// `BENCH scale_{what}_failover_…` lines, one per stage.
    pub fn report(&self, what: &str) {
        report(&format!("scale_{what}_failover_reported"), &self.reported);
        report(&format!("scale_{what}_failover_lease_moved"), &self.moved);
        report(&format!("scale_{what}_failover_promoted"), &self.serving);
        report(&format!("scale_{what}_failover_report_to_promoted"), &self.after_report());
    }
}

/// The moment a watch of one Lease first showed it under another holder
/// than when the watch started. The event arrives after the write, so the
/// stamp is an upper bound of the move, as a read would be.
pub struct LeaseMove {
    at: oneshot::Receiver<Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseMove {
    /// Reads the Lease, then watches it from that read's version.
    pub async fn watch(leases: &Api<Lease>, name: &str) -> Result<LeaseMove, kube::Error> {
        let lease = leases.get(name).await?;
        let holder = |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone());
        let before = holder(&lease);
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(120);
        let stream = leases.watch(&params, &version).await?;
        let (tx, at) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut stream = stream.boxed();
            while let Some(event) = stream.next().await {
                if let Ok(WatchEvent::Modified(l) | WatchEvent::Added(l)) = event
                    && holder(&l) != before
                {
                    let _ = tx.send(Instant::now());
                    return;
                }
            }
        });
        Ok(LeaseMove { at, task })
    }

    /// When the move was seen, measured from `t0`; waits up to 10 s more.
    pub async fn at(self, t0: Instant) -> Option<Duration> {
        let seen = tokio::time::timeout(Duration::from_secs(10), self.at).await;
        self.task.abort();
        seen.ok()?.ok().map(|at| at.saturating_duration_since(t0))
    }
}
