//! The agent's endpoints.
//!
//! - mTLS port (clients need a certificate from the pair's CA):
//!   `GET /v1/status[?peer=IP:PORT]` (the operator passes the peer's address,
//!   which the agent then heartbeats), `POST /v1/wake` (re-read the Lease now,
//!   sent by the operator right after it moves the Lease), `POST
//!   /v1/drain?epoch=N` (stop serving but keep the Lease, for a planned
//!   handover), `GET /v1/ping`.
//! - plain probe port: `/healthz`, `/readyz`, `/metrics`, and `GET /v1/role`
//!   for loopback clients only (the application in the same pod).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use prometheus::Encoder;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{Agent, role_word};
use crate::http::{self, Target, json_reply, reply};
use crate::tls::{self, Identity};

pub fn load_identity(dir: &Path) -> Result<Identity, std::io::Error> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    Ok(Identity { ca: read("ca.crt")?, cert: read("tls.crt")?, key: read("tls.key")? })
}

/// Binds both listeners (so a port clash fails the start, not a task later)
/// and returns the future that serves them.
pub async fn start(
    agent: Arc<Agent>,
    id: &Identity,
) -> Result<impl Future<Output = ()> + use<>, Box<dyn std::error::Error>> {
    let acceptor = TlsAcceptor::from(tls::server_config(id)?);
    let secure = TcpListener::bind((agent.config.bind, agent.config.port)).await?;
    let plain = TcpListener::bind((agent.config.bind, agent.config.probe_port)).await?;
    let a = agent.clone();
    let secure = http::serve(secure, Some(acceptor), move |req, _peer| {
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
                (&Method::POST, "/v1/drain") => match query_epoch(req.uri().query()) {
                    Some(epoch) if agent.drain(epoch) => json_reply(&agent.status()),
                    Some(_) => reply(StatusCode::CONFLICT, "not active at that epoch"),
                    None => reply(StatusCode::BAD_REQUEST, "epoch=N required"),
                },
                _ => reply(StatusCode::NOT_FOUND, "not found"),
            }
        }
    });
    let plain = http::serve(plain, None, move |req, peer| {
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
                "/metrics" => {
                    let mut buf = Vec::new();
                    let _ = prometheus::TextEncoder::new().encode(&agent.registry.gather(), &mut buf);
                    reply(StatusCode::OK, buf)
                }
                "/v1/role" if peer.ip().is_loopback() => {
                    let s = agent.lock();
                    json_reply(&serde_json::json!({"role": role_word(s.role), "epoch": s.epoch}))
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

/// `peer=IP:PORT` from a query string; anything else is ignored.
fn query_peer(query: Option<&str>) -> Option<SocketAddr> {
    query?.split('&').find_map(|kv| kv.strip_prefix("peer=")).and_then(|v| v.parse().ok())
}

/// `epoch=N` from a query string.
fn query_epoch(query: Option<&str>) -> Option<i64> {
    query?.split('&').find_map(|kv| kv.strip_prefix("epoch=")).and_then(|v| v.parse().ok())
}

/// Heartbeats the peer every interval and records whether it answers.
pub async fn peer_loop(agent: Arc<Agent>, id: Identity) {
    let Ok(client) = tls::client_config(&id) else { return };
    let peer_member = agent.config.member.peer();
    let Ok(server_name) =
        tls::server_name(&tls::member_server_name(peer_member, &agent.config.pair, &agent.config.namespace))
    else {
        return;
    };
    loop {
        let (peer, interval) = {
            let s = agent.lock();
            (s.peer, s.interval_seconds)
        };
        let tick = Duration::from_secs(interval.max(1) as u64);
        if let Some(addr) = peer {
            let target = Target { addr, server_name: server_name.clone(), tls: client.clone() };
            let ok = http::call(&target, Method::GET, "/v1/ping", tick).await.is_ok();
            agent.lock().peer_reachable = Some(ok);
        }
        tokio::time::sleep(tick).await;
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
