//! A planned handover on the member's side: the drain (the application
//! sees `standby` while the agent keeps the Lease), its final generation,
//! and the drain mark on the Lease that lets the operator move it — which
//! the lease loop writes while draining and clears before the member
//! serves again (see [`crate::proto::ANN_DRAINING`]).

use std::time::{Duration, Instant};

use tracing::info;

use super::{Agent, State, lease};
use crate::api::Role;

impl State {
    /// Remembers the drain mark a Lease read or renewal showed.
    pub(super) fn note_lease(&mut self, view: &lease::LeaseView) {
        self.lease_mark = view.drain_mark.clone();
        self.lease_annotated = view.annotated;
    }

    /// Drained at the current epoch and the Lease says so: the operator may
    /// move it as a handover.
    pub(super) fn drain_marked(&self) -> bool {
        self.draining_since.is_some() && self.lease_mark.as_deref() == Some(self.epoch.to_string().as_str())
    }
}

impl Agent {
    /// Stops serving for a planned handover: the application sees `standby`
    /// (no more writes) while the agent keeps the Lease until the operator
    /// moves it. Only at the epoch the caller names.
    pub fn drain(&self, epoch: i64) -> bool {
        let mut s = self.lock();
        if s.role != Role::Active || s.epoch != epoch {
            return s.draining_since.is_some() && s.epoch == epoch;
        }
        s.draining_since = Some(Instant::now());
        s.drained = false;
        self.set_role(&mut s, Role::Standby, epoch);
        info!(epoch, "draining for a handover: stopped serving, still holding the lease");
        drop(s);
        // The drain mark goes on the Lease in a renewal now, not at the next tick.
        self.wake.notify_one();
        true
    }

    /// Waits, at most `limit`, until the drain at `epoch` is marked on the
    /// Lease; whether it is.
    pub async fn await_drain_mark(&self, epoch: i64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            {
                let s = self.lock();
                if s.epoch != epoch || s.draining_since.is_none() || s.drain_marked() {
                    return s.epoch == epoch && s.drain_marked();
                }
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The drain at `epoch` has its final generation (see
    /// [`State::drained`]); false when it is no longer draining there,
    /// or when the role file could not be changed (the application may
    /// still be writing: the operator's next drain call settles again).
    pub fn mark_drained(&self, epoch: i64) -> bool {
        let mut s = self.lock();
        let still = s.draining_since.is_some() && s.epoch == epoch && !s.files.stale;
        s.drained = still;
        still
    }
}
