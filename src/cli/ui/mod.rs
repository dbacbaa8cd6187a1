//! `kubectl hapair ui`: the appliances' Health Monitor page, served on the
//! user's own machine. It binds to the loopback address only and acts with
//! the user's kubeconfig, so it adds no server to the cluster and no
//! permission: what the user may read and patch is what the page may.
//!
//! - `GET /` the page; `GET /api/stream` its updates (server-sent events,
//!   from watches on the pairs and their Events); `GET /api/snapshot` the
//!   same once;
//! - `POST /api/action` writes the request the plugin writes, after the
//!   same check the page made (an action not possible now is refused with
//!   the reason);
//! - `GET /api/logs` the operator's and both agents' logs for a pair, as
//!   one download (the manual's "Download log files").
//!
//! A page on another site cannot drive it: every `/api` call needs the
//! token printed with the address (a new one per start), and a request
//! whose `Host` is not the loopback address is refused (DNS rebinding).

mod logs;
pub mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, StatusCode};
use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::run::{CliError, request, set_spec};
use crate::api::HighAvailabilityPair;
use crate::http::{Reply, frames_reply, json_reply, reply};

const PAGE: &str = include_str!("page.html");

/// What the page shows: one pair, or every pair of a namespace or of all
/// the namespaces the user may list.
#[derive(Clone, Debug)]
pub struct Scope {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub pair: Option<String>,
}

struct Ui {
    client: Client,
    scope: Scope,
    token: String,
    address: SocketAddr,
    operator_namespace: String,
    snapshot: watch::Receiver<Arc<String>>,
}

/// Serves the page until interrupted; prints its address (with the token)
/// on standard error first.
pub async fn serve(client: Client, scope: Scope, port: u16, operator_namespace: String) -> Result<String, CliError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| CliError::Config(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let address = listener.local_addr().map_err(|e| CliError::Config(e.to_string()))?;
    let token = token()?;
    let (tx, rx) = watch::channel(Arc::new(String::from("{}")));
    // The first picture before the address is given out: a wrong namespace
    // or a missing permission is an error now, not a blank page.
    let pairs_api = pairs_api(&client, &scope);
    let listed = pairs_api.list(&Default::default()).await.map_err(|e| CliError::Api(e.to_string()))?;
    if let Some(name) = &scope.pair
        && !listed.items.iter().any(|p| p.name_any() == *name)
    {
        return Err(CliError::NotFound { name: name.clone(), namespace: scope.namespace.clone().unwrap_or_default() });
    }
    tokio::spawn(follow(client.clone(), scope.clone(), tx));
    let ui = Arc::new(Ui { client, scope, token: token.clone(), address, operator_namespace, snapshot: rx });
    eprintln!("Health Monitor: http://{address}/?token={token}");
    eprintln!("(bound to this machine only; acting as your kubeconfig's user; Ctrl-C stops it)");
    let server = crate::http::serve(listener, None, Duration::from_secs(24 * 3600), move |req, _| {
        let ui = ui.clone();
        async move { route(&ui, req).await }
    });
    tokio::select! {
        _ = server => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok("Health Monitor stopped".into())
}

/// A fresh token from the system's random source.
fn token() -> Result<String, CliError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CliError::Config("the system's random source failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn pairs_api(client: &Client, scope: &Scope) -> Api<HighAvailabilityPair> {
    match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Keeps the snapshot current from watches on the pairs and their Events.
async fn follow(client: Client, scope: Scope, tx: watch::Sender<Arc<String>>) {
    let (pairs, pair_writer) = reflector::store::<HighAvailabilityPair>();
    let (events, event_writer) = reflector::store::<Event>();
    let mut pair_config = watcher::Config::default();
    if let Some(name) = &scope.pair {
        pair_config = pair_config.fields(&format!("metadata.name={name}"));
    }
    let mut event_fields = "involvedObject.kind=HighAvailabilityPair".to_string();
    if let Some(name) = &scope.pair {
        event_fields.push_str(&format!(",involvedObject.name={name}"));
    }
    let event_api: Api<Event> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pair_stream = reflector::reflector(pair_writer, watcher::watcher(pairs_api(&client, &scope), pair_config))
        .default_backoff()
        .map(|_| ());
    let event_stream = reflector::reflector(
        event_writer,
        watcher::watcher(event_api, watcher::Config::default().fields(&event_fields)),
    )
    .default_backoff()
    .map(|_| ());
    let mut changes = std::pin::pin!(futures::stream::select(pair_stream, event_stream));
    while changes.next().await.is_some() {
        // Let a burst of changes (a failover writes several) settle into one picture.
        tokio::time::sleep(Duration::from_millis(150)).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(changes.next()) {}
        let picture = view::snapshot(&pairs.state(), &events.state());
        tx.send_replace(Arc::new(picture.to_string()));
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    let q = req.uri().query().unwrap_or_default();
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), percent_decode(v)?)))
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Reply {
    let mut r = json_reply(&json!({"error": why.into()}));
    *r.status_mut() = status;
    r
}

