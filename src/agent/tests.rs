//! The agent's state and role-file rules, without a cluster.

use super::*;

/// Active at epoch 1 with 1 s x 3, past any former life's promises.
pub(super) fn state() -> State {
    State { role: Role::Active, epoch: 1, started_hold: None, ..State::new(1, 3, 1) }
}

/// An agent with no cluster, peer or file sync, its role files in `dir`.
pub(super) fn agent(dir: &std::path::Path) -> Agent {
    let registry = prometheus::Registry::new();
    let metrics = AgentMetrics::register(&registry).unwrap();
    Agent {
        config: Config {
            pair: "p".into(),
            namespace: "n".into(),
            member: Member::Primary,
            pod_uid: "uid".into(),
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 7443,
            probe_port: 7444,
            app_host: "127.0.0.1".into(),
            health_check: None,
            interval_seconds: 1,
            missed_threshold: 3,
            run_dir: dir.into(),
            tls_dir: dir.join("tls"),
            data_dir: None,
            file_sync: None,
        },
        state: Mutex::new(state()),
        files: RoleFiles::new(dir).unwrap(),
        wake: Notify::new(),
        metrics,
        registry,
        identity: "primary/uid".into(),
        syncer: None,
        peer_tls: None,
        started: std::time::Instant::now(),
        tls: None,
    }
}

#[test]
fn a_member_whose_role_file_still_says_active_is_reported_active_until_it_is_rewritten() {
    let dir = std::env::temp_dir().join(format!("hapair-stale-role-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let agent = agent(&dir);
    let role = || std::fs::read_to_string(dir.join("role")).unwrap();
    {
        let mut s = agent.lock();
        s.record_renewal((1, 3), &view(1, 3), Instant::now());
        assert!(agent.write_files(&mut s));
    }
    assert_eq!(role(), "active\n");
    // The run directory refuses the role file (a directory squats its
    // temporary name, as a full or read-only volume would refuse it).
    std::fs::create_dir(dir.join("role.tmp")).unwrap();
    assert!(agent.drain(1), "the drain itself proceeds");
    assert_eq!(role(), "active\n", "the application still reads active");
    assert!(!agent.mark_drained(1), "no final generation while the application may still write");
    let status = agent.status();
    assert_eq!(status.role, Role::Active, "the peer must not count this member as stood down");
    assert!(!status.draining, "the operator must not move the Lease on this drain");
    assert!(matches!(
        failsafe::grant(&mut agent.lock(), 1, Duration::from_secs(1), Instant::now()),
        Err(failsafe::Refusal::Serving)
    ));
    assert!(agent.metrics.role_file_failures.get() >= 1);
    // The retry fails while the directory refuses; the report holds.
    lease_task::watchdog_tick(&agent, Instant::now());
    assert_eq!(agent.status().role, Role::Active);
    // Past the deadline the files carry, the application has stopped by
    // itself: the report may follow the role held.
    let past = agent.lock().files.deadline.unwrap() + Duration::from_millis(1);
    assert_eq!(agent.lock().shown_role(past), Role::Standby);
    // Once the directory takes writes again, the next tick rewrites them.
    std::fs::remove_dir(dir.join("role.tmp")).unwrap();
    lease_task::watchdog_tick(&agent, Instant::now());
    assert_eq!(role(), "standby\n");
    let status = agent.status();
    assert_eq!(status.role, Role::Standby);
    assert!(agent.mark_drained(1));
    assert!(!agent.status().draining, "not before the Lease carries the drain mark");
    agent.lock().note_lease(&lease::LeaseView { drain_mark: Some("1".into()), ..view(1, 3) });
    assert!(agent.status().draining);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_drain_is_reported_once_its_mark_is_on_the_lease_and_never_at_another_epoch() {
    let dir = std::env::temp_dir().join(format!("hapair-drain-mark-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let agent = Arc::new(agent(&dir));
    agent.lock().record_renewal((1, 3), &view(1, 3), Instant::now());
    assert!(agent.drain(1));
    assert!(agent.mark_drained(1));
    // No lease loop runs here: the wait gives up at its limit.
    let started = Instant::now();
    assert!(!agent.await_drain_mark(1, Duration::from_millis(100)).await);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(!agent.status().draining);
    // A mark left at another epoch does not count.
    agent.lock().note_lease(&lease::LeaseView { drain_mark: Some("0".into()), ..view(1, 3) });
    assert!(!agent.status().draining);
    // The renewal that writes it, arriving while the drain waits.
    let a = agent.clone();
    let waiting = tokio::spawn(async move { a.await_drain_mark(1, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    agent.lock().note_lease(&lease::LeaseView { drain_mark: Some("1".into()), ..view(1, 3) });
    assert!(waiting.await.unwrap());
    let status = agent.status();
    assert!(status.draining && status.marks_drain);
    assert_eq!(status.handover_given_up_seconds_ago, None);
    // The hold ran out: the renewal that cleared the mark lets it serve again.
    lease_task::serve_again(&agent, (1, 3), view(1, 3), Instant::now(), 1);
    let status = agent.status();
    assert_eq!((status.role, status.draining), (Role::Active, false));
    assert!(status.handover_given_up_seconds_ago.is_some_and(|s| s < 1.0), "{status:?}");
    // Only at the epoch it gave up at.
    agent.lock().epoch = 2;
    assert_eq!(agent.status().handover_given_up_seconds_ago, None);
    std::fs::remove_dir_all(dir).unwrap();
}

fn view(interval: i32, missed: i32) -> lease::LeaseView {
    lease::LeaseView {
        holder: None,
        epoch: 1,
        interval_seconds: Some(interval),
        missed_threshold: Some(missed),
        renewed: None,
        replaced: None,
        drain_mark: None,
        annotated: true,
        resource_version: None,
    }
}

#[test]
fn a_longer_interval_read_from_the_lease_does_not_move_the_fence_until_it_is_published() {
    let mut s = state();
    // Renewed with 1 s x 3 (lease 3 s); the Lease now asks for 10 s x 3.
    assert!(s.record_renewal((1, 3), &view(10, 3), Instant::now()), "the new settings must be published at once");
    assert_eq!(s.fence_after(), Duration::from_secs(2), "still fences inside the 3 s lease the operator counts");
    assert_eq!((s.interval_seconds, s.missed_threshold), (10, 3));
    // The next renewal writes the 30 s lease; only then does the deadline grow.
    assert!(!s.record_renewal((10, 3), &view(10, 3), Instant::now()));
    assert_eq!(s.fence_after(), Duration::from_secs(20));
}

#[test]
fn a_renewal_counts_from_when_it_was_sent_not_from_when_its_answer_came() {
    let mut s = state();
    // 1 s x 3: fence 2 s after the renewal. The answer took 1.5 s.
    let sent = Instant::now() - Duration::from_millis(1500);
    s.record_renewal((1, 3), &view(1, 3), sent);
    assert_eq!(s.last_renew, Some(sent));
    let left = s.fence_after().saturating_sub(s.last_renew.unwrap().elapsed());
    assert!(left <= Duration::from_millis(500), "only the rest of the margin is left: {left:?}");
}

#[test]
fn the_fence_always_comes_an_interval_before_the_published_lease_ends() {
    for (i, m) in [(1, 2), (1, 3), (5, 3), (600, 30)] {
        let mut s = state();
        s.record_renewal((i, m), &view(i, m), Instant::now());
        assert_eq!(s.fence_after() + Duration::from_secs(i as u64), Duration::from_secs((i * m) as u64));
    }
}
