//! One connection: reading and writing without holding a buffer while idle, detecting the
//! protocol from the first byte (`*` is RESP, anything else legacy), bounding what a client
//! can make the server hold (unread replies, partial requests), blocking on a queued
//! ACQUIRE, and closing on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use lockd_core::ConnId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::legacy::Legacy;
use crate::native::{Native, PendingWait, Stop};
use crate::shared::Shared;

const READ_CHUNK: usize = 4 * 1024;
/// The most one read adds to a buffer that holds part of a large request.
const MAX_BIG_READ: usize = 256 * 1024;
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// While a request waits, input is still read (to see the client leave, by closing or by a
/// QUIT) up to this much.
const MAX_INPUT_WHILE_WAITING: usize = 64 * 1024;

enum Protocol {
    Legacy(Legacy),
    Native(Box<Native>),
}

/// In a cluster: the request being committed; nothing behind it is answered meanwhile.
enum Committing {
    Native(crate::native::Commit),
    Legacy(crate::legacy::Commit),
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let conn = shared.new_conn_id();
    // In a cluster, also ended when the cluster cuts this node off.
    let shutdown = shared.connection_token(&shutdown);
    shared.counters.connections.fetch_add(1, Relaxed);
    shared.counters.connections_total.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    // Runs the disconnect on every way out of this task, a panic included: otherwise the
    // connection's sessions would never die and their locks never be released.
    let mut left = Leave {
        shared: &shared,
        conn,
        pending: None,
        counted: None,
    };
    let (sh, ip) = (&*shared, peer.ip());
    let deadline = shared
        .config
        .login_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let transport = match &shared.tls {
        None => Transport::Plain(stream),
        // Boxed: the handshake's state is large, and plain connections should not carry it.
        Some(tls) => Box::pin(start_tls(stream, peer, tls, &shutdown, deadline)).await,
    };
    let Leave {
        pending, counted, ..
    } = &mut left;
    let why = match transport {
        Transport::Plain(mut s) => {
            drive(&mut s, sh, conn, ip, &shutdown, deadline, pending, counted).await
        }
        Transport::Tls(mut s) => {
            drive(&mut *s, sh, conn, ip, &shutdown, deadline, pending, counted).await
        }
        Transport::Closed(why) => why,
    };
    tracing::debug!(conn = conn.0, %peer, reason = why, "connection closed");
}

/// A connection's bookkeeping when it ends, however it ends.
struct Leave<'a> {
    shared: &'a Shared,
    conn: ConnId,
    pending: Option<PendingWait>,
    counted: Option<&'a AtomicU64>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counted {
            c.fetch_sub(1, Relaxed);
        }
        self.shared
            .disconnect(self.conn, self.pending.take().map(|p| p.id));
        self.shared.counters.connections.fetch_sub(1, Relaxed);
    }
}

/// What a connection turned out to be.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Nothing to serve, and why.
    Closed(&'static str),
}

/// With TLS configured: waits for the first byte without taking it; 0x16 starts a TLS
/// handshake, anything else is plaintext (refused when TLS is required).
async fn start_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &crate::tls::Tls,
    shutdown: &CancellationToken,
    deadline: Option<tokio::time::Instant>,
) -> Transport {
    let mut first = [0u8; 1];
    // The first byte, like the whole login, must come before the login deadline.
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let n = tokio::select! {
        r = stream.peek(&mut first) => r.unwrap_or(0),
        _ = shutdown.cancelled() => 0,
        _ = until => return Transport::Closed("login timeout: nothing sent"),
    };
    if n == 1 && first[0] == crate::tls::HANDSHAKE {
        let handshake = tls.acceptor().accept(stream);
        let bound = deadline.map_or(TLS_HANDSHAKE_TIMEOUT, |d| {
            TLS_HANDSHAKE_TIMEOUT.min(d.saturating_duration_since(tokio::time::Instant::now()))
        });
        match tokio::time::timeout(bound, handshake).await {
            Ok(Ok(s)) => Transport::Tls(Box::new(s)),
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                Transport::Closed("TLS handshake failed")
            }
            Err(_) => Transport::Closed("TLS handshake timed out"),
        }
    } else if tls.required && n == 1 {
        tracing::info!(%peer, "plaintext client refused: TLS is required");
        let _ = stream.try_write(b"-ERR TLS is required\r\n");
        Transport::Closed("TLS required")
    } else {
        Transport::Plain(stream)
    }
}

