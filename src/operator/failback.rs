//! Automatic failback (`failback.mode: Automatic`): once the primary has
//! served as a healthy, reachable standby for `failback.delaySeconds`
//! (hysteresis against a flapping primary), the active role goes back to it
//! by a planned handover.

use std::time::Duration;

use super::model::{Step, gave_up_handover, handover, syncs_files};
use super::observe::Observed;
use crate::api::{FailbackMode, HighAvailabilityPairSpec, Member, TransitionType};

/// The failback step this round; `Idle` when none is due. `failing`: the
/// holder has failed (a failover, not a failback, is the answer then).
pub fn step(
    spec: &HighAvailabilityPairSpec,
    obs: &Observed,
    holder: Option<Member>,
    failing: bool,
    epoch: i64,
) -> Step {
    let delay = Duration::from_secs(spec.failback.delay_seconds as u64);
    // A handover the secondary gave up (the primary did not catch up within
    // its hold) starts the delay anew: drained again at once, it would be
    // out of service for most of the time the primary cannot catch up.
    let gave_up = gave_up_handover(obs, Member::Secondary, epoch).is_some_and(|ago| ago < delay);
    let stable = obs.primary_usable_for.is_some_and(|d| d >= delay) && !gave_up;
    if spec.failback.mode != FailbackMode::Automatic
        || spec.paused
        || failing
        || holder != Some(Member::Secondary)
        || !stable
    {
        return Step::Idle;
    }
    let takeover = Step::Takeover {
        to: Member::Primary,
        type_: TransitionType::Failback,
        force: false,
        lossy: false,
        id: String::new(),
        reason: "AutomaticFailback".into(),
    };
    handover(obs, Member::Primary, epoch, holder, syncs_files(spec), takeover)
}
