//! Protocol clients: one connection, one session, acquire and release of numbered keys.

use anyhow::{bail, Context};
use lockd_proto::legacy::{AuthScheme, Signer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{LockMode, Protocol};

pub struct Client {
    stream: BufReader<TcpStream>,
    protocol: Protocol,
    session: String,
    signer: Signer,
    line: String,
    out: Vec<u8>,
}

/// The 31-byte key for key number `n` (what MediaWiki sends is also 31 bytes).
pub fn key_name(n: u64) -> String {
    format!("{n:031}")
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
        Ok(Client {
            stream: BufReader::new(stream),
            protocol,
            session: format!("lockbench{id:023}"),
            signer: Signer::new(auth_key.as_bytes(), AuthScheme::Hmac),
            line: String::new(),
            out: Vec::new(),
        })
    }

    /// Acquires the keys (all or nothing); Ok(false) when refused.
    pub async fn acquire(&mut self, keys: &[u64], mode: LockMode) -> anyhow::Result<bool> {
        let reply = self.legacy("ACQUIRE", mode, keys).await?;
        match reply.as_str() {
            "ACQUIRED" => Ok(true),
            "CANT_ACQUIRE" => Ok(false),
            other => bail!("unexpected reply to ACQUIRE: {other:?}"),
        }
    }

    pub async fn release(&mut self, keys: &[u64], mode: LockMode) -> anyhow::Result<()> {
        let reply = self.legacy("RELEASE", mode, keys).await?;
        if reply != "RELEASED" {
            bail!("unexpected reply to RELEASE: {reply:?}");
        }
        Ok(())
    }

    /// A request that touches no lock (STAT), to check the connection is served.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        match self.protocol {
            Protocol::Legacy => {
                self.send_legacy("STAT", "", "").await?;
                let r = self.read_line().await?;
                if !r.contains(':') {
                    bail!("unexpected reply to STAT: {r:?}");
                }
            }
        }
        Ok(())
    }

    async fn legacy(&mut self, cmd: &str, mode: LockMode, keys: &[u64]) -> anyhow::Result<String> {
        let ty = match mode {
            LockMode::Sh => "SH",
            _ => "EX",
        };
        let values = keys
            .iter()
            .map(|&k| key_name(k))
            .collect::<Vec<_>>()
            .join("|");
        self.send_legacy(cmd, ty, &values).await?;
        self.read_line().await
    }

    async fn send_legacy(&mut self, cmd: &str, ty: &str, values: &str) -> anyhow::Result<()> {
        self.out = self.signer.sign_line(
            self.session.as_bytes(),
            cmd.as_bytes(),
            ty.as_bytes(),
            values.as_bytes(),
        );
        self.out.push(b'\n');
        self.stream.get_mut().write_all(&self.out).await?;
        Ok(())
    }

    async fn read_line(&mut self) -> anyhow::Result<String> {
        self.line.clear();
        if self.stream.read_line(&mut self.line).await? == 0 {
            bail!("server closed the connection");
        }
        Ok(self.line.trim_end().to_string())
    }
}
