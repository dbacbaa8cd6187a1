//! `make bench` (sync part): file sync throughput between two real agents'
//! sync engines over the pair's mTLS on loopback, with no control plane:
//! the active side's scanner and file endpoint, the standby's pull round.
//!
//! - 10 000 small files (1 KiB in 100 directories): scan and first copy;
//! - one 1 GiB file: copy throughput and the process's peak memory (it must
//!   stay far below the file's size: files stream in 64 KiB chunks);
//! - 100 000 unchanged files: a rescan (hashes cached by size, mtime and
//!   inode) and a pull round that finds nothing to do.
//!
//! Each case also runs the peer, Debian's rsync, on the same tree and the
//! same disk in the same run (`rsync.rs`): locally and over ssh, each with
//! and without `--fsync`, and prints hapair's figure against each as a
//! ratio (above 1: hapair is faster).
//!
//! Prints `BENCH <name> <value> <unit>`. `HAPAIR_BENCH_ONLY=sync` with
//! `make bench` runs only this part; `HAPAIR_BENCH_SYNC=small,big,quiet`
//! picks its cases.

#[path = "rsync.rs"]
mod rsync;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hapair::agent::sync::{Syncer, file_reply};
use hapair::api::{FileSyncPath, FileSyncSpec, Member, SyncClass};
use hapair::http::{self, Target, reply};
use hapair::sync::wire::query_param;
use hyper::StatusCode;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hapair-bench-sync-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec() -> FileSyncSpec {
    FileSyncSpec {
        paths: vec![FileSyncPath { path: ".".into(), class: SyncClass::Realtime }],
        realtime_interval_seconds: 1,
        batch_interval_seconds: 2,
        quarantine: Default::default(),
    }
}

/// Serves `active`'s manifest and file endpoints as its agent does.
fn serve(active: std::sync::Arc<Syncer>) -> Target {
    let m = hapair::tls::generate_pair_material("bench", "ns", hapair::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
    let (cert, key) = hapair::tls::member_cert_key(Member::Primary);
    let id = |c: &str, k: &str| hapair::tls::Identity {
        ca: m[hapair::tls::CA_CERT].clone(),
        cert: m[c].clone(),
        key: m[k].clone(),
    };
    let server = hapair::tls::server_config(&id(&cert, &key)).unwrap();
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let addr = std.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(std).unwrap();
    tokio::spawn(http::serve(
        listener,
        Some(tokio_rustls::TlsAcceptor::from(server)),
        Duration::from_secs(3600),
        move |req, _| {
            let active = active.clone();
            async move {
                let q = req.uri().query().map(str::to_string);
                let q = q.as_deref();
                match req.uri().path() {
                    "/v1/sync/manifest" => {
                        let dir = query_param(q, "dir").unwrap_or_default();
                        let have = query_param(q, "have").and_then(|h| h.parse().ok());
                        match active.manifest(&dir, have, 1).await {
                            Ok(m) => http::json_reply(&m),
                            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                        }
                    }
                    "/v1/sync/file" => {
                        let (dir, p) =
                            (query_param(q, "dir").unwrap_or_default(), query_param(q, "path").unwrap_or_default());
                        match active.open_file(&dir, &p).map(file_reply) {
                            Ok(Ok(r)) => r,
                            _ => reply(StatusCode::NOT_FOUND, ""),
                        }
                    }
                    _ => reply(StatusCode::NOT_FOUND, ""),
                }
            }
        },
    ));
    Target {
        addr,
        server_name: hapair::tls::server_name(&hapair::tls::member_server_name(Member::Primary, "bench", "ns"))
            .unwrap(),
        tls: hapair::tls::client_config(&id(hapair::tls::CLIENT_CERT, hapair::tls::CLIENT_KEY)).unwrap(),
    }
}

fn write_tree(root: &Path, files: usize, size: usize) {
    let content = vec![b'x'; size];
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:06}.dat")), &content).unwrap();
    }
}

/// Peak resident memory of this process so far, MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn bench(name: &str, value: f64, unit: &str) {
    println!("BENCH {name} {value:.1} {unit}");
}

struct Pair {
    active: std::sync::Arc<Syncer>,
    standby: Syncer,
    target: Target,
    dirs: [PathBuf; 2],
}

impl Pair {
    fn new(name: &str) -> Self {
        let dirs = [tempdir(&format!("{name}-a")), tempdir(&format!("{name}-s"))];
        let active = std::sync::Arc::new(Syncer::open(dirs[0].clone(), spec(), Member::Primary).unwrap());
        let standby = Syncer::open(dirs[1].clone(), spec(), Member::Secondary).unwrap();
        let target = serve(active.clone());
        Pair { active, standby, target, dirs }
    }

