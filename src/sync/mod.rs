//! File sync between the members: manifests, plans, safe writes, and where
//! a member's files stand in the pair's history.
//!
//! The agent (`crate::agent`) runs it: the standby pulls from the active
//! over mTLS; a resync reconciles a member whose files diverged. Every
//! piece that decides is pure and tested on its own; the pieces that touch
//! files refuse to leave the synced directories.

#[doc(hidden)]
pub mod fuzz;
pub mod manifest;
pub mod path;
pub mod plan;
pub mod quarantine;
pub mod state;
pub mod store;
pub mod wire;

pub use manifest::{Entry, Files, Scanner};
pub use plan::{Action, Plan, Rules, Summary};
pub use state::{Point, SyncState, Verdict};
