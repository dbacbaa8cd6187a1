//! What agents and the operator say to each other: the JSON of the agent's
//! `/v1/status`, and the names both sides agree on (Lease identity and
//! annotations).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::api::{ConflictRule, Member, OnlyOnTarget, Role};
use crate::sync::{Point, Summary};

/// Lease annotation: heartbeat interval the active agent must use (set by
/// the operator from the spec).
pub const ANN_INTERVAL: &str = "hapair.dev/heartbeat-interval-seconds";
/// Lease annotation: missed-heartbeat threshold (set by the operator).
pub const ANN_MISSED: &str = "hapair.dev/missed-threshold";
/// Lease annotation: why the last holder released the Lease (set by the agent).
pub const ANN_RELEASED: &str = "hapair.dev/released-reason";
/// Lease annotation: the operation request whose takeover set the current
/// holder (set by the operator at the compare-and-swap, so it survives a
/// crash right after it).
pub const ANN_OPERATION: &str = "hapair.dev/operation-id";
/// Lease annotation: the `renewTime` of the Lease a takeover replaced — the
/// previous holder's last successful renewal (the compare-and-swap fails if
/// it renewed since). The new holder compares it with the renewals it read
/// to know when the previous holder has surely fenced.
pub const ANN_REPLACED_RENEWAL: &str = "hapair.dev/replaced-renewal";
/// Lease annotation: which member released the Lease (set by the agent).
pub const ANN_RELEASED_BY: &str = "hapair.dev/released-by";
/// Lease annotation: the holder has drained for a planned handover at this
/// epoch (written by its agent's renewal, before it reports drained). The
/// operator moves the Lease in a handover only from a Lease that carries it
/// at the current epoch, in the same compare-and-swap; an agent that gives
/// the handover up removes it in a renewal before it serves again. So the
/// Lease moves or the member serves again, never both: a drained report the
/// operator read before the member resumed cannot move the Lease from under
/// writes the standby never pulled.
pub const ANN_DRAINING: &str = "hapair.dev/draining";

/// How long a drained active member holds the Lease without serving
/// before it serves again on its own, and so how long a planned handover
/// may take: two lease durations, plus time for the standby to pull the
/// final files when the pair syncs files.
pub fn handover_hold(
    interval_seconds: i32,
    missed_threshold: i32,
    realtime_sync_seconds: Option<i32>,
) -> std::time::Duration {
    let lease = i64::from(interval_seconds.max(1)) * i64::from(missed_threshold.max(2));
    let sync = realtime_sync_seconds.map_or(0, |r| 30 + 2 * i64::from(r.max(1)));
    std::time::Duration::from_secs((2 * lease + sync) as u64)
}

/// A member's Lease identity: its configured role and its pod's UID, so a
/// recreated pod never mistakes its predecessor's Lease for its own.
pub fn lease_identity(member: Member, pod_uid: &str) -> String {
    format!("{member}/{pod_uid}")
}

/// Splits a Lease identity into member and pod UID.
pub fn parse_identity(identity: &str) -> Option<(Member, &str)> {
    let (member, uid) = identity.split_once('/')?;
    Some((member.parse().ok()?, uid))
}

/// The agent's answer to `GET /v1/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub member: Member,
    pub pod_uid: String,
    /// Current role as the agent enforces it (role file).
    pub role: Role,
    /// Epoch the agent is active at, or was last active at (0: never).
    pub epoch: i64,
    /// Outcome of the application health check; `None` without a check or
    /// before the first one.
    pub app_healthy: Option<bool>,
    /// The agent's wall clock when it answered.
    pub wall_clock: DateTime<Utc>,
    /// Whether the agent's last heartbeat to its peer got an answer.
    pub peer_reachable: Option<bool>,
    /// Generation of synced data the member holds.
    pub sync_generation: i64,
    /// Lease renewals that failed since the agent started.
    pub lease_renew_failures: u64,
    /// Why the agent released the Lease, if it did.
    pub released: Option<String>,
    /// Holding the Lease but no longer serving: a planned handover is under
    /// way and the application has stopped taking writes.
    #[serde(default)]
    pub draining: bool,
    /// Active past its renewal deadline on its peer's promise: the API
    /// server does not answer its renewals.
    #[serde(default)]
    pub failsafe: bool,
    /// The agent writes the drain mark ([`ANN_DRAINING`]) and says
    /// `draining` only once it is on the Lease; an agent of an earlier
    /// version does not, and a handover from it goes on without the mark
    /// (the switchover that upgrades a pair).
    #[serde(default)]
    pub marks_drain: bool,
    /// How long ago (seconds) this member, drained for a handover at its
    /// current epoch, gave it up when its hold ran out and served again:
    /// the operator does not drain it again for the same request, and an
    /// automatic failback waits its delay anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_given_up_seconds_ago: Option<f64>,
    /// File sync, when the pair syncs files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// The member's data volume (`spec.storage`), as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeUsage>,
    /// Seconds since this agent started (its monotonic clock). With the
    /// time since the Lease was last renewed it tells whether this member
    /// was down when the holder stopped: both were down, a cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<f64>,
    /// When the certificate this agent presents now expires: it reloads
    /// the pair's TLS Secret when it changes, so this follows a renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<DateTime<Utc>>,
    /// The SHA-256 of the certificate this agent presents now, and of each
    /// CA it trusts now: a CA rotation takes its next step only once every
    /// running agent has loaded the one before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_ca_sha256: Vec<String>,
}

