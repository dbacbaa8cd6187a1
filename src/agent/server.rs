//! The agent's endpoints.
//!
//! - mTLS port (clients need a certificate from the pair's CA):
//!   `GET /v1/status[?peer=IP:PORT]` (the operator passes the peer's address,
//!   which the agent then heartbeats), `POST /v1/wake` (re-read the Lease now,
//!   sent by the operator right after it moves the Lease), `POST
//!   /v1/drain?epoch=N` (stop serving but keep the Lease, for a planned
//!   handover), `GET /v1/ping`, `POST /v1/failsafe?epoch=N&ms=M` (the peer
//!   serves at N without the API server: promise not to act as active for M
//!   ms; see [`failsafe`](super::failsafe)).
//! - file sync on the mTLS port: see [`crate::sync::wire`]; plus `POST
//!   /v1/sync/resync?label=..&onlyOnTarget=..&conflict=..&clocksAgree=0|1&dryRun=0|1&full=0|1`
//!   (the operator orders a resync of this member).
//! - plain probe port: `/healthz`, `/readyz`, `/metrics`, and `GET /v1/role`
//!   for loopback clients only (the application in the same pod).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::sync::SyncError;
use super::{Agent, role_word};
use crate::http::{self, json_reply, reply};
use crate::proto::ResyncOrder;
use crate::tls::{self, Identity};
use tracing::{info, warn};

pub fn load_identity(dir: &Path) -> Result<Identity, std::io::Error> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    Ok(Identity { ca: read("ca.crt")?, cert: read("tls.crt")?, key: read("tls.key")? })
}

