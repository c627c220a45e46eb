//! `LOCKBENCH_TRACE=1`: one line on stderr for each lost connection and each try at
//! getting its session back, with the wall-clock time (seconds since the Unix epoch, as
//! `scripts/cluster-faults.sh` writes its rounds), so a stall can be laid beside the
//! nodes' logs: which connection was lost where, why, and what each node answered.
//! Off by default: a run's report is what a benchmark is read by.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

fn on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LOCKBENCH_TRACE").is_some_and(|v| v == "1"))
}

/// Writes `what` with the time, if tracing is on.
pub fn event(what: std::fmt::Arguments<'_>) {
    if on() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        eprintln!("{t:.3} {what}");
    }
}
