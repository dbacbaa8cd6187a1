//! The agent's lease loop as a pure transition function. Each tick the loop
//! takes a snapshot of what the agent knows ([`Tick`]), [`step`] says what
//! to ask the API server, and [`verdict`] says what its answer means. The
//! loop in `mod.rs` only performs the calls and applies the verdict; every
//! rule about renewing, standing down, handing over, promoting and giving
//! the Lease back is here, with its table of tests.
//!
//! Fencing itself is not here: the watchdog fences at the renew deadline
//! whatever this loop is doing, so a loop stuck in a slow call cannot keep
//! a member active.

use std::time::Duration;

use super::lease::{LeaseError, LeaseView, MarkOp};
use crate::api::Role;

/// What the agent knows at the start of a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub role: Role,
    pub epoch: i64,
    /// The application's health, `None` before the first check.
    pub healthy: Option<bool>,
    /// Handing over (drained: role standby, Lease still held) for this long.
    pub draining_for: Option<Duration>,
    /// How long a drain may hold the Lease before the member serves again.
    pub handover_hold: Duration,
    /// The highest epoch at which this member read the Lease held by
    /// another: it never claims at that epoch or below. The operator moves
    /// the holder only with a new epoch, so the same epoch under a new
    /// holder is a hand edit, and claiming it would make two members active
    /// at one epoch until the old holder's next renewal fails.
    pub seen_other: Option<i64>,
    /// The drain mark on the Lease as this member last read or wrote it,
    /// and whether the Lease had annotations at all.
    pub drain_mark: Option<String>,
    pub annotated: bool,
}

/// What to ask the API server this tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Renew the Lease at this epoch (active, or draining), doing `mark`
    /// with the drain mark: set while draining, cleared before serving.
    Renew { epoch: i64, mark: MarkOp },
    /// Stand down, then give the Lease back at this epoch: the application
    /// fails its health check.
    Release { epoch: i64 },
    /// Read the Lease: is this member its holder now?
    Read,
}

/// The API server's answer to a [`Step`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Renewed(LeaseView),
    /// The Lease is no longer this member's at its epoch.
    Lost(String),
    /// No answer, or none in time: the outcome is unknown.
    Unreachable(String),
    Read(Option<LeaseView>),
    /// The release was sent (its outcome only logged: an unreleased Lease
    /// simply expires).
    Released,
}

impl From<Result<LeaseView, LeaseError>> for Answer {
    fn from(r: Result<LeaseView, LeaseError>) -> Self {
        match r {
            Ok(v) => Answer::Renewed(v),
            Err(LeaseError::Lost(why)) => Answer::Lost(why),
            Err(LeaseError::Unreachable(why)) => Answer::Unreachable(why),
        }
    }
}

/// What an answer means for the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Renewed: record it (the fence deadline moves on).
    Keep(LeaseView),
    /// Renewed while draining, but the handover never came: serve again
    /// rather than leave the pair without an active member.
    ServeAgain(LeaseView),
    /// Draining, and the Lease moved: the handover is complete.
    HandoverDone,
    /// Active, and the Lease moved (a failover): stand down at once.
    StandDown,
    /// The renewal's outcome is unknown: count it. The watchdog fences at
    /// the deadline if no renewal succeeds before.
    RenewFailed(String),
    /// The Lease could not be read: nothing changes.
    Unread(String),
    /// Named holder at `epoch`: stop pulling files, prove the holding with a
    /// renewal at that epoch, and only then serve.
    Claim {
        epoch: i64,
    },
    /// Named holder while the application fails: give it straight back.
    GiveBack {
        epoch: i64,
    },
    /// Fenced and no longer the holder: an ordinary standby again.
    Unfence,
    Nothing,
}

