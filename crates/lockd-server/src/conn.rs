//! One connection: reading and writing without holding a buffer while idle, detecting the
//! protocol from the first byte, bounding what a client can make the server hold (unread
//! replies, partial requests), and closing on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::legacy::Legacy;
use crate::shared::Shared;

const READ_CHUNK: usize = 8 * 1024;

enum Protocol {
    Legacy(Legacy),
}

pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let conn = shared.new_conn_id();
    shared.counters.connections.fetch_add(1, Relaxed);
    shared.counters.connections_total.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    let why = drive(&stream, &shared, conn, &shutdown).await;
    tracing::debug!(conn = conn.0, %peer, reason = why, "connection closed");
    shared.disconnect(conn);
    shared.counters.connections.fetch_sub(1, Relaxed);
}

/// Runs the connection until it ends; returns why it ended.
async fn drive(
    stream: &TcpStream,
    shared: &Shared,
    conn: lockd_core::ConnId,
    shutdown: &CancellationToken,
) -> &'static str {
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let mut protocol: Option<Protocol> = None;
    let mut eof = false;
    let max_output = shared.config.max_pending_output;
    loop {
        if !input.is_empty() {
            let p = protocol.get_or_insert_with(|| Protocol::Legacy(Legacy::new(conn)));
            match p {
                Protocol::Legacy(l) => {
                    if l.process(shared, &mut input, &mut output).is_err() {
                        tracing::warn!(
                            conn = conn.0,
                            "request line longer than 65535 bytes: closing the connection"
                        );
                        return "line too long";
                    }
                }
            }
        }
        if output.len() > max_output {
            tracing::warn!(
                conn = conn.0,
                pending = output.len(),
                "client does not read its replies: closing the connection"
            );
            return "output bound";
        }
        if eof && output.is_empty() {
            return "closed by peer";
        }
        // Idle connections hold no buffers.
        if input.is_empty() && input.capacity() > 0 {
            input = BytesMut::new();
        }
        if output.is_empty() && output.capacity() > 0 {
            output = BytesMut::new();
        }
        let idle = shared.config.idle_timeout.filter(|_| output.is_empty());
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return "shutdown",
            r = stream.writable(), if !output.is_empty() => {
                if r.is_err() {
                    return "write error";
                }
                match stream.try_write(&output) {
                    Ok(n) => output.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return "write error",
                }
            }
            r = stream.readable(), if !eof => {
                if r.is_err() {
                    return "read error";
                }
                input.reserve(READ_CHUNK);
                match stream.try_read_buf(&mut input) {
                    // The peer closed its side: answer what it sent, then close.
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return "read error",
                }
            }
            _ = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => return "idle timeout",
        }
    }
}
