//! A connection kept open to one agent between calls, for a caller that
//! asks the same agent again and again: the operator's heartbeat poll of
//! every member, an agent's heartbeat to its peer. A new mTLS handshake per
//! call (two signatures and a certificate check on each side) was most of
//! what a poll cost both ends, and with a thousand pairs it was most of
//! the operator's CPU.
//!
//! What a kept connection must not change is what an answer means: each
//! call still waits for a fresh answer from the agent's process within its
//! timeout, so a frozen or cut-off agent still misses its heartbeat. A call
//! that fails in any way drops the connection, so an answer half read when
//! a timeout struck never passes for the next call's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::Method;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::{CallError, Target, connect, read_body, request};

/// The connection one caller keeps to one agent (none until the first call).
#[derive(Default)]
pub struct Kept {
    open: Option<Open>,
    opened: u64,
    read_buf: Option<usize>,
}

/// What a heartbeat connection reads at a time: an agent's status is well
/// under this. hyper's adaptive buffer starts at 8 KiB and grows, and the
/// operator keeps two connections per pair open for good.
const HEARTBEAT_READ: usize = 4096;

struct Open {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Open {
    fn drop(&mut self) {
        // The task reading the connection ends with it, even when the agent
        // went silent in the middle of an answer.
        self.driver.abort();
    }
}

impl Kept {
    /// For heartbeats: small answers, read into a small buffer (larger
    /// ones are still read whole, a buffer at a time).
    pub fn heartbeat() -> Self {
        Kept { read_buf: Some(HEARTBEAT_READ), ..Default::default() }
    }

