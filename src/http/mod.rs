//! The small HTTP layer the agents speak: requests over mTLS (or plain
//! HTTP for probes and the localhost role endpoint), bounded in time and
//! size so a slow or misbehaving peer cannot stall or flood us. A call opens
//! its own connection; a caller that asks the same agent again and again
//! keeps one open with [`Kept`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

mod kept;
pub use kept::Kept;
#[cfg(test)]
pub(crate) mod testing;

/// Largest response body accepted from an agent.
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("timed out")]
    Timeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("response body too large or unreadable")]
    Body,
    #[error("status {0}")]
    Status(StatusCode),
    #[error("malformed response: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("connection: {0}")]
    Io(std::io::Error),
    #[error("malformed HTTP answer: {0}")]
    Protocol(String),
}

/// How long a connection to an agent (TCP and TLS handshakes) may take.
/// Agents share a pod network: a handshake that takes longer is lost, and
/// waiting on it costs more than starting again. Unbounded, a connect begun
/// while the peer was cut off waited for the kernel's next SYN retry — up to
/// 30 s after the link came back (measured: a standby 25 s late catching up
/// after a 40 s cut).
pub const CONNECT: Duration = Duration::from_secs(2);

/// How to reach one agent.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub tls: Arc<ClientConfig>,
}

/// One request to an agent over mTLS, within `timeout` end to end.
pub async fn call(target: &Target, method: Method, path: &str, timeout: Duration) -> Result<Bytes, CallError> {
    call_limited(target, method, path, timeout, MAX_BODY).await
}

/// [`call`] accepting a body of up to `limit` bytes, on a connection of its
/// own. The request goes once, so this is safe for requests that must not
/// be sent twice.
pub async fn call_limited(
    target: &Target,
    method: Method,
    path: &str,
    timeout: Duration,
    limit: usize,
) -> Result<Bytes, CallError> {
    tokio::time::timeout(timeout, async {
        let resp = send_with(target, method, path, &[]).await?;
        read_body(resp, limit).await
    })
    .await
    .unwrap_or(Err(CallError::Timeout))
}

/// The whole body of an answer, of up to `limit` bytes; an answer that is
/// not a success is an error once its body is read.
async fn read_body(resp: Response<Incoming>, limit: usize) -> Result<Bytes, CallError> {
    let status = resp.status();
    let body = Limited::new(resp.into_body(), limit).collect().await.map_err(|_| CallError::Body)?.to_bytes();
    if !status.is_success() {
        return Err(CallError::Status(status));
    }
    Ok(body)
}

async fn send_with(
    target: &Target,
    method: Method,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Result<Response<Incoming>, CallError> {
    let (mut sender, conn) = connect(target).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(request(method, path, headers)?).await?)
}

/// A new mTLS connection to `target`, within [`CONNECT`].
async fn tls_connect(target: &Target) -> Result<tokio_rustls::client::TlsStream<TcpStream>, CallError> {
    tokio::time::timeout(CONNECT, async {
        let tcp = TcpStream::connect(target.addr).await.map_err(CallError::Connect)?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(target.tls.clone()).connect(target.server_name.clone(), tcp).await.map_err(CallError::Tls)
    })
    .await
    .map_err(|_| CallError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "no connection within 2 s")))?
}

/// A new mTLS connection to `target` for hyper's client: its sender, and
/// the future that drives it (to be spawned; it ends with the connection).
async fn connect(
    target: &Target,
) -> Result<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, impl Future<Output = ()> + Send + use<>), CallError>
{
    let tls = tls_connect(target).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    Ok((sender, async move {
        let _ = conn.await;
    }))
}

fn request(
    method: Method,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Result<Request<Full<Bytes>>, CallError> {
    let mut req = Request::builder().method(method).uri(path).header(hyper::header::HOST, "agent");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.body(Full::new(Bytes::new()))?)
}

/// A streamed answer: its headers, its body chunk by chunk, and once the
/// body has ended, the trailers the sender put after it (if any).
pub struct Streamed<S> {
    pub headers: HeaderMap,
    pub body: S,
    pub trailers: Arc<std::sync::Mutex<Option<HeaderMap>>>,
}

/// A GET whose body is streamed: the headers must come within `timeout`,
/// then each chunk within `idle` of the one before, so a large file may
/// take as long as it needs while a stalled peer is dropped. Asks for
/// trailers (`TE: trailers`), which land in [`Streamed::trailers`].
pub async fn stream(
    target: &Target,
    path: &str,
    timeout: Duration,
    idle: Duration,
) -> Result<Streamed<impl Stream<Item = Result<Bytes, CallError>> + Unpin + use<>>, CallError> {
    let resp = tokio::time::timeout(timeout, send_with(target, Method::GET, path, &[("te", "trailers")]))
        .await
        .unwrap_or(Err(CallError::Timeout))?;
    if !resp.status().is_success() {
        return Err(CallError::Status(resp.status()));
    }
    let headers = resp.headers().clone();
    let trailers = Arc::new(std::sync::Mutex::new(None));
    let slot = trailers.clone();
    let body = resp.into_body();
    let body = Box::pin(futures::stream::unfold(Some(body), move |body| {
        let slot = slot.clone();
        async move {
            let mut body = body?;
            loop {
                match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => return Some((Err(CallError::Timeout), None)),
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => return Some((Err(CallError::Http(e)), None)),
                    Ok(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => return Some((Ok(data), Some(body))),
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
                            }
                        }
                    },
                }
            }
        }
    }));
    Ok(Streamed { headers, body, trailers })
}