    async fn pull(&self) -> Duration {
        let t = Instant::now();
        self.standby.pull_round(&self.target, true).await;
        let s = self.standby.status();
        assert_eq!((s.errors, s.diverged.len()), (0, 0), "pull failed: {:?}", s.last_error);
        t.elapsed()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// hapair's copy time against each rsync variant's on the same tree:
/// `rate` turns a time into the case's figure (higher is better).
fn against_peers(
    case: &str,
    src: &Path,
    hapair: Duration,
    rate: impl Fn(Duration) -> f64,
    unit: &str,
    sshd: Option<&rsync::Sshd>,
) {
    let Some(sshd) = sshd else { return };
    for (name, via, fsync) in rsync::variants(sshd) {
        let dst = tempdir(&format!("{case}-{name}"));
        let took = rsync::rsync(src, &dst, via, fsync);
        let _ = std::fs::remove_dir_all(&dst);
        bench(&format!("peer_{name}_{case}_rate"), rate(took), unit);
        println!("BENCH ratio_{case}_hapair_vs_{name} {:.2} x", took.as_secs_f64() / hapair.as_secs_f64());
    }
}

async fn small_files(sshd: Option<&rsync::Sshd>) {
    let p = Pair::new("small");
    write_tree(&p.dirs[0], 10_000, 1024);
    let t = Instant::now();
    p.active.refresh(1).await.unwrap();
    bench("sync_10k_small_files_scan", t.elapsed().as_secs_f64() * 1000.0, "ms");
    let took = p.pull().await;
    bench("sync_10k_small_files_copy", took.as_secs_f64() * 1000.0, "ms");
    bench("sync_10k_small_files_rate", 10_000.0 / took.as_secs_f64(), "files/s");
    // hapair's figure is copy only (the scan is timed above); rsync's
    // includes its own walk of both trees.
    against_peers("10k_small_files", &p.dirs[0], took, |t| 10_000.0 / t.as_secs_f64(), "files/s", sshd);
}

async fn big_file(sshd: Option<&rsync::Sshd>) {
    let p = Pair::new("big");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(p.dirs[0].join("big.bin")).unwrap());
        let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        for _ in 0..1024 {
            f.write_all(&chunk).unwrap();
        }
    }
    p.active.refresh(1).await.unwrap();
    let before = peak_rss_mib();
    let took = p.pull().await;
    assert_eq!(std::fs::metadata(p.dirs[1].join("big.bin")).unwrap().len(), 1 << 30);
    bench("sync_1gib_file_copy", took.as_secs_f64(), "s");
    bench("sync_1gib_file_rate", 1024.0 / took.as_secs_f64(), "MiB/s");
    bench("sync_1gib_file_peak_rss_growth", (peak_rss_mib() - before).max(0.0), "MiB");
    against_peers("1gib_file", &p.dirs[0], took, |t| 1024.0 / t.as_secs_f64(), "MiB/s", sshd);
}

async fn no_change(sshd: Option<&rsync::Sshd>) {
    let p = Pair::new("quiet");
    write_tree(&p.dirs[0], 100_000, 16);
    p.active.refresh(1).await.unwrap();
    p.pull().await;
    let t = Instant::now();
    p.active.refresh(1).await.unwrap();
    let rescan = t.elapsed();
    bench("sync_100k_unchanged_rescan", rescan.as_secs_f64() * 1000.0, "ms");
    let took = p.pull().await;
    bench("sync_100k_unchanged_pull_round", took.as_secs_f64() * 1000.0, "ms");
    bench("sync_peak_rss", peak_rss_mib(), "MiB");
    // A no-change round writes nothing: `--fsync` changes nothing there.
    // hapair's round is its rescan and its pull; rsync's one run does both.
    let hapair = rescan + took;
    if let Some(sshd) = sshd {
        for (name, via, fsync) in rsync::variants(sshd).into_iter().filter(|v| !v.2) {
            let dst = tempdir(&format!("quiet-{name}"));
            rsync::rsync(&p.dirs[0], &dst, via, fsync);
            let round = rsync::rsync(&p.dirs[0], &dst, via, fsync);
            let _ = std::fs::remove_dir_all(&dst);
            bench(&format!("peer_{name}_100k_unchanged_round"), round.as_secs_f64() * 1000.0, "ms");
            println!("BENCH ratio_100k_unchanged_hapair_vs_{name} {:.2} x", round.as_secs_f64() / hapair.as_secs_f64());
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var("HAPAIR_BENCH_ONLY").is_ok_and(|o| o != "sync") {
        return;
    }
    // `HAPAIR_BENCH_SYNC=small,big,quiet` picks cases (default: all).
    let only = std::env::var("HAPAIR_BENCH_SYNC").unwrap_or_default();
    let want = |c: &str| only.is_empty() || only.split(',').any(|o| o == c);
    let sshd = match rsync::missing() {
        Some(why) => {
            println!("BENCH-NOTE the rsync peer is not measured: {why}");
            None
        }
        None => Some(rsync::Sshd::start(tempdir("sshd"))),
    };
    println!(
        "BENCH-NOTE peer: rsync -a locally and over ssh ({}) to 127.0.0.1, with and without --fsync; ratio above 1: hapair faster",
        rsync::SSH_CIPHER
    );
    if want("small") {
        small_files(sshd.as_ref()).await;
    }
    if want("big") {
        big_file(sshd.as_ref()).await;
    }
    if want("quiet") {
        no_change(sshd.as_ref()).await;
    }
}
