//! What the cluster routes, followed by watching: the pair's Lease and the
//! EndpointSlices of its VIP Service. Every change the API server records
//! reaches the watcher in order (a watch that breaks is listed again), so
//! nothing between two samples is missed:
//!
//! - the VIP's EndpointSlices (the operator's, and any other naming the
//!   Service) name a ready pod other than the Lease holder's for longer than
//!   `grace` (one reconcile of the operator): clients are sent to a member
//!   that does not hold the role;
//! - the Lease's epoch (`leaseTransitions`) goes below one it had before: the
//!   fencing token went backwards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hapair::api::Member;
use hapair::proto::parse_identity;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

#[derive(Default)]
struct State {
    holder: Option<Member>,
    highest_epoch: i64,
    /// Ready endpoints' pod names, per slice, and when they last changed.
    slices: BTreeMap<String, (BTreeSet<String>, Instant)>,
    /// When the routes stopped matching the Lease, and whether that
    /// episode was reported (once: its description changes, it does not).
    mismatch_since: Option<(Instant, bool)>,
    /// Breaches, each kind with its first few descriptions and a count.
    breaches: Vec<(&'static str, String)>,
    /// Hand edits of the Lease's epoch a test announced: each lets one
    /// lower epoch through (the edit itself), without lowering the bar —
    /// hapair's next write must still be past the highest before it.
    edits_expected: u32,
    /// The epoch of the Lease version seen last.
    last_epoch: i64,
    /// When the holder last changed: a breach says how long after it the
    /// slices moved.
    holder_at: Option<Instant>,
}

impl State {
    fn on_lease(&mut self, ev: Event<Lease>) {
        match ev {
            Event::Apply(l) | Event::InitApply(l) => {
                let spec = l.spec.unwrap_or_default();
                let holder = spec.holder_identity.as_deref().and_then(parse_identity).map(|(m, _)| m);
                if holder != self.holder {
                    self.holder_at = Some(Instant::now());
                }
                self.holder = holder;
                let epoch = spec.lease_transitions.map_or(0, i64::from);
                if epoch < self.highest_epoch {
                    if self.edits_expected > 0 && epoch < self.last_epoch {
                        self.edits_expected -= 1;
                    } else {
                        let msg = format!("the Lease's epoch went from {} back to {epoch}", self.highest_epoch);
                        self.breaches.push(("epoch-regression", msg));
                    }
                }
                self.last_epoch = epoch;
                self.highest_epoch = self.highest_epoch.max(epoch);
            }
            Event::Delete(_) => self.holder = None,
            Event::Init | Event::InitDone => {}
        }
    }

    fn on_slice(&mut self, ev: Event<EndpointSlice>) {
        match ev {
            Event::Apply(es) | Event::InitApply(es) => {
                let name = es.metadata.name.clone().unwrap_or_default();
                let ready: BTreeSet<String> = es
                    .endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                    .filter_map(|e| e.target_ref.as_ref()?.name.clone())
                    .collect();
                if self.slices.get(&name).is_none_or(|(had, _)| *had != ready) {
                    self.slices.insert(name, (ready, Instant::now()));
                }
            }
            Event::Delete(es) => {
                self.slices.remove(&es.metadata.name.unwrap_or_default());
            }
            // A relist: what follows is the whole set.
            Event::Init => self.slices.clear(),
            Event::InitDone => {}
        }
    }

    fn evaluate(&mut self, pair: &str, grace: Duration) {
        let Some(holder) = self.holder else {
            self.mismatch_since = None;
            return;
        };
        let own = holder.pod_name(pair);
        let stray: Vec<&String> = self.slices.values().flat_map(|(p, _)| p).filter(|p| **p != own).collect();
        if stray.is_empty() {
            self.mismatch_since = None;
            return;
        }
        let what = format!("the VIP's endpoints name {stray:?} while {holder} holds the Lease");
        let (since, reported) = self.mismatch_since.get_or_insert_with(|| (Instant::now(), false));
        if since.elapsed() > grace && !*reported {
            *reported = true;
            let ago = |t: Option<Instant>| t.map_or("?".to_string(), |t| format!("{} ms", t.elapsed().as_millis()));
            let slices: Vec<String> = self
                .slices
                .iter()
                .map(|(name, (pods, at))| format!("{name} names {pods:?} since {} ago", ago(Some(*at))))
                .collect();
            let msg = format!(
                "{what} for over {grace:?} (the Lease moved {} ago; {})",
                ago(self.holder_at),
                slices.join("; ")
            );
            if !self.breaches.iter().any(|(_, m)| *m == msg) {
                self.breaches.push(("vip-routes-non-holder", msg));
            }
        }
    }
}

/// Watches `api` (a watch that breaks is listed again), applying every
/// event to the state and judging the routes after each.
fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    state: Arc<Mutex<State>>,
    pair: &str,
    grace: Duration,
    apply: fn(&mut State, Event<K>),
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let pair = pair.to_string();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).boxed();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let mut st = state.lock().unwrap();
            apply(&mut st, ev);
            st.evaluate(&pair, grace);
        }
    })
}

/// Follows the Lease and the VIP's EndpointSlices until dropped.
pub struct Routes {
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Routes {
    pub fn start(client: Client, ns: &str, pair: &str, grace: Duration) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
        let slices: Api<EndpointSlice> = Api::namespaced(client, ns);
        let by_name = watcher::Config::default().fields(&format!("metadata.name={pair}"));
        let by_service = watcher::Config::default().labels(&format!("kubernetes.io/service-name={pair}"));
        let lease_task = follow(leases, by_name, state.clone(), pair, grace, State::on_lease);
        let slice_task = follow(slices, by_service, state.clone(), pair, grace, State::on_slice);
        // The state is complete from the watches; this only measures how
        // long a mismatch has lasted when nothing else changes.
        let (p, s) = (pair.to_string(), state.clone());
        let tick = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                s.lock().unwrap().evaluate(&p, grace);
            }
        });
        Routes { state, tasks: vec![lease_task, slice_task, tick] }
    }

    /// Breaches so far, by kind.
    pub fn breaches(&self) -> Vec<(&'static str, String)> {
        self.state.lock().unwrap().breaches.clone()
    }

    /// A test is about to set the Lease's epoch back by hand (the fault it
    /// injects): that one write is not a breach.
    pub fn expect_lease_edit(&self) {
        self.state.lock().unwrap().edits_expected += 1;
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    fn lease(holder: &str, epoch: i32) -> Event<Lease> {
        let spec =
            LeaseSpec { holder_identity: Some(holder.into()), lease_transitions: Some(epoch), ..Default::default() };
        Event::Apply(Lease { spec: Some(spec), ..Default::default() })
    }

    #[test]
    fn an_epoch_below_the_highest_is_a_breach_unless_a_test_announced_that_edit() {
        let mut st = State::default();
        st.on_lease(lease("primary/u1", 3));
        st.on_lease(lease("primary/u1", 2));
        assert_eq!(st.breaches.len(), 1, "{:?}", st.breaches);
        // An announced hand edit passes once; hapair's next write must still
        // be past the highest, and anything lower after it is a breach again.
        let mut st = State::default();
        st.on_lease(lease("primary/u1", 3));
        st.edits_expected = 1;
        st.on_lease(lease("primary/u1", 0));
        st.on_lease(lease("primary/u1", 4));
        assert!(st.breaches.is_empty(), "{:?}", st.breaches);
        st.on_lease(lease("primary/u1", 3));
        assert_eq!(st.breaches.len(), 1, "{:?}", st.breaches);
        assert_eq!(st.holder, Some(Member::Primary));
    }
}
