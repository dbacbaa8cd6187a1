//! The pair's certificates over time, on the real nodes (IPICS "delete and
//! regenerate the trust certificates", EPN `ncs ha authkey`): renewed
//! two-thirds through their life with nothing restarted, nothing failed
//! over and file sync going on throughout; and a pair whose certificates
//! ran out while no operator was there to renew them recovering by itself.
//! Both use the shortest lifetime the API allows (300 s), so each takes
//! minutes: they run in `make e2e`.

mod common;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hapair::api::{ConditionStatus, HighAvailabilityPair, Member, Mode};
use hapair::proto::AgentStatus;
use harness::{Harness, test_pair};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use serde_json::json;

const LIFETIME: i64 = 300;
const WAIT: Duration = Duration::from_secs(90);

async fn up(h: &Harness) -> HighAvailabilityPair {
    h.apply(&test_pair(
        "web",
        1,
        json!({"spec": {
            "certificates": {"lifetimeSeconds": LIFETIME},
            "storage": {"size": "1Gi", "mountPath": "/data"},
            "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": 1, "batchIntervalSeconds": 2}
        }}),
    ))
    .await;
    h.wait_for("web", "the pair whole", WAIT, whole).await
}

fn whole(p: &HighAvailabilityPair) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.mode == Some(Mode::Enabled)
            && s.conditions.iter().any(|c| c.type_ == "Synced" && c.status == ConditionStatus::True)
    })
}

fn certificates(p: &HighAvailabilityPair) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let c = p.status.as_ref().and_then(|s| s.certificates.clone()).unwrap_or_default();
    (c.members_not_after, c.renew_after)
}

/// What a member's agent says, asked with the pair's current client
/// certificate; `None` when it cannot be asked.
async fn agent(h: &Harness, m: Member) -> Option<AgentStatus> {
    let target = h.agent_target("web", m, h.pair_tls("web").await).await;
    let body = hapair::http::call(&target, hyper::Method::GET, "/v1/status", Duration::from_secs(2)).await.ok()?;
    serde_json::from_slice(&body).ok()
}

/// Each pod's UID and its containers' restart counts.
async fn pods(h: &Harness) -> Vec<(String, Vec<i32>)> {
    let api: Api<Pod> = h.pods();
    let mut out = Vec::new();
    for m in Member::BOTH {
        let p = api.get(&m.pod_name("web")).await.unwrap();
        let restarts =
            p.status.and_then(|s| s.container_statuses).unwrap_or_default().iter().map(|c| c.restart_count).collect();
        out.push((p.metadata.uid.unwrap(), restarts));
    }
    out
}