/// The token compared in time independent of where the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(ui: &Ui, req: Request<Incoming>) -> Reply {
    let host = req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let port = ui.address.port();
    if ![format!("127.0.0.1:{port}"), format!("localhost:{port}")].iter().any(|h| h == host) {
        return refuse(StatusCode::FORBIDDEN, "this page answers only on its loopback address");
    }
    let path = req.uri().path().to_string();
    if path == "/" {
        let mut r = reply(StatusCode::OK, PAGE);
        let h = r.headers_mut();
        h.insert(hyper::header::CONTENT_TYPE, "text/html; charset=utf-8".parse().expect("static header"));
        h.insert("content-security-policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'".parse().expect("static header"));
        return r;
    }
    let q = query(&req);
    let given = req
        .headers()
        .get("x-hapair-token")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("token").cloned())
        .unwrap_or_default();
    if !same(&given, &ui.token) {
        return refuse(StatusCode::UNAUTHORIZED, "missing or wrong token: open the address kubectl hapair ui printed");
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/api/snapshot") => {
            let mut r = reply(StatusCode::OK, ui.snapshot.borrow().as_str().to_string());
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("static header"));
            r
        }
        (Method::GET, "/api/stream") => stream(ui),
        (Method::POST, "/api/action") => action(ui, req).await,
        (Method::GET, "/api/logs") => match (q.get("namespace"), q.get("name")) {
            (Some(ns), Some(name)) if in_scope(&ui.scope, ns, name) => {
                let text = logs::collect(&ui.client, ns, name, &ui.operator_namespace).await;
                let mut r = reply(StatusCode::OK, text);
                let h = r.headers_mut();
                h.insert(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
                let file = format!("attachment; filename=\"hapair-{ns}-{name}-logs.txt\"");
                if let Ok(v) = file.parse() {
                    h.insert(hyper::header::CONTENT_DISPOSITION, v);
                }
                r
            }
            _ => refuse(StatusCode::BAD_REQUEST, "namespace= and name= of a pair this page shows are required"),
        },
        _ => refuse(StatusCode::NOT_FOUND, "not found"),
    }
}

fn in_scope(scope: &Scope, ns: &str, name: &str) -> bool {
    scope.namespace.as_deref().is_none_or(|n| n == ns) && scope.pair.as_deref().is_none_or(|p| p == name)
}

/// Server-sent events: the snapshot now and at every change, and a comment
/// every 15 s so that a dead connection is noticed.
fn stream(ui: &Ui) -> Reply {
    let mut rx = ui.snapshot.clone();
    let (tx, mut out) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        loop {
            let picture = rx.borrow_and_update().clone();
            if tx.send(Ok(Frame::data(Bytes::from(format!("data: {picture}\n\n"))))).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() { return; }
                        break;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(15)) => {
                        if tx.send(Ok(Frame::data(Bytes::from_static(b": alive\n\n")))).await.is_err() { return; }
                    }
                }
            }
        }
    });
    let mut r = frames_reply(futures::stream::poll_fn(move |cx| out.poll_recv(cx)));
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, "text/event-stream".parse().expect("static header"));
    h.insert(hyper::header::CACHE_CONTROL, "no-cache".parse().expect("static header"));
    r
}

async fn action(ui: &Ui, req: Request<Incoming>) -> Reply {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the request body is too large"),
    };
    let call: view::Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("not a valid action: {e}")),
    };
    if !in_scope(&ui.scope, &call.namespace, &call.name) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{}/{} is not a pair this page shows", call.namespace, call.name),
        );
    }
    let pairs: Api<HighAvailabilityPair> = Api::namespaced(ui.client.clone(), &call.namespace);
    // Checked against the pair as it is now, not as the page last saw it.
    let pair = match pairs.get(&call.name).await {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, format!("cannot read {}/{}: {e}", call.namespace, call.name)),
    };
    let outcome = match view::write_for(&pair, &call) {
        Err(why) => return refuse(StatusCode::CONFLICT, why),
        Ok(view::Write::Operation(op)) => {
            request(&pairs, &call.namespace, &call.name, op, "the Health Monitor page").await.map(|id| (Some(id), None))
        }
        Ok(view::Write::Spec(fields)) => {
            let said = if call.action == "pause" { "paused" } else { "resumed" };
            set_spec(&pairs, &call.namespace, &call.name, fields, said).await.map(|m| (None, Some(m)))
        }
    };
    match outcome {
        Ok((id, message)) => json_reply(&json!({"id": id, "message": message})),
        Err(e) => refuse(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_garbage_is_dropped() {
        assert_eq!(percent_decode("a%2Fb+c"), Some("a/b c".into()));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        let scope = Scope { namespace: Some("apps".into()), pair: None };
        assert!(in_scope(&scope, "apps", "web") && !in_scope(&scope, "other", "web"));
        let one = Scope { namespace: Some("apps".into()), pair: Some("web".into()) };
        assert!(!in_scope(&one, "apps", "db"));
        assert_eq!(token().unwrap().len(), 32);
        assert_ne!(token().unwrap(), token().unwrap());
    }

    #[test]
    fn the_page_is_whole() {
        assert!(PAGE.starts_with("<!doctype html>"));
        assert!(PAGE.contains("/api/stream") && PAGE.contains("/api/action") && PAGE.contains("/api/logs"));
    }
}
