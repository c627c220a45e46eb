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
//!
//! A start with a data directory begins above both the recorded limit and that clock floor,
//! so tokens never go back whatever the directory's history: a fresh or lost directory, a
//! service moved from a start by hand (clock tokens) to the unit, a limit lowered by hand.
//! Tokens stay at most [`MAX_TOKEN`] (`i64::MAX`: RESP integers are signed); a recorded
//! limit too close to it refuses the start rather than wrap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// Tokens reserved by one durable write.
pub const RESERVE: u64 = 1_000_000;
pub use lockd_core::MAX_TOKEN;

/// Why tokens cannot be issued from a data directory's record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the fencing-token limit recorded in {file} is {recorded}: no room is left below the \
     largest token ({max}), and tokens must never go back; refusing to start (a service \
     whose tokens are this large needs its resources' fencing reset)",
    max = MAX_TOKEN
)]
pub struct NoRoom {
    pub file: String,
    pub recorded: u64,
}

/// The first token and the first reservation's limit of a start whose data directory
/// records `recorded` (0: none), given the clock floor a start without one would use.
pub(crate) fn first_and_limit(
    recorded: u64,
    floor: u64,
    file: &Path,
) -> Result<(u64, u64), NoRoom> {
    let no_room = || NoRoom {
        file: file.display().to_string(),
        recorded,
    };
    let first = recorded.checked_add(1).ok_or_else(no_room)?.max(floor);
    let limit = first
        .checked_add(RESERVE)
        .filter(|&l| l <= MAX_TOKEN)
        .ok_or_else(no_room)?;
    Ok((first, limit))
}
pub(crate) const FILE: &str = "token-limit";

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

    /// Checks that the directory takes a durable write, leaving the record as it is.
    pub fn probe(&self) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{FILE}.check"));
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "0")?;
        f.sync_all()?;
        std::fs::remove_file(&tmp)
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
        // Never past the largest token: the table refuses to issue beyond it anyway.
        let limit = shared
            .with(|core, _| core.table.next_token())
            .saturating_add(RESERVE)
            .min(MAX_TOKEN);
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
    fn a_start_never_goes_below_the_record_or_the_clock() {
        let f = Path::new("/d/token-limit");
        let floor = 1_800_000_000_000_000;
        // A fresh directory starts at the clock, as a start without one would.
        assert_eq!(first_and_limit(0, floor, f), Ok((floor, floor + RESERVE)));
        // A limit lowered by hand, or from a short-lived directory, is raised to it.
        assert_eq!(first_and_limit(5, floor, f).unwrap().0, floor);
        // A record above the clock wins.
        assert_eq!(
            first_and_limit(floor * 2, floor, f).unwrap().0,
            floor * 2 + 1
        );
        // Near the top: refused, never wrapped.
        for recorded in [u64::MAX, u64::MAX - 614, MAX_TOKEN, MAX_TOKEN - RESERVE] {
            let e = first_and_limit(recorded, floor, f).unwrap_err();
            assert!(e.to_string().contains("refusing to start"), "{e}");
        }
        assert!(first_and_limit(MAX_TOKEN - RESERVE - 1, floor, f).is_ok());
    }

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
