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
        let handle = server.handle();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr,
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
