//! The e2e test application: an HTTP service that accepts writes only while
//! its role file says `active`, as a real application behind hapair should.
//!
//! - `POST /write?key=K&value=V`: stores the pair (appending to
//!   `<data>/writes.log` with fsync when `--data-dir` is set); 200 with the
//!   epoch it was accepted at, 503 when not active (or active past the
//!   role file's deadline).
//! - `GET /read?key=K`: the stored value, 404 when unknown.
//! - `GET /healthz`: 200.
//! - `GET /role`: the role and epoch it sees.
//! - On standard output, every change of the role it sees (checked every
//!   10 ms, and whenever the agent moves the deadline on): `view role=R
//!   epoch=E wall_ms=T until_ms=D`, T the wall clock when it saw it and D the
//!   wall-clock moment its deadline passes (0 unless active); the line is
//!   repeated every 100 ms, so a killed application's view ends within
//!   100 ms of its last line. The tests read these lines from the
//!   container's log to know when each application took itself for the
//!   active one — a frozen one's view still ends at D.
//! - `GET /api-credential`: the Kubernetes token this container could use
//!   (the in-cluster path), 404 when it has none: what an application, or
//!   anyone who compromises it, could act on the cluster with.
//!
//! Every answer carries `x-hapair-member`: the pod's hostname, which the
//! operator sets to the member's name, so a client through the VIP knows who
//! answered. `--data-dir` is used when it exists (a pair with storage mounts
//! its claim there) and ignored otherwise.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

struct App {
    member: String,
    /// When this process started: role files written before it are not
    /// trusted (see `view`).
    started: std::time::SystemTime,
    run_dir: PathBuf,
    data_dir: Option<PathBuf>,
    store: Mutex<HashMap<String, String>>,
}

/// The role as the README tells application authors to read it: `active`
/// holds only while `/proc/uptime` is below the deadline the agent wrote
/// (an agent that is frozen, killed or cut off cannot move it on); past it
/// the answer is `expired`, and the application stops acting as active. A
/// deadline written before this process started is not trusted
/// (`unconfirmed`) until the agent writes it again.
fn role(app: &App) -> (String, i64) {
    let (role, epoch, _) = view(app);
    (role, epoch)
}

/// The role, its epoch, and how many seconds of validity it has left.
fn view(app: &App) -> (String, i64, f64) {
    let read = |f: &str| std::fs::read_to_string(app.run_dir.join(f)).unwrap_or_default().trim().to_string();
    let (role, epoch) = (read("role"), read("epoch").parse().unwrap_or(0));
    // Written before this process started, the files may be what the agent
    // said before a failure this very restart followed (the application
    // killed, the agent with it): not active until the agent rewrites the
    // deadline, which it does at every renewal.
    let fresh =
        std::fs::metadata(app.run_dir.join("deadline")).and_then(|m| m.modified()).is_ok_and(|t| t >= app.started);
    if role == "active" && !fresh {
        return ("unconfirmed".to_string(), epoch, 0.0);
    }
    let deadline: f64 = read("deadline").parse().unwrap_or(0.0);
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::INFINITY);
    if role == "active" && uptime >= deadline {
        return ("expired".to_string(), epoch, 0.0);
    }
    let left = if role == "active" { deadline - uptime } else { 0.0 };
    (role, epoch, left)
}

