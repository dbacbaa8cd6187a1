//! A TCP proxy between one agent and the API server that the test can cut:
//! while blocked, open connections are dropped and new ones are accepted but
//! never answered — the agent sees a network partition, not a refusal.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct ApiProxy {
    pub addr: SocketAddr,
    blocked: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiProxy {
    pub async fn start(bind: std::net::Ipv4Addr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind((bind, 0)).await?;
        let addr = listener.local_addr()?;
        let (blocked, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    if *rx.borrow() {
                        // Partitioned: hold the connection open and silent.
                        let _ = tokio::time::timeout(Duration::from_secs(120), rx.wait_for(|b| !*b)).await;
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let pump = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut cr, &mut sw) => {}
                            _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        }
                    };
                    tokio::select! {
                        _ = pump => {}
                        _ = rx.wait_for(|b| *b) => {}
                    }
                });
            }
        });
        Ok(ApiProxy { addr, blocked, task })
    }

    pub fn set_blocked(&self, blocked: bool) {
        let _ = self.blocked.send(blocked);
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
