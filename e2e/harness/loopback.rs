//! Plain HTTP/1.1 to the programs a test runs beside the testbed on this
//! host (Prometheus, Alertmanager, chromedriver, the plugin's page): one
//! request per connection, the answer's status and body.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// A port free on the loopback now (the caller's program binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `method path` to `authority` (`host:port`) with `headers` and `body`;
/// `Host` is the authority unless `headers` names one.
pub async fn request(
    authority: &str,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, Bytes), String> {
    let tcp = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("{authority}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", authority);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// A GET of `url` (`http://host:port/path`), given `within` end to end.
pub async fn get(url: &str, within: std::time::Duration) -> Result<(u16, Bytes), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: not http://"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    tokio::time::timeout(within, request(authority, hyper::Method::GET, path, &[], Vec::new()))
        .await
        .map_err(|_| format!("{url}: no answer within {within:?}"))?
}
