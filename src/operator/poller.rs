//! Heartbeats from the operator's side: each pair's worker polls both agents'
//! `/v1/status` over mTLS every heartbeat interval, concurrently and with a
//! bounded timeout. A missed answer counts as a missed heartbeat; an answer
//! that does not parse is counted and otherwise ignored, never trusted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::observe::AgentObs;
use crate::api::Member;
use crate::http::{CallError, Kept, Target};
use crate::proto::AgentStatus;

/// Where to reach a member's agent, as last observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub peer: Option<SocketAddr>,
}

#[derive(Default)]
pub struct PollState {
    pub members: [MemberPoll; 2],
    /// Complete polling rounds (both agents asked) since the worker started.
    pub rounds: u64,
}

#[derive(Default, Clone)]
pub struct MemberPoll {
    pub last: Option<AgentStatus>,
    pub answered_at: Option<Instant>,
    pub missed: u32,
    pub malformed: u64,
    pub endpoint: Option<Endpoint>,
    /// The agent's clock minus ours, estimated from its answer's wall
    /// clock and the middle of the round trip (± half the round trip).
    pub skew_ms: Option<i64>,
}

fn idx(m: Member) -> usize {
    match m {
        Member::Primary => 0,
        Member::Secondary => 1,
    }
}

impl PollState {
    pub fn get(&self, m: Member) -> &MemberPoll {
        &self.members[idx(m)]
    }
    pub fn get_mut(&mut self, m: Member) -> &mut MemberPoll {
        &mut self.members[idx(m)]
    }
    /// Records an answer the worker got outside the poll (drain, sync now).
    pub fn answered(&mut self, m: Member, answer: AgentStatus) {
        let p = self.get_mut(m);
        p.last = Some(answer);
        p.answered_at = Some(Instant::now());
        p.missed = 0;
    }

    pub fn observe(&self, m: Member) -> AgentObs {
        let p = self.get(m);
        AgentObs {
            last: p.last.clone(),
            missed: p.missed,
            since_answer: p.answered_at.map(|t| t.elapsed()),
            malformed: p.malformed,
            skew_ms: p.skew_ms,
        }
    }
}

/// What changes a decision: a different answer, or an agent going silent or
/// coming back.
fn significant(before: &MemberPoll, after: &MemberPoll) -> bool {
    let key = |p: &MemberPoll| {
        p.last
            .as_ref()
            .map(|a| (a.role, a.epoch, a.app_healthy, a.pod_uid.clone(), a.peer_reachable, a.released.clone()))
    };
    // File sync: a new generation, a directory diverging or catching up.
    let sync = |p: &MemberPoll| {
        p.last.as_ref().and_then(|a| a.sync.as_ref()).map(|s| {
            (
                s.point,
                s.diverged.len(),
                s.changed_while_standby.len(),
                s.peer_generation,
                s.resync.as_ref().map(|r| r.done),
            )
        })
    };
    let skew = |p: &MemberPoll| p.skew_ms.map(|k| k / 1000);
    key(before) != key(after)
        || sync(before) != sync(after)
        || skew(before) != skew(after)
        || (before.missed == 0) != (after.missed == 0)
        || after.missed > before.missed
}

/// Polls one member once and records the outcome.
pub async fn poll_member(
    state: &Arc<Mutex<PollState>>,
    member: Member,
    kept: &mut Kept,
    tls: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    timeout: Duration,
    wake: &Notify,
) -> bool {
    let endpoint = state.lock().unwrap_or_else(|p| p.into_inner()).get(member).endpoint.clone();
    let Some(endpoint) = endpoint else { return false };
    let target = Target { addr: endpoint.addr, server_name, tls };
    let path = match endpoint.peer {
        Some(peer) => format!("/v1/status?peer={peer}"),
        None => "/v1/status".to_string(),
    };
    let sent = chrono::Utc::now();
    let result: Result<AgentStatus, CallError> = kept.get_json(&target, &path, timeout).await;
    let received = chrono::Utc::now();
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let before = s.get(member).clone();
    let p = s.get_mut(member);
    if p.endpoint.as_ref() != Some(&endpoint) {
        return false; // the pod moved while we asked; the answer is about the old one
    }
    match result {
        Ok(status) if status.member == member => {
            let middle = sent + (received - sent) / 2;
            p.skew_ms = Some((status.wall_clock - middle).num_milliseconds());
            p.last = Some(status);
            p.answered_at = Some(Instant::now());
            p.missed = 0;
        }
        // An answer that is not a status, down to its HTTP framing: counted,
        // never read.
        Ok(_) | Err(CallError::Malformed(_) | CallError::Protocol(_)) => {
            p.malformed += 1;
            p.missed += 1;
        }
        Err(_) => p.missed += 1,
    }
    if significant(&before, p) {
        wake.notify_one();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::canned_target;

    #[tokio::test]
    async fn an_agent_answering_garbage_is_counted_and_missed_never_read() {
        let (target, _) = canned_target(vec![
            // JSON, but not a status.
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
            // Not HTTP.
            b"STATUS OK\r\n\r\n",
            // HTTP framed two ways at once.
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            // An error answer: a missed heartbeat, not garbage.
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let state = Arc::new(Mutex::new(PollState::default()));
        state.lock().unwrap().get_mut(Member::Primary).endpoint = Some(Endpoint { addr: target.addr, peer: None });
        let (mut kept, wake) = (Kept::default(), Notify::new());
        let mut poll = async || {
            let (tls, name) = (target.tls.clone(), target.server_name.clone());
            poll_member(&state, Member::Primary, &mut kept, tls, name, Duration::from_secs(5), &wake).await;
            state.lock().unwrap().get(Member::Primary).clone()
        };
        for _ in 0..2 {
            poll().await;
        }
        let p = poll().await;
        assert_eq!((p.malformed, p.missed, p.last.is_none()), (3, 3, true));
        let p = poll().await;
        assert_eq!((p.malformed, p.missed), (3, 4));
    }
}
