//! The operator's own HTTP endpoints: /healthz, /readyz and /metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use tracing::warn;

use crate::http::{self, reply};

pub async fn serve_health(addr: SocketAddr, ready: Arc<AtomicBool>) {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            http::serve(l, None, Duration::from_secs(60), move |req, _| {
                let ready = ready.clone();
                async move {
                    match req.uri().path() {
                        "/healthz" => reply(StatusCode::OK, "ok"),
                        "/readyz" if ready.load(Ordering::SeqCst) => reply(StatusCode::OK, "ready"),
                        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "starting"),
                        _ => reply(StatusCode::NOT_FOUND, "not found"),
                    }
                }
            })
            .await
        }
        Err(e) => warn!(%addr, error = %e, "cannot serve health endpoints"),
    }
}

pub async fn serve_metrics(addr: SocketAddr, registry: prometheus::Registry) {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            http::serve(l, None, Duration::from_secs(60), move |req, _| {
                let registry = registry.clone();
                async move {
                    if req.uri().path() != "/metrics" {
                        return reply(StatusCode::NOT_FOUND, "not found");
                    }
                    http::metrics_reply(&registry)
                }
            })
            .await
        }
        Err(e) => warn!(%addr, error = %e, "cannot serve metrics"),
    }
}
