//! Every state each member was given, in the order the pair's status was
//! written: a watch sees each write the API server records, so a state the
//! operator held for one round only is not missed between two samples.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use hapair::api::{HighAvailabilityPair, Member, MemberState};
use kube::Api;
use kube::runtime::watcher::{self, Event};

pub struct StateLog {
    seen: Arc<Mutex<[Vec<MemberState>; 2]>>,
    task: tokio::task::JoinHandle<()>,
}

impl StateLog {
    /// Follows pair `name` from now on (its current states first).
    pub fn start(pairs: Api<HighAvailabilityPair>, name: &str) -> Self {
        let seen: Arc<Mutex<[Vec<MemberState>; 2]>> = Arc::default();
        let log = seen.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(pairs, config).boxed();
            while let Some(ev) = events.next().await {
                let (Ok(Event::Apply(p)) | Ok(Event::InitApply(p))) = ev else { continue };
                let Some(status) = p.status else { continue };
                let mut log = log.lock().unwrap();
                for m in status.members {
                    let i = if m.name == Member::Primary { 0 } else { 1 };
                    if log[i].last() != Some(&m.state) {
                        log[i].push(m.state);
                    }
                }
            }
        });
        StateLog { seen, task }
    }

    pub fn of(&self, m: Member) -> Vec<MemberState> {
        self.seen.lock().unwrap()[if m == Member::Primary { 0 } else { 1 }].clone()
    }

    /// `expected` occurs in the member's states in this order (others may
    /// come between): the manual's sequence, with hapair's extra detail.
    /// The log's own watch may still be a few events behind a check that
    /// read the pair directly, so it is given a bounded time to catch up.
    pub async fn assert_in_order(&self, m: Member, expected: &[MemberState]) {
        let start = std::time::Instant::now();
        loop {
            let seen = self.of(m);
            let mut rest = seen.iter();
            if expected.iter().all(|want| rest.any(|s| s == want)) {
                return;
            }
            assert!(start.elapsed() < CATCH_UP, "{m}'s states {seen:?} do not go through {expected:?} in order");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// How long the log's watch may lag behind what a test read directly.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for StateLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