/// A GET whose answer is JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    target: &Target,
    path: &str,
    timeout: Duration,
) -> Result<T, CallError> {
    let body = call(target, Method::GET, path, timeout).await?;
    Ok(serde_json::from_slice(&body)?)
}

pub type Body = BoxBody<Bytes, std::io::Error>;
pub type Reply = Response<Body>;

pub fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// A streamed answer that may end with trailers (sent only to a client
/// that asked for them with `TE: trailers`).
pub fn frames_reply<S>(frames: S) -> Reply
where
    S: Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync + 'static,
{
    Response::new(BodyExt::boxed(StreamBody::new(frames)))
}

pub fn json_reply<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = reply(StatusCode::OK, body);
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("static header"));
            r
        }
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A registry's metrics in Prometheus's text format, labelled as such:
/// Prometheus 3 refuses to scrape an answer without a `Content-Type`.
pub fn metrics_reply(registry: &prometheus::Registry) -> Reply {
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = prometheus::Encoder::encode(&encoder, &registry.gather(), &mut body) {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let mut r = reply(StatusCode::OK, body);
    let kind =
        prometheus::Encoder::format_type(&encoder).parse().expect("the encoder's content type is a header value");
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, kind);
    r
}

/// Serves `handler` on `listener`, over TLS when `tls` is set. The handler
/// gets the peer address (for loopback-only endpoints). Runs until the
/// listener fails; each connection is served on its own task with a
/// deadline of `deadline` (long enough for the largest file the port
/// streams). The connections belong to this future: dropped, it ends them
/// too, so an agent that stops (one of many in a process) answers nobody
/// on a connection kept alive from before.
pub async fn serve<H, F>(listener: TcpListener, tls: Option<TlsAcceptor>, deadline: Duration, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::<()>::new();
    loop {
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let handler = handler.clone();
        connections.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req, peer).await) }
            });
            let serve = async {
                match tls {
                    Some(acceptor) => {
                        // A client without a certificate from the pair's CA fails here.
                        let Ok(stream) = acceptor.accept(tcp).await else { return };
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                    None => {
                        let _ =
                            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            };
            let _ = tokio::time::timeout(deadline, serve).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_answered_as_prometheus_text_with_their_content_type() {
        let registry = prometheus::Registry::new();
        let g = prometheus::IntGauge::new("hapair_test_gauge", "a gauge").unwrap();
        registry.register(Box::new(g.clone())).unwrap();
        g.set(7);
        let r = metrics_reply(&registry);
        assert_eq!(r.status(), StatusCode::OK);
        // Prometheus 3 refuses a scrape without it.
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], "text/plain; version=0.0.4");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("hapair_test_gauge 7"), "{body:?}");
    }

    #[tokio::test]
    async fn a_handshake_that_never_completes_fails_at_the_connect_bound_not_the_call_timeout() {
        let m = crate::tls::generate_pair_material("db", "prod", crate::tls::DEFAULT_LEAF_LIFETIME_SECONDS).unwrap();
        let id = crate::tls::Identity {
            ca: m[crate::tls::CA_CERT].clone(),
            cert: m[crate::tls::CLIENT_CERT].clone(),
            key: m[crate::tls::CLIENT_KEY].clone(),
        };
        // The kernel completes the TCP handshake into the backlog; nothing
        // ever answers the TLS hello, as with a peer whose link drops packets.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target {
            addr: silent.local_addr().unwrap(),
            server_name: crate::tls::server_name("primary.db.prod").unwrap(),
            tls: crate::tls::client_config(&id).unwrap(),
        };
        let started = std::time::Instant::now();
        let r = call(&target, Method::GET, "/v1/status", Duration::from_secs(30)).await;
        assert!(matches!(r, Err(CallError::Connect(_))), "{r:?}");
        let took = started.elapsed();
        assert!(took >= CONNECT && took < CONNECT + Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test]
    async fn dropping_the_server_ends_its_kept_alive_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = |_req: Request<Incoming>, _peer: SocketAddr| async { reply(hyper::StatusCode::OK, "up") };
        let server = tokio::spawn(serve(listener, None, Duration::from_secs(60), handler));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ask = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        conn.write_all(ask).await.unwrap();
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200"), "served while running");
        server.abort();
        let _ = server.await;
        // The connection kept alive from before is closed, not served on.
        let _ = conn.write_all(ask).await;
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "answered after the server was dropped: {}", String::from_utf8_lossy(&buf[..n]));
    }
}