/// What the transport did.
enum Io {
    /// Bytes read (0: the peer closed its side).
    Read(usize),
    /// Bytes written, and whether everything written is flushed.
    Wrote(usize, bool),
    Failed(&'static str),
}

/// Runs the connection until it ends; returns why it ended. A wait still pending then is
/// left in `pending` for the caller to withdraw. Works on any byte stream (TCP, TLS).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive<'a, S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &'a Shared,
    conn: ConnId,
    peer: std::net::IpAddr,
    shutdown: &CancellationToken,
    login_deadline: Option<tokio::time::Instant>,
    pending: &mut Option<PendingWait>,
    counted: &mut Option<&'a AtomicU64>,
) -> &'static str {
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let mut protocol: Option<Protocol> = None;
    let mut eof = false;
    let mut closing = false;
    let mut unflushed = false;
    let mut committing: Option<Committing> = None;
    let max_output = shared.config.max_pending_output;
    // Made once: a fresh `cancelled()` future per loop would re-register every time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        // A connection that always has work never polls `cancelled` below (it comes last);
        // it sees shutdown here. `ready` is an atomic load, `is_cancelled` takes a lock.
        if !shared.ready.load(Relaxed) && shutdown.is_cancelled() {
            return "shutdown";
        }
        if !input.is_empty() && pending.is_none() && !closing && committing.is_none() {
            let p = protocol.get_or_insert_with(|| {
                let (p, gauge) = if input[0] == b'*' {
                    (
                        Protocol::Native(Box::new(Native::new(shared, conn, peer))),
                        &shared.counters.native_connections,
                    )
                } else {
                    (
                        Protocol::Legacy(Legacy::new(conn, peer)),
                        &shared.counters.legacy_connections,
                    )
                };
                gauge.fetch_add(1, Relaxed);
                *counted = Some(gauge);
                p
            });
            match p {
                Protocol::Legacy(l) => match l.process(shared, &mut input, &mut output) {
                    Ok(c) => committing = c.map(Committing::Legacy),
                    Err(_) => {
                        tracing::warn!(
                            conn = conn.0,
                            "request line longer than {} bytes: closing the connection",
                            lockd_proto::line::MAX_LINE
                        );
                        return "line too long";
                    }
                },
                Protocol::Native(n) => match n.process(shared, &mut input, &mut output) {
                    Stop::Drained => {}
                    Stop::Wait(w) => *pending = Some(w),
                    Stop::Close => closing = true,
                    Stop::Commit(c) => committing = Some(Committing::Native(c)),
                },
            }
        }
        // A client that leaves gives up its wait: it is answered (null, or the token if it
        // was granted first), then what it sent behind it, then the connection closes.
        // Leaving is closing its side, or a QUIT behind the wait (in this read or a later
        // one: the loop comes back here after every read).
        if let (Some(Protocol::Native(n)), true) = (protocol.as_mut(), pending.is_some()) {
            if eof || n.quit_behind(&input) {
                let w = pending.take().expect("a wait was pending");
                committing = n
                    .finish_wait(shared, w, None, &mut output)
                    .map(Committing::Native);
            }
        }
        if output.len() > crate::shared::PEAK_OUTPUT_FLOOR {
            let c = &shared.counters.peak_output;
            c.fetch_max(output.len() as u64, Relaxed);
        }
        if output.len() > max_output {
            tracing::warn!(
                conn = conn.0,
                pending = output.len(),
                "client does not read its replies: closing the connection"
            );
            return "output bound";
        }
        if (eof || closing) && output.is_empty() && !unflushed {
            return if closing {
                "closed after reply"
            } else {
                "closed by peer"
            };
        }
        // Idle connections hold no buffers.
        if input.is_empty() && input.capacity() > 0 {
            input = BytesMut::new();
        }
        if output.is_empty() && output.capacity() > 0 {
            output = BytesMut::new();
        }
        let want_read =
            !eof && !closing && (pending.is_none() || input.len() < MAX_INPUT_WHILE_WAITING);
        let idle = shared
            .config
            .idle_timeout
            .filter(|_| output.is_empty() && pending.is_none());
        let logged_in = match &protocol {
            None => false,
            Some(Protocol::Legacy(l)) => l.authed,
            Some(Protocol::Native(n)) => n.authed,
        };
        let login = login_deadline.filter(|_| !logged_in);
        let committed = async {
            match committing.as_mut() {
                Some(Committing::Native(c)) => (&mut c.fut).await,
                Some(Committing::Legacy(c)) => (&mut c.fut).await,
                None => std::future::pending().await,
            }
        };
        let wait = async {
            match pending.as_mut() {
                Some(p) => tokio::select! {
                    r = &mut p.rx => r.ok(),
                    _ = shared.clock.sleep_until(p.deadline) => None,
                },
                None => std::future::pending().await,
            }
        };
        let pushed = async {
            match protocol.as_mut() {
                Some(Protocol::Native(n)) => match n.events.as_mut() {
                    Some(ev) => ev.rx.recv().await,
                    None => std::future::pending().await,
                },
                _ => std::future::pending().await,
            }
        };
        // Both directions in one future, so one `&mut` stream serves reads and writes.
        let io = std::future::poll_fn(|cx| {
            if !output.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, &output) {
                    Poll::Ready(Ok(n)) => {
                        let flushed = n == output.len()
                            && matches!(Pin::new(&mut *stream).poll_flush(cx), Poll::Ready(Ok(())));
                        return Poll::Ready(Io::Wrote(n, flushed));
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Io::Failed("write error")),
                    Poll::Pending => {}
                }
            } else if unflushed {
                // TLS buffers records; plain TCP flushes at once.
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Io::Wrote(0, true)),
                    Poll::Ready(Err(_)) => return Poll::Ready(Io::Failed("write error")),
                    Poll::Pending => {}
                }
            }
            if want_read && input.len() >= READ_CHUNK {
                // Part of a large request is buffered already (up to 4,096 keys: ~4 MB):
                // read into the buffer itself, in chunks as large as what it holds, so the
                // request is parsed a few times as it arrives, not once per 4 KiB.
                input.reserve(input.len().min(MAX_BIG_READ));
                match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut input) {
                    Poll::Ready(Ok(n)) => return Poll::Ready(Io::Read(n)),
                    Poll::Ready(Err(_)) => return Poll::Ready(Io::Failed("read error")),
                    Poll::Pending => {}
                }
            } else if want_read {
                // The read buffer lives on the stack for this poll only: most requests are
                // small, and copying them costs less than keeping a buffer per connection.
                // Left uninitialised: zeroing 4 KiB for every read showed in profiles.
                let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut buf = ReadBuf::uninit(&mut chunk);
                match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        input.extend_from_slice(buf.filled());
                        return Poll::Ready(Io::Read(buf.filled().len()));
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Io::Failed("read error")),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        });
        // Shutdown is polled last: polling it costs a lock and a notification check, and
        // while the connection has work it is seen at the top of the loop instead.
        tokio::select! {
            biased;
            done = committed => {
                match (committing.take(), protocol.as_mut()) {
                    (Some(Committing::Native(c)), Some(Protocol::Native(n))) => {
                        match (c.then)(n, shared, done) {
                            crate::native::Outcome::Reply(v) => v.encode(n.proto, &mut output),
                            crate::native::Outcome::Wait(w) => *pending = Some(w),
                            crate::native::Outcome::Close(v) => {
                                v.encode(n.proto, &mut output);
                                closing = true;
                            }
                            crate::native::Outcome::Commit(c) => {
                                committing = Some(Committing::Native(c))
                            }
                        }
                    }
                    (Some(Committing::Legacy(c)), _) => match c.answer(shared, done) {
                        Some(r) => r.write_to(&mut output),
                        None => closing = true,
                    },
                    _ => unreachable!("a commit belongs to the connection's protocol"),
                }
            }
            granted = wait => {
                let w = pending.take().expect("a wait was pending");
                if let Some(Protocol::Native(n)) = protocol.as_mut() {
                    committing = n
                        .finish_wait(shared, w, granted, &mut output)
                        .map(Committing::Native);
                }
            }
            // Whole frames only: a push goes after the last complete reply.
            event = pushed => {
                if let Some(Protocol::Native(n)) = protocol.as_mut() {
                    n.push_event(shared, event, &mut output);
                }
            }
            event = io => match event {
                Io::Wrote(n, flushed) => {
                    output.advance(n);
                    unflushed = !flushed;
                }
                // What the client sent before closing its side is answered, then the
                // connection closes (a wait it leaves is withdrawn above).
                Io::Read(0) => eof = true,
                Io::Read(_) => shared.activity.request(),
                Io::Failed(why) => return why,
            },
            // Made only when polled: select! builds every branch's future, disabled or not,
            // and a sleep reads the clock when made.
            _ = async { tokio::time::sleep(idle.unwrap_or_default()).await }, if idle.is_some() => return "idle timeout",
            _ = async { tokio::time::sleep_until(login.expect("enabled only when set")).await }, if login.is_some() => {
                tracing::debug!(conn = conn.0, "not logged in within the login timeout: closing");
                return "login timeout";
            }
            _ = &mut cancelled => return "shutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_future_is_small() {
        let shared = Shared::new(
            crate::ServerConfig::new("127.0.0.1", 0, "k"),
            crate::Clock::real(),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let shutdown = CancellationToken::new();
        let (mut pending, mut counted) = (None, None);
        let f = drive(
            &mut s,
            &shared,
            ConnId(1),
            "127.0.0.1".parse().unwrap(),
            &shutdown,
            None,
            &mut pending,
            &mut counted,
        );
        // Part of the per-connection memory budget (8 KiB, BENCHMARKS.md): the read
        // buffer must not live in the future.
        assert!(
            std::mem::size_of_val(&f) < 2048,
            "{} bytes",
            std::mem::size_of_val(&f)
        );
        drop(f);
        let shared = Arc::new(shared);
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let peer = s.local_addr().unwrap();
        let whole = serve(s, peer, shared, shutdown, permit);
        assert!(
            std::mem::size_of_val(&whole) < 3072,
            "{} bytes",
            std::mem::size_of_val(&whole)
        );
    }
}
