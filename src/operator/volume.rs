//! `VolumeSpaceLow`: the Health Monitor's disk check. Each agent measures
//! its member's data volume; past 80 % the pair says so (Warning Event),
//! past 90 % again, and once every volume is back under 75 % it says that
//! too. The gap between 75 and 80 keeps a volume that hovers at the line
//! from raising an Event at every poll.

use super::model::{Notice, Reason};
use super::observe::Observed;
use crate::api::Member;
use crate::proto::size_text;

pub const FILLING: u8 = 80;
pub const ALMOST_FULL: u8 = 90;
/// Below this, a low-space condition clears.
pub const RECOVERED: u8 = 75;

fn rank(reason: &str) -> u8 {
    match reason {
        r if r == Reason::Above90Percent.as_str() => ALMOST_FULL,
        r if r == Reason::Above80Percent.as_str() => FILLING,
        _ => 0,
    }
}

/// The condition's reason and message, and the Events to raise, given the
/// reason it had while on (`None`: it was off).
pub fn volume_space(obs: &Observed, was_on: Option<&str>) -> (Reason, String, Vec<Notice>) {
    let mut worst = 0u8;
    let mut low = Vec::new();
    for m in Member::BOTH {
        let Some(v) = obs.member(m).agent.last.as_ref().and_then(|a| a.volume) else { continue };
        // An impossible report is not trusted (and does not count).
        let Some(p) = v.used_percent() else { continue };
        worst = worst.max(p);
        if p >= RECOVERED {
            low.push(format!(
                "{m}'s data volume is {p}% full ({} free of {})",
                size_text(v.available_bytes),
                size_text(v.capacity_bytes)
            ));
        }
    }
    let was = was_on.map_or(0, rank);
    let reason = match worst {
        p if p >= ALMOST_FULL => Reason::Above90Percent,
        p if p >= FILLING => Reason::Above80Percent,
        p if p >= RECOVERED && was > 0 => Reason::Above80Percent,
        _ => Reason::SpaceAvailable,
    };
    let level = rank(reason.as_str());
    let message = if level > 0 {
        format!("{}; free space on it or give the pair larger claims", low.join("; "))
    } else {
        String::new()
    };
    let mut notices = Vec::new();
    if level > was {
        notices.push(Notice::warning(format!("Volume{reason}"), message.clone()));
    } else if level == 0 && was > 0 {
        notices.push(Notice {
            warning: false,
            reason: "VolumeSpaceRecovered".into(),
            note: format!("every member's data volume is under {RECOVERED}% full again"),
        });
    }
    (reason, message, notices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::observe::{AgentObs, MemberObs};
    use crate::proto::VolumeUsage;

    fn obs(primary: Option<u64>, secondary: Option<u64>) -> Observed {
        let member = |m: Member, used: Option<u64>| {
            let mut a: crate::proto::AgentStatus = serde_json::from_value(serde_json::json!({
                "member": m, "podUid": "u", "role": "Standby", "epoch": 1, "wallClock": "2026-01-01T00:00:00Z",
                "syncGeneration": 0, "leaseRenewFailures": 0
            }))
            .unwrap();
            a.volume = used.map(|u| VolumeUsage {
                capacity_bytes: 100 << 20,
                used_bytes: u << 20,
                available_bytes: (100 - u) << 20,
            });
            MemberObs { agent: AgentObs { last: Some(a), ..Default::default() }, ..Default::default() }
        };
        Observed {
            primary: member(Member::Primary, primary),
            secondary: member(Member::Secondary, secondary),
            ..Default::default()
        }
    }

    #[test]
    fn a_filling_volume_is_told_at_80_and_90_percent_and_once_more_when_it_recovers() {
        let step = |o: &Observed, was: Option<&str>| {
            let (r, msg, n) = volume_space(o, was);
            (r.as_str(), msg, n.iter().map(|n| (n.warning, n.reason.clone())).collect::<Vec<_>>())
        };
        let (r, msg, n) = step(&obs(Some(50), Some(79)), None);
        assert_eq!((r, msg.as_str(), n), ("SpaceAvailable", "", vec![]));
        let (r, msg, n) = step(&obs(Some(50), Some(80)), None);
        assert_eq!(r, "Above80Percent");
        assert!(msg.starts_with("secondary's data volume is 80% full (20.0 MiB free of 100.0 MiB)"), "{msg}");
        assert_eq!(n, vec![(true, "VolumeAbove80Percent".to_string())]);
        // Still past 80: no new Event.
        assert_eq!(step(&obs(Some(50), Some(85)), Some("Above80Percent")).2, vec![]);
        // Past 90: one more.
        let (r, _, n) = step(&obs(Some(91), Some(85)), Some("Above80Percent"));
        assert_eq!((r, n), ("Above90Percent", vec![(true, "VolumeAbove90Percent".to_string())]));
        // Down to 85: back to the lower reason, quietly.
        assert_eq!(step(&obs(Some(85), None), Some("Above90Percent")).0, "Above80Percent");
        assert_eq!(step(&obs(Some(85), None), Some("Above90Percent")).2, vec![]);
        // Hovering between 75 and 80 keeps it on; under 75 it clears, told once.
        assert_eq!(step(&obs(Some(77), None), Some("Above80Percent")).0, "Above80Percent");
        let (r, _, n) = step(&obs(Some(74), None), Some("Above80Percent"));
        assert_eq!((r, n), ("SpaceAvailable", vec![(false, "VolumeSpaceRecovered".to_string())]));
        // No report (no storage, an old agent), or one that cannot be true.
        assert_eq!(step(&obs(None, None), None).0, "SpaceAvailable");
        let mut lying = obs(Some(95), None);
        if let Some(v) = lying.primary.agent.last.as_mut().and_then(|a| a.volume.as_mut()) {
            v.used_bytes = v.capacity_bytes * 3;
        }
        assert_eq!(step(&lying, None).0, "SpaceAvailable");
    }
}
