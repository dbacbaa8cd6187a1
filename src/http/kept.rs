//! A connection kept open to one agent between calls, for a caller that
//! asks the same agent again and again: the operator's heartbeat poll of
//! every member, an agent's heartbeat to its peer. A new mTLS handshake per
//! call (two signatures and a certificate check on each side) was most of
//! what a poll cost both ends, and with a thousand pairs it was most of
//! the operator's CPU.
//!
//! What a kept connection must not change is what an answer means: each
//! call still waits for a fresh answer from the agent's process within its
//! timeout, so a frozen or cut-off agent still misses its heartbeat. A call
//! that fails in any way drops the connection, so an answer half read when
//! a timeout struck never passes for the next call's.
//!
//! The exchange is a plain HTTP/1.1 GET written and read here on the TLS
//! stream, parsed with `httparse` (hyper's own parser), rather than through
//! hyper's client: that client gives every connection a task to drive it,
//! a request channel and a fixed 8 KiB header buffer — about 25 KiB a
//! connection kept for good, 50 MiB for an operator polling 1,000 pairs'
//! 2,000 agents (measured with heaptrack). Here a kept connection is its
//! TLS session and socket; the answer's buffer lives only for the call.
//! An answer's body is framed as RFC 9112 says: a `Content-Length`, chunks,
//! or the connection's end (then not kept).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use hyper::body::Bytes;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{CallError, Target, tls_connect};

/// The connection one caller keeps to one agent (none until the first call).
#[derive(Default)]
pub struct Kept {
    open: Option<Open>,
    opened: u64,
}

/// The most an answer's status line and headers may take.
const MAX_HEAD: usize = 16 * 1024;

/// What is read from the stream at a time.
const READ: usize = 4096;

struct Open {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    stream: TlsStream<TcpStream>,
}

/// How one exchange on a connection ended when it gave no answer.
enum Failed {
    /// Not one byte of an answer came (the agent had closed the connection,
    /// or restarted): the request may go again on a new connection.
    Unanswered(CallError),
    /// Part of an answer, or a wrong one: the call fails.
    Answered(CallError),
}

impl Kept {
    /// A GET of `path` from `target` within `timeout` end to end, with a
    /// body of up to `limit` bytes: on the kept connection when it goes to
    /// the same agent (address, name and TLS configuration), else on a new
    /// one. When the kept connection fails before any answer (the agent
    /// closed it or restarted), the request goes once more on a new
    /// connection.
    pub async fn get(
        &mut self,
        target: &Target,
        path: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, CallError> {
        tokio::time::timeout(timeout, self.exchange(target, path, limit)).await.unwrap_or(Err(CallError::Timeout))
    }

    /// A GET whose answer is JSON, as [`Kept::get`].
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        target: &Target,
        path: &str,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let body = self.get(target, path, timeout, super::MAX_BODY).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Connections opened so far (the first one included).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    async fn exchange(&mut self, target: &Target, path: &str, limit: usize) -> Result<Bytes, CallError> {
        let ask = request(path)?;
        // Taken out for the call: put back only once it answered in full.
        let kept = self.open.take().filter(|o| {
            o.addr == target.addr && o.server_name == target.server_name && Arc::ptr_eq(&o.tls, &target.tls)
        });
        let kept = kept.and_then(|mut o| quiet(&mut o.stream).then_some(o));
        if let Some(mut open) = kept {
            match exchange(&mut open.stream, &ask, limit).await {
                Ok((body, reusable)) => {
                    self.open = reusable.then_some(open);
                    return Ok(body);
                }
                Err(Failed::Answered(e)) => return Err(e),
                // Nothing came back on it: a new connection below.
                Err(Failed::Unanswered(_)) => {}
            }
        }
        let stream = tls_connect(target).await?;
        self.opened += 1;
        let mut open =
            Open { addr: target.addr, server_name: target.server_name.clone(), tls: target.tls.clone(), stream };
        match exchange(&mut open.stream, &ask, limit).await {
            Ok((body, reusable)) => {
                self.open = reusable.then_some(open);
                Ok(body)
            }
            Err(Failed::Answered(e) | Failed::Unanswered(e)) => Err(e),
        }
    }
}

/// Whether a kept connection has nothing waiting on it: neither its end
/// (the agent closed it while idle) nor bytes no request asked for (a
/// second answer sent after the one read, which would pass for the next
/// call's). One look, no wait: a read that is not ready at once means
/// nothing came (TLS housekeeping records are taken in on the way).
fn quiet(stream: &mut TlsStream<TcpStream>) -> bool {
    use futures::FutureExt;
    let mut probe = [0u8; 1];
    stream.read(&mut probe).now_or_never().is_none()
}

/// The request's bytes: a GET of `path`, which must be an origin-form
/// target (a `/`, then visible ASCII).
fn request(path: &str) -> Result<Vec<u8>, CallError> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CallError::Protocol(format!("not a request path: {path:?}")));
    }
    Ok(format!("GET {path} HTTP/1.1\r\nhost: agent\r\n\r\n").into_bytes())
}

