//! The benchmark's own witness: watches on the pair's member pods, its
//! Lease and its Service's EndpointSlices, every event stamped on arrival
//! with this process's monotonic clock — the same clock that stamps the
//! fault and every client acknowledgement. Nothing here is read from the
//! operator's status or its clock: the operator's own figures
//! (`status.history`) are what a skeptic would not accept as a measurement
//! of itself.
//!
//! What each stage means (see [`Stages`]): the kubelet reported the
//! application down (a confirmed failure only), the Lease named the new
//! holder, the pod's role label said `active` (what a selector would
//! follow), the EndpointSlice routed to the new active's pod alone, and the
//! client's first acknowledged request from the new active.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use hapair::api::{LABEL_PAIR, LABEL_ROLE, LABEL_SERVICE_NAME, Member};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};

/// One thing seen, as seen.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A member pod as the kubelet reports it: the application container's
    /// restarts and whether it runs, the pod's IP and its role label.
    Pod { member: Member, uid: String, app_restarts: i32, app_running: bool, ip: Option<String>, role: Option<String> },
    /// The Lease: its holder, its transitions (the epoch), its renew time.
    Lease { holder: Option<Member>, epoch: i64, renewed: Option<i64> },
    /// The ready addresses every slice of the Service routes to, together.
    Routes(Vec<String>),
}

pub struct Observer {
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Observer {
    pub fn start(client: Client, ns: &str, pair: &str) -> Self {
        let seen: Arc<Mutex<Vec<(Instant, Seen)>>> = Arc::default();
        let mut tasks = Vec::new();
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let cfg = watcher::Config::default().labels(&format!("{LABEL_PAIR}={pair}"));
        tasks.push(follow(pods, cfg, seen.clone(), |p: &Pod| pod_seen(p).into_iter().collect()));
        let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={pair}"));
        tasks.push(follow(leases, cfg, seen.clone(), |l: &Lease| vec![lease_seen(l)]));
        // Slices come and go by name; what routes is all of them together.
        let slices: Api<EndpointSlice> = Api::namespaced(client, ns);
        let cfg = watcher::Config::default().labels(&format!("{LABEL_SERVICE_NAME}={pair}"));
        let (s, routes) = (seen.clone(), Arc::new(Mutex::new(BTreeMap::<String, Vec<String>>::new())));
        tasks.push(tokio::spawn(async move {
            let mut stream = watcher(slices, cfg).boxed();
            while let Some(ev) = stream.next().await {
                let at = Instant::now();
                let mut r = routes.lock().unwrap();
                match ev {
                    Ok(watcher::Event::Apply(sl) | watcher::Event::InitApply(sl)) => {
                        r.insert(sl.metadata.name.clone().unwrap_or_default(), ready_addresses(&sl));
                    }
                    Ok(watcher::Event::Delete(sl)) => {
                        r.remove(&sl.metadata.name.clone().unwrap_or_default());
                    }
                    Ok(watcher::Event::Init) => r.clear(),
                    Ok(watcher::Event::InitDone) | Err(_) => continue,
                }
                let mut all: Vec<String> = r.values().flatten().cloned().collect();
                all.sort();
                all.dedup();
                s.lock().unwrap().push((at, Seen::Routes(all)));
            }
        }));
        Observer { seen, tasks }
    }

    /// Everything seen since `from`, in order of arrival.
    pub fn since(&self, from: Instant) -> Vec<(Instant, Seen)> {
        self.seen.lock().unwrap().iter().filter(|(at, _)| *at >= from).cloned().collect()
    }

    /// The Lease as last seen up to `at`.
    pub fn lease_at(&self, at: Instant) -> Option<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().rev().filter(|(t, s)| *t <= at && matches!(s, Seen::Lease { .. })).map(|(_, s)| s.clone()).next()
    }

    /// Waits for the Lease's next renewal as this process sees it arrive:
    /// the start of a renewal cycle, to place a fault at a phase of it.
    pub async fn next_renewal(&self, timeout: std::time::Duration) -> Option<Instant> {
        let start = Instant::now();
        let before = match self.lease_at(start) {
            Some(Seen::Lease { renewed, .. }) => renewed,
            _ => None,
        };
        while start.elapsed() < timeout {
            let found = self.since(start).into_iter().find_map(|(at, s)| match s {
                Seen::Lease { renewed, .. } if renewed != before => Some(at),
                _ => None,
            });
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        None
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn follow<K, F>(
    api: Api<K>,
    cfg: watcher::Config,
    seen: Arc<Mutex<Vec<(Instant, Seen)>>>,
    read: F,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(&K) -> Vec<Seen> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, cfg).boxed();
        while let Some(ev) = stream.next().await {
            let at = Instant::now();
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                let mut s = seen.lock().unwrap();
                for x in read(&o) {
                    // Only changes: a watch repeats objects on a relist.
                    let last = s.iter().rev().find(|(_, y)| same_object(y, &x)).map(|(_, y)| y);
                    if last != Some(&x) {
                        s.push((at, x));
                    }
                }
            }
        }
    })
}

fn same_object(a: &Seen, b: &Seen) -> bool {
    match (a, b) {
        (Seen::Pod { member: x, .. }, Seen::Pod { member: y, .. }) => x == y,
        (Seen::Lease { .. }, Seen::Lease { .. }) => true,
        _ => false,
    }
}

