//! The test client: it reaches a pair's Service through its ClusterIP from
//! the testbed's client network namespace, where only kube-proxy's rules know
//! where that address leads, over keep-alive HTTP/1.1 connections as real
//! clients use — so conntrack keeps an established connection on the member
//! it first reached, exactly as it would for a user. Every answer says which
//! member gave it (`x-hapair-member`, the pod's hostname) and at which epoch.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The client's network namespace, made by the testbed (`nodes.sh`).
pub const CLIENT_NETNS: &str = "/var/run/netns/hapair-client";

/// How long one request may take, connection included.
const DEADLINE: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub code: u16,
    pub body: String,
    /// The member whose application answered (`primary`, `secondary`).
    pub member: String,
}

/// Opens a TCP connection from inside the client's network namespace. The
/// socket is made on a thread of its own that enters the namespace and then
/// ends, so no other task of the test ever runs there; the socket keeps the
/// namespace it was made in.
async fn connect(addr: SocketAddr, netns: &'static str) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = (|| -> std::io::Result<std::net::TcpStream> {
            let ns = std::fs::File::open(netns)?;
            rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
            let s = std::net::TcpStream::connect_timeout(&addr, DEADLINE)?;
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            Ok(s)
        })();
        let _ = tx.send(made);
    });
    let s = rx.await.map_err(|_| std::io::Error::other("connect thread died"))??;
    TcpStream::from_std(s)
}

/// One keep-alive connection to a Service's ClusterIP, opened on first use
/// and again after any failure or any answer other than 200 (a client that
/// sees its server refuse drops the connection and dials again, which is
/// when kube-proxy may send it elsewhere).
pub struct VipConnection {
    addr: SocketAddr,
    netns: &'static str,
    conn: Option<BufReader<TcpStream>>,
}

impl VipConnection {
    pub fn new(addr: SocketAddr) -> Self {
        Self::from_netns(addr, CLIENT_NETNS)
    }

    /// The same client in another network namespace (the benchmark's
    /// peers have their own).
    pub fn from_netns(addr: SocketAddr, netns: &'static str) -> Self {
        VipConnection { addr, netns, conn: None }
    }

    pub async fn request(&mut self, path: &str) -> Result<Answer, String> {
        let result = tokio::time::timeout(DEADLINE, self.exchange(path))
            .await
            .map_err(|_| "timeout".to_string())
            .and_then(|r| r);
        if !matches!(result, Ok(Answer { code: 200, .. })) {
            self.conn = None;
        }
        result
    }

    async fn exchange(&mut self, path: &str) -> Result<Answer, String> {
        if self.conn.is_none() {
            self.conn =
                Some(BufReader::new(connect(self.addr, self.netns).await.map_err(|e| format!("connect: {e}"))?));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let method = if path.starts_with("/write") { "POST" } else { "GET" };
        conn.get_mut()
            .write_all(format!("{method} {path} HTTP/1.1\r\nhost: vip\r\ncontent-length: 0\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut status = String::new();
        if conn.read_line(&mut status).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("connection closed".into());
        }
        let code = status.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status {status:?}"))?;
        let (mut length, mut member) = (0usize, String::new());
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().map_err(|_| "bad content-length")?,
                    "x-hapair-member" => member = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).await.map_err(|e| format!("read body: {e}"))?;
        Ok(Answer { code, body: String::from_utf8_lossy(&body).into_owned(), member })
    }
}

/// The pair's virtual IP as the tests reach it: its Service's ClusterIP,
/// through kube-proxy, from the client's network namespace.
impl super::Harness {
    /// The ClusterIP and first port of a Service: the pair's virtual IP.
    pub async fn cluster_ip(&self, service: &str) -> SocketAddr {
        let svc = Api::<Service>::namespaced(self.client.clone(), &self.ns.name).get(service).await.unwrap();
        let spec = svc.spec.unwrap();
        let ip = spec.cluster_ip.expect("a ClusterIP").parse().unwrap();
        SocketAddr::new(ip, spec.ports.unwrap()[0].port as u16)
    }

    /// One request through the VIP, on a connection of its own, from the
    /// client's network namespace: kube-proxy's rules pick the member.
    pub async fn vip(&self, service: &str, path: &str) -> Result<(u16, String), String> {
        let mut conn = VipConnection::new(self.cluster_ip(service).await);
        conn.request(path).await.map(|a| (a.code, a.body))
    }

    /// Waits until a write through the VIP is acknowledged (each try bounded
    /// by the client's one-second deadline: on a loaded node one fsync can
    /// outlast it); fails with the last answer when none is within `within`.
    pub async fn wait_vip_writable(&self, service: &str, within: Duration) {
        let start = Instant::now();
        loop {
            let answer = self.vip(service, "/write?key=probe&value=1").await;
            if matches!(answer, Ok((200, _))) {
                return;
            }
            assert!(start.elapsed() < within, "no write through the VIP of {service} within {within:?}: {answer:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