fn protocol(what: &str) -> Failed {
    Failed::Answered(CallError::Protocol(what.to_string()))
}

/// Sends `ask` and reads its answer: the body of a success, and whether
/// the connection may carry the next request.
async fn exchange(stream: &mut TlsStream<TcpStream>, ask: &[u8], limit: usize) -> Result<(Bytes, bool), Failed> {
    let io = |e: std::io::Error| Failed::Unanswered(CallError::Io(e));
    stream.write_all(ask).await.map_err(io)?;
    stream.flush().await.map_err(io)?;

    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let (status, head, framing, close) = loop {
        let n = read_more(stream, &mut buf).await.map_err(|e| match buf.is_empty() {
            true => Failed::Unanswered(CallError::Io(e)),
            false => Failed::Answered(CallError::Io(e)),
        })?;
        if n == 0 {
            let gone = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before an answer");
            return Err(match buf.is_empty() {
                true => Failed::Unanswered(CallError::Io(gone)),
                false => Failed::Answered(CallError::Io(gone)),
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let status = StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|_| protocol("bad status"))?;
                if status.is_informational() {
                    return Err(protocol("an interim (1xx) answer to a plain GET"));
                }
                let (framing, close) = framing(status, resp.headers)?;
                break (status, head, framing, close || resp.version != Some(1));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(protocol("answer's head too large")),
            Err(e) => return Err(protocol(&format!("answer's head: {e}"))),
        }
    };
    buf.drain(..head);
    let answered = |e| Failed::Answered(CallError::Io(e));
    let (body, rest) = match framing {
        Framing::Length(len) => {
            if len > limit {
                return Err(Failed::Answered(CallError::Body));
            }
            while buf.len() < len {
                if read_more(stream, &mut buf).await.map_err(answered)? == 0 {
                    return Err(protocol("connection closed inside the body"));
                }
            }
            let rest = buf.split_off(len);
            (buf, rest)
        }
        Framing::Chunked => dechunk(stream, buf, limit).await?,
        Framing::UntilClose => {
            while read_more(stream, &mut buf).await.map_err(answered)? > 0 {
                if buf.len() > limit {
                    return Err(Failed::Answered(CallError::Body));
                }
            }
            (buf, Vec::new())
        }
    };
    if !status.is_success() {
        return Err(Failed::Answered(CallError::Status(status)));
    }
    // Bytes past the answer were never asked for: the connection is not
    // used again.
    let reusable = !close && rest.is_empty() && framing != Framing::UntilClose;
    Ok((Bytes::from(body), reusable))
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// How the body is framed (RFC 9112 §6.3), and whether the agent closes
/// the connection after it.
fn framing(status: StatusCode, headers: &[httparse::Header<'_>]) -> Result<(Framing, bool), Failed> {
    let (mut length, mut chunked, mut close) = (None::<usize>, false, false);
    for h in headers {
        let value = std::str::from_utf8(h.value).map_err(|_| protocol("header value not text"))?.trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only chunked is spoken here, and it must come last.
            if !value.eq_ignore_ascii_case("chunked") {
                return Err(protocol("transfer coding other than chunked"));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // Digits only (RFC 9110 §8.6): `usize`'s parser would take a `+`.
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            let n: usize = value.parse().ok().filter(|_| digits).ok_or_else(|| protocol("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(protocol("two different Content-Lengths"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), close));
    }
    match (chunked, length) {
        (true, Some(_)) => Err(protocol("both Content-Length and chunked")),
        (true, None) => Ok((Framing::Chunked, close)),
        (false, Some(n)) => Ok((Framing::Length(n), close)),
        (false, None) => Ok((Framing::UntilClose, true)),
    }
}

/// A chunked body from `buf` (what was read past the head) and the
/// stream: the body, and any bytes read past its end.
async fn dechunk(
    stream: &mut TlsStream<TcpStream>,
    mut buf: Vec<u8>,
    limit: usize,
) -> Result<(Vec<u8>, Vec<u8>), Failed> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        // The size line.
        let (size_line, size) = loop {
            match httparse::parse_chunk_size(&buf[at..]) {
                Ok(httparse::Status::Complete((n, size))) => break (n, size),
                Ok(httparse::Status::Partial) if buf.len() - at < 1024 => refill(stream, &mut buf, &mut at).await?,
                _ => return Err(protocol("bad chunk size")),
            }
        };
        at += size_line;
        let size = usize::try_from(size).map_err(|_| Failed::Answered(CallError::Body))?;
        if size == 0 {
            break;
        }
        if body.len().saturating_add(size) > limit {
            return Err(Failed::Answered(CallError::Body));
        }
        // The data and its CRLF.
        while buf.len() < at + size + 2 {
            refill(stream, &mut buf, &mut at).await?;
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(protocol("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
    // Trailers, if any, up to the empty line.
    loop {
        let mut trailers = [httparse::EMPTY_HEADER; 16];
        match httparse::parse_headers(&buf[at..], &mut trailers) {
            Ok(httparse::Status::Complete((n, _))) => {
                at += n;
                break;
            }
            Ok(httparse::Status::Partial) if buf.len() - at < MAX_HEAD => refill(stream, &mut buf, &mut at).await?,
            _ => return Err(protocol("bad trailers")),
        }
    }
    Ok((body, buf.split_off(at)))
}

/// [`more`] for a buffer read up to `at`: what was read is let go first,
/// and only then (so that an answer in many small chunks costs a copy per
/// read, not one per chunk).
async fn refill(stream: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>, at: &mut usize) -> Result<(), Failed> {
    buf.drain(..*at);
    *at = 0;
    more(stream, buf).await
}

/// [`read_more`] inside a body: the end of the stream is an error.
async fn more(stream: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>) -> Result<(), Failed> {
    match read_more(stream, buf).await {
        Ok(0) => Err(protocol("connection closed inside the body")),
        Ok(_) => Ok(()),
        Err(e) => Err(Failed::Answered(CallError::Io(e))),
    }
}

/// Reads what the stream has (up to [`READ`] bytes) onto the end of `buf`.
async fn read_more(stream: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(READ);
    let mut limited = (&mut *stream).take(READ as u64);
    limited.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use hyper::Request;
    use hyper::body::Incoming;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::http::testing::{canned_target, material};
    use crate::http::{reply, serve};

    /// An mTLS server on `listener` that answers each request with the
    /// client's address (one per connection) and, when `stall` says so,
    /// never answers at all; the addresses it served, in order.
    fn start(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        stall: Arc<std::sync::atomic::AtomicBool>,
    ) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<SocketAddr>>>) {
        let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let log = seen.clone();
        let handler = move |_req: Request<Incoming>, peer: SocketAddr| {
            let (log, stall) = (log.clone(), stall.clone());
            async move {
                if stall.load(std::sync::atomic::Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                log.lock().unwrap().push(peer);
                reply(hyper::StatusCode::OK, peer.to_string())
            }
        };
        (tokio::spawn(serve(listener, Some(acceptor), Duration::from_secs(60), handler)), seen)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn calls_to_one_agent_share_one_connection_and_a_new_agent_gets_a_new_one() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        let (_server, seen) = start(listener, acceptor.clone(), Arc::default());
        let mut kept = Kept::default();
        for _ in 0..5 {
            kept.get(&target, "/v1/status", T, 1024).await.unwrap();
        }
        let seen_now = seen.lock().unwrap().clone();
        assert_eq!(seen_now.len(), 5);
        assert!(seen_now.iter().all(|p| *p == seen_now[0]), "one client connection: {seen_now:?}");
        assert_eq!(kept.opened(), 1);

        // Another agent (a new pod's address): a new connection to it.
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut moved = target.clone();
        moved.addr = other.local_addr().unwrap();
        let (_other_server, other_seen) = start(other, acceptor, Arc::default());
        kept.get(&moved, "/v1/status", T, 1024).await.unwrap();
        assert_eq!((kept.opened(), other_seen.lock().unwrap().len()), (2, 1));
    }

    #[tokio::test]
    async fn answers_larger_than_one_read_are_read_whole_on_a_connection_that_stays_open() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        // Answers of 100 bytes to 5 read buffers, each byte telling its place.
        let handler = |req: Request<Incoming>, _peer: SocketAddr| async move {
            let n: usize = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
            reply(hyper::StatusCode::OK, (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect::<String>())
        };
        let _server = tokio::spawn(serve(listener, Some(acceptor), Duration::from_secs(60), handler));
        let mut kept = Kept::default();
        for n in [100, READ - 1, READ + 1, 5 * READ, 100] {
            let body = kept.get(&target, &format!("/v1/status?{n}"), T, 1 << 20).await.unwrap();
            assert_eq!(body.len(), n);
            assert!(body.iter().enumerate().all(|(i, b)| *b == b'a' + (i % 26) as u8), "{n} bytes in order");
        }
        assert_eq!(kept.opened(), 1, "one connection for every answer");
    }

    #[tokio::test]
    async fn an_agent_that_restarted_is_asked_again_on_a_new_connection_without_a_miss() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        let (server, _) = start(listener, acceptor.clone(), Arc::default());
        let mut kept = Kept::default();
        kept.get(&target, "/v1/status", T, 1024).await.unwrap();
        // The agent's process ends (its connections with it) and a new one
        // listens on the same address.
        server.abort();
        let _ = server.await;
        let listener = TcpListener::bind(target.addr).await.unwrap();
        let (_server, seen) = start(listener, acceptor, Arc::default());
        kept.get(&target, "/v1/status", T, 1024).await.expect("answered by the new process");
        assert_eq!((kept.opened(), seen.lock().unwrap().len()), (2, 1));
    }

    #[tokio::test]
    async fn an_agent_that_stops_answering_is_missed_and_its_connection_dropped() {
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (_server, seen) = start(listener, acceptor, stall.clone());
        let mut kept = Kept::default();
        kept.get(&target, "/v1/status", T, 1024).await.unwrap();
        // Frozen: the connection stays up, no answer comes — a miss at the
        // timeout, not a wait on the open connection.
        stall.store(true, std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        let r = kept.get(&target, "/v1/status", Duration::from_millis(300), 1024).await;
        assert!(matches!(r, Err(CallError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Thawed: the next answer comes on a new connection, never the
        // late answer to the call that timed out.
        stall.store(false, std::sync::atomic::Ordering::SeqCst);
        let body = kept.get(&target, "/v1/status", T, 1024).await.unwrap();
        assert_eq!(kept.opened(), 2);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(String::from_utf8_lossy(&body), seen.last().unwrap().to_string());
        assert_ne!(seen.first(), seen.last(), "a new client connection");
    }

    #[tokio::test]
    async fn chunked_answers_with_trailers_are_read_whole_on_a_connection_that_stays_open() {
        // 3,000 chunks of one byte each, over several reads, each telling its place.
        let mut many = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for i in 0..3000 {
            many.extend_from_slice(format!("1\r\n{}\r\n", char::from(b'a' + (i % 26) as u8)).as_bytes());
        }
        many.extend_from_slice(b"0\r\n\r\n");
        let many: &'static [u8] = Box::leak(many.into_boxed_slice());
        let (target, accepted) = canned_target(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-digest: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            many,
        ])
        .await;
        let mut kept = Kept::default();
        assert_eq!(&kept.get(&target, "/a", T, 1024).await.unwrap()[..], b"hello world");
        assert_eq!(&kept.get(&target, "/b", T, 1024).await.unwrap()[..], b"abc");
        assert_eq!(&kept.get(&target, "/c", T, 1024).await.unwrap()[..], b"ok");
        let body = kept.get(&target, "/d", T, 4096).await.unwrap();
        assert_eq!(body.len(), 3000);
        assert!(body.iter().enumerate().all(|(i, b)| *b == b'a' + (i % 26) as u8), "chunks in order");
        assert_eq!((kept.opened(), *accepted.lock().unwrap()), (1, 1));
    }

    #[tokio::test]
    async fn garbage_or_an_oversized_answer_fails_the_call_and_drops_the_connection() {
        let (target, accepted) = canned_target(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n400\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let mut kept = Kept::default();
        kept.get(&target, "/v1/status", T, 1024).await.unwrap();
        let r = kept.get(&target, "/v1/status", T, 1024).await;
        assert!(matches!(r, Err(CallError::Protocol(_))), "{r:?}");
        let r = kept.get(&target, "/v1/status", T, 1024).await;
        assert!(matches!(r, Err(CallError::Body)), "Content-Length over the limit: {r:?}");
        let r = kept.get(&target, "/v1/status", T, 1000).await;
        assert!(matches!(r, Err(CallError::Body)), "a chunk over the limit: {r:?}");
        for what in ["length and chunked", "unknown coding", "two lengths", "a signed length"] {
            let r = kept.get(&target, "/v1/status", T, 1024).await;
            assert!(matches!(r, Err(CallError::Protocol(_))), "{what}: {r:?}");
        }
        assert_eq!(&kept.get(&target, "/v1/status", T, 1024).await.unwrap()[..], b"ok");
        // Every failure cost its connection.
        assert_eq!((kept.opened(), *accepted.lock().unwrap()), (8, 8));
        // And a path that would break the request line never leaves.
        let r = kept.get(&target, "/v1/status HTTP/1.0\r\nx: y", T, 1024).await;
        assert!(matches!(r, Err(CallError::Protocol(_))), "{r:?}");
    }

    #[tokio::test]
    async fn an_answer_that_closes_or_overruns_is_not_followed_on_the_same_connection() {
        let (target, accepted) = canned_target(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale",
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh",
        ])
        .await;
        let mut kept = Kept::default();
        assert_eq!(&kept.get(&target, "/a", T, 1024).await.unwrap()[..], b"ok");
        assert_eq!(&kept.get(&target, "/b", T, 1024).await.unwrap()[..], b"ok");
        let r = kept.get(&target, "/c", T, 1024).await;
        assert!(matches!(r, Err(CallError::Status(s)) if s == hyper::StatusCode::INTERNAL_SERVER_ERROR), "{r:?}");
        assert_eq!(&kept.get(&target, "/d", T, 1024).await.unwrap()[..], b"fresh", "never the bytes left over");
        assert_eq!((kept.opened(), *accepted.lock().unwrap()), (4, 4));
    }

    #[tokio::test]
    async fn bytes_that_come_after_an_answer_are_never_taken_for_the_next_one() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (acceptor, mut target) = material();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        target.addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        // Each connection answers with its number; the first one then sends
        // a second answer nobody asked for.
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (n, acceptor) = (count.fetch_add(1, Ordering::SeqCst), acceptor.clone());
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut buf = [0u8; 1024];
                    while let Ok(1..) = tls.read(&mut buf).await {
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nconn{n}");
                        tls.write_all(answer.as_bytes()).await.unwrap();
                        tls.flush().await.unwrap();
                        if n == 0 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale").await.unwrap();
                            tls.flush().await.unwrap();
                        }
                    }
                });
            }
        });
        let mut kept = Kept::default();
        assert_eq!(&kept.get(&target, "/v1/status", T, 1024).await.unwrap()[..], b"conn0");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(&kept.get(&target, "/v1/status", T, 1024).await.unwrap()[..], b"conn1", "never the stale answer");
        assert_eq!((kept.opened(), accepted.load(Ordering::SeqCst)), (2, 2));
        // A quiet kept connection is used again.
        assert_eq!(&kept.get(&target, "/v1/status", T, 1024).await.unwrap()[..], b"conn1");
        assert_eq!(kept.opened(), 2);
    }
}