/// Binds both listeners (so a port clash fails the start, not a task later)
/// and returns the future that serves them.
pub async fn start(
    agent: Arc<Agent>,
    material: &Arc<tls::Material>,
) -> Result<impl Future<Output = ()> + use<>, Box<dyn std::error::Error>> {
    let acceptor = TlsAcceptor::from(material.server_config()?);
    let secure = TcpListener::bind((agent.config.bind, agent.config.port)).await?;
    let plain = TcpListener::bind((agent.config.bind, agent.config.probe_port)).await?;
    let a = agent.clone();
    // Long enough to stream a large file; each chunk has its own idle limit
    // on the receiving side.
    let secure = http::serve(secure, Some(acceptor), Duration::from_secs(6 * 3600), move |req, _peer| {
        let agent = a.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/v1/status") => {
                    if let Some(peer) = query_peer(req.uri().query()) {
                        agent.lock().peer = Some(peer);
                    }
                    json_reply(&agent.status())
                }
                (&Method::POST, "/v1/wake") => {
                    agent.wake.notify_one();
                    reply(StatusCode::ACCEPTED, "")
                }
                (&Method::GET, "/v1/ping") => reply(StatusCode::OK, "pong"),
                (&Method::POST, "/v1/failsafe") => promise(&agent, req.uri().query()),
                (&Method::POST, "/v1/drain") => match query_epoch(req.uri().query()) {
                    Some(epoch) if agent.drain(epoch) => {
                        // The final generation once the volume is quiet; on
                        // its own task, so a caller that gives up waiting
                        // does not leave the drain without it.
                        let a = agent.clone();
                        let settled = tokio::spawn(async move {
                            if let Some(syncer) = &a.syncer {
                                syncer.settle(epoch).await?;
                            }
                            a.mark_drained(epoch);
                            // Reported drained only once the Lease says so
                            // (the renewal the drain woke is usually done).
                            a.await_drain_mark(epoch, Duration::from_secs(1)).await;
                            Ok::<_, std::io::Error>(())
                        });
                        match settled.await {
                            Ok(Ok(())) => json_reply(&agent.status()),
                            Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                        }
                    }
                    Some(_) => reply(StatusCode::CONFLICT, "not active at that epoch"),
                    None => reply(StatusCode::BAD_REQUEST, "epoch=N required"),
                },
                (_, p) if p.starts_with("/v1/sync") => sync_endpoint(&agent, req.method(), p, req.uri().query()).await,
                _ => reply(StatusCode::NOT_FOUND, "not found"),
            }
        }
    });
    let plain = http::serve(plain, None, Duration::from_secs(60), move |req, peer| {
        let agent = agent.clone();
        async move {
            match req.uri().path() {
                "/healthz" => reply(StatusCode::OK, "ok"),
                "/readyz" => {
                    if agent.lock().ready() {
                        reply(StatusCode::OK, "ready")
                    } else {
                        reply(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
                "/metrics" => http::metrics_reply(&agent.registry),
                "/v1/role" if peer.ip().is_loopback() => {
                    let s = agent.lock();
                    let deadline = s.deadline().filter(|_| s.role == crate::api::Role::Active).unwrap_or(0.0);
                    json_reply(&serde_json::json!({"role": role_word(s.role), "epoch": s.epoch, "deadline": deadline}))
                }
                "/v1/role" => reply(StatusCode::FORBIDDEN, "the role endpoint serves only the pod itself"),
                _ => reply(StatusCode::NOT_FOUND, "not found"),
            }
        }
    });
    Ok(async move {
        tokio::join!(secure, plain);
    })
}

async fn sync_endpoint(agent: &Agent, method: &Method, path: &str, query: Option<&str>) -> http::Reply {
    use crate::sync::wire::query_param as param;
    let Some(syncer) = &agent.syncer else {
        return reply(StatusCode::NOT_FOUND, "this pair does not sync files");
    };
    let serving = {
        let s = agent.lock();
        (s.role == crate::api::Role::Active || s.draining_since.is_some()).then_some(s.epoch)
    };
    let refused = |e: SyncError| match e {
        SyncError::Refused(r) => reply(StatusCode::FORBIDDEN, format!("refused: {r}")),
        e => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match (method, path) {
        (&Method::GET, "/v1/sync/manifest") => {
            let Some(epoch) = serving else { return reply(StatusCode::CONFLICT, "not the active member") };
            let Some(dir) = param(query, "dir") else { return reply(StatusCode::BAD_REQUEST, "dir required") };
            let have = param(query, "have").and_then(|h| h.parse().ok());
            match syncer.manifest(&dir, have, epoch).await {
                Ok(m) => json_reply(&m),
                Err(e) => refused(e),
            }
        }
        (&Method::GET, "/v1/sync/file") => {
            let (Some(dir), Some(p)) = (param(query, "dir"), param(query, "path")) else {
                return reply(StatusCode::BAD_REQUEST, "dir and path required");
            };
            match syncer.open_file(&dir, &p) {
                Ok(f) => super::sync::file_reply(f)
                    .unwrap_or_else(|e| reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
                Err(SyncError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    reply(StatusCode::NOT_FOUND, "no such file")
                }
                Err(e) => refused(e),
            }
        }
        (&Method::POST, "/v1/sync/take") => {
            if serving.is_none() {
                return reply(StatusCode::CONFLICT, "not the active member");
            }
            let num = |k: &str| param(query, k).and_then(|v| v.parse::<i64>().ok());
            let (Some(dir), Some(p), Some(size), Some(hash), Some(mtime), Some(mode)) = (
                param(query, "dir"),
                param(query, "path"),
                num("size"),
                param(query, "hash"),
                num("mtime"),
                num("mode"),
            ) else {
                return reply(StatusCode::BAD_REQUEST, "dir, path, size, hash, mtime and mode required");
            };
            let Some(peer) = agent.peer_target() else { return reply(StatusCode::CONFLICT, "peer unknown") };
            let entry = crate::sync::Entry { size: size.max(0) as u64, mtime, mode: (mode & 0o777) as u32, hash };
            let label = param(query, "label").unwrap_or_else(|| "resync".into());
            if crate::sync::path::check(&label).is_err() || label.contains('/') {
                return reply(StatusCode::BAD_REQUEST, "bad label");
            }
            match syncer.take(&peer, &dir, &p, &entry, param(query, "quarantine").as_deref() == Some("1"), &label).await
            {
                Ok(n) => reply(StatusCode::OK, n.to_string()),
                Err(e) => refused(e),
            }
        }
        (&Method::POST, "/v1/sync") if param(query, "wait").as_deref() == Some("1") && serving.is_none() => {
            // Pull everything now and answer with where this member then
            // stands (a switchover waits on it); a long pull goes on after
            // the answer.
            let Some(peer) = agent.peer_target() else { return reply(StatusCode::CONFLICT, "peer unknown") };
            let s = syncer.clone();
            let round = tokio::spawn(async move { s.pull_round(&peer, true).await });
            let _ = tokio::time::timeout(Duration::from_secs(5), round).await;
            json_reply(&agent.status())
        }
        (&Method::POST, "/v1/sync") => {
            syncer.wake.notify_one();
            reply(StatusCode::ACCEPTED, "")
        }
        (&Method::POST, "/v1/sync/resync") => match ResyncOrder::from_query(query) {
            Some(order) => match syncer.set_order(order) {
                Ok(()) => reply(StatusCode::ACCEPTED, ""),
                Err(why) => reply(StatusCode::CONFLICT, why),
            },
            None => reply(StatusCode::BAD_REQUEST, "label, onlyOnTarget and conflict required"),
        },
        _ => reply(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The peer asks this member not to act as active for a while: it serves
/// at `epoch` and cannot reach the API server. Answers the milliseconds
/// granted, or why not.
fn promise(agent: &Agent, query: Option<&str>) -> http::Reply {
    let counted = |result: &str| agent.metrics.failsafe_promises.with_label_values(&[result]).inc();
    let ms = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms="))).and_then(|v| v.parse::<u64>().ok());
    let (Some(epoch), Some(ms)) = (query_epoch(query), ms) else {
        counted("malformed");
        return reply(StatusCode::BAD_REQUEST, "epoch=N and ms=M required");
    };
    let mut s = agent.lock();
    match super::failsafe::grant(&mut s, epoch, Duration::from_millis(ms), std::time::Instant::now()) {
        Ok(granted) => {
            counted("granted");
            tracing::debug!(epoch, ms = granted.as_millis() as u64, "promised the peer not to act as active");
            reply(StatusCode::OK, granted.as_millis().to_string())
        }
        Err(why) => {
            counted("refused");
            reply(StatusCode::CONFLICT, why.to_string())
        }
    }
}

/// `peer=IP:PORT` from a query string; anything else is ignored.
fn query_peer(query: Option<&str>) -> Option<SocketAddr> {
    query?.split('&').find_map(|kv| kv.strip_prefix("peer=")).and_then(|v| v.parse().ok())
}

/// `epoch=N` from a query string.
fn query_epoch(query: Option<&str>) -> Option<i64> {
    query?.split('&').find_map(|kv| kv.strip_prefix("epoch=")).and_then(|v| v.parse().ok())
}

/// Heartbeats the peer every interval and records whether it answers.
pub async fn peer_loop(agent: Arc<Agent>) {
    // On one connection kept open to the peer (see `http::Kept`).
    let mut kept = http::Kept::default();
    loop {
        let interval = agent.lock().interval_seconds;
        let tick = Duration::from_secs(interval.max(1) as u64);
        if let Some(target) = agent.peer_target() {
            let ok = kept.get(&target, "/v1/ping", tick, http::MAX_BODY).await.is_ok();
            agent.lock().peer_reachable = Some(ok);
        }
        tokio::time::sleep(tick).await;
    }
}

/// How often the mounted TLS Secret is read again. The kubelet brings a
/// changed Secret into the volume within about a minute; this adds at most
/// its own period.
const TLS_RELOAD: Duration = Duration::from_secs(10);

/// Follows the pair's TLS Secret as the kubelet updates the mounted files:
/// a renewed certificate or a new CA bundle is used from the next
/// handshake, with no restart and no failover. Files caught mid-update or
/// that do not parse leave the material in use as it was (and say why).
pub async fn tls_reload_loop(agent: Arc<Agent>) {
    let Some(material) = agent.tls.clone() else { return };
    let mut told: Option<String> = None;
    loop {
        tokio::time::sleep(TLS_RELOAD).await;
        let outcome = load_identity(&agent.config.tls_dir)
            .map_err(|e| e.to_string())
            .and_then(|id| material.replace(&id).map_err(|e| e.to_string()));
        match outcome {
            Ok(true) => {
                let not_after = tls::not_after(&material.identity().cert);
                info!(?not_after, "TLS certificates reloaded");
                told = None;
            }
            Ok(false) => told = None,
            Err(why) if told.as_ref() != Some(&why) => {
                warn!(error = %why, "cannot reload the TLS certificates; keeping those in use");
                told = Some(why);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_peer_address_is_taken() {
        assert_eq!(query_peer(Some("peer=10.0.0.5:7443")), Some("10.0.0.5:7443".parse().unwrap()));
        assert_eq!(query_peer(Some("x=1&peer=[::1]:7443")), Some("[::1]:7443".parse().unwrap()));
        assert_eq!(query_peer(Some("peer=garbage")), None);
        assert_eq!(query_peer(None), None);
    }
}
