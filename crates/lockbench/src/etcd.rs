//! etcd's v3 lock API, as `etcdctl lock` uses it: one lease per connection (granted at
//! connect, its TTL longer than the run), `Lock(name, lease)` returns the lock's own key
//! once it is held (it waits: etcd has no try-lock), `Unlock(key)` lets it go. Spoken
//! through etcd's JSON gateway on its client port (`/v3/lease/grant`, `/v3/lock/lock`,
//! `/v3/lock/unlock`), over HTTP/1.1 with hyper, so lockbench needs no gRPC code generation
//! (no `protoc`). Locks are exclusive, one key a request, one request in flight a
//! connection (HTTP/1.1 without pipelining).

use std::collections::HashMap;

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{json, Value};

use crate::client::key_name;

/// The longest one request may take (a lock waits for its holder's unlock).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Etcd {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    lease: String,
    /// Key number -> the lock's key that etcd returned (what `Unlock` names).
    held: HashMap<u64, String>,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl Etcd {
    /// Connects to `addr` (etcd's client URL's host:port) and grants the connection's
    /// lease, `ttl_s` seconds.
    pub async fn connect(addr: &str, ttl_s: u64) -> anyhow::Result<Etcd> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to etcd at {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut e = Etcd {
            sender,
            host: addr.to_string(),
            lease: String::new(),
            held: HashMap::new(),
        };
        let r = e.call("/v3/lease/grant", json!({ "TTL": ttl_s })).await?;
        e.lease = match &r["ID"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => bail!("etcd granted no lease: {other}"),
        };
        Ok(e)
    }

    async fn call(&mut self, path: &str, body: Value) -> anyhow::Result<Value> {
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        // Bounded: a lock that never comes (a lost unlock) is an error, not a hang.
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, async {
            self.sender.ready().await?;
            let resp = self.sender.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        })
        .await
        .with_context(|| format!("etcd {path}: no answer within {CALL_TIMEOUT:?}"))??;
        if !status.is_success() {
            bail!("etcd {path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Takes the lock on key number `key` (waits until it is held).
    pub async fn lock(&mut self, key: u64) -> anyhow::Result<()> {
        let name = key_name(key);
        let r = self
            .call(
                "/v3/lock/lock",
                json!({ "name": b64(&name), "lease": self.lease }),
            )
            .await?;
        let Some(k) = r["key"].as_str() else {
            bail!("etcd's lock reply has no key: {r}");
        };
        self.held.insert(key, k.to_string());
        Ok(())
    }

    /// A request that touches no lock (etcd's status).
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        self.call("/v3/maintenance/status", json!({}))
            .await
            .map(|_| ())
    }

    /// Lets go of key number `key`; false if this connection did not hold it.
    pub async fn unlock(&mut self, key: u64) -> anyhow::Result<bool> {
        let Some(k) = self.held.remove(&key) else {
            return Ok(false);
        };
        self.call("/v3/lock/unlock", json!({ "key": k })).await?;
        Ok(true)
    }
}
