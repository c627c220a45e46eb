//! Where logs go: standard error, through a writer that never fails. tracing-subscriber
//! reports a failed write with `eprintln!`, which panics when standard error itself is the
//! problem (a closed pipe, a full disk); a panic in the task that logged could kill the
//! accept loop, skip a connection's disconnect (its locks never released) or lose a
//! granted reply. So a line that cannot be written is dropped and counted
//! ([`dropped_lines`], exported as `lockd_log_lines_dropped_total`), and lockd goes on.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines (or parts of them) that could not be written since start.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Standard error that reports every write as done; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Prints a line to standard output for a person (the generated key at start-up), and
/// never fails: `println!` panics when standard output is closed.
pub fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