/// Space on a member's data volume, as `statvfs` tells it (part of
/// [`AgentStatus`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeUsage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// What a process without privileges may still write.
    pub available_bytes: u64,
}

/// A size for people: `512 B`, `8.0 MiB`, `1.5 GiB`.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

impl VolumeUsage {
    /// Used share in whole percent, rounded up, of what the application
    /// can use (used + available, as `df` counts it); `None` for a report
    /// that cannot be true (nothing usable, or more used than the volume
    /// holds): it is not trusted.
    pub fn used_percent(&self) -> Option<u8> {
        let usable = self.used_bytes.checked_add(self.available_bytes)?;
        if usable == 0 || self.used_bytes > self.capacity_bytes || self.available_bytes > self.capacity_bytes {
            return None;
        }
        Some((u128::from(self.used_bytes) * 100).div_ceil(u128::from(usable)) as u8)
    }
}

/// Where a member's files stand (part of [`AgentStatus`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The point of this member's files: `epoch.generation`.
    pub point: Point,
    /// Standby: when every synced directory was last copied complete.
    pub in_sync_at: Option<DateTime<Utc>>,
    /// Active: the generation its standby last said it holds, and when.
    pub peer_generation: Option<i64>,
    pub peer_seen_at: Option<DateTime<Utc>>,
    /// Active: seconds since the first change the standby does not have
    /// (0 when it has everything).
    pub peer_lag_seconds: Option<f64>,
    /// Active: when its files last changed (a split brain's "most recent
    /// writer" compares it with the standby's evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_at: Option<DateTime<Utc>>,
    /// Active: files and bytes the standby still needs. Standby: what is
    /// left of its current copy.
    pub pending_files: u64,
    pub pending_bytes: u64,
    /// Directories that hold what the active member does not, and why;
    /// they are not overwritten until a resync.
    pub diverged: BTreeMap<String, String>,
    /// Directories changed while this member was not active (split-brain
    /// evidence), and when that was seen.
    pub changed_while_standby: BTreeMap<String, DateTime<Utc>>,
    pub copied_files: u64,
    pub copied_bytes: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Standby: the last error of the latest pull round, if it had one
    /// (a full volume, a file it may not write); cleared by the next round
    /// without one. What keeps it behind right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    /// Requests for paths refused (outside the directories, links,
    /// special files, hard links), since the agent started.
    pub refused: u64,
    /// Files the last scan passed over (links, special files, hard links,
    /// names that are not UTF-8): they are not synced.
    #[serde(default)]
    pub skipped: u64,
    /// Malformed answers from the peer, ignored.
    pub garbage: u64,
    /// The last resync this member ran as target.
    pub resync: Option<ResyncReport>,
    /// Finished resyncs before it, newest last (at most
    /// [`EARLIER_RESYNCS`]): a Job polling for its own report still finds
    /// it after the next order's report took `resync`'s place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_resyncs: Vec<ResyncReport>,
    /// What this member's quarantine holds.
    #[serde(default)]
    pub quarantine: crate::sync::quarantine::Usage,
    /// Quarantines removed by the retention limits since the agent started,
    /// newest last (at most 20; all of them are recorded on the volume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<crate::sync::quarantine::Pruned>,
}

/// How many finished resync reports a member keeps besides its latest.
pub const EARLIER_RESYNCS: usize = 4;

impl SyncStatus {
    /// The report of the resync labelled `label`, latest or earlier.
    pub fn resync_report(&self, label: &str) -> Option<&ResyncReport> {
        self.resync.iter().chain(self.earlier_resyncs.iter().rev()).find(|r| r.label == label)
    }
}

