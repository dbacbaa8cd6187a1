//! The application health check (`spec.healthCheck`): HTTP GET, TCP
//! connect or a command, every `periodSeconds`; the application counts as
//! failed after `failureThreshold` failures in a row.

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::warn;

use crate::api::{HealthCheckSpec, HttpScheme};

/// Runs one check; `Err` says why it failed.
pub async fn check_once(spec: &HealthCheckSpec, host: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(spec.timeout_seconds.max(1) as u64);
    let run = async {
        if let Some(http) = &spec.http_get {
            if http.scheme == HttpScheme::HTTPS {
                return https_get(host, http.port, &http.path).await;
            }
            http_get(host, http.port, &http.path).await
        } else if let Some(t) = &spec.tcp_socket {
            tcp(host, t.port).await
        } else if let Some(exec) = &spec.exec {
            let (prog, args) = exec.command.split_first().ok_or("empty command")?;
            let status = tokio::process::Command::new(prog)
                .args(args)
                .kill_on_drop(true)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .map_err(|e| format!("cannot run {prog}: {e}"))?;
            if status.success() { Ok(()) } else { Err(format!("{prog} exited with {status}")) }
        } else {
            Err("health check names no probe".to_string())
        }
    };
    tokio::time::timeout(timeout, run).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

async fn tcp(host: &str, port: i32) -> Result<(), String> {
    TcpStream::connect((host, port as u16)).await.map(|_| ()).map_err(|e| format!("connect {host}:{port}: {e}"))
}

async fn http_get(host: &str, port: i32, path: &str) -> Result<(), String> {
    let tcp = TcpStream::connect((host, port as u16)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
    get(tcp, host, path).await
}

/// An HTTPS GET as the kubelet's probes do it: a full TLS handshake and a
/// real request, the certificate not checked against any CA (the
/// application's CA is not the agent's to know). A port that accepts but
/// does not speak TLS, or answers an error, fails.
async fn https_get(host: &str, port: i32, path: &str) -> Result<(), String> {
    let tcp = TcpStream::connect((host, port as u16)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("TLS: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(probe_tls()?)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    get(tls, host, path).await
}

/// The probes' TLS client, built once: a check runs every `periodSeconds`.
fn probe_tls() -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(std::sync::Arc::new(config))
        })
        .clone()
}

/// Accepts whatever certificate the application presents, but still checks
/// that the handshake is signed by it.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn get<S>(io: S, host: &str, path: &str) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() { Ok(()) } else { Err(format!("GET {path}: {status}")) }
}

/// Consecutive-failure bookkeeping.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Health {
    pub failures_in_a_row: u32,
    pub checked: bool,
    pub last_error: Option<String>,
}

impl Health {
    pub fn record(&mut self, result: Result<(), String>) {
        self.checked = true;
        match result {
            Ok(()) => {
                self.failures_in_a_row = 0;
                self.last_error = None;
            }
            Err(e) => {
                self.failures_in_a_row += 1;
                self.last_error = Some(e);
            }
        }
    }

    /// Healthy unless the threshold of failures in a row is reached;
    /// `None` before the first check.
    pub fn healthy(&self, threshold: i32) -> Option<bool> {
        self.checked.then(|| self.failures_in_a_row < threshold.max(1) as u32)
    }
}

/// Checks the application every `periodSeconds` and wakes the lease loop
/// when it turns unhealthy (so a failing active releases at once).
pub(super) async fn health_loop(agent: std::sync::Arc<super::Agent>, spec: HealthCheckSpec) {
    let period = Duration::from_secs(spec.period_seconds.max(1) as u64);
    loop {
        let result = check_once(&spec, &agent.config.app_host).await;
        if let Err(e) = &result {
            agent.metrics.health_check_failures.inc();
            warn!(error = %e, "application health check failed");
        }
        let became_unhealthy = {
            let mut s = agent.lock();
            let before = s.app_healthy();
            s.health.record(result);
            before != Some(false) && s.app_healthy() == Some(false)
        };
        if became_unhealthy {
            agent.wake.notify_one();
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_fails_only_after_the_threshold_of_failures_in_a_row() {
        let mut h = Health::default();
        assert_eq!(h.healthy(3), None);
        h.record(Err("x".into()));
        h.record(Err("x".into()));
        assert_eq!(h.healthy(3), Some(true));
        h.record(Ok(()));
        h.record(Err("x".into()));
        h.record(Err("x".into()));
        assert_eq!(h.healthy(3), Some(true));
        h.record(Err("x".into()));
        assert_eq!(h.healthy(3), Some(false));
    }

    #[tokio::test]
    async fn tcp_and_http_checks_see_a_listening_server_and_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port() as i32;
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let spec: HealthCheckSpec =
            serde_yaml::from_str(&format!("{{httpGet: {{port: {port}, path: /healthz}}}}")).unwrap();
        assert_eq!(check_once(&spec, "127.0.0.1").await, Ok(()));
        let spec: HealthCheckSpec = serde_yaml::from_str(&format!("{{tcpSocket: {{port: {port}}}}}")).unwrap();
        assert_eq!(check_once(&spec, "127.0.0.1").await, Ok(()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spec: HealthCheckSpec = serde_yaml::from_str(&format!("{{tcpSocket: {{port: {closed}}}}}")).unwrap();
        assert!(check_once(&spec, "127.0.0.1").await.is_err());
        // HTTPS against a port that speaks plain HTTP: not healthy (it was
        // when HTTPS only meant reaching the port).
        let spec: HealthCheckSpec =
            serde_yaml::from_str(&format!("{{httpGet: {{port: {port}, path: /healthz, scheme: HTTPS}}}}")).unwrap();
        assert!(check_once(&spec, "127.0.0.1").await.unwrap_err().contains("TLS handshake"));
        let spec: HealthCheckSpec = serde_yaml::from_str("{exec: {command: [\"false\"]}}").unwrap();
        assert!(check_once(&spec, "127.0.0.1").await.is_err());
        let spec: HealthCheckSpec = serde_yaml::from_str("{exec: {command: [\"true\"]}}").unwrap();
        assert_eq!(check_once(&spec, "127.0.0.1").await, Ok(()));
    }
}

#[cfg(test)]
mod https_tests {
    use super::*;

    /// An HTTPS server with a self-signed certificate answering `status`.
    async fn serve(status: &'static str) -> i32 {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["app.local".into()]).unwrap().self_signed(&key).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port() as i32;
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(s).await else { return };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn an_https_check_makes_a_real_request_over_tls() {
        let spec = |port: i32| -> HealthCheckSpec {
            serde_yaml::from_str(&format!("{{httpGet: {{port: {port}, path: /healthz, scheme: HTTPS}}}}")).unwrap()
        };
        assert_eq!(check_once(&spec(serve("200 OK").await), "127.0.0.1").await, Ok(()));
        let failing = check_once(&spec(serve("503 Service Unavailable").await), "127.0.0.1").await;
        assert!(failing.unwrap_err().contains("503"), "an HTTPS server answering 503 is not healthy");
    }
}
