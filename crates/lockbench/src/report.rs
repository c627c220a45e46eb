//! The report: a table for people, JSON for scripts.

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Args, LockMode, Protocol, Workload};

/// Failed batches by what failed them.
#[derive(Serialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    /// The cluster answered `-CLUSTERDOWN` (no quorum, a removed node).
    pub clusterdown: u64,
    /// The connection broke (reset, closed, refused).
    pub connection: u64,
    /// No reply within the batch's time limit.
    pub no_reply: u64,
    pub other: u64,
}

impl Failures {
    /// Counts a failed batch, from its error's text (`None`: no reply in time).
    pub fn count(&mut self, error: Option<&str>) {
        match error {
            None => self.no_reply += 1,
            Some(e) if e.contains("CLUSTERDOWN") => self.clusterdown += 1,
            Some(e)
                if [
                    "connection",
                    "reset",
                    "closed",
                    "broken pipe",
                    "refused",
                    "end of file",
                ]
                .iter()
                .any(|w| e.to_ascii_lowercase().contains(w)) =>
            {
                self.connection += 1
            }
            Some(_) => self.other += 1,
        }
    }

    pub fn add(&mut self, o: &Failures) {
        self.clusterdown += o.clusterdown;
        self.connection += o.connection;
        self.no_reply += o.no_reply;
        self.other += o.other;
    }
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub protocol: Protocol,
    pub workload: Workload,
    pub mode: LockMode,
    pub connections: usize,
    pub keys: u64,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub grants: u64,
    pub refusals: u64,
    pub errors: u64,
    /// Connections made again after a failure (`--reconnect`).
    pub reconnects: u64,
    /// Of the lost sessions (native, `--reconnect`): resumed with their locks, and given
    /// up (the connection went on as a new session): all of them, of which expired
    /// (`-NOSESSION` after the grace) and unreached (by the last try's answer).
    pub resumes: u64,
    pub resumes_given_up: u64,
    pub resumes_expired: u64,
    pub resumes_unreached: crate::resume::Unreached,
    /// How long after its last reply each resumed session was back (ms, sorted once the
    /// run ends; see [`Report::finish_resumes`]).
    pub resumed_after_ms: Vec<u64>,
    /// Every failed batch by kind, whether it counted as an error or (with `--reconnect`)
    /// led to a reconnect.
    pub failures: Failures,
    pub violations: u64,
    /// Of the violations: grants whose fencing token was not above an earlier grant's on
    /// the same key (native only: the other protocols give no token).
    pub token_violations: u64,
    /// Of the violations: an acknowledged lock gone before its session's grace ended (a
    /// resume answered `-NOSESSION` within the grace, or a resumed session without it).
    pub lost_in_grace: u64,
    /// The longest time in which no lock was granted (with `--reconnect`: the outage
    /// clients saw through the faults).
    pub longest_outage_ms: Option<u64>,
    /// With `--reconnect`: every gap of 250 ms or more between grants, sorted (ms).
    pub stalls_ms: Option<Vec<u64>>,
    pub latency_us_p50: Option<u64>,
    pub latency_us_p99: Option<u64>,
    pub latency_us_p999: Option<u64>,
    pub latency_us_max: Option<u64>,
    pub server_cpu_us_per_op: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub bytes_per_lock: Option<f64>,
    pub bytes_per_connection: Option<f64>,
    pub depth: usize,
    pub keys_per_request: usize,
    /// hotkey: release-to-grant hand-off; fairness: the EX request's wait.
    pub extra_name: Option<String>,
    pub extra_us_p50: Option<u64>,
    pub extra_us_p99: Option<u64>,
    pub extra_us_max: Option<u64>,
    pub extra_count: Option<u64>,
    pub hold_us: Option<u64>,
    /// Fairness: the longest time an SH holder actually held the key (sleeps round up).
    pub hold_us_max: Option<u64>,
    /// How evenly the connections were served: the fewest, median and most operations
    /// one connection completed (with many connections, a starved one shows here first).
    pub conn_ops_min: Option<u64>,
    pub conn_ops_p50: Option<u64>,
    pub conn_ops_max: Option<u64>,
    /// Fairness: how long after the last SH holder ahead of it let go each EX was granted
    /// (p50, p99, max in µs, and how many EX grants had holders ahead).
    pub ex_after_release_us: Option<[u64; 4]>,
    /// `--pin`: the CPU the server ran on alone (lockbench ran on the others).
    pub server_cpu: Option<usize>,
}

impl Report {
    /// What the connections' reconnects did, added in.
    pub fn add_survival(&mut self, c: &crate::resume::Counts) {
        self.reconnects += c.reconnects;
        self.resumes += c.resumed_after_ms.len() as u64;
        self.resumes_expired += c.expired;
        self.resumes_unreached.add(&c.unreached);
        self.resumed_after_ms.extend_from_slice(&c.resumed_after_ms);
        self.resumes_given_up = self.resumes_expired + self.resumes_unreached.total();
    }

