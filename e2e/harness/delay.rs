//! Answers that arrive late: one pod's connections to the API server go
//! through a proxy on the host that passes what the pod sends at once and
//! holds what the API server answers for a fixed delay, in order, dropping
//! nothing. The machine's kernel has no `netem`; a proxy on the data path is
//! the real-traffic way to delay responses without losing them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::nodes;

/// The host's address on the testbed's network: where the nodes' pods reach
/// the API server, and where the proxy listens.
const HOST_IP: &str = "10.214.0.1";

/// A pod's API traffic delayed until [`DelayedApi::end`] (or drop).
pub struct DelayedApi {
    pod: Pod,
    port: u16,
    task: tokio::task::JoinHandle<()>,
    /// Response bytes the proxy held and passed on.
    pub delayed_bytes: Arc<AtomicU64>,
    ended: bool,
}

/// The API server's address, from the testbed's kubeconfig.
fn api_server() -> SocketAddr {
    let text = std::fs::read_to_string(crate::common::kubeconfig_path()).expect("kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("a server in the kubeconfig")
        .trim_end_matches('/');
    server.parse().unwrap_or_else(|e| panic!("API server address {server:?}: {e}"))
}

impl DelayedApi {
    /// Starts the proxy and routes `pod`'s connections to the API server
    /// through it; its open connections are ended so that the next call
    /// goes through the proxy.
    pub async fn start(pod: Pod, delay: Duration) -> Self {
        let listener = TcpListener::bind((HOST_IP, 0)).await.expect("proxy listens");
        let port = listener.local_addr().unwrap().port();
        let upstream = api_server();
        let delayed_bytes = Arc::new(AtomicU64::new(0));
        let counted = delayed_bytes.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                conns.spawn(relay(down, upstream, delay, counted.clone()));
            }
        });
        set(&pod, port, true);
        DelayedApi { pod, port, task, delayed_bytes, ended: false }
    }

    /// Routes the pod straight to the API server again and ends the
    /// proxied connections (the pod reconnects directly).
    pub fn end(mut self) -> u64 {
        self.ended = true;
        set(&self.pod, self.port, false);
        self.task.abort();
        self.delayed_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for DelayedApi {
    fn drop(&mut self) {
        if !self.ended {
            set(&self.pod, self.port, false);
            self.task.abort();
        }
    }
}

fn set(pod: &Pod, port: u16, on: bool) {
    let n = nodes::node_number(pod).expect("a testbed node").to_string();
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    nodes::testbed(&["node", "via-proxy", &n, &ip, &port.to_string(), if on { "on" } else { "off" }])
        .expect("proxy route set");
}

/// A proxy on this machine's loopback to the API server, whose answers are
/// held `delay` like a pod's above, for a client of this process (a test's
/// own): its port, and the task to abort when done.
pub async fn local(delay: Duration) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("proxy listens");
    let port = listener.local_addr().unwrap().port();
    let upstream = api_server();
    let counted = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((down, _)) = listener.accept().await {
            conns.spawn(relay(down, upstream, delay, counted.clone()));
        }
    });
    (port, task)
}

/// One connection: the pod's bytes go up at once; the server's are held
/// `delay` from when they arrived, then passed on in order.
async fn relay(mut down: TcpStream, upstream: SocketAddr, delay: Duration, counted: Arc<AtomicU64>) {
    let Ok(mut up) = TcpStream::connect(upstream).await else { return };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (mut down_r, mut down_w) = down.split();
    let (mut up_r, mut up_w) = up.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let to_server = tokio::io::copy(&mut down_r, &mut up_w);
    let hold = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
    };
    let pass_on = async {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if down_w.write_all(&bytes).await.is_err() {
                break;
            }
            counted.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
    };
    // Whichever side closes first ends the connection.
    tokio::select! {
        _ = to_server => {}
        _ = async { tokio::join!(hold, pass_on) } => {}
    }
}
