//! Quorum locks over several independent lockd servers, as MediaWiki's `LSLockManager` and
//! Redlock do: a key maps to a bucket by a stable hash; a bucket is a list of servers; a
//! lock is held when a majority of its bucket's servers granted it. What was taken is
//! released when the majority is not reached.
//!
//! What this does not give: a global fencing order. Each server issues its own tokens, so
//! [`QuorumGuard::tokens`] are per server and cannot be compared across servers. Nor does
//! it survive a majority of a bucket's servers losing their state at once (a restart of a
//! server forgets its locks): use a replicated lockd for that.

use std::time::Duration;

use tokio::sync::Mutex;

use crate::client::Client;
use crate::error::Error;
use crate::guard::Guard;
use crate::types::Mode;

/// One server of a bucket: where it is, and its clients (one session each).
struct Server {
    addr: String,
    auth_key: String,
    /// Connected clients. One is free when no guard and no acquire uses it (the pool holds
    /// its only reference); each acquire takes a free one, or connects another, so that
    /// concurrent acquirers never share a session: a session never conflicts with itself,
    /// and two tasks sharing one would both be granted EX on one key.
    pool: Mutex<Vec<Client>>,
}

impl Server {
    /// A client no one else uses now, connecting one if needed; `None` if unreachable.
    async fn client(&self) -> Option<Client> {
        let mut pool = self.pool.lock().await;
        pool.retain(|c| !c.is_connection_lost());
        // Taken while the pool is locked: the clone makes it busy for the next caller.
        if let Some(c) = pool.iter().find(|c| c.is_unused()) {
            return Some(c.clone());
        }
        let c = Client::connect(&self.addr, &self.auth_key).await.ok()?;
        pool.push(c.clone());
        Some(c)
    }
}

/// Locks on a majority of the servers of each key's bucket. Each acquisition has its own
/// session on every server (clients are pooled and reused once their guards are gone), so
/// concurrent acquirers of one `QuorumClient` exclude each other as separate processes do.
///
/// ```no_run
/// # async fn demo() -> Result<(), lockd_client::Error> {
/// use std::time::Duration;
/// use lockd_client::{Mode, QuorumClient};
///
/// let key = "s3cret".to_string();
/// // One bucket of three servers: a lock needs two of them.
/// let q = QuorumClient::new(vec![vec![
///     ("10.0.0.1:7531".into(), key.clone()),
///     ("10.0.0.2:7531".into(), key.clone()),
///     ("10.0.0.3:7531".into(), key),
/// ]]);
/// let guard = q.acquire(Mode::Ex, &["invoices"], Duration::from_secs(1)).await?;
/// assert!(guard.grants() >= 2);
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct QuorumClient {
    buckets: Vec<Vec<Server>>,
}

/// Locks held on a majority of servers; released on drop.
#[derive(Debug)]
#[must_use = "dropping the guard releases the locks"]
pub struct QuorumGuard {
    guards: Vec<Guard>,
}

impl QuorumGuard {
    /// The fencing token from each server that granted, in no comparable order.
    pub fn tokens(&self) -> Vec<u64> {
        self.guards.iter().map(|g| g.token()).collect()
    }

    /// How many server grants this guard holds.
    pub fn grants(&self) -> usize {
        self.guards.len()
    }

    /// Releases everywhere, reporting the first error.
    pub async fn release(self) -> Result<(), Error> {
        let mut first = Ok(());
        for g in self.guards {
            if let Err(e) = g.release().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// The bucket of a key: FNV-1a of its bytes, modulo the number of buckets. Stable across
/// versions and platforms, so every client maps a key to the same servers.
pub fn bucket_of(key: &[u8], buckets: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % buckets.max(1) as u64) as usize
}

impl QuorumClient {
    /// `buckets[i]` lists the servers (address, auth key) of bucket `i`; an odd number of
    /// servers per bucket is usual. Servers are connected lazily; one that is down only
    /// withholds its vote.
    pub fn new(buckets: Vec<Vec<(String, String)>>) -> QuorumClient {
        QuorumClient {
            buckets: buckets
                .into_iter()
                .map(|servers| {
                    servers
                        .into_iter()
                        .map(|(addr, auth_key)| Server {
                            addr,
                            auth_key,
                            pool: Mutex::new(Vec::new()),
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// Acquires `keys`: on each bucket involved, a majority of its servers must grant,
    /// each waiting up to `timeout`. On failure everything taken is released.
    pub async fn acquire<K: AsRef<[u8]>>(
        &self,
        mode: Mode,
        keys: &[K],
        timeout: Duration,
    ) -> Result<QuorumGuard, Error> {
        let mut by_bucket: Vec<Vec<&[u8]>> = vec![Vec::new(); self.buckets.len()];
        for k in keys {
            by_bucket[bucket_of(k.as_ref(), self.buckets.len())].push(k.as_ref());
        }
        let mut held = Vec::new();
        for (b, keys) in by_bucket.iter().enumerate().filter(|(_, k)| !k.is_empty()) {
            let servers = &self.buckets[b];
            let needed = servers.len() / 2 + 1;
            let attempts = servers.iter().map(|s| async move {
                let c = s.client().await?;
                c.acquire(mode, keys, timeout).await.ok()
            });
            let granted: Vec<Guard> = futures::future::join_all(attempts)
                .await
                .into_iter()
                .flatten()
                .collect();
            if granted.len() < needed {
                let n = granted.len();
                drop(granted);
                drop(held);
                return Err(Error::NoQuorum { granted: n, needed });
            }
            held.extend(granted);
        }
        Ok(QuorumGuard { guards: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // FNV-1a 64 of "a" is the published vector 0xaf63dc4c8601ec8c; "invoices" hashes
        // to 0x624f59ba098b0299 (worked out apart from this code), bucket 9 of 16.
        assert_eq!(
            bucket_of(b"a", 1000),
            (0xaf63_dc4c_8601_ec8cu64 % 1000) as usize
        );
        assert_eq!(bucket_of(b"invoices", 16), 9);
        assert_eq!(bucket_of(b"", 4), (0xcbf2_9ce4_8422_2325u64 % 4) as usize);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[bucket_of(format!("key{i}").as_bytes(), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
