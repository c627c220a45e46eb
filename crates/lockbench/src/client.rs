//! Protocol clients: one connection, one session; requests are sent in batches (a batch of
//! one is ping-pong) and their replies read back in order.
//!
//! - legacy: lockd's signed line protocol (`ACQUIRE`/`RELEASE`, HMAC-SHA1).
//! - native: lockd's RESP commands (`ACQUIRE mode timeout key...`, `RELEASE mode key...`).
//! - redis: the lock most Redis users run (`SET key token NX PX ttl`, `DEL key`); EX only.
//! - etcd: etcd's v3 lock API with a lease per connection (see `etcd`); EX only, waits.

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use lockd_proto::legacy::{AuthScheme, Signer};
use lockd_proto::resp::{encode_array_header, encode_bulk, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{LockMode, Protocol};

/// One request of a batch; it borrows its keys, so a workload can reuse one buffer.
#[derive(Clone, Copy, Debug)]
pub enum Req<'a> {
    Acquire {
        keys: &'a [u64],
        mode: LockMode,
        timeout_ms: u64,
    },
    Release {
        keys: &'a [u64],
        mode: LockMode,
    },
}

/// Its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    Refused,
    /// How many locks were let go, where the protocol says.
    Released(Option<u64>),
}

pub struct Client {
    /// The line/RESP connection (not used for etcd, which speaks HTTP through `etcd`).
    stream: Option<TcpStream>,
    etcd: Option<crate::etcd::Etcd>,
    protocol: Protocol,
    session: String,
    signer: Signer,
    out: BytesMut,
    input: BytesMut,
    /// A legacy request's values, reused.
    values: Vec<u8>,
    /// The fencing token of each request of the last batch that was a grant with one
    /// (native), in order; `None` for the others.
    pub tokens: Vec<Option<u64>>,
    last_token: Option<u64>,
    /// Native: the lease every ACQUIRE asks for (`--lease-ms`).
    pub lease_ms: Option<u64>,
}

