//! The safety checker: follows the pair the whole time a scenario runs and
//! records every breach of the safety invariants it can see:
//!
//! - the VIP's EndpointSlices name a pod other than the Lease holder's for
//!   longer than one reconcile (`grace`), or the Lease's epoch goes
//!   backwards — both by watching ([`super::routes`]), so no change is
//!   missed between samples;
//! - both applications take themselves for active at once, from their own
//!   logged view of the role ([`super::views`]), read as it is written;
//! - two members' agents report `active` at the same epoch (sampled: the
//!   agents are asked every 50 ms; a member that does not answer is
//!   counted, never silently skipped);
//! - a write that a member held as a synced standby (its files following the
//!   current epoch, nothing diverged) is missing from its `writes.log` while
//!   it is active: a failover or switchover lost what had been synced.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hapair::api::{Member, Role};
use hapair::http::{self, Target};
use hapair::proto::{AgentStatus, parse_identity};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

#[derive(Default)]
struct Seen {
    /// Each breach with its kind.
    violations: Vec<(&'static str, String)>,
    both_active: u64,
    samples: u64,
    /// Polls of a member's agent that got no answer.
    unanswered: u64,
    /// Per member: write numbers seen in its `writes.log` while it was a
    /// standby following the epoch of the Lease.
    synced: [HashSet<u64>; 2],
    synced_checks: u64,
}

/// Write numbers in the complete lines of a `writes.log` (`EPOCH kN N`); a
/// line still being appended is not counted.
pub fn held_writes(data_dir: &Path) -> HashSet<u64> {
    let text = std::fs::read_to_string(data_dir.join("writes.log")).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete.lines().filter_map(|l| l.split(' ').nth(2)?.parse().ok()).collect()
}

fn index(m: Member) -> usize {
    match m {
        Member::Primary => 0,
        Member::Secondary => 1,
    }
}

pub struct Checker {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
    routes: super::routes::Routes,
    views: super::views::Views,
}

impl Checker {
    pub fn start(
        client: Client,
        ns: &str,
        pair: &str,
        material: Arc<hapair::tls::Material>,
        agent_port: u16,
        grace: Duration,
        data_dirs: [PathBuf; 2],
    ) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let routes = super::routes::Routes::start(client.clone(), ns, pair, grace);
        let views = super::views::Views::start(client.clone(), ns, pair);
        let (ns, pair, s) = (ns.to_string(), pair.to_string(), seen.clone());
        // The checker asks the agents as the operator does, and follows the
        // pair's Secret as it does: renewed certificates and a rotated CA
        // would otherwise leave it blind to the agents' roles.
        let tls = material.client_config().expect("the pair's TLS material");
        let task = tokio::spawn(async move {
            let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            loop {
                let mut agents: Vec<(Member, AgentStatus)> = Vec::new();
                let mut unanswered = 0;
                for m in Member::BOTH {
                    let Ok(Some(pod)) = pods.get_opt(&m.pod_name(&pair)).await else { continue };
                    let Some(ip) = pod.status.and_then(|s| s.pod_ip).and_then(|ip| ip.parse().ok()) else { continue };
                    let Ok(name) = hapair::tls::server_name(&hapair::tls::member_server_name(m, &pair, &ns)) else {
                        continue;
                    };
                    let t = Target { addr: SocketAddr::new(ip, agent_port), server_name: name, tls: tls.clone() };
                    match http::get_json::<AgentStatus>(&t, "/v1/status", Duration::from_millis(300)).await {
                        Ok(a) => agents.push((m, a)),
                        Err(_) => unanswered += 1,
                    }
                }
                if unanswered > 0
                    && let Some(identity) = super::pair_identity(&client, &ns, &pair).await
                {
                    let _ = material.replace(&identity);
                }
                let lease = leases.get_opt(&pair).await.ok().flatten();
                let holder = lease
                    .as_ref()
                    .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
                    .and_then(|h| parse_identity(&h).map(|(m, _)| m));
                let lease_epoch = lease.as_ref().and_then(|l| l.spec.as_ref()?.lease_transitions).map_or(0, i64::from);
                // Read the files after the statuses: a standby that follows
                // the epoch now held these writes from the active.
                let files: Vec<(Member, HashSet<u64>)> =
                    agents.iter().map(|(m, _)| (*m, held_writes(&data_dirs[index(*m)]))).collect();
                {
                    let mut s = s.lock().unwrap();
                    s.samples += 1;
                    s.unanswered += unanswered;
                    let actives: Vec<_> = agents.iter().map(|(_, a)| a).filter(|a| a.role == Role::Active).collect();
                    if actives.len() == 2 {
                        s.both_active += 1;
                    }
                    if actives.len() == 2 && actives[0].epoch == actives[1].epoch {
                        let msg = format!("both members active at epoch {}", actives[0].epoch);
                        s.violations.push(("agents-active-at-one-epoch", msg));
                    }
                    for ((m, a), (_, held)) in agents.iter().zip(&files) {
                        let follows =
                            a.sync.as_ref().is_some_and(|y| y.diverged.is_empty() && y.point.epoch == lease_epoch);
                        if a.role == Role::Standby && holder != Some(*m) && follows {
                            s.synced[index(*m)].extend(held.iter().copied());
                        } else if a.role == Role::Active && holder == Some(*m) && a.epoch == lease_epoch {
                            s.synced_checks += 1;
                            let lost: BTreeSet<u64> = s.synced[index(*m)].difference(held).copied().collect();
                            if !lost.is_empty() {
                                let msg = format!(
                                    "{m} active at epoch {lease_epoch} lacks {} write(s) it held as a synced standby: {:?}",
                                    lost.len(),
                                    lost.iter().take(10).collect::<Vec<_>>()
                                );
                                if !s.violations.iter().any(|(_, m)| *m == msg) {
                                    s.violations.push(("synced-write-lost", msg));
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Checker { seen, task, routes, views }
    }

    /// Samples in which both members reported active, at any epochs. Outside
    /// a confirmed failure (where the old active is already dead or dying)
    /// this must stay 0: the old active fences before the standby promotes.
    pub fn both_active_samples(&self) -> u64 {
        self.seen.lock().unwrap().both_active
    }

    /// How many writes the checker saw synced to `member` while standby
    /// (so a test can show the data clause had something to check).
    pub fn synced_writes(&self, member: Member) -> usize {
        self.seen.lock().unwrap().synced[index(member)].len()
    }

    /// Every breach so far, each with its kind: the agents' and the data
    /// clause's, the routes' and the applications' views.
    pub fn breaches(&self) -> Vec<(&'static str, String)> {
        let mut all = self.seen.lock().unwrap().violations.clone();
        all.extend(self.routes.breaches());
        all.extend(self.views.check().0.into_iter().map(|m| ("applications-both-active", m)));
        all
    }

    /// Samples taken, agent polls unanswered, application view lines read.
    pub fn coverage(&self) -> (u64, u64, usize) {
        let s = self.seen.lock().unwrap();
        (s.samples, s.unanswered, self.views.check().1)
    }

    /// A test is about to set the Lease's epoch back by hand: that write is
    /// the fault, not a breach (see [`super::routes::Routes::expect_lease_edit`]).
    pub fn expect_lease_edit(&self) {
        self.routes.expect_lease_edit();
    }

    /// Stops sampling and fails the test on any violation.
    pub fn assert_clean(self) {
        let breaches = self.breaches();
        let (samples, unanswered, lines) = self.coverage();
        self.task.abort();
        assert!(samples > 0, "the checker never sampled");
        assert!(breaches.is_empty(), "safety violations: {breaches:#?}");
        eprintln!(
            "checker: {samples} samples ({unanswered} agent polls unanswered), {lines} application view lines, clean"
        );
    }
}

/// A checker replaced (a pair deleted and applied anew) stops sampling: its
/// volumes are recycled and the new pair has its own.
impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