    /// Sorts the resume waits, for their p50 and max.
    pub fn finish_resumes(&mut self) {
        self.resumed_after_ms.sort_unstable();
    }

    pub fn new(args: &Args) -> Report {
        Report {
            protocol: args.protocol,
            workload: args.workload,
            mode: args.mode,
            connections: args.connections,
            keys: args.keys,
            seconds: 0.0,
            ops: 0,
            ops_per_sec: 0.0,
            grants: 0,
            refusals: 0,
            errors: 0,
            reconnects: 0,
            resumes: 0,
            resumes_given_up: 0,
            resumed_after_ms: Vec::new(),
            resumes_expired: 0,
            resumes_unreached: Default::default(),
            failures: Failures::default(),
            violations: 0,
            token_violations: 0,
            lost_in_grace: 0,
            longest_outage_ms: None,
            stalls_ms: None,
            latency_us_p50: None,
            latency_us_p99: None,
            latency_us_p999: None,
            latency_us_max: None,
            server_cpu_us_per_op: None,
            server_rss_bytes: None,
            bytes_per_lock: None,
            bytes_per_connection: None,
            depth: args.depth,
            keys_per_request: args.keys_per_request,
            extra_name: None,
            extra_us_p50: None,
            extra_us_p99: None,
            extra_us_max: None,
            extra_count: None,
            hold_us: None,
            hold_us_max: None,
            ex_after_release_us: None,
            conn_ops_min: None,
            conn_ops_p50: None,
            conn_ops_max: None,
            server_cpu: crate::pin::server_cpu(),
        }
    }

    pub fn set_extra(&mut self, name: &str, h: &Histogram<u64>) {
        self.extra_name = Some(name.to_string());
        self.extra_count = Some(h.len());
        if let Some([p50, p99, max, _]) = summary(h) {
            self.extra_us_p50 = Some(p50);
            self.extra_us_p99 = Some(p99);
            self.extra_us_max = Some(max);
        }
    }

    /// Fairness: how long after the last SH holder ahead of it each EX was granted.
    pub fn set_ex_after_release(&mut self, h: &Histogram<u64>) {
        self.ex_after_release_us = summary(h);
    }

    /// Records how many operations each connection completed.
    pub fn set_conn_ops(&mut self, per_conn: &mut [u64]) {
        per_conn.sort_unstable();
        if let (Some(&min), Some(&max)) = (per_conn.first(), per_conn.last()) {
            self.conn_ops_min = Some(min);
            self.conn_ops_p50 = Some(per_conn[per_conn.len() / 2]);
            self.conn_ops_max = Some(max);
        }
    }

