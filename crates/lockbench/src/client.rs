//! Protocol clients: one connection, one session; requests are sent in batches (a batch of
//! one is ping-pong) and their replies read back in order.
//!
//! - legacy: lockd's signed line protocol (`ACQUIRE`/`RELEASE`, HMAC-SHA1).
//! - native: lockd's RESP commands (`ACQUIRE mode timeout key...`, `RELEASE mode key...`).
//! - redis: the lock most Redis users run (`SET key token NX PX ttl`, `DEL key`); EX only.

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use lockd_proto::legacy::{AuthScheme, Signer};
use lockd_proto::resp::encode_request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{LockMode, Protocol};

/// One request of a batch.
#[derive(Clone, Debug)]
pub enum Req {
    Acquire {
        keys: Vec<u64>,
        mode: LockMode,
        timeout_ms: u64,
    },
    Release {
        keys: Vec<u64>,
        mode: LockMode,
    },
}

/// Its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    Refused,
    Released,
}

pub struct Client {
    stream: TcpStream,
    protocol: Protocol,
    session: String,
    signer: Signer,
    out: BytesMut,
    input: BytesMut,
}

/// The wire name of key number `n`: 31 bytes, as MediaWiki's keys are.
pub fn key_name(n: u64) -> String {
    format!("{n:031}")
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
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            protocol,
            session: format!("lockbench{id:023}"),
            signer: Signer::new(auth_key.as_bytes(), AuthScheme::Hmac),
            out: BytesMut::new(),
            input: BytesMut::with_capacity(4096),
        };
        match protocol {
            Protocol::Legacy => {}
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

    /// A request that touches no lock, to check that the connection is served.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
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

    /// Acquires one key, waiting up to `timeout_ms`; Ok(false) when not granted.
    pub async fn acquire_one(
        &mut self,
        key: u64,
        mode: LockMode,
        timeout_ms: u64,
    ) -> anyhow::Result<bool> {
        let req = Req::Acquire {
            keys: vec![key],
            mode,
            timeout_ms,
        };
        Ok(self.batch(std::slice::from_ref(&req)).await? == [Outcome::Granted])
    }

    pub async fn release_one(&mut self, key: u64, mode: LockMode) -> anyhow::Result<()> {
        self.batch(&[Req::Release {
            keys: vec![key],
            mode,
        }])
        .await
        .map(|_| ())
    }

    /// Sends the batch at once, then reads every reply, in order.
    pub async fn batch(&mut self, reqs: &[Req]) -> anyhow::Result<Vec<Outcome>> {
        for r in reqs {
            self.encode(r)?;
        }
        self.flush().await?;
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            out.push(self.read_outcome(r).await?);
        }
        Ok(out)
    }

    fn encode(&mut self, r: &Req) -> anyhow::Result<()> {
        match (self.protocol, r) {
            (Protocol::Legacy, Req::Acquire { keys, mode, .. }) => {
                self.legacy("ACQUIRE", *mode, keys)
            }
            (Protocol::Legacy, Req::Release { keys, mode }) => self.legacy("RELEASE", *mode, keys),
            (
                Protocol::Native,
                Req::Acquire {
                    keys,
                    mode,
                    timeout_ms,
                },
            ) => {
                let t = timeout_ms.to_string();
                let names: Vec<String> = keys.iter().map(|&k| key_name(k)).collect();
                let mut args: Vec<&str> = vec!["ACQUIRE", mode_str(*mode), &t];
                args.extend(names.iter().map(|s| s.as_str()));
                encode_request(&args, &mut self.out);
            }
            (Protocol::Native, Req::Release { keys, mode }) => {
                let names: Vec<String> = keys.iter().map(|&k| key_name(k)).collect();
                let mut args: Vec<&str> = vec!["RELEASE", mode_str(*mode)];
                args.extend(names.iter().map(|s| s.as_str()));
                encode_request(&args, &mut self.out);
            }
            (Protocol::Redis, Req::Acquire { keys, mode, .. }) => {
                if keys.len() != 1 || *mode != LockMode::Ex {
                    bail!("the Redis lock takes one key, exclusively");
                }
                let k = key_name(keys[0]);
                encode_request(
                    &["SET", &k, &self.session, "NX", "PX", "30000"],
                    &mut self.out,
                );
            }
            (Protocol::Redis, Req::Release { keys, .. }) => {
                let names: Vec<String> = keys.iter().map(|&k| key_name(k)).collect();
                let mut args: Vec<&str> = vec!["DEL"];
                args.extend(names.iter().map(|s| s.as_str()));
                encode_request(&args, &mut self.out);
            }
        }
        Ok(())
    }

    fn legacy(&mut self, cmd: &str, mode: LockMode, keys: &[u64]) {
        let values = keys
            .iter()
            .map(|&k| key_name(k))
            .collect::<Vec<_>>()
            .join("|");
        let line = self.signer.sign_line(
            self.session.as_bytes(),
            cmd.as_bytes(),
            mode_str(mode).as_bytes(),
            values.as_bytes(),
        );
        self.out.extend_from_slice(&line);
        self.out.extend_from_slice(b"\n");
    }

    async fn read_outcome(&mut self, r: &Req) -> anyhow::Result<Outcome> {
        let line = self.read_line().await?;
        let acquire = matches!(r, Req::Acquire { .. });
        let o = match (self.protocol, acquire, &line[..]) {
            (Protocol::Legacy, true, b"ACQUIRED") => Outcome::Granted,
            (Protocol::Legacy, true, b"CANT_ACQUIRE") => Outcome::Refused,
            (Protocol::Legacy, false, b"RELEASED") => Outcome::Released,
            (Protocol::Native, true, l) if l.first() == Some(&b':') => Outcome::Granted,
            (Protocol::Native | Protocol::Redis, true, b"$-1" | b"_") => Outcome::Refused,
            (Protocol::Redis, true, b"+OK") => Outcome::Granted,
            (Protocol::Native | Protocol::Redis, false, l) if l.first() == Some(&b':') => {
                Outcome::Released
            }
            (_, _, l) => bail!("unexpected reply: {}", String::from_utf8_lossy(l)),
        };
        Ok(o)
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// One reply line without its line ending.
    async fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.input.iter().position(|&b| b == b'\n') {
                let mut line = self.input.split_to(i + 1).to_vec();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.input.capacity() - self.input.len() < 1024 {
                self.input.reserve(4096);
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                bail!("server closed the connection");
            }
            if self.input.len() > 1 << 20 {
                self.input.advance(0);
                bail!("reply line too long");
            }
        }
    }
}