/// The wire name of key number `n`: 31 bytes, as MediaWiki's keys are (its decimal
/// digits, zero-padded). Made on the stack: the client must cost less than the servers it
/// measures.
pub fn key_name(mut n: u64) -> [u8; 31] {
    let mut k = [b'0'; 31];
    for d in k.iter_mut().rev() {
        if n == 0 {
            break;
        }
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

fn mode_str(m: LockMode) -> &'static str {
    match m {
        LockMode::Sh => "SH",
        _ => "EX",
    }
}

impl Client {
    pub async fn connect(
        addr: &str,
        protocol: Protocol,
        auth_key: &str,
        id: u32,
    ) -> anyhow::Result<Client> {
        let etcd = match protocol {
            // A lease longer than any run: the locks go with it when etcd is dropped.
            Protocol::Etcd => Some(crate::etcd::Etcd::connect(addr, 3600).await?),
            _ => None,
        };
        let stream = match protocol {
            Protocol::Etcd => None,
            _ => Some(Self::dial(addr).await?),
        };
        let mut c = Client {
            stream,
            etcd,
            protocol,
            session: format!("lockbench{id:023}"),
            signer: Signer::new(auth_key.as_bytes(), AuthScheme::Hmac),
            out: BytesMut::new(),
            input: BytesMut::with_capacity(4096),
            values: Vec::new(),
            tokens: Vec::new(),
            last_token: None,
            lease_ms: None,
        };
        match protocol {
            Protocol::Legacy | Protocol::Etcd => {}
            Protocol::Native => {
                c.command(&["AUTH", auth_key]).await?;
            }
            Protocol::Redis => {
                if !auth_key.is_empty() {
                    let _ = c.command(&["AUTH", auth_key]).await;
                }
            }
        }
        Ok(c)
    }

    async fn dial(addr: &str) -> anyhow::Result<TcpStream> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A request that touches no lock, to check that the connection is served.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        if let Some(e) = self.etcd.as_mut() {
            return e.ping().await;
        }
        match self.protocol {
            Protocol::Legacy => {
                let line = self
                    .signer
                    .sign_line(self.session.as_bytes(), b"STAT", b"", b"");
                self.out.extend_from_slice(&line);
                self.out.extend_from_slice(b"\n");
                self.flush().await?;
                let r = self.read_line().await?;
                if !r.contains(&b':') {
                    bail!("unexpected reply to STAT: {}", String::from_utf8_lossy(&r));
                }
                Ok(())
            }
            _ => self.command(&["PING"]).await.map(|_| ()),
        }
    }

    async fn command(&mut self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        encode_request(args, &mut self.out);
        self.flush().await?;
        let line = self.read_line().await?;
        if line.first() == Some(&b'-') {
            bail!("{}", String::from_utf8_lossy(&line[1..]));
        }
        Ok(line)
    }

    /// A native command; its reply as it came, an error (`-...`) too, which is not an
    /// `Err` here: only a lost connection is. A bulk reply is its content.
    pub async fn call(&mut self, args: &[&str]) -> anyhow::Result<String> {
        encode_request(args, &mut self.out);
        self.flush().await?;
        let line = self.read_line().await?;
        let line = match line.first() {
            Some(b'$') if line != b"$-1" => self.read_line().await?,
            _ => line,
        };
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Acquires one key, waiting up to `timeout_ms`; Ok(false) when not granted.
    pub async fn acquire_one(
        &mut self,
        key: u64,
        mode: LockMode,
        timeout_ms: u64,
    ) -> anyhow::Result<bool> {
        let req = Req::Acquire {
            keys: &[key],
            mode,
            timeout_ms,
        };
        let mut out = Vec::with_capacity(1);
        self.batch(&[req], &mut out).await?;
        Ok(out == [Outcome::Granted])
    }

    /// Releases one key held; an error if the server let go of nothing.
    pub async fn release_one(&mut self, key: u64, mode: LockMode) -> anyhow::Result<()> {
        let req = Req::Release { keys: &[key], mode };
        let mut out = Vec::with_capacity(1);
        self.batch(&[req], &mut out).await?;
        if out == [Outcome::Released(Some(0))] {
            bail!("a release of a lock held was answered :0");
        }
        Ok(())
    }

    /// Sends one request and does not wait for its reply (it may wait in a queue).
    pub async fn send(&mut self, r: &Req<'_>) -> anyhow::Result<()> {
        self.encode(r)?;
        self.flush().await
    }

    /// Sends one request and returns its reply line as it is (`None` if the connection
    /// closed).
    pub async fn acquire_reply(&mut self, r: &Req<'_>) -> anyhow::Result<Option<Vec<u8>>> {
        self.send(r).await?;
        match self.read_line().await {
            Ok(l) => Ok(Some(l)),
            Err(_) => Ok(None),
        }
    }

    /// Sends the batch at once, then reads every reply, in order, into `outcomes`
    /// (cleared first).
    pub async fn batch(
        &mut self,
        reqs: &[Req<'_>],
        outcomes: &mut Vec<Outcome>,
    ) -> anyhow::Result<()> {
        if let Some(e) = self.etcd.as_mut() {
            // One at a time: HTTP/1.1 without pipelining.
            outcomes.clear();
            for r in reqs {
                outcomes.push(match *r {
                    Req::Acquire { keys: &[k], .. } => {
                        e.lock(k).await?;
                        Outcome::Granted
                    }
                    Req::Release { keys: &[k], .. } => {
                        Outcome::Released(Some(u64::from(e.unlock(k).await?)))
                    }
                    _ => bail!("the etcd lock takes one key a request"),
                });
            }
            return Ok(());
        }
        for r in reqs {
            self.encode(r)?;
        }
        self.flush().await?;
        outcomes.clear();
        self.tokens.clear();
        for r in reqs {
            outcomes.push(self.read_outcome(r).await?);
            self.tokens.push(self.last_token.take());
        }
        Ok(())
    }

    fn encode(&mut self, r: &Req<'_>) -> anyhow::Result<()> {
        match (self.protocol, *r) {
            (Protocol::Legacy, Req::Acquire { keys, mode, .. }) => {
                self.legacy("ACQUIRE", mode, keys)
            }
            (Protocol::Legacy, Req::Release { keys, mode }) => self.legacy("RELEASE", mode, keys),
            (
                Protocol::Native,
                Req::Acquire {
                    keys,
                    mode,
                    timeout_ms,
                },
            ) => {
                let lease = 2 * usize::from(self.lease_ms.is_some());
                let permits = mode == LockMode::Permits;
                let n = if permits { 6 } else { 3 + keys.len() };
                encode_array_header(n + lease, &mut self.out);
                encode_bulk(b"ACQUIRE", &mut self.out);
                if let Some(ms) = self.lease_ms {
                    encode_bulk(b"LEASE", &mut self.out);
                    encode_bulk(itoa::Buffer::new().format(ms).as_bytes(), &mut self.out);
                }
                if permits {
                    let [k] = keys else {
                        bail!("--mode permits takes one key a request");
                    };
                    encode_bulk(b"PERMITS", &mut self.out);
                    encode_bulk(&key_name(*k), &mut self.out);
                    encode_bulk(b"1", &mut self.out);
                    encode_bulk(b"1", &mut self.out);
                } else {
                    encode_bulk(mode_str(mode).as_bytes(), &mut self.out);
                }
                encode_bulk(
                    itoa::Buffer::new().format(timeout_ms).as_bytes(),
                    &mut self.out,
                );
                if !permits {
                    for &k in keys {
                        encode_bulk(&key_name(k), &mut self.out);
                    }
                }
            }
            (
                Protocol::Native,
                Req::Release {
                    keys,
                    mode: LockMode::Permits,
                },
            ) => {
                encode_array_header(2 + keys.len(), &mut self.out);
                encode_bulk(b"RELEASE", &mut self.out);
                encode_bulk(b"PERMITS", &mut self.out);
                for &k in keys {
                    encode_bulk(&key_name(k), &mut self.out);
                }
            }
            (Protocol::Native, Req::Release { keys, mode }) => {
                encode_array_header(2 + keys.len(), &mut self.out);
                encode_bulk(b"RELEASE", &mut self.out);
                encode_bulk(mode_str(mode).as_bytes(), &mut self.out);
                for &k in keys {
                    encode_bulk(&key_name(k), &mut self.out);
                }
            }
            (Protocol::Redis, Req::Acquire { keys, mode, .. }) => {
                let ([k], LockMode::Ex) = (keys, mode) else {
                    bail!("the Redis lock takes one key, exclusively");
                };
                encode_array_header(6, &mut self.out);
                encode_bulk(b"SET", &mut self.out);
                encode_bulk(&key_name(*k), &mut self.out);
                encode_bulk(self.session.as_bytes(), &mut self.out);
                encode_bulk(b"NX", &mut self.out);
                encode_bulk(b"PX", &mut self.out);
                encode_bulk(b"30000", &mut self.out);
            }
            (Protocol::Redis, Req::Release { keys, .. }) => {
                encode_array_header(1 + keys.len(), &mut self.out);
                encode_bulk(b"DEL", &mut self.out);
                for &k in keys {
                    encode_bulk(&key_name(k), &mut self.out);
                }
            }
            (Protocol::Etcd, _) => bail!("etcd requests go through its HTTP client"),
        }
        Ok(())
    }

    fn legacy(&mut self, cmd: &str, mode: LockMode, keys: &[u64]) {
        self.values.clear();
        for (i, &k) in keys.iter().enumerate() {
            if i > 0 {
                self.values.push(b'|');
            }
            self.values.extend_from_slice(&key_name(k));
        }
        let line = self.signer.sign_line(
            self.session.as_bytes(),
            cmd.as_bytes(),
            mode_str(mode).as_bytes(),
            &self.values,
        );
        self.out.extend_from_slice(&line);
        self.out.extend_from_slice(b"\n");
    }

    async fn read_outcome(&mut self, r: &Req<'_>) -> anyhow::Result<Outcome> {
        let n = self.next_line().await?;
        let line = trim_line(&self.input[..n]);
        let acquire = matches!(r, Req::Acquire { .. });
        let o = match (self.protocol, acquire, line) {
            (Protocol::Legacy, true, b"ACQUIRED") => Outcome::Granted,
            (Protocol::Legacy, true, b"CANT_ACQUIRE") => Outcome::Refused,
            // The legacy protocol does not say how many.
            (Protocol::Legacy, false, b"RELEASED") => Outcome::Released(None),
            (Protocol::Native, true, l) if l.first() == Some(&b':') => {
                self.last_token = std::str::from_utf8(&l[1..])
                    .ok()
                    .and_then(|n| n.parse().ok());
                Outcome::Granted
            }
            (Protocol::Native | Protocol::Redis, true, b"$-1" | b"_") => Outcome::Refused,
            (Protocol::Redis, true, b"+OK") => Outcome::Granted,
            // How many locks a release let go of: the workload checks it against what it
            // believed it held (a release answered :0 is no success).
            (Protocol::Native | Protocol::Redis, false, l) if l.first() == Some(&b':') => {
                let n = std::str::from_utf8(&l[1..])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("bad release reply {}", String::from_utf8_lossy(l)))?;
                Outcome::Released(Some(n))
            }
            (_, _, l) => bail!("unexpected reply: {}", String::from_utf8_lossy(l)),
        };
        self.input.advance(n);
        Ok(o)
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream
            .as_mut()
            .context("no line connection")?
            .write_all(&self.out)
            .await?;
        self.out.clear();
        Ok(())
    }

    /// One reply line without its line ending.
    async fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        let n = self.next_line().await?;
        let line = trim_line(&self.input[..n]).to_vec();
        self.input.advance(n);
        Ok(line)
    }

    /// Reads until the input holds a whole line; returns its length with the line ending.
    async fn next_line(&mut self) -> anyhow::Result<usize> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.input) {
                return Ok(i + 1);
            }
            if self.input.capacity() - self.input.len() < 1024 {
                self.input.reserve(4096);
            }
            let stream = self.stream.as_mut().context("no line connection")?;
            if stream.read_buf(&mut self.input).await? == 0 {
                bail!("server closed the connection");
            }
            if self.input.len() > 1 << 20 {
                bail!("reply line too long");
            }
        }
    }
}

/// A line without its `\n` or `\r\n`.
fn trim_line(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_31_zero_padded_digits() {
        assert_eq!(&key_name(0), b"0000000000000000000000000000000");
        assert_eq!(&key_name(42), b"0000000000000000000000000000042");
        let max = key_name(u64::MAX);
        assert_eq!(
            std::str::from_utf8(&max).unwrap(),
            format!("{:031}", u64::MAX)
        );
    }

    #[test]
    fn line_endings_are_trimmed() {
        assert_eq!(trim_line(b"+OK\r\n"), b"+OK");
        assert_eq!(trim_line(b"ACQUIRED\n"), b"ACQUIRED");
        assert_eq!(trim_line(b"\n"), b"");
    }
}