    pub fn set_latency(&mut self, h: &Histogram<u64>, elapsed: Duration) {
        self.seconds = elapsed.as_secs_f64();
        self.ops = h.len();
        self.ops_per_sec = h.len() as f64 / self.seconds.max(1e-9);
        if !h.is_empty() {
            self.latency_us_p50 = Some(h.value_at_quantile(0.5));
            self.latency_us_p99 = Some(h.value_at_quantile(0.99));
            self.latency_us_p999 = Some(h.value_at_quantile(0.999));
            self.latency_us_max = Some(h.max());
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(s, "protocol      {:?}", self.protocol);
        let _ = writeln!(s, "workload      {:?} ({:?})", self.workload, self.mode);
        let _ = writeln!(s, "connections   {}", self.connections);
        let _ = writeln!(
            s,
            "depth         {}  keys/request {}",
            self.depth, self.keys_per_request
        );
        let _ = writeln!(s, "keys          {}", self.keys);
        if let Some(cpu) = self.server_cpu {
            let _ = writeln!(
                s,
                "pinned        server on CPU {cpu}, lockbench on the others"
            );
        }
        let _ = writeln!(s, "seconds       {:.2}", self.seconds);
        let _ = writeln!(s, "ops           {}", self.ops);
        let _ = writeln!(s, "ops/s         {:.0}", self.ops_per_sec);
        let _ = writeln!(s, "grants        {}", self.grants);
        let _ = writeln!(s, "refusals      {}", self.refusals);
        let _ = writeln!(s, "errors        {}", self.errors);
        if self.reconnects > 0 {
            let _ = writeln!(s, "reconnects    {}", self.reconnects);
        }
        if self.resumes + self.resumes_given_up > 0 {
            let u = &self.resumes_unreached;
            let _ = writeln!(
                s,
                "resumes       {} sessions resumed with their locks, {} given up: {} expired \
                 after their grace, {} unreached (last answer BUSYSESSION {}, CLUSTERDOWN {}, \
                 none {}, other {})",
                self.resumes,
                self.resumes_given_up,
                self.resumes_expired,
                u.total(),
                u.busy,
                u.clusterdown,
                u.silent,
                u.other
            );
            let w = &self.resumed_after_ms;
            if !w.is_empty() {
                let _ = writeln!(
                    s,
                    "resumed after p50 {} ms, p99 {} ms, max {} ms (from the lost connection's \
                     last reply)",
                    w[w.len() / 2],
                    w[(w.len() * 99 / 100).min(w.len() - 1)],
                    w[w.len() - 1]
                );
            }
        }
        let f = &self.failures;
        if f.clusterdown + f.connection + f.no_reply + f.other > 0 {
            let _ = writeln!(
                s,
                "failures      CLUSTERDOWN {}, connection lost {}, no reply {}, other {}",
                f.clusterdown, f.connection, f.no_reply, f.other
            );
        }
        let _ = writeln!(s, "violations    {}", self.violations);
        if self.token_violations > 0 {
            let _ = writeln!(
                s,
                "  of tokens   {} not above an earlier grant's",
                self.token_violations
            );
        }
        if self.lost_in_grace > 0 {
            let _ = writeln!(
                s,
                "  in grace    {} acknowledged locks gone before their session's grace ended",
                self.lost_in_grace
            );
        }
        if let Some(ms) = self.longest_outage_ms {
            let _ = writeln!(s, "outage        {ms} ms (longest time without a grant)");
        }
        if let Some(st) = self.stalls_ms.as_ref().filter(|v| !v.is_empty()) {
            let _ = writeln!(
                s,
                "stalls        {} of >= 250 ms without a grant: p50 {} ms, max {} ms",
                st.len(),
                st[st.len() / 2],
                st[st.len() - 1]
            );
        }
        let _ = writeln!(
            s,
            "latency us    p50 {}  p99 {}  p99.9 {}  max {}",
            opt(self.latency_us_p50),
            opt(self.latency_us_p99),
            opt(self.latency_us_p999),
            opt(self.latency_us_max)
        );
        if let Some(min) = self.conn_ops_min {
            let _ = writeln!(
                s,
                "ops/conn      min {min}  p50 {}  max {}",
                opt(self.conn_ops_p50),
                opt(self.conn_ops_max)
            );
        }
        if let Some(name) = &self.extra_name {
            let _ = writeln!(
                s,
                "{name:<13} n {}  p50 {} us  p99 {} us  max {} us",
                self.extra_count.unwrap_or(0),
                opt(self.extra_us_p50),
                opt(self.extra_us_p99),
                opt(self.extra_us_max)
            );
        }
        if let Some([p50, p99, max, n]) = self.ex_after_release_us {
            let _ = writeln!(
                s,
                "EX granted   after the last SH ahead let go: n {n}  p50 {p50} us  p99 {p99} us  max {max} us"
            );
        }
        if let Some(h) = self.hold_us {
            let _ = writeln!(
                s,
                "SH hold       {h} us asked, {} us longest actual",
                opt(self.hold_us_max)
            );
        }
        if let Some(c) = self.server_cpu_us_per_op {
            let _ = writeln!(s, "server CPU    {c:.2} us/op");
        }
        if let Some(r) = self.server_rss_bytes {
            let _ = writeln!(s, "server RSS    {r} bytes");
        }
        if let Some(b) = self.bytes_per_lock {
            let _ = writeln!(s, "memory/lock   {b:.1} bytes");
        }
        if let Some(b) = self.bytes_per_connection {
            let _ = writeln!(s, "memory/conn   {b:.0} bytes");
        }
        s
    }
}

/// p50, p99, max and count of a histogram that is not empty.
fn summary(h: &Histogram<u64>) -> Option<[u64; 4]> {
    (!h.is_empty()).then(|| {
        [
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            h.len(),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::{Failures, Report};
    use clap::Parser;

    #[test]
    fn resume_waits_are_reported_by_percentile() {
        let args = crate::Args::try_parse_from(["lockbench"]).unwrap();
        let mut r = Report::new(&args);
        let waits = (1..=100).rev().collect::<Vec<u64>>();
        r.add_survival(&crate::resume::Counts {
            resumed_after_ms: waits,
            ..Default::default()
        });
        r.finish_resumes();
        assert_eq!(r.resumes, 100, "one resume per wait");
        let t = r.table();
        assert!(
            t.contains("resumed after p50 51 ms, p99 100 ms, max 100 ms"),
            "{t}"
        );
    }

    #[test]
    fn failures_are_counted_by_kind() {
        let mut f = Failures::default();
        f.count(Some("server said: -CLUSTERDOWN no quorum: not committed"));
        f.count(Some(
            "reading the reply: Connection reset by peer (os error 104)",
        ));
        f.count(Some("the server closed the connection"));
        f.count(None);
        f.count(Some("an odd reply: +QUEUED"));
        assert_eq!(
            f,
            Failures {
                clusterdown: 1,
                connection: 2,
                no_reply: 1,
                other: 1
            }
        );
    }
}