pub fn step(t: &Tick) -> Step {
    if let Some(d) = t.draining_for {
        // Keep the Lease, marked drained, until the operator moves it; past
        // the hold, clear the mark in the renewal that decides to serve
        // again, so the operator can no longer move the Lease as a handover.
        let mark = if d >= t.handover_hold { serve_again_mark(t) } else { set_mark(t) };
        return Step::Renew { epoch: t.epoch, mark };
    }
    match (t.role, t.healthy) {
        (Role::Active, Some(false)) => Step::Release { epoch: t.epoch },
        (Role::Active, _) => Step::Renew { epoch: t.epoch, mark: clear_mark(t.drain_mark.as_deref()) },
        _ => Step::Read,
    }
}

/// The drain mark at the tick's epoch, unless the Lease carries it already.
fn set_mark(t: &Tick) -> MarkOp {
    if t.drain_mark.as_deref() == Some(t.epoch.to_string().as_str()) {
        MarkOp::Leave
    } else {
        MarkOp::Set { new_map: !t.annotated }
    }
}

/// The renewal whose success lets a drained member serve again: no mark
/// may survive it. One this member saw goes exactly; with none seen, the
/// key is written empty, as a mark whose write timed out may have landed.
fn serve_again_mark(t: &Tick) -> MarkOp {
    match t.drain_mark.as_deref() {
        Some(m) => MarkOp::Clear(m.to_string()),
        None if t.annotated => MarkOp::Blank,
        // No annotations at all: the Lease was rewritten since any mark.
        None => MarkOp::Leave,
    }
}

/// No drain mark: a member that serves never leaves one on its Lease.
pub fn clear_mark(mark: Option<&str>) -> MarkOp {
    mark.map_or(MarkOp::Leave, |m| MarkOp::Clear(m.to_string()))
}