/// Prints every change of the role this application sees (see the module
/// doc), the deadline's moves included, and repeats the current view every
/// 100 ms whatever the role: a gap in the lines is then a stall of this
/// process (or of its log), which the tests can tell from a quiet standby.
fn log_views(app: &App) {
    let mut last: Option<(String, i64, u64)> = None;
    let mut printed = 0u64;
    let mut out = std::io::stdout();
    loop {
        let (role, epoch, left) = view(app);
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let until = if left > 0.0 { wall + (left * 1000.0) as u64 } else { 0 };
        // The deadline as a wall-clock moment moves by a millisecond or two
        // between reads: only a real renewal (≥ 100 ms on) is a change.
        let changed = last.as_ref().is_none_or(|(r, e, u)| *r != role || *e != epoch || until.abs_diff(*u) >= 100);
        if changed || wall.saturating_sub(printed) >= 100 {
            // Not `println!`: a failed write to the log must not end the
            // only thread that reports the view (it would fail the tests as
            // an application that took itself for active to its deadline).
            // A write that fails is tried again at the next turn.
            let line = format!("view role={role} epoch={epoch} wall_ms={wall} until_ms={until}\n");
            if out.write_all(line.as_bytes()).and_then(|_| out.flush()).is_ok() {
                printed = wall;
                last = Some((role, epoch, until));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn query(req: &Request<hyper::body::Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}="))).map(str::to_string)
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// One write, as the README's contract asks: only while active, and
/// acknowledged only if the role still holds at the same epoch once the
/// write is durable — a write that outlived the role (a slow fsync across a
/// handover) is on disk, at the old epoch, but never acknowledged.
fn write(app: &App, k: String, v: String) -> Response<Full<Bytes>> {
    let (r, epoch) = role(app);
    if r != "active" {
        return reply(StatusCode::SERVICE_UNAVAILABLE, format!("role={r}"));
    }
    if let Some(dir) = &app.data_dir {
        let line = format!("{epoch} {k} {v}\n");
        let ok = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("writes.log"))
            .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|_| f.sync_data()));
        if let Err(e) = ok {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        let (now, now_epoch) = role(app);
        if now != "active" || now_epoch != epoch {
            return reply(StatusCode::SERVICE_UNAVAILABLE, format!("role={now} after the write"));
        }
    }
    app.store.lock().unwrap().insert(k, v);
    reply(StatusCode::OK, format!("epoch={epoch}"))
}

async fn handle(app: &Arc<App>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "ok".into()),
        "/role" => {
            let (r, e) = role(app);
            reply(StatusCode::OK, format!("{r} {e}"))
        }
        "/write" => {
            let (Some(k), Some(v)) = (query(&req, "key"), query(&req, "value")) else {
                return reply(StatusCode::BAD_REQUEST, "key and value required".into());
            };
            // The fsync may take seconds on a busy disk: off the runtime, so
            // the view logger and every other request go on meanwhile.
            let app = app.clone();
            tokio::task::spawn_blocking(move || write(&app, k, v))
                .await
                .unwrap_or_else(|e| reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        "/api-credential" => match std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/token") {
            Ok(token) => reply(StatusCode::OK, token),
            Err(_) => reply(StatusCode::NOT_FOUND, "none".into()),
        },
        "/read" => match query(&req, "key").and_then(|k| app.store.lock().unwrap().get(&k).cloned()) {
            Some(v) => reply(StatusCode::OK, v),
            None => reply(StatusCode::NOT_FOUND, String::new()),
        },
        _ => reply(StatusCode::NOT_FOUND, String::new()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut run_dir = PathBuf::from("/var/run/hapair");
    let mut data_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--run-dir" => run_dir = args.next().expect("--run-dir DIR").into(),
            "--data-dir" => data_dir = Some(PathBuf::from(args.next().expect("--data-dir DIR"))),
            other => panic!("unknown argument {other}"),
        }
    }
    let data_dir = data_dir.filter(|d| d.is_dir());
    let member = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let started = std::time::SystemTime::now();
    let app = Arc::new(App { member, started, run_dir, data_dir, store: Mutex::default() });
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    // Its own thread: nothing the requests do (a slow fsync) may hold up
    // the lines the tests read the application's view from.
    // Should it ever end, the process ends with it: an application that
    // stopped reporting its view would read to the tests as one that took
    // itself for active until its deadline.
    let viewer = app.clone();
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log_views(&viewer)));
        eprintln!("the view logger ended");
        std::process::exit(70);
    });
    // Leave on SIGTERM as a well-behaved application does; without it the
    // kubelet waits out the whole grace period before it kills us.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = term.recv() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move {
                    let mut r = handle(&app, req).await;
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&app.member) {
                        r.headers_mut().insert("x-hapair-member", v);
                    }
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
