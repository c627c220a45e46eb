//! Starting a server for a test and talking to it.

use std::sync::Arc;
use std::time::Duration;

use lockd_proto::legacy::{AuthScheme, Signer};
use lockd_server::{
    CancellationToken, Clock, ManualClock, Server, ServerConfig, ServerHandle, Snapshot,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub const AUTH_KEY: &str = "test-secret";

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub clock: Arc<ManualClock>,
    pub handle: ServerHandle,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = ServerConfig::new("127.0.0.1", 0, AUTH_KEY);
        f(&mut config);
        let clock = ManualClock::new();
        let server = Server::bind_with_clock(config, Clock::Manual(clock.clone()))
            .await
            .unwrap();
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let handle = server.handle();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr,
            admin,
            clock,
            handle,
            shutdown,
            task,
        }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub fn snapshot(&self) -> Snapshot {
        self.handle.snapshot()
    }

    /// Waits (bounded) until `f` holds of the server's state; for effects of background
    /// tasks such as the expiry timer or a connection's close, which no reply reports.
    pub async fn eventually(&self, what: &str, f: impl Fn(&Snapshot) -> bool) {
        for _ in 0..500 {
            if f(&self.snapshot()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for: {what}; state: {:?}",
            self.snapshot()
        );
    }
}

pub fn signer() -> Signer {
    Signer::new(AUTH_KEY.as_bytes(), AuthScheme::Hmac)
}

pub fn session(c: char) -> String {
    std::iter::repeat_n(c, 32).collect()
}

/// A 31-byte legacy key.
pub fn key(n: u32) -> String {
    format!("{n:031}")
}

pub fn line(session: &str, command: &str, ty: &str, values: &str) -> String {
    let l = signer().sign_line(
        session.as_bytes(),
        command.as_bytes(),
        ty.as_bytes(),
        values.as_bytes(),
    );
    let mut s = String::from_utf8(l).unwrap();
    s.push('\n');
    s
}

pub struct Client {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Reads one reply line, without its newline; panics after 5 s.
    pub async fn recv(&mut self) -> String {
        let mut s = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut s))
            .await
            .expect("reply within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed while a reply was expected");
        assert!(s.ends_with('\n'), "reply ends with a newline: {s:?}");
        s.pop();
        s
    }

    pub async fn call(&mut self, session: &str, command: &str, ty: &str, values: &str) -> String {
        self.send(line(session, command, ty, values).as_bytes())
            .await;
        self.recv().await
    }

    /// Whether the server closed the connection (EOF or reset) within 5 s.
    pub async fn closed_by_server(&mut self) -> bool {
        let mut s = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut s)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A reply as the tests see it.
#[derive(Clone, Debug, PartialEq)]
pub enum R {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<R>),
    Map(Vec<(R, R)>),
    /// A RESP3 push message.
    Push(Vec<R>),
}

