//! `lockctl lock`: runs a command while the lock is held, and makes sure the command never
//! runs on without it, as `flock(1)` does for a local lock and `consul lock` for a remote
//! one.
//!
//! - While the command runs, lockctl watches its connection, and PINGs every eighth of
//!   the grace period: a connection lost, or one that leaves a PING unanswered for an
//!   eighth of the grace, is a loss. Then it tries to resume the session (the server keeps its locks for the session's grace
//!   period, which lockctl set); resumed, the lock is still held and the command goes on.
//! - The lock is lost when the server no longer knows the session (`NOSESSION`: it
//!   restarted, or the grace ended), or when lockctl cannot tell: it has not resumed
//!   within a quarter of the grace from the moment it saw the loss (at most half the grace
//!   after the loss itself). Then the command is
//!   sent `--signal` (SIGTERM), and SIGKILL after `--kill-after`, before another session
//!   could be granted the lock; lockctl says why and exits 69.
//! - With `--lease`, the lock is also lost when its lease could not be extended in time,
//!   or when an operator revokes it or ends the session (told by the next extension).
//! - SIGTERM, SIGINT and SIGHUP sent to lockctl are passed to the command; the lock is
//!   released only after the command has exited.

use std::time::Duration;

use lockd_client::Client;
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

/// How a supervised command ended.
pub enum End {
    /// It exited by itself (or after a signal passed on to it); the lock was held all along.
    Exited(std::process::ExitStatus),
    /// The lock was lost while it ran; it was signalled and has exited.
    Lost(String),
}

/// SIGTERM, SIGINT and SIGHUP, caught from before the lock is asked for (so that none
/// kills lockctl while it holds the lock), to be passed to the command.
pub struct Signals([tokio::signal::unix::Signal; 3]);

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals([
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ]))
    }

    /// The next of them to arrive.
    pub async fn next(&mut self) -> i32 {
        let [term, int, hup] = &mut self.0;
        tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
            _ = hup.recv() => libc::SIGHUP,
        }
    }
}

/// Runs `child` to its end under the lock of `client`'s session, whose grace is `grace`.
pub async fn supervise(
    mut child: Child,
    signals: &mut Signals,
    client: &Client,
    lost: impl std::future::Future<Output = lockd_client::Loss>,
    grace: Duration,
    stop_signal: i32,
    kill_after: Duration,
) -> std::io::Result<End> {
    // A leased lock that could not be extended, or one an operator revoked, is lost as
    // surely as a session that could not be resumed.
    let watch = async {
        tokio::select! {
            why = watchdog(client, grace) => why,
            loss = lost => format!("the lock is lost: {loss}"),
        }
    };
    tokio::pin!(watch);
    loop {
        let pid = child.id();
        tokio::select! {
            status = child.wait() => return Ok(End::Exited(status?)),
            sig = signals.next() => pass_on(pid, sig),
            why = &mut watch => {
                eprintln!("lockctl: {why}: stopping the command");
                pass_on(pid, stop_signal);
                if tokio::time::timeout(kill_after, child.wait()).await.is_err() {
                    eprintln!("lockctl: the command did not stop within {kill_after:?}: killing it");
                    let _ = child.kill().await;
                }
                let _ = child.wait().await;
                return Ok(End::Lost(why));
            }
        }
    }
}

fn pass_on(pid: Option<u32>, sig: i32) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// Resolves when the connection is lost, or stops answering: a PING every `every`, each
/// to be answered within `every` (a connection stalled without an error is not one that
/// can vouch for the lock).
async fn lost_or_silent(client: &Client, every: Duration) {
    let every = every.max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = client.connection_lost() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match tokio::time::timeout(every, client.ping()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Resolves, with the reason, when the lock is lost or can no longer be vouched for;
/// never while it is held.
async fn watchdog(client: &Client, grace: Duration) -> String {
    loop {
        // Noticed within a quarter of the grace (a PING every eighth, each answered within
        // an eighth); the server counts the grace from when it saw the connection go,
        // which may be before lockctl did: so resume within another quarter, and the
        // command is told at most half the grace after the loss.
        lost_or_silent(client, grace / 8).await;
        let deadline = Instant::now() + grace / 4;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return format!(
                    "the connection to the server was lost (or stopped answering) and not \
                     resumed in time (the session's grace is {grace:?}): the lock may pass to \
                     another session"
                );
            }
            match tokio::time::timeout(left, client.reconnect()).await {
                Ok(Ok(true)) => {
                    eprintln!(
                        "lockctl: the connection was lost and resumed: the lock is still held"
                    );
                    break;
                }
                Ok(Ok(false)) => {
                    return "the server no longer knows the session (it restarted, or the grace \
                            ended): the lock is lost"
                        .to_string()
                }
                // Not reachable yet: try again shortly, within the deadline.
                _ => tokio::time::sleep(left.min(Duration::from_millis(100))).await,
            }
        }
    }
}
