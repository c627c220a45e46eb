//! One connection to lockd: requests are queued to a writer task in call order, replies are
//! matched to them in the same order by a reader task. Queueing is synchronous, so a guard
//! dropped outside async code still releases in order with later requests. When the
//! connection breaks, every pending and later call fails with `ConnectionLost`, and
//! [`Conn::is_lost`] says so.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use lockd_proto::resp::{encode_request, Value};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::Error;

type Reply = Result<Value, Error>;
/// What to do with a reply whose caller stopped waiting (its future was dropped): a grant
/// nobody will hold a guard for must be let go.
pub(crate) type Orphan = Box<dyn FnOnce(Value) + Send>;
/// Where a reply goes; `None`: nobody waits for it (a release from `Drop`).
type Slot = Option<(oneshot::Sender<Reply>, Option<Orphan>)>;

pub(crate) struct Conn {
    tx: mpsc::UnboundedSender<(BytesMut, Slot)>,
    state: Arc<State>,
}

/// Where RESP3 push messages go (they answer no request).
pub(crate) type PushSink = Arc<dyn Fn(Vec<Value>) + Send + Sync>;

struct State {
    lost: AtomicBool,
    lost_notify: Notify,
    pending: Mutex<VecDeque<Slot>>,
    push: Mutex<Option<PushSink>>,
}

impl State {
    fn fail(&self) {
        self.lost.store(true, Ordering::SeqCst);
        let drained: Vec<Slot> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for (tx, _) in drained.into_iter().flatten() {
            let _ = tx.send(Err(Error::ConnectionLost));
        }
        self.lost_notify.notify_waiters();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing the queue ends the writer task, which closes the socket.
        self.state.lost_notify.notify_waiters();
    }
}

impl Conn {
    /// Connects over TCP, then TLS when `tls` is given.
    pub async fn open(addr: &str, tls: Option<&crate::tls::TlsOptions>) -> Result<Conn, Error> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.to_string(),
                source,
            })?;
        stream.set_nodelay(true)?;
        match tls {
            None => Ok(Conn::over(stream)),
            Some(t) => Ok(Conn::over(t.handshake(stream).await?)),
        }
    }

    fn over<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Conn {
        let (read, mut write) = tokio::io::split(stream);
        let state = Arc::new(State {
            lost: AtomicBool::new(false),
            lost_notify: Notify::new(),
            pending: Mutex::new(VecDeque::new()),
            push: Mutex::new(None),
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<(BytesMut, Slot)>();
        let st = state.clone();
        tokio::spawn(async move {
            while let Some((bytes, slot)) = rx.recv().await {
                st.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(slot);
                if write.write_all(&bytes).await.is_err() {
                    st.fail();
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        let st = state.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            loop {
                match read_value(&mut reader).await {
                    Ok(Value::Push(items)) => {
                        let sink = st.push.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        if let Some(f) = sink {
                            f(items);
                        }
                    }
                    Ok(v) => {
                        let slot = st
                            .pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .pop_front();
                        if let Some(Some((tx, orphan))) = slot {
                            if let Err(Ok(v)) = tx.send(Ok(v)) {
                                if let Some(f) = orphan {
                                    f(v);
                                }
                            }
                        }
                    }
                    Err(_) => {
                        st.fail();
                        return;
                    }
                }
            }
        });
        Conn { tx, state }
    }

    /// Queues a request without waiting for its reply.
    pub fn send_only(&self, args: &[&[u8]]) {
        let mut buf = BytesMut::new();
        encode_request(args, &mut buf);
        let _ = self.tx.send((buf, None));
    }

    /// Sends a request and waits for its reply. A server error is `Ok(Value::Error)`.
    pub async fn call(&self, args: &[&[u8]]) -> Reply {
        self.call_or(args, None).await
    }

    /// [`Conn::call`], and if the caller stops waiting (drops this future) before the
    /// reply comes, `orphan` gets the reply instead (from the reader task).
    pub async fn call_or(&self, args: &[&[u8]], orphan: Option<Orphan>) -> Reply {
        if self.is_lost() {
            return Err(Error::ConnectionLost);
        }
        let mut buf = BytesMut::new();
        encode_request(args, &mut buf);
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((buf, Some((tx, orphan))))
            .map_err(|_| Error::ConnectionLost)?;
        rx.await.map_err(|_| Error::ConnectionLost)?
    }

    /// Hands the connection's push messages to `sink` from now on.
    pub fn on_push(&self, sink: PushSink) {
        *self.state.push.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    pub fn is_lost(&self) -> bool {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// Resolves when the connection is lost.
    pub async fn lost(&self) {
        loop {
            let n = self.state.lost_notify.notified();
            if self.is_lost() {
                return;
            }
            n.await;
        }
    }
}

const MAX_REPLY_BULK: usize = 64 * 1024 * 1024;

fn read_value<'a, R: AsyncBufRead + Unpin + Send>(
    r: &'a mut R,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Value>> + Send + 'a>> {
    Box::pin(async move {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        let body = line.trim_end_matches(['\r', '\n']);
        if body.is_empty() {
            return Err(bad("empty reply line"));
        }
        let (kind, rest) = body.split_at(1);
        let int = |s: &str| s.parse::<i64>().map_err(|_| bad("bad integer in reply"));
        Ok(match kind {
            "+" => Value::Simple(rest.to_string()),
            "-" => Value::Error(rest.to_string()),
            ":" => Value::Integer(int(rest)?),
            "_" => Value::Null,
            "$" | "*" if rest == "-1" => Value::Null,
            "$" => {
                let n = int(rest)? as usize;
                if n > MAX_REPLY_BULK {
                    return Err(bad("reply too long"));
                }
                let mut buf = vec![0u8; n + 2];
                r.read_exact(&mut buf).await?;
                buf.truncate(n);
                Value::Bulk(Bytes::from(buf))
            }
            "*" | ">" => {
                let n = int(rest)?;
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(read_value(r).await?);
                }
                if kind == ">" {
                    Value::Push(items)
                } else {
                    Value::Array(items)
                }
            }
            "%" => {
                let n = int(rest)?;
                let mut items = Vec::new();
                for _ in 0..n {
                    let k = read_value(r).await?;
                    let v = read_value(r).await?;
                    items.push((k, v));
                }
                Value::Map(items)
            }
            _ => return Err(bad("unknown reply type")),
        })
    })
}
