//! `make bench`, lag part: how far the standby's copy trails continuous
//! writes — what a failover can lose. The client writes every 20 ms through
//! the pair's ClusterIP; the test application appends each write to
//! `writes.log` on its data volume and fsyncs it before acknowledging. A
//! follower in the bench reads the standby's copy of that file (its local
//! volume on the node's disk) every 10 ms. The lag of a write is from its
//! acknowledgement to the moment its id is first seen on the standby, both
//! on the bench's clock.
//!
//! The peer, in the same run with the same writer and the same file: the
//! same application on this machine, and rsync over ssh (`--fsync`, as
//! hapair makes each file durable) started once per the same interval,
//! start to start — the classic "rsync every N seconds" mirror.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hapair::api::Mode;
use serde_json::json;

use crate::harness::probe::{Ack, Probe};
use crate::harness::{Harness, test_pair};
use crate::rsync;

/// When each id was first seen in `file`, read every 10 ms until dropped.
struct Follower {
    seen: Arc<Mutex<HashMap<u64, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(file: PathBuf) -> Self {
        let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                // Read anew each time: a pulled file replaces the old one.
                if let Ok(text) = tokio::fs::read_to_string(&file).await {
                    let at = Instant::now();
                    let mut s = s.lock().unwrap();
                    for id in text.lines().filter_map(|l| l.split(' ').nth(2)?.parse::<u64>().ok()) {
                        s.entry(id).or_insert(at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Follower { seen, task }
    }

    /// Each acknowledged write's lag in ms; and how many never showed.
    fn lags(&self, acks: &[Ack]) -> (Vec<f64>, usize) {
        let seen = self.seen.lock().unwrap();
        let mut lags = Vec::new();
        let mut missing = 0;
        for a in acks {
            match seen.get(&a.id) {
                Some(t) => lags.push(t.saturating_duration_since(a.at).as_secs_f64() * 1000.0),
                None => missing += 1,
            }
        }
        (lags, missing)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// hapair: a pair syncing its whole volume at `interval` s, written for
/// `for_`. The lags in ms and the writes never seen on the standby.
pub async fn hapair(interval: i32, for_: Duration) -> Result<(Vec<f64>, usize), String> {
    let h = Harness::new("bench-lag").await;
    let spec = json!({"spec": {
        "storage": {"size": "1Gi", "mountPath": "/data"},
        "fileSync": {"paths": [{"path": "."}], "realtimeIntervalSeconds": interval, "batchIntervalSeconds": interval + 1}
    }});
    h.apply(&test_pair("web", 1, spec)).await;
    let p = h
        .wait_for_opt("web", Duration::from_secs(180), |p| {
            p.status.as_ref().is_some_and(|s| s.mode == Some(Mode::Enabled))
        })
        .await
        .ok_or("the pair never became Enabled")?;
    let standby = p.status.and_then(|s| s.standby_member).ok_or("no standby")?;
    let follower = Follower::start(h.data_dir("web", standby).await.join("writes.log"));
    let client = Probe::start(h.cluster_ip("web").await);
    tokio::time::sleep(for_).await;
    let acks = client.stop().await;
    // The last writes get one more interval and a bit to arrive.
    tokio::time::sleep(Duration::from_secs(interval as u64 + 2)).await;
    Ok(follower.lags(&acks))
}

/// The peer: the same application on this machine, its `writes.log`
/// mirrored by rsync over ssh every `interval` s.
pub async fn rsync_peer(app: &Path, interval: i32, for_: Duration) -> Result<(Vec<f64>, usize), String> {
    if let Some(why) = rsync::missing() {
        return Err(why);
    }
    let dir = std::env::temp_dir().join(format!("hapair-bench-lag-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (run, src, dst) = (dir.join("run"), dir.join("src"), dir.join("dst"));
    for d in [&run, &src, &dst] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?.local_addr().unwrap().port();
    let mut child = std::process::Command::new(app)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--run-dir")
        .arg(&run)
        .arg("--data-dir")
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", app.display()))?;
    // Active for good, written after the application started (it trusts
    // no older deadline).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (f, v) in [("epoch", "1"), ("deadline", "1000000000"), ("role", "active")] {
        std::fs::write(run.join(f), format!("{v}\n")).map_err(|e| e.to_string())?;
    }
    let sshd = Arc::new(rsync::Sshd::start(dir.join("sshd")));
    let follower = Follower::start(dst.join("writes.log"));
    // The machine's own network namespace: the application listens on its
    // loopback.
    let client = Probe::start_in(format!("127.0.0.1:{port}").parse().unwrap(), "/proc/self/ns/net");
    let every = Duration::from_secs(interval as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let mirror = {
        let (stop, sshd, src, dst) = (stop.clone(), sshd.clone(), src.clone(), dst.clone());
        tokio::task::spawn_blocking(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                rsync::rsync(&src, &dst, rsync::Via::Ssh(&sshd), true);
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    tokio::time::sleep(for_).await;
    let acks = client.stop().await;
    // The last writes get one more interval and a bit to arrive.
    tokio::time::sleep(every + Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = mirror.await;
    let _ = child.kill();
    let _ = child.wait();
    let out = follower.lags(&acks);
    drop(sshd);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}