    /// `method path` to `target` within `timeout` end to end, with a body
    /// of up to `limit` bytes: on the kept connection when it goes to the
    /// same agent (address, name and TLS configuration) and is still open,
    /// else on a new one. When the kept connection fails before any answer
    /// (the agent closed it or restarted), the request goes once more on a
    /// new connection — so only for requests that may be sent twice.
    pub async fn call(
        &mut self,
        target: &Target,
        method: Method,
        path: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, CallError> {
        tokio::time::timeout(timeout, self.exchange(target, method, path, limit))
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// A GET whose answer is JSON, as [`Kept::call`].
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        target: &Target,
        path: &str,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let body = self.call(target, Method::GET, path, timeout, super::MAX_BODY).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Connections opened so far (the first one included).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    async fn exchange(
        &mut self,
        target: &Target,
        method: Method,
        path: &str,
        limit: usize,
    ) -> Result<Bytes, CallError> {
        // Taken out for the call: put back only once it answered in full.
        let kept = self.open.take().filter(|o| {
            o.addr == target.addr
                && o.server_name == target.server_name
                && Arc::ptr_eq(&o.tls, &target.tls)
                && !o.sender.is_closed()
        });
        if let Some(mut open) = kept {
            let sent = match open.sender.ready().await {
                Ok(()) => Some(open.sender.send_request(request(method.clone(), path, &[])?).await),
                Err(_) => None,
            };
            if let Some(Ok(resp)) = sent {
                let body = read_body(resp, limit).await?;
                self.open = Some(open);
                return Ok(body);
            }
            // Nothing came back on it: a new connection below.
        }
        let (sender, driver) = connect(target, self.read_buf).await?;
        self.opened += 1;
        let mut open = Open {
            addr: target.addr,
            server_name: target.server_name.clone(),
            tls: target.tls.clone(),
            sender,
            driver: tokio::spawn(driver).abort_handle(),
        };
        let resp = open.sender.send_request(request(method, path, &[])?).await?;
        let body = read_body(resp, limit).await?;
        self.open = Some(open);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use hyper::Request;
    use hyper::body::Incoming;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::api::Member;
    use crate::http::{reply, serve};
    use crate::tls;

    /// The primary's server and the operator's client of one pair's
    /// material.
    fn material() -> (TlsAcceptor, Target) {
        let m = tls::generate_pair_material("db", "prod", tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        let (cert, key) = tls::member_cert_key(Member::Primary);
        let server = tls::Identity { ca: m[tls::CA_CERT].clone(), cert: m[&cert].clone(), key: m[&key].clone() };
        let client = tls::Identity {
            ca: m[tls::CA_CERT].clone(),
            cert: m[tls::CLIENT_CERT].clone(),
            key: m[tls::CLIENT_KEY].clone(),
        };
        let target = Target {
            addr: "127.0.0.1:1".parse().unwrap(),
            server_name: tls::server_name(&tls::member_server_name(Member::Primary, "db", "prod")).unwrap(),
            tls: tls::client_config(&client).unwrap(),
        };
        (TlsAcceptor::from(tls::server_config(&server).unwrap()), target)
    }

    /// An mTLS server on `listener` that answers each request with the
    /// client's address (one per connection) and, when `stall` says so,
    /// never answers at all; the addresses it served, in order.
    fn start(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        stall: Arc<std::sync::atomic::AtomicBool>,
    ) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<SocketAddr>>>) {
        let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let log = seen.clone();
        let handler = move |_req: Request<Incoming>, peer: SocketAddr| {
            let (log, stall) = (log.clone(), stall.clone());
            async move {
                if stall.load(std::sync::atomic::Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                log.lock().unwrap().push(peer);
                reply(hyper::StatusCode::OK, peer.to_string())
            }
        };
        (tokio::spawn(serve(listener, Some(acceptor), Duration::from_secs(60), handler)), seen)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn calls_to_one_agent_share_one_connection_and_a_new_agent_gets_a_new_one() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        let (_server, seen) = start(listener, acceptor.clone(), Arc::default());
        let mut kept = Kept::default();
        for _ in 0..5 {
            kept.call(&target, Method::GET, "/v1/status", T, 1024).await.unwrap();
        }
        let seen_now = seen.lock().unwrap().clone();
        assert_eq!(seen_now.len(), 5);
        assert!(seen_now.iter().all(|p| *p == seen_now[0]), "one client connection: {seen_now:?}");
        assert_eq!(kept.opened(), 1);

        // Another agent (a new pod's address): a new connection to it.
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut moved = target.clone();
        moved.addr = other.local_addr().unwrap();
        let (_other_server, other_seen) = start(other, acceptor, Arc::default());
        kept.call(&moved, Method::GET, "/v1/status", T, 1024).await.unwrap();
        assert_eq!((kept.opened(), other_seen.lock().unwrap().len()), (2, 1));
    }

    #[tokio::test]
    async fn a_heartbeat_connection_reads_answers_larger_than_its_buffer_whole_and_stays_open() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        // Answers of 100 bytes to 5 read buffers, each byte telling its place.
        let handler = |req: Request<Incoming>, _peer: SocketAddr| async move {
            let n: usize = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
            reply(hyper::StatusCode::OK, (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect::<String>())
        };
        let _server = tokio::spawn(serve(listener, Some(acceptor), Duration::from_secs(60), handler));
        let mut kept = Kept::heartbeat();
        for n in [100, HEARTBEAT_READ - 1, HEARTBEAT_READ + 1, 5 * HEARTBEAT_READ, 100] {
            let body = kept.call(&target, Method::GET, &format!("/v1/status?{n}"), T, 1 << 20).await.unwrap();
            assert_eq!(body.len(), n);
            assert!(body.iter().enumerate().all(|(i, b)| *b == b'a' + (i % 26) as u8), "{n} bytes in order");
        }
        assert_eq!(kept.opened(), 1, "one connection for every answer");
    }

    #[tokio::test]
    async fn an_agent_that_restarted_is_asked_again_on_a_new_connection_without_a_miss() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        let (server, _) = start(listener, acceptor.clone(), Arc::default());
        let mut kept = Kept::default();
        kept.call(&target, Method::GET, "/v1/status", T, 1024).await.unwrap();
        // The agent's process ends (its connections with it) and a new one
        // listens on the same address.
        server.abort();
        let _ = server.await;
        let listener = TcpListener::bind(target.addr).await.unwrap();
        let (_server, seen) = start(listener, acceptor, Arc::default());
        kept.call(&target, Method::GET, "/v1/status", T, 1024).await.expect("answered by the new process");
        assert_eq!((kept.opened(), seen.lock().unwrap().len()), (2, 1));
    }

    #[tokio::test]
    async fn an_agent_that_stops_answering_is_missed_and_its_connection_dropped() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (_server, seen) = start(listener, acceptor, stall.clone());
        let mut kept = Kept::default();
        kept.call(&target, Method::GET, "/v1/status", T, 1024).await.unwrap();
        // Frozen: the connection stays up, no answer comes — a miss at the
        // timeout, not a wait on the open connection.
        stall.store(true, std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        let r = kept.call(&target, Method::GET, "/v1/status", Duration::from_millis(300), 1024).await;
        assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Thawed: the next answer comes on a new connection, never the
        // late answer to the call that timed out.
        stall.store(false, std::sync::atomic::Ordering::SeqCst);
        let body = kept.call(&target, Method::GET, "/v1/status", T, 1024).await.unwrap();
        assert_eq!(kept.opened(), 2);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(String::from_utf8_lossy(&body), seen.last().unwrap().to_string());
        assert_ne!(seen.first(), seen.last(), "a new client connection");
    }
}