/// What `answer` to [`step`]`(t)` means; `identity` is this member's
/// holder identity on the Lease.
pub fn verdict(t: &Tick, identity: &str, answer: &Answer) -> Verdict {
    match answer {
        Answer::Renewed(v) if t.draining_for.is_some_and(|d| d >= t.handover_hold) => Verdict::ServeAgain(v.clone()),
        Answer::Renewed(v) => Verdict::Keep(v.clone()),
        Answer::Released => Verdict::Nothing,
        Answer::Lost(_) if t.draining_for.is_some() => Verdict::HandoverDone,
        Answer::Lost(_) => Verdict::StandDown,
        Answer::Unreachable(why) if matches!(step(t), Step::Read) => Verdict::Unread(why.clone()),
        Answer::Unreachable(why) => Verdict::RenewFailed(why.clone()),
        Answer::Read(None) => Verdict::Nothing,
        Answer::Read(Some(view)) if view.holder.as_deref() != Some(identity) => {
            if t.role == Role::Fenced {
                Verdict::Unfence
            } else {
                Verdict::Nothing
            }
        }
        Answer::Read(Some(view)) if t.seen_other.is_some_and(|e| view.epoch <= e) => Verdict::Nothing,
        Answer::Read(Some(view)) if t.healthy == Some(false) => Verdict::GiveBack { epoch: view.epoch },
        Answer::Read(Some(view)) => Verdict::Claim { epoch: view.epoch },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "primary/uid-1";
    const HOLD: Duration = Duration::from_secs(10);

    fn tick(role: Role, healthy: Option<bool>, draining_for: Option<u64>) -> Tick {
        Tick {
            role,
            epoch: 4,
            healthy,
            draining_for: draining_for.map(Duration::from_secs),
            handover_hold: HOLD,
            seen_other: None,
            drain_mark: None,
            annotated: true,
        }
    }

    fn view(holder: &str, epoch: i64) -> LeaseView {
        LeaseView {
            holder: Some(holder.to_string()).filter(|h| !h.is_empty()),
            epoch,
            interval_seconds: Some(1),
            missed_threshold: Some(3),
            renewed: None,
            replaced: None,
            drain_mark: None,
            annotated: true,
            resource_version: None,
        }
    }

    fn seen(epoch: i64) -> Tick {
        Tick { seen_other: Some(epoch), ..tick(Role::Standby, Some(true), None) }
    }

    #[test]
    fn each_role_asks_the_api_server_what_it_must() {
        use Role::*;
        let leave = MarkOp::Leave;
        let set = MarkOp::Set { new_map: false };
        let rows = [
            (tick(Active, Some(true), None), Step::Renew { epoch: 4, mark: leave.clone() }),
            (tick(Active, None, None), Step::Renew { epoch: 4, mark: leave.clone() }),
            (tick(Active, Some(false), None), Step::Release { epoch: 4 }),
            // Draining: standby in role, but the Lease is still held and renewed,
            // marked drained, even with the application failing (the handover
            // gives it away).
            (tick(Standby, Some(true), Some(1)), Step::Renew { epoch: 4, mark: set.clone() }),
            (tick(Standby, Some(false), Some(1)), Step::Renew { epoch: 4, mark: set.clone() }),
            // Past the hold: the renewal that decides to serve again leaves no
            // mark, not even one whose write timed out but landed.
            (tick(Standby, Some(true), Some(10)), Step::Renew { epoch: 4, mark: MarkOp::Blank }),
            (tick(Standby, Some(true), None), Step::Read),
            (tick(Fenced, Some(true), None), Step::Read),
            (tick(Unknown, None, None), Step::Read),
        ];
        for (t, want) in rows {
            assert_eq!(step(&t), want, "{t:?}");
        }
    }

    fn marked(role: Role, draining_for: Option<u64>, mark: Option<&str>, annotated: bool) -> Tick {
        Tick { drain_mark: mark.map(str::to_string), annotated, ..tick(role, Some(true), draining_for) }
    }

    #[test]
    fn a_drained_member_marks_its_lease_and_clears_the_mark_before_it_serves_again() {
        use Role::*;
        let renew = |mark| Step::Renew { epoch: 4, mark };
        let rows = [
            // Drained: the mark at this epoch, once; on a Lease without
            // annotations, as a new map.
            (marked(Standby, Some(1), None, true), renew(MarkOp::Set { new_map: false })),
            (marked(Standby, Some(1), None, false), renew(MarkOp::Set { new_map: true })),
            (marked(Standby, Some(1), Some("4"), true), renew(MarkOp::Leave)),
            // A mark of another epoch (a hand edit, a former drain) is rewritten.
            (marked(Standby, Some(1), Some("3"), true), renew(MarkOp::Set { new_map: false })),
            // Past the hold the mark goes, in the renewal whose success serves;
            // not seen (its write timed out), it is blanked all the same.
            (marked(Standby, Some(10), Some("4"), true), renew(MarkOp::Clear("4".into()))),
            (marked(Standby, Some(10), None, true), renew(MarkOp::Blank)),
            (marked(Standby, Some(10), None, false), renew(MarkOp::Leave)),
            // An empty mark (blanked) is removed by the next renewal.
            (marked(Active, None, Some(""), true), renew(MarkOp::Clear(String::new()))),
            // Active (a restarted agent claiming a marked Lease, too): no mark.
            (marked(Active, None, Some("4"), true), renew(MarkOp::Clear("4".into()))),
            (marked(Active, None, None, true), renew(MarkOp::Leave)),
        ];
        for (t, want) in rows {
            assert_eq!(step(&t), want, "{t:?}");
        }
    }

    #[test]
    fn the_renewal_patch_tests_the_holder_and_epoch_before_it_touches_the_mark() {
        let ops = |mark| {
            let patch = super::super::lease::renewal_patch(ME, 4, 3, &mark);
            serde_json::to_value(patch).unwrap().as_array().unwrap().clone()
        };
        let key = "/metadata/annotations/hapair.dev~1draining";
        let set = ops(MarkOp::Set { new_map: false });
        assert_eq!(set[0]["op"], "test");
        assert_eq!(set[0]["path"], "/spec/holderIdentity");
        assert_eq!(set[1]["path"], "/spec/leaseTransitions");
        assert_eq!(set[4], serde_json::json!({"op": "add", "path": key, "value": "4"}));
        let new_map = ops(MarkOp::Set { new_map: true });
        assert_eq!(new_map[4]["value"], serde_json::json!({"hapair.dev/draining": "4"}));
        let clear = ops(MarkOp::Clear("4".into()));
        assert_eq!(clear[4], serde_json::json!({"op": "test", "path": key, "value": "4"}));
        assert_eq!(clear[5], serde_json::json!({"op": "remove", "path": key}));
        assert_eq!(ops(MarkOp::Blank)[4], serde_json::json!({"op": "add", "path": key, "value": ""}));
        assert_eq!(ops(MarkOp::Leave).len(), 4);
    }

    #[test]
    fn every_answer_means_one_thing_in_each_state() {
        use Role::*;
        let lost = || Answer::Lost("test failed".into());
        let down = || Answer::Unreachable("timed out".into());
        let rows: Vec<(Tick, Answer, Verdict)> = vec![
            // Active.
            (tick(Active, Some(true), None), Answer::Renewed(view(ME, 4)), Verdict::Keep(view(ME, 4))),
            (tick(Active, Some(true), None), lost(), Verdict::StandDown),
            (tick(Active, Some(true), None), down(), Verdict::RenewFailed("timed out".into())),
            (tick(Active, Some(false), None), Answer::Released, Verdict::Nothing),
            // Draining: renewed within the hold, past it, and the Lease moved.
            (tick(Standby, Some(true), Some(3)), Answer::Renewed(view(ME, 4)), Verdict::Keep(view(ME, 4))),
            (tick(Standby, Some(true), Some(10)), Answer::Renewed(view(ME, 4)), Verdict::ServeAgain(view(ME, 4))),
            (tick(Standby, Some(true), Some(3)), lost(), Verdict::HandoverDone),
            (tick(Standby, Some(true), Some(3)), down(), Verdict::RenewFailed("timed out".into())),
            // Standby reading the Lease.
            (tick(Standby, Some(true), None), Answer::Read(Some(view(ME, 5))), Verdict::Claim { epoch: 5 }),
            (tick(Standby, None, None), Answer::Read(Some(view(ME, 5))), Verdict::Claim { epoch: 5 }),
            (tick(Standby, Some(false), None), Answer::Read(Some(view(ME, 5))), Verdict::GiveBack { epoch: 5 }),
            (tick(Standby, Some(true), None), Answer::Read(Some(view("secondary/uid-2", 5))), Verdict::Nothing),
            (tick(Standby, Some(true), None), Answer::Read(Some(view("", 5))), Verdict::Nothing),
            (tick(Standby, Some(true), None), Answer::Read(None), Verdict::Nothing),
            (tick(Standby, Some(true), None), down(), Verdict::Unread("timed out".into())),
            // A pod replaced under the same member name holds nothing.
            (tick(Standby, Some(true), None), Answer::Read(Some(view("primary/uid-0", 5))), Verdict::Nothing),
            // Fenced: back to standby once someone else holds the Lease, and may
            // claim it again when named.
            (tick(Fenced, Some(true), None), Answer::Read(Some(view("secondary/uid-2", 5))), Verdict::Unfence),
            (tick(Fenced, Some(true), None), Answer::Read(Some(view(ME, 4))), Verdict::Claim { epoch: 4 }),
            (tick(Fenced, Some(true), None), Answer::Read(None), Verdict::Nothing),
            // Named at an epoch another member was seen holding: a hand edit
            // of the holder, never claimed; a later epoch is the operator's.
            (seen(4), Answer::Read(Some(view(ME, 4))), Verdict::Nothing),
            (seen(4), Answer::Read(Some(view(ME, 3))), Verdict::Nothing),
            (seen(4), Answer::Read(Some(view(ME, 5))), Verdict::Claim { epoch: 5 }),
        ];
        for (t, answer, want) in rows {
            assert_eq!(verdict(&t, ME, &answer), want, "{t:?} answered {answer:?}");
        }
    }
}
