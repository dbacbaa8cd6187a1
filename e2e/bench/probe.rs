//! What `make bench-scale` measures from outside the operator: CPU and
//! memory of a process from `/proc`, the control plane's CPU through the
//! testbed's pid files, and request rates from the API server's own
//! `apiserver_request_total`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::Client;

use crate::common;

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

/// The testbed's control-plane processes whose CPU the steady-state
/// window reports beside the operator's: what the pairs cost the API
/// server and etcd, not only what they cost the operator.
pub const CONTROL_PLANE: &[&str] = &["kube-apiserver", "etcd"];

/// CPU seconds so far of each [`CONTROL_PLANE`] process, from the pid
/// files the testbed keeps beside its kubeconfig (`None` when one is
/// missing or names no process: never printed as an idle 0 %).
fn control_plane_cpu() -> Vec<Option<f64>> {
    let kubeconfig = PathBuf::from(common::kubeconfig_path());
    let dir = kubeconfig.parent().map(PathBuf::from).unwrap_or_default();
    CONTROL_PLANE
        .iter()
        .map(|name| {
            let pid = std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok();
            let pid: u32 = pid.and_then(|p| p.trim().parse().ok())?;
            std::path::Path::new(&format!("/proc/{pid}/stat")).exists().then(|| proc_usage(pid).0)
        })
        .collect()
}

/// Runs `window` and returns its result with the control plane's CPU
/// (percent of one core) over it, `None` for a process it could not read.
pub async fn with_control_plane_cpu<T>(window: impl std::future::Future<Output = T>) -> (T, Vec<Option<f64>>) {
    let (before, t0) = (control_plane_cpu(), Instant::now());
    let out = window.await;
    let secs = t0.elapsed().as_secs_f64();
    let pct = control_plane_cpu().iter().zip(before).map(|(a, b)| Some((a.as_ref()? - b?) / secs * 100.0)).collect();
    (out, pct)
}

/// A CPU figure as the bench prints it.
pub fn cpu_figure(pct: Option<f64>) -> String {
    pct.map_or("unknown (no pid file)".into(), |p| format!("{p:.1}%"))
}

/// CPU seconds, VmRSS and VmHWM (MiB) of a process, from `/proc`.
pub fn proc_usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the whole line.
    let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    (cpu, kib("VmRSS:").unwrap_or(0.0) / 1024.0, kib("VmHWM:").unwrap_or(0.0) / 1024.0)
}

/// `apiserver_request_total` summed by verb and resource (with its
/// subresource), from the API server's own metrics.
async fn api_counts(client: &Client) -> BTreeMap<String, f64> {
    let req = hyper::Request::get("/metrics").body(Vec::new()).expect("a request");
    let text = client.request_text(req).await.expect("the API server's metrics");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |k: &str| {
            labels.split(&format!("{k}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_string()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        let key = if sub.is_empty() { format!("{verb} {resource}") } else { format!("{verb} {resource}/{sub}") };
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Request rates less the idle testbed's, largest first (those under
/// 0.05/s left out), and their sum.
pub fn beyond_idle(rates: &BTreeMap<String, f64>, idle: &BTreeMap<String, f64>) -> (Vec<(String, f64)>, f64) {
    let mut rows: Vec<(String, f64)> = rates
        .iter()
        .map(|(k, v)| (k.clone(), v - idle.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| v.abs() >= 0.05)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = rows.iter().map(|(_, v)| v).sum();
    (rows, total)
}

/// Requests per second by verb and resource over `window`.
pub async fn api_rates(client: &Client, window: Duration) -> BTreeMap<String, f64> {
    let before = api_counts(client).await;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let after = api_counts(client).await;
    let secs = start.elapsed().as_secs_f64();
    after.iter().map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)) / secs)).collect()
}
