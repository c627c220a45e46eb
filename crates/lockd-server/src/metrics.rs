//! Prometheus metrics. Histograms and per-code counters are recorded as requests happen;
//! everything the table or the counters already know is read at scrape time, so metrics
//! cost the hot path two clock reads and a histogram update per request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::shared::Snapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProtocolLabel {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    member: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type HistogramFamily = Family<ProtocolLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 µs to about 17 s.
    Histogram::new(exponential_buckets(1e-6, 2.0, 25))
}

pub(crate) struct Metrics {
    request_seconds: HistogramFamily,
    /// Handles into `request_seconds`, kept so the hot path skips the family's lookup.
    pub legacy_request_seconds: Histogram,
    pub native_request_seconds: Histogram,
    pub wait_seconds: Histogram,
    /// The same waits, in buckets the status page's history can take differences of.
    pub wait_buckets: crate::history::WaitBuckets,
    pub bad_requests: Family<CodeLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let request_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let legacy = request_seconds
            .get_or_create(&ProtocolLabel { protocol: "legacy" })
            .clone();
        let native = request_seconds
            .get_or_create(&ProtocolLabel { protocol: "native" })
            .clone();
        Metrics {
            request_seconds,
            legacy_request_seconds: legacy,
            native_request_seconds: native,
            wait_seconds: latency_histogram(),
            wait_buckets: crate::history::WaitBuckets::new(),
            bad_requests: Family::default(),
        }
    }

    pub fn bad_request(&self, code: &str) {
        self.bad_requests
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads).
    /// The metrics as OpenMetrics text; a cluster node's figures too when given.
    pub fn render_with(&self, s: &Snapshot, cluster: Option<&lockd_raft::ClusterStatus>) -> String {
        let mut r = Registry::with_prefix("lockd");
        let conns: Family<ProtocolLabel, Gauge> = Family::default();
        conns
            .get_or_create(&ProtocolLabel { protocol: "legacy" })
            .set(s.legacy_connections as i64);
        conns
            .get_or_create(&ProtocolLabel { protocol: "native" })
            .set(s.native_connections as i64);
        r.register("connections", "Open client connections, by protocol", conns);
        let sessions: Family<StateLabel, Gauge> = Family::default();
        sessions
            .get_or_create(&StateLabel { state: "live" })
            .set((s.sessions - s.dead_sessions) as i64);
        sessions
            .get_or_create(&StateLabel { state: "dead" })
            .set(s.dead_sessions as i64);
        r.register(
            "sessions",
            "Sessions: live, or dead and in their grace period",
            sessions,
        );
        let locks: Family<ModeLabel, Gauge> = Family::default();
        locks
            .get_or_create(&ModeLabel { mode: "SH" })
            .set(s.locks_sh as i64);
        locks
            .get_or_create(&ModeLabel { mode: "EX" })
            .set((s.locks_held - s.locks_sh - s.semaphore_holds) as i64);
        r.register("locks_held", "Locks held, by mode", locks);
        r.register(
            "waiters",
            "Queued ACQUIRE requests",
            ConstGauge::new(s.waiters as i64),
        );
        r.register(
            "keys",
            "Keys held or waited on",
            ConstGauge::new(s.keys as i64),
        );
        r.register(
            "leases",
            "Grants with a lease running",
            ConstGauge::new(s.leases as i64),
        );
        r.register(
            "semaphore_holds",
            "Sessions' holds of semaphore permits (each counts as a lock against max-locks)",
            ConstGauge::new(s.semaphore_holds as i64),
        );
        // The bounds, beside what they bound, for alerts on the ratio.
        r.register(
            "max_locks",
            "The most locks held at once (--max-locks; in a cluster, the cluster's)",
            ConstGauge::new(s.max_locks as i64),
        );
        r.register(
            "max_clients",
            "The most client connections at once (--max-clients)",
            ConstGauge::new(s.max_clients as i64),
        );
        r.register(
            "resident_memory_bytes",
            "Resident memory of the lockd process",
            ConstGauge::new(crate::sys::resident_bytes() as i64),
        );
        let t = &s.table;
        for (name, help, v) in [
            ("grants", "Granted ACQUIREs", t.grants),
            ("conflicts", "Try-locks refused", t.conflicts),
            ("timeouts", "Waits that timed out", t.timeouts),
            ("deadlocks", "ACQUIREs refused as deadlocks", t.deadlocks),
            (
                "expired_sessions",
                "Dead sessions whose locks were released",
                t.expired_sessions,
            ),
            (
                "too_many_locks",
                "ACQUIREs refused by max-locks",
                t.too_many_locks,
            ),
            (
                "revoked",
                "Locks released by an operator (REVOKE, SESSION KILL)",
                t.revoked,
            ),
            (
                "sessions_ended",
                "Sessions ended by an operator (SESSION KILL)",
                t.sessions_ended,
            ),
            (
                "leases_expired",
                "Grants released because their lease passed",
                t.leases_expired,
            ),
            (
                "lease_extensions",
                "Leases extended (EXTEND)",
                t.lease_extensions,
            ),
            (
                "events_pushed",
                "Events queued for subscribed connections (EVENTS ON)",
                s.events_queued,
            ),
            (
                "events_dropped",
                "Events dropped because a subscriber's queue was full",
                s.events_dropped,
            ),
            (
                "auth_failures",
                "Failed authentications: native AUTH, legacy signatures, admin HTTP keys",
                s.auth_failures,
            ),
            (
                "log_lines_dropped",
                "Log lines that could not be written (standard error closed or full)",
                crate::logging::dropped_lines(),
            ),
            (
                "refused_clients",
                "Connections refused by max-clients",
                s.refused_clients,
            ),
            (
                "connections_accepted",
                "Connections accepted",
                s.connections_total,
            ),
        ] {
            r.register(name, help, ConstCounter::new(v));
        }
        r.register(
            "bad_requests",
            "Refused requests, by reply code",
            self.bad_requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time to answer a request, by protocol",
            self.request_seconds.clone(),
        );
        r.register(
            "lock_wait_seconds",
            "Time queued ACQUIREs waited, granted or not",
            self.wait_seconds.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since start",
            ConstGauge::new((s.uptime_ms / 1000) as i64),
        );
        if let Some(c) = cluster {
            for (name, help, v) in [
                (
                    "cluster_leader",
                    "1 if this node is the cluster's leader",
                    u64::from(c.role == "leader"),
                ),
                (
                    "cluster_removed",
                    "1 if this node was removed from the cluster (it serves nothing)",
                    u64::from(c.role == "removed"),
                ),
                (
                    "cluster_voters",
                    "Voting members in this node's view of the membership",
                    c.members.iter().filter(|m| m.voter).count() as u64,
                ),
                ("cluster_term", "Raft term", c.term),
                (
                    "cluster_last_log_index",
                    "Last index in this node's Raft log",
                    c.last_log_index,
                ),
                (
                    "cluster_applied_index",
                    "Last index this node's table applied",
                    c.applied_index,
                ),
                (
                    "cluster_snapshot_index",
                    "Index of this node's latest snapshot",
                    c.snapshot_index,
                ),
            ] {
                r.register(name, help, ConstGauge::new(v as i64));
            }
            let lag: Family<MemberLabel, Gauge> = Family::default();
            let down: Family<MemberLabel, Gauge> = Family::default();
            for m in &c.members {
                let l = MemberLabel { member: m.id };
                if let Some(x) = m.lag {
                    lag.get_or_create(&l).set(x as i64);
                }
                down.get_or_create(&l).set(i64::from(m.down));
            }
            r.register(
                "cluster_member_lag_entries",
                "Entries a member is behind the leader's log (on the leader)",
                lag,
            );
            r.register(
                "cluster_member_down",
                "1 if the cluster declared the member down",
                down,
            );
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}