impl R {
    pub fn int(&self) -> i64 {
        match self {
            R::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn err(&self) -> &str {
        match self {
            R::Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    pub fn text(&self) -> String {
        match self {
            R::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            R::Simple(s) => s.clone(),
            other => panic!("expected a string, got {other:?}"),
        }
    }

    pub fn items(&self) -> &[R] {
        match self {
            R::Push(items) => items,
            R::Array(a) => a,
            other => panic!("expected an array, got {other:?}"),
        }
    }

    /// A field of a map (RESP3) or of a flat key-value array (RESP2).
    pub fn get(&self, field: &str) -> &R {
        let pairs: Vec<(&R, &R)> = match self {
            R::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            R::Array(a) => a.chunks(2).map(|c| (&c[0], &c[1])).collect(),
            other => panic!("expected a map, got {other:?}"),
        };
        pairs
            .into_iter()
            .find(|(k, _)| k.text() == field)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no field {field} in {self:?}"))
    }
}

pub struct Resp {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Resp {
    pub async fn connect(addr: std::net::SocketAddr) -> Resp {
        let c = Client::connect(addr).await;
        Resp {
            reader: c.reader,
            writer: c.writer,
        }
    }

    /// Connects and authenticates.
    pub async fn authed(addr: std::net::SocketAddr) -> Resp {
        let mut r = Resp::connect(addr).await;
        assert_eq!(r.call(&["AUTH", AUTH_KEY]).await, R::Simple("OK".into()));
        r
    }

    pub async fn send(&mut self, args: &[&str]) {
        let mut buf = bytes::BytesMut::new();
        lockd_proto::resp::encode_request(args, &mut buf);
        self.writer.write_all(&buf).await.unwrap();
    }

    pub async fn call(&mut self, args: &[&str]) -> R {
        self.send(args).await;
        self.recv().await
    }

    pub async fn recv(&mut self) -> R {
        tokio::time::timeout(Duration::from_secs(5), self.read_value())
            .await
            .expect("reply within 5 s")
    }

    /// Whether nothing is waiting to be read on this connection now (polled once, no
    /// waiting); EOF counts as something.
    pub async fn nothing_to_read(&mut self) -> bool {
        use tokio::io::AsyncBufReadExt;
        // Timed out: the read would have waited, so nothing was there.
        tokio::time::timeout(Duration::ZERO, self.reader.fill_buf())
            .await
            .is_err()
    }

    fn read_value(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = R> + Send + '_>> {
        Box::pin(async move {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.unwrap();
            assert!(n > 0, "connection closed while a reply was expected");
            let body = line.trim_end_matches("\r\n").to_string();
            let (kind, rest) = body.split_at(1);
            match kind {
                "+" => R::Simple(rest.into()),
                "-" => R::Err(rest.into()),
                ":" => R::Int(rest.parse().unwrap()),
                "_" => R::Null,
                "$" if rest == "-1" => R::Null,
                "*" if rest == "-1" => R::Null,
                "$" => {
                    let len: usize = rest.parse().unwrap();
                    let mut buf = vec![0u8; len + 2];
                    tokio::io::AsyncReadExt::read_exact(&mut self.reader, &mut buf)
                        .await
                        .unwrap();
                    buf.truncate(len);
                    R::Bulk(buf)
                }
                "*" => {
                    let n: usize = rest.parse().unwrap();
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.read_value().await);
                    }
                    R::Array(items)
                }
                ">" => {
                    let n: usize = rest.parse().unwrap();
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.read_value().await);
                    }
                    R::Push(items)
                }
                "%" => {
                    let n: usize = rest.parse().unwrap();
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = self.read_value().await;
                        let v = self.read_value().await;
                        items.push((k, v));
                    }
                    R::Map(items)
                }
                other => panic!("unexpected reply type {other:?} in {line:?}"),
            }
        })
    }

    pub async fn closed_by_server(&mut self) -> bool {
        let mut s = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut s)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A plain HTTP/1.1 GET with a bearer token; returns (status, body).
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let (status, _, body) = http_get_with(addr, path, auth.as_deref()).await;
    (status, body)
}

/// A plain HTTP/1.1 GET with this Authorization header; returns (status, head, body).
pub async fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    http_request(addr, "GET", path, authorization).await
}

/// A plain HTTP/1.1 request without a body; returns (status, head, body).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: lockd\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut resp)
        .await
        .unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = resp.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    // Chunked bodies (axum streams JSON that way) are unwrapped for the tests.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// Whether a test must skip because `what` is missing. Missing is an error when
/// `LOCKD_REQUIRE_INTEROP` is set (as in CI, which installs everything); otherwise the skip
/// is said on standard error directly, which the test harness does not capture, so it
/// shows in every run, passing or not.
pub fn skip_unless(what: &str, available: bool) -> bool {
    if available {
        return false;
    }
    assert!(
        std::env::var_os("LOCKD_REQUIRE_INTEROP").is_none(),
        "{what} is required (LOCKD_REQUIRE_INTEROP is set) but not available"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what} is not available");
    true
}

/// Asserts that `waiter` has not been answered: a request on `other` goes through the
/// server first, so whatever could have answered `waiter` before it was handled has been,
/// and a reply written on loopback is readable at once. No wall-clock window decides it.
pub async fn assert_no_reply(waiter: &mut Resp, other: &mut Resp, why: &str) {
    assert_eq!(other.call(&["PING"]).await, R::Simple("PONG".into()));
    assert!(waiter.nothing_to_read().await, "answered too early: {why}");
}

/// A cluster of one node (this server) in `dir`, with short election timeouts: a node that
/// leads at once, for tests of what a cluster node serves.
pub fn one_node_cluster(dir: &std::path::Path) -> lockd_server::ClusterConfig {
    let raft = format!("127.0.0.1:{}", lockd_server::free_port().unwrap());
    let mut node =
        lockd_server::ClusterConfig::new(1, &raft, dir.to_path_buf(), AUTH_KEY.as_bytes());
    node.initial = [(1, raft)].into_iter().collect();
    node.election_min_ms = 300;
    node.election_max_ms = 600;
    node
}
