//! The small HTTP layer the agents speak: one request per connection over
//! mTLS (or plain HTTP for probes and the localhost role endpoint), bounded
//! in time and size so a slow or misbehaving peer cannot stall or flood us.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

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
}

/// How to reach one agent.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub tls: Arc<ClientConfig>,
}

/// One request to an agent over mTLS, within `timeout` end to end.
pub async fn call(target: &Target, method: Method, path: &str, timeout: Duration) -> Result<Bytes, CallError> {
    tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(target.addr).await.map_err(CallError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(target.tls.clone())
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(CallError::Tls)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "agent")
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|_| CallError::Body)?.to_bytes();
        if !status.is_success() {
            return Err(CallError::Status(status));
        }
        Ok(body)
    })
    .await
    .unwrap_or(Err(CallError::Timeout))
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

pub type Reply = Response<Full<Bytes>>;

pub fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
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

/// Serves `handler` on `listener`, over TLS when `tls` is set. The handler
/// gets the peer address (for loopback-only endpoints). Runs until the
/// listener fails; each connection is served on its own task with a deadline.
pub async fn serve<H, F>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
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
            let _ = tokio::time::timeout(Duration::from_secs(60), serve).await;
        });
    }
}
