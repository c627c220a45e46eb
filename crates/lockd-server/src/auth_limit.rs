//! Per-peer limits on authentication failures. After [`MAX_FAILURES`] failures within
//! [`WINDOW_MS`], a peer address is past the limit for [`BLOCK_MS`]: its failing native
//! connections are closed at their next failure, so guessing the key costs a connection
//! per guess. Correct keys and signatures are always served (one misconfigured process on
//! a shared host must not lock out the correct ones, and legacy replies must stay the
//! original daemon's). Failures are logged at most once per window per peer, with a count
//! of those left out, so a guesser cannot flood the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lockd_core::Millis;

pub const MAX_FAILURES: u32 = 20;
pub const WINDOW_MS: Millis = 10_000;
pub const BLOCK_MS: Millis = 30_000;
/// Peers remembered at most; past it, the stalest are forgotten.
const MAX_PEERS: usize = 10_000;

#[derive(Default)]
struct Peer {
    window_start: Millis,
    failures: u32,
    blocked_until: Millis,
    last_log: Option<Millis>,
    unlogged: u32,
}

#[derive(Default)]
pub(crate) struct AuthLimiter {
    peers: Mutex<HashMap<IpAddr, Peer>>,
    /// The latest time any block ends: while it is past, nobody is blocked and the check
    /// every legacy request makes needs no lock.
    blocks_end: AtomicU64,
}

/// What to do about a failure just recorded.
pub(crate) struct Failure {
    /// Log it now; `unlogged` failures were not logged since the last line.
    pub log: bool,
    pub unlogged: u32,
    /// This failure started a block.
    pub blocked: bool,
}

impl AuthLimiter {
    /// Whether the peer is past the failure limit for now.
    pub fn blocked(&self, ip: IpAddr, now: Millis) -> bool {
        if self.blocks_end.load(Ordering::Relaxed) <= now {
            return false;
        }
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&ip).is_some_and(|p| p.blocked_until > now)
    }

    pub fn failure(&self, ip: IpAddr, now: Millis) -> Failure {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            // Forget peers whose window and block are over; if none, the oldest window.
            peers.retain(|_, p| {
                p.blocked_until > now || now.saturating_sub(p.window_start) < WINDOW_MS
            });
            if peers.len() >= MAX_PEERS {
                if let Some(oldest) = peers
                    .iter()
                    .min_by_key(|(_, p)| p.window_start)
                    .map(|(k, _)| *k)
                {
                    peers.remove(&oldest);
                }
            }
        }
        let p = peers.entry(ip).or_default();
        if now.saturating_sub(p.window_start) >= WINDOW_MS {
            p.window_start = now;
            p.failures = 0;
        }
        p.failures += 1;
        let blocked = p.failures == MAX_FAILURES;
        if blocked {
            p.blocked_until = now + BLOCK_MS;
            self.blocks_end
                .fetch_max(p.blocked_until, Ordering::Relaxed);
        }
        let log = blocked
            || p.last_log
                .is_none_or(|t| now.saturating_sub(t) >= WINDOW_MS);
        let unlogged = p.unlogged;
        if log {
            p.last_log = Some(now);
            p.unlogged = 0;
        } else {
            p.unlogged += 1;
        }
        Failure {
            log,
            unlogged,
            blocked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_too_many_failures_then_lets_go() {
        let l = AuthLimiter::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        let mut logged = 0;
        for i in 0..MAX_FAILURES {
            assert!(!l.blocked(ip, 100));
            let f = l.failure(ip, 100 + i as u64);
            logged += f.log as u32;
            assert_eq!(f.blocked, i + 1 == MAX_FAILURES);
        }
        assert_eq!(logged, 2, "the first failure and the block are logged");
        assert!(l.blocked(ip, 200));
        assert!(!l.blocked(other, 200), "per peer");
        assert!(!l.blocked(ip, 100 + BLOCK_MS + MAX_FAILURES as u64));
    }

    #[test]
    fn failures_spread_over_windows_do_not_block() {
        let l = AuthLimiter::default();
        let ip: IpAddr = "::1".parse().unwrap();
        for i in 0..100u64 {
            l.failure(ip, i * (WINDOW_MS / 5));
        }
        assert!(!l.blocked(ip, 100 * (WINDOW_MS / 5)));
    }

    #[test]
    fn the_peer_table_is_bounded() {
        let l = AuthLimiter::default();
        for i in 0..(MAX_PEERS as u32 + 50) {
            l.failure(IpAddr::from(i.to_be_bytes()), 0);
        }
        assert!(l.peers.lock().unwrap().len() <= MAX_PEERS);
    }
}
