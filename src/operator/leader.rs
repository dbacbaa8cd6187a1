//! Leader election among operator replicas with a Lease of their own. Only
//! the leader acts. A replica that cannot renew in time stops (its
//! Deployment restarts it), so two replicas never act at once; a new leader
//! waits a full lease duration, on its own clock, before taking over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::metrics::OperatorMetrics;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_every: Duration,
}

fn lease_seconds() -> u64 {
    std::env::var("HAPAIR_LEADER_LEASE_SECONDS").ok().and_then(|v| v.parse().ok()).filter(|v| *v >= 2).unwrap_or(15)
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self::with_duration(client, namespace, name, identity, Duration::from_secs(lease_seconds()))
    }

    /// An elector whose Lease lasts `duration`, renewed every fifth of it.
    pub fn with_duration(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            renew_every: duration / 5,
        }
    }

    fn now() -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::now())
    }

    /// Waits until this replica leads. The renewals start at once, on a task
    /// of their own, whatever the caller does next (a slow first sync of the
    /// caches must not let the Lease lapse while this replica goes on to
    /// act); the returned handle completes when leadership is lost.
    pub async fn acquire(&self, metrics: &OperatorMetrics) -> Result<tokio::task::JoinHandle<()>, kube::Error> {
        let mut seen: Option<(String, Instant)> = None;
        loop {
            match self.api.get_opt(&self.name).await? {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                        spec: Some(self.spec(1)),
                    };
                    if self.api.create(&PostParams::default(), &lease).await.is_ok() {
                        break;
                    }
                }
                Some(mut lease) => {
                    let rv = lease.resource_version().unwrap_or_default();
                    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
                    let changed = seen.as_ref().is_none_or(|(r, _)| *r != rv);
                    if changed {
                        seen = Some((rv, Instant::now()));
                    }
                    let expired = seen.as_ref().is_some_and(|(_, t)| t.elapsed() >= self.duration);
                    if holder.is_empty() || holder == self.identity || expired {
                        let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                        lease.spec = Some(self.spec(transitions + i32::from(holder != self.identity)));
                        if self.api.replace(&self.name, &PostParams::default(), &lease).await.is_ok() {
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(self.renew_every).await;
        }
        metrics.leader.set(1);
        info!(lease = %self.name, "acquired leadership");
        let (api, name, identity, duration, every) =
            (self.api.clone(), self.name.clone(), self.identity.clone(), self.duration, self.renew_every);
        let leader = metrics.leader.clone();
        Ok(tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(every).await;
                // A renewal counts from when it was sent.
                let sent = Instant::now();
                // Ok(false): another replica holds it, or the write failed
                // (a conflict means someone else wrote it) — stop at once.
                // Err: the Lease could not be read; tried again next time.
                // Each says why in the log: a slow API server and a Lease
                // someone deleted call for different fixes.
                let renewed = async {
                    let mut lease = api.get(&name).await.map_err(|e| format!("reading it: {e}"))?;
                    let Some(spec) = lease.spec.as_mut() else {
                        return Err("it has no spec".to_string());
                    };
                    if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                        return Ok(false);
                    }
                    spec.renew_time = Some(Elector::now());
                    match api.replace(&name, &PostParams::default(), &lease).await {
                        Ok(_) => Ok(true),
                        Err(e) => {
                            warn!(error = %e, "leader lease renewal refused: stepping down");
                            Ok(false)
                        }
                    }
                };
                match tokio::time::timeout(every, renewed).await {
                    Ok(Ok(true)) => last = sent,
                    Ok(Ok(false)) => break,
                    Ok(Err(why)) => warn!(%why, "leader lease renewal failed"),
                    Err(_) => warn!(within = ?every, "leader lease renewal failed: no answer in time"),
                }
                // Stop acting well before another replica may take over.
                // (The renewal above may itself take up to `every`.)
                if last.elapsed() >= duration.saturating_sub(2 * every) {
                    break;
                }
            }
            leader.set(0);
        }))
    }

    fn spec(&self, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            lease_transitions: Some(transitions),
            acquire_time: Some(Self::now()),
            renew_time: Some(Self::now()),
            ..Default::default()
        }
    }

    /// Hands leadership over on a clean shutdown so the next replica need
    /// not wait out the lease.
    pub async fn release(&self) {
        if let Ok(mut lease) = self.api.get(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = Some(String::new());
            let _ = self.api.replace(&self.name, &PostParams::default(), &lease).await;
        }
    }
}
