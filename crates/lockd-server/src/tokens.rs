//! Fencing tokens across restarts.
//!
//! With a data directory, lockd keeps a durable high-water mark: before issuing tokens up
//! to some limit it writes that limit to `DIR/token-limit` (written to a temporary file,
//! fsynced, renamed, directory fsynced). A restart starts above the recorded limit, so
//! every token is greater than every token issued before, even after a crash. Ranges of
//! [`RESERVE`] tokens are reserved at once, from a background task, so a grant never waits
//! for a disk write.
//!
//! Without a data directory, tokens start at the current Unix time in microseconds: they
//! increase across restarts as long as the system clock does not go back and fewer than a
//! million tokens a second were issued on average since the last start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// Tokens reserved by one durable write.
pub const RESERVE: u64 = 1_000_000;
const FILE: &str = "token-limit";

/// The durable high-water mark in a data directory.
#[derive(Debug)]
pub(crate) struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// Opens (creating) the data directory; returns the store and the limit recorded by
    /// the previous run (0 if none).
    pub fn open(dir: &Path) -> std::io::Result<(TokenStore, u64)> {
        std::fs::create_dir_all(dir)?;
        let recorded = match std::fs::read_to_string(dir.join(FILE)) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a number", dir.join(FILE).display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok((
            TokenStore {
                dir: dir.to_path_buf(),
            },
            recorded,
        ))
    }

    /// Durably records that tokens up to `limit` may have been issued.
    pub fn persist(&self, limit: u64) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{limit}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// The first token of a server without a data directory.
pub(crate) fn clock_floor() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        .max(1)
}

/// Extends the reservation whenever less than half of it is left.
pub(crate) async fn reserve(shared: Arc<Shared>, store: TokenStore, shutdown: CancellationToken) {
    let store = Arc::new(store);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.tokens_low.notified() => {}
        }
        let limit = shared.with(|core, _| core.table.next_token()) + RESERVE;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.persist(limit)).await {
            Ok(Ok(())) => shared.with(|core, _| core.table.set_token_limit(limit)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot record the fencing-token high-water mark; acquires will fail once the reserved tokens run out");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                shared.tokens_low.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "token reservation task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("lockd-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, recorded) = TokenStore::open(&dir).unwrap();
        assert_eq!(recorded, 0);
        store.persist(12345).unwrap();
        let (_, recorded) = TokenStore::open(&dir).unwrap();
        assert_eq!(recorded, 12345);
        std::fs::write(dir.join(FILE), "garbage").unwrap();
        assert!(TokenStore::open(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
