//! The safety checker: samples the pair the whole time a scenario runs and
//! records every breach of the safety invariants it can see:
//!
//! - two members report `active` at the same epoch;
//! - the VIP selector names a member other than the Lease holder for longer
//!   than one reconcile (`grace`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hapair::api::{Member, Role};
use hapair::http::{self, Target};
use hapair::proto::{AgentStatus, parse_identity};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Api, Client};

#[derive(Default)]
struct Seen {
    violations: Vec<String>,
    both_active: u64,
    samples: u64,
    mismatch_since: Option<Instant>,
}

pub struct Checker {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Checker {
    pub fn start(
        client: Client,
        ns: &str,
        pair: &str,
        tls: Arc<rustls::ClientConfig>,
        agent_port: u16,
        grace: Duration,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ns, pair, s) = (ns.to_string(), pair.to_string(), seen.clone());
        let task = tokio::spawn(async move {
            let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            loop {
                let mut agents: Vec<AgentStatus> = Vec::new();
                for m in Member::BOTH {
                    let Ok(Some(pod)) = pods.get_opt(&m.pod_name(&pair)).await else { continue };
                    let Some(ip) = pod.status.and_then(|s| s.pod_ip).and_then(|ip| ip.parse().ok()) else { continue };
                    let Ok(name) = hapair::tls::server_name(&hapair::tls::member_server_name(m, &pair, &ns)) else {
                        continue;
                    };
                    let t = Target { addr: SocketAddr::new(ip, agent_port), server_name: name, tls: tls.clone() };
                    if let Ok(a) = http::get_json::<AgentStatus>(&t, "/v1/status", Duration::from_millis(300)).await {
                        agents.push(a);
                    }
                }
                let lease = leases.get_opt(&pair).await.ok().flatten();
                let holder = lease
                    .as_ref()
                    .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
                    .and_then(|h| parse_identity(&h).map(|(m, _)| m));
                let vip = services
                    .get_opt(&pair)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| s.spec?.selector?.get(hapair::api::LABEL_MEMBER).cloned())
                    .and_then(|m| m.parse::<Member>().ok());
                {
                    let mut s = s.lock().unwrap();
                    s.samples += 1;
                    let actives: Vec<_> = agents.iter().filter(|a| a.role == Role::Active).collect();
                    if actives.len() == 2 {
                        s.both_active += 1;
                    }
                    if actives.len() == 2 && actives[0].epoch == actives[1].epoch {
                        s.violations.push(format!("both members active at epoch {}", actives[0].epoch));
                    }
                    match (vip, holder) {
                        (Some(v), Some(h)) if v != h => {
                            let since = *s.mismatch_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > grace {
                                let msg = format!("VIP selects {v} while {h} holds the lease for over {grace:?}");
                                if !s.violations.contains(&msg) {
                                    s.violations.push(msg);
                                }
                            }
                        }
                        _ => s.mismatch_since = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Checker { seen, task }
    }

    /// Samples in which both members reported active, at any epochs. Outside
    /// a confirmed failure (where the old active is already dead or dying)
    /// this must stay 0: the old active fences before the standby promotes.
    pub fn both_active_samples(&self) -> u64 {
        self.seen.lock().unwrap().both_active
    }

    /// Stops sampling and fails the test on any violation.
    pub fn assert_clean(self) {
        self.task.abort();
        let s = self.seen.lock().unwrap();
        assert!(s.samples > 0, "the checker never sampled");
        assert!(s.violations.is_empty(), "safety violations: {:#?}", s.violations);
    }
}
