//! Test helpers for what speaks to agents: one pair's TLS material, and a
//! server that answers with bytes given on the wire.

use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Target;
use crate::api::Member;
use crate::tls;

/// The primary's server and the operator's client of one pair's
/// material.
pub fn material() -> (TlsAcceptor, Target) {
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

/// A TLS server on `listener` that answers each request it reads with
/// the next of `answers`, as given (bytes on the wire); the number of
/// connections it accepted.
pub fn canned(listener: TcpListener, acceptor: TlsAcceptor, answers: Vec<&'static [u8]>) -> Arc<Mutex<usize>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let accepted: Arc<Mutex<usize>> = Arc::default();
    let (count, answers) = (accepted.clone(), Arc::new(Mutex::new(answers.into_iter())));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            *count.lock().unwrap() += 1;
            let (acceptor, answers) = (acceptor.clone(), answers.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let Ok(n) = tls.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let Some(answer) = answers.lock().unwrap().next() else { return };
                        tls.write_all(answer).await.unwrap();
                        tls.flush().await.unwrap();
                    }
                }
            });
        }
    });
    accepted
}

pub async fn canned_target(answers: Vec<&'static [u8]>) -> (Target, Arc<Mutex<usize>>) {
    let (acceptor, mut target) = material();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    target.addr = listener.local_addr().unwrap();
    (target, canned(listener, acceptor, answers))
}