/// Writes a file on the active member every second and checks each
/// reaches the standby; returns the longest a file took.
struct Ticker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl Ticker {
    fn start(from: &Path, to: &Path) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, from, to) = (stop.clone(), from.to_path_buf(), to.to_path_buf());
        let task = tokio::spawn(async move {
            let mut pending: Vec<(String, Instant)> = Vec::new();
            let mut longest = Duration::ZERO;
            let mut n = 0u64;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) || !pending.is_empty() {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let name = format!("tick-{n}.txt");
                    std::fs::write(from.join(&name), n.to_string()).unwrap();
                    pending.push((name, Instant::now()));
                }
                pending.retain(|(name, at)| {
                    if to.join(name).exists() {
                        longest = longest.max(at.elapsed());
                        false
                    } else {
                        assert!(at.elapsed() < Duration::from_secs(60), "{name} never reached the standby");
                        true
                    }
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            longest
        });
        Ticker { stop, task }
    }

    async fn stop(self) -> Duration {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

async fn wait_agents_on(h: &Harness, not_after: DateTime<Utc>, timeout: Duration) {
    let start = Instant::now();
    loop {
        let mut on = Vec::new();
        for m in Member::BOTH {
            on.push(agent(h, m).await.and_then(|a| a.certificate_not_after));
        }
        if on.iter().all(|t| *t == Some(not_after)) {
            return;
        }
        assert!(start.elapsed() < timeout, "the agents present certificates valid until {on:?}, not {not_after}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_two_thirds_through_without_a_restart_a_failover_or_a_pause_in_sync() {
    let h = Harness::new("certs-renew").await;
    let p = up(&h).await;
    let checker = h.checker("web").await;
    let (first, renew_after) = certificates(&p);
    let (first, renew_after) = (first.expect("membersNotAfter"), renew_after.expect("renewAfter"));
    let left = (first - Utc::now()).num_seconds();
    assert!(left <= LIFETIME && left > LIFETIME - 60, "made for {LIFETIME} s: {left} s left");
    wait_agents_on(&h, first, WAIT).await;
    let (active, epoch) = {
        let s = p.status.as_ref().unwrap();
        (s.active_member.unwrap(), s.epoch)
    };
    let before = pods(&h).await;
    let ticker = Ticker::start(&h.data_dir("web", active).await, &h.data_dir("web", active.peer()).await);

    // Renewed at two-thirds, by the operator, into the Secret...
    let wait = (renew_after - Utc::now()).to_std().unwrap_or_default() + WAIT;
    let p = h.wait_for("web", "the certificates renewed", wait, |p| certificates(p).0.is_some_and(|t| t > first)).await;
    let renewed = certificates(&p).0.unwrap();
    assert!(Utc::now() < first, "renewed only after the old ones expired");
    // ... and in use by both agents before the old ones run out: each
    // reloads the Secret the kubelet updates in its pod.
    wait_agents_on(&h, renewed, (first - Utc::now()).to_std().unwrap_or_default()).await;
    let longest = ticker.stop().await;

    let p = h.wait_for("web", "the pair whole", WAIT, whole).await;
    let s = p.status.as_ref().unwrap();
    assert_eq!((s.active_member, s.epoch), (Some(active), epoch), "the role moved: {:?}", s.history);
    assert_eq!(pods(&h).await, before, "a pod or container restarted");
    assert!(longest < Duration::from_secs(10), "file sync paused: a file took {longest:?} to reach the standby");
    let events: Api<Event> = Api::namespaced(h.client.clone(), &h.ns.name);
    let list = events.list(&ListParams::default().fields("involvedObject.name=web")).await.unwrap();
    assert!(
        list.items.iter().any(|e| e.reason.as_deref() == Some("CertificatesRenewed")),
        "no CertificatesRenewed Event"
    );
    checker.assert_clean();
    eprintln!(
        "both agents on the renewed certificates {}s before the old ones expired; the longest a file took to reach the standby: {longest:?}",
        (first - Utc::now()).num_seconds()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_whose_certificates_expired_while_no_operator_ran_recovers_by_itself() {
    let mut h = Harness::new("certs-expired").await;
    let p = up(&h).await;
    let (first, _) = certificates(&p);
    let first = first.expect("membersNotAfter");
    let active = p.status.as_ref().unwrap().active_member.unwrap();
    // No operator to renew them: they run out.
    h.kill_operator(0).await;
    let past = (first - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(10);
    tokio::time::sleep(past).await;
    assert!(agent(&h, active).await.is_none(), "an agent still answers a client with an expired certificate");
    let (from, to) = (h.data_dir("web", active).await, h.data_dir("web", active.peer()).await);
    std::fs::write(from.join("while-expired.txt"), b"written while the certificates were expired").unwrap();

    // An operator again: it renews at once, the agents reload, the pair is
    // whole and syncs, with the same member active.
    h.start_operator();
    let p = h.wait_for("web", "the certificates renewed", WAIT, |p| certificates(p).0.is_some_and(|t| t > first)).await;
    let renewed = certificates(&p).0.unwrap();
    wait_agents_on(&h, renewed, Duration::from_secs(150)).await;
    let p = h.wait_for("web", "the pair whole again", WAIT, whole).await;
    assert_eq!(p.status.as_ref().unwrap().active_member, Some(active));
    let start = Instant::now();
    while !to.join("while-expired.txt").exists() {
        assert!(start.elapsed() < WAIT, "the file written while expired never reached the standby");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pair's TLS Secret: the CA bundle's and each member's certificate
/// fingerprints.
async fn secret_fingerprints(h: &Harness) -> (Vec<String>, Vec<Option<String>>) {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(h.client.clone(), &h.ns.name);
    let s = api.get("web-tls").await.unwrap();
    let text = |k: &str| {
        s.data.as_ref().and_then(|d| d.get(k)).map(|b| String::from_utf8_lossy(&b.0).into_owned()).unwrap_or_default()
    };
    let members = Member::BOTH.map(|m| fingerprint(&text(&hapair::tls::member_cert_key(m).0))).to_vec();
    (fingerprints(&text(hapair::tls::CA_CERT)), members)
}

/// Waits until both agents trust exactly `cas` and present the Secret's
/// certificates.
async fn wait_agents_loaded(h: &Harness, cas: &[String], timeout: Duration) {
    let start = Instant::now();
    loop {
        let (_, leaves) = secret_fingerprints(h).await;
        let mut seen = Vec::new();
        for m in Member::BOTH {
            seen.push(agent(h, m).await.map(|a| (a.trusted_ca_sha256, a.certificate_sha256)));
        }
        let loaded = seen
            .iter()
            .zip(&leaves)
            .all(|(s, leaf)| s.as_ref().is_some_and(|(trusted, cert)| trusted == cas && cert == leaf));
        if loaded {
            return;
        }
        assert!(start.elapsed() < timeout, "the agents have not loaded the rotated CA: {seen:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

use hapair::tls::rotation::{fingerprint, fingerprints};

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn the_ca_rotates_several_times_on_request_without_a_restart_a_failover_or_a_pause_in_sync() {
    let rotations: usize = std::env::var("HAPAIR_ROTATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let h = Harness::new("certs-rotate").await;
    let p = up(&h).await;
    let checker = h.checker("web").await;
    let (mut cas, _) = secret_fingerprints(&h).await;
    wait_agents_loaded(&h, &cas, WAIT).await;
    let (active, epoch) = {
        let s = p.status.as_ref().unwrap();
        (s.active_member.unwrap(), s.epoch)
    };
    let before = pods(&h).await;
    let ticker = Ticker::start(&h.data_dir("web", active).await, &h.data_dir("web", active.peer()).await);
    let mut took = Vec::new();
    for n in 1..=rotations {
        let start = Instant::now();
        // The plugin's own wait follows the request to its outcome.
        let (ok, out, err) = tokio::task::spawn_blocking({
            let h = h.plugin_command();
            move || h(&["rotate-certificates", "web", "--wait"])
        })
        .await
        .unwrap();
        assert!(ok, "rotation {n} did not succeed: {out}{err}");
        assert!(err.contains("the new CA is trusted beside the old"), "the steps were not followed: {err}");
        let (now, _) = secret_fingerprints(&h).await;
        assert_eq!(now.len(), 1, "the old CA is still in the bundle");
        assert!(!cas.contains(&now[0]), "the CA did not change");
        // Success means both agents present the new CA's certificates; the
        // last step (the old CA dropped) reaches them a kubelet sync later.
        wait_agents_loaded(&h, &now, WAIT).await;
        took.push(start.elapsed());
        cas = now;
    }
    let longest = ticker.stop().await;

    let p = h.wait_for("web", "the pair whole", WAIT, whole).await;
    let s = p.status.as_ref().unwrap();
    assert_eq!((s.active_member, s.epoch), (Some(active), epoch), "the role moved: {:?}", s.history);
    assert_eq!(s.certificates.as_ref().and_then(|c| c.rotation.clone()), None, "a rotation is still under way");
    assert_eq!(pods(&h).await, before, "a pod or container restarted");
    assert!(longest < Duration::from_secs(10), "file sync paused: a file took {longest:?} to reach the standby");
    // Repeated Events of one reason are one Event with a series (the
    // events.k8s.io API's way): counted by its series.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), &h.ns.name);
    let list = events.list(&ListParams::default()).await.unwrap();
    let count = |reason: &str| {
        let mine = list.items.iter().filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"));
        mine.filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count as usize))
            .sum::<usize>()
    };
    // At this lifetime the CA is also due by itself (half through its 600 s)
    // between the requests: every rotation begun was finished.
    let (started, rotated) = (count("CertificateRotationStarted"), count("CertificatesRotated"));
    assert!(started >= rotations && rotated == started, "{started} rotations started, {rotated} finished");
    // The checker asked the agents across every rotation (it follows the
    // Secret as the operator does): its verdict covers their roles.
    let (samples, unanswered, _) = checker.coverage();
    assert!(unanswered * 10 <= samples * 2, "{unanswered} of {} agent polls unanswered", samples * 2);
    checker.assert_clean();
    eprintln!(
        "{rotations} CA rotations, each from request to both agents on the new CA alone in {took:?}; the longest a file took to reach the standby: {longest:?}"
    );
}