/// What the operator asks of a target member: reconcile its diverged
/// directories with the active member's (`POST /v1/sync/resync`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResyncOrder {
    /// Names the quarantine directory and the report (`resync-<epoch>`).
    pub label: String,
    pub only_on_target: OnlyOnTarget,
    pub conflict: ConflictRule,
    pub clocks_agree: bool,
    pub dry_run: bool,
    /// Also reconcile directories that merely follow (a full resync).
    #[serde(default)]
    pub full: bool,
}

impl ResyncOrder {
    /// The order as the query string of `POST /v1/sync/resync`.
    pub fn to_query(&self) -> String {
        let word = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
        format!(
            "label={}&onlyOnTarget={}&conflict={}&clocksAgree={}&dryRun={}&full={}",
            crate::sync::wire::encode(&self.label),
            word(serde_json::json!(self.only_on_target)),
            word(serde_json::json!(self.conflict)),
            u8::from(self.clocks_agree),
            u8::from(self.dry_run),
            u8::from(self.full)
        )
    }

    /// Reads [`ResyncOrder::to_query`]'s output; `None` for anything else,
    /// including a label that could not name a quarantine directory.
    pub fn from_query(query: Option<&str>) -> Option<Self> {
        use crate::sync::wire::query_param as param;
        let label = param(query, "label")?;
        if crate::sync::path::check(&label).is_err() || label.contains('/') {
            return None;
        }
        let word = |k: &str| param(query, k).map(serde_json::Value::String);
        let flag = |k: &str| match param(query, k).as_deref() {
            Some("1") => Some(true),
            Some("0") | None => Some(false),
            Some(_) => None,
        };
        Some(ResyncOrder {
            label,
            only_on_target: serde_json::from_value(word("onlyOnTarget")?).ok()?,
            conflict: serde_json::from_value(word("conflict")?).ok()?,
            clocks_agree: flag("clocksAgree")?,
            dry_run: flag("dryRun")?,
            full: flag("full")?,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResyncReport {
    pub label: String,
    pub dry_run: bool,
    pub done: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub summary: Summary,
    pub warnings: Vec<String>,
    /// Dry run: the first actions of the plan, as `action path`.
    pub actions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_report_gives_its_used_share_and_an_impossible_one_none() {
        let v =
            |capacity_bytes, used_bytes, available_bytes| VolumeUsage { capacity_bytes, used_bytes, available_bytes };
        // As df counts: reserved blocks are neither used nor available.
        assert_eq!(v(1000, 800, 150).used_percent(), Some(85));
        assert_eq!(v(1000, 0, 950).used_percent(), Some(0));
        assert_eq!(v(1000, 1, 999).used_percent(), Some(1), "rounded up");
        assert_eq!(v(1000, 950, 0).used_percent(), Some(100));
        assert_eq!(v(0, 0, 0).used_percent(), None);
        assert_eq!(v(1000, 2000, 0).used_percent(), None);
        assert_eq!(v(1000, 10, 5000).used_percent(), None);
        assert_eq!(v(u64::MAX, u64::MAX, u64::MAX).used_percent(), None);
        assert_eq!(size_text(512), "512 B");
        assert_eq!(size_text(8 << 20), "8.0 MiB");
        assert_eq!(size_text(3 << 29), "1.5 GiB");
        assert_eq!(size_text(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn identities_round_trip_and_garbage_is_rejected() {
        let id = lease_identity(Member::Secondary, "0b5c-11");
        assert_eq!(parse_identity(&id), Some((Member::Secondary, "0b5c-11")));
        assert_eq!(parse_identity(""), None);
        assert_eq!(parse_identity("tertiary/x"), None);
        assert_eq!(parse_identity("primary"), None);
    }

    #[test]
    fn a_resync_order_survives_its_query_string_and_garbage_is_refused() {
        for (only_on_target, conflict) in [
            (OnlyOnTarget::Quarantine, ConflictRule::SourceWins),
            (OnlyOnTarget::Delete, ConflictRule::NewestWins),
            (OnlyOnTarget::CopyBack, ConflictRule::SourceWins),
        ] {
            let o = ResyncOrder {
                label: "resync-7".into(),
                only_on_target,
                conflict,
                clocks_agree: true,
                dry_run: false,
                full: true,
            };
            assert_eq!(ResyncOrder::from_query(Some(&o.to_query())), Some(o));
        }
        for bad in [
            "label=../x&onlyOnTarget=Quarantine&conflict=SourceWins",
            "label=a/b&onlyOnTarget=Quarantine&conflict=SourceWins",
            "label=r&onlyOnTarget=Shred&conflict=SourceWins",
            "label=r&onlyOnTarget=Quarantine&conflict=SourceWins&dryRun=yes",
            "label=r&onlyOnTarget=Quarantine",
        ] {
            assert_eq!(ResyncOrder::from_query(Some(bad)), None, "{bad}");
        }
    }
}