fn pod_seen(p: &Pod) -> Option<Seen> {
    let labels = p.metadata.labels.as_ref()?;
    let member: Member = labels.get(hapair::api::LABEL_MEMBER)?.parse().ok()?;
    let st = p.status.as_ref();
    let app = st.and_then(|s| s.container_statuses.as_ref()).and_then(|cs| cs.iter().find(|c| c.name == "app"));
    Some(Seen::Pod {
        member,
        uid: p.metadata.uid.clone().unwrap_or_default(),
        app_restarts: app.map_or(0, |c| c.restart_count),
        app_running: app.is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())),
        ip: st.and_then(|s| s.pod_ip.clone()),
        role: labels.get(LABEL_ROLE).cloned(),
    })
}

fn lease_seen(l: &Lease) -> Seen {
    let spec = l.spec.as_ref();
    Seen::Lease {
        holder: spec
            .and_then(|s| s.holder_identity.as_deref())
            .and_then(|h| hapair::proto::parse_identity(h).map(|(m, _)| m)),
        epoch: spec.and_then(|s| s.lease_transitions).map_or(0, i64::from),
        renewed: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.as_microsecond()),
    }
}

fn ready_addresses(sl: &EndpointSlice) -> Vec<String> {
    sl.endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

/// When each stage of one failover was seen, in milliseconds after the
/// fault; `None` where it was not seen (or does not apply).
#[derive(Clone, Debug, Default)]
pub struct Stages {
    pub kubelet: Option<f64>,
    pub lease: Option<f64>,
    pub label: Option<f64>,
    pub slice: Option<f64>,
    pub client: Option<f64>,
}

/// The stages of a move from `old` to `new` after a fault at `fault`, out
/// of what was seen; `first_ack` is the client's first acknowledgement from
/// `new` after the fault.
pub fn stages(
    seen: &[(Instant, Seen)],
    fault: Instant,
    old: Member,
    new: Member,
    first_ack: Option<Instant>,
) -> Stages {
    let ms = |t: Instant| t.saturating_duration_since(fault).as_secs_f64() * 1000.0;
    let mut st = Stages { client: first_ack.map(ms), ..Stages::default() };
    // The old member's application as the kubelet last told it before the
    // fault: the same pod then says it stopped, or counts a restart.
    let mut before: Option<(String, i32)> = None;
    let mut new_ip: Option<String> = None;
    for (at, s) in seen {
        match s {
            Seen::Pod { member, uid, app_restarts, app_running, .. } if *member == old => {
                if *at <= fault {
                    before = Some((uid.clone(), *app_restarts));
                } else if st.kubelet.is_none()
                    && before.as_ref().is_some_and(|(u, r)| u == uid && (!app_running || app_restarts > r))
                {
                    st.kubelet = Some(ms(*at));
                }
            }
            Seen::Pod { member, ip, role, .. } if *member == new => {
                new_ip = ip.clone().or(new_ip);
                if st.label.is_none() && *at > fault && role.as_deref() == Some("active") {
                    st.label = Some(ms(*at));
                }
            }
            Seen::Lease { holder, .. } if st.lease.is_none() && *at > fault && *holder == Some(new) => {
                st.lease = Some(ms(*at));
            }
            Seen::Routes(ips)
                if st.slice.is_none()
                    && *at > fault
                    && new_ip.as_ref().is_some_and(|ip| ips.len() == 1 && ips[0] == *ip) =>
            {
                st.slice = Some(ms(*at));
            }
            _ => {}
        }
    }
    st
}

#[cfg(test)]
mod tests {
    #[test]
    fn stages_are_the_first_sightings_after_the_fault() {
        use super::*;
        use std::time::Duration;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let pod = |m: Member, restarts: i32, running: bool, role: &str| Seen::Pod {
            member: m,
            uid: "u".into(),
            app_restarts: restarts,
            app_running: running,
            ip: Some(if m == Member::Primary { "10.0.0.1" } else { "10.0.0.2" }.into()),
            role: Some(role.into()),
        };
        let (p, s) = (Member::Primary, Member::Secondary);
        let seen = vec![
            (at(0), pod(p, 0, true, "active")),
            (at(0), pod(s, 0, true, "standby")),
            (at(0), Seen::Routes(vec!["10.0.0.1".into()])),
            (at(0), Seen::Lease { holder: Some(p), epoch: 1, renewed: Some(1) }),
            (at(150), pod(p, 0, false, "active")),
            (at(900), Seen::Lease { holder: Some(s), epoch: 2, renewed: Some(2) }),
            (at(930), Seen::Routes(vec!["10.0.0.1".into(), "10.0.0.2".into()])),
            (at(950), Seen::Routes(vec!["10.0.0.2".into()])),
            (at(960), pod(s, 0, true, "active")),
        ];
        let st = stages(&seen, at(100), p, s, Some(at(1100)));
        assert_eq!(
            (st.kubelet, st.lease, st.slice, st.label, st.client),
            (Some(50.0), Some(800.0), Some(850.0), Some(860.0), Some(1000.0))
        );
        // Unconfirmed: the kubelet says nothing.
        let quiet: Vec<_> = seen.iter().filter(|(t, _)| *t != at(150)).cloned().collect();
        assert_eq!(stages(&quiet, at(100), p, s, None).kubelet, None);
    }
}
