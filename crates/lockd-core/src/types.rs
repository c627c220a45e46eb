//! Small value types shared by the table and its callers.

/// Milliseconds on the caller's monotonic clock. The table never reads a clock itself:
/// every command that depends on time is given `now`, so that the table is deterministic
/// (and can later be the state machine of a replicated log).
pub type Millis = u64;

/// A lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Mode {
    /// Shared: compatible with other shared locks.
    Sh,
    /// Exclusive: compatible with nothing held by another session.
    Ex,
}

impl Mode {
    /// Whether a lock of mode `self` and one of mode `other`, held by different sessions,
    /// conflict.
    pub fn conflicts(self, other: Mode) -> bool {
        self == Mode::Ex || other == Mode::Ex
    }

    /// The protocol spelling, `SH` or `EX`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sh => "SH",
            Mode::Ex => "EX",
        }
    }
}

/// A session id: 32 bytes. Legacy clients choose any 32 bytes; the native server makes
/// 32 random alphanumerics, so a native session is also a valid legacy session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SessionId(pub [u8; 32]);

impl SessionId {
    /// A session id from exactly 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<SessionId> {
        b.try_into().ok().map(SessionId)
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0).escape_debug())
    }
}

/// An opaque connection handle chosen by the server. The table uses it to bind sessions to
/// the connection that uses them, so that a closed connection makes its sessions dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConnId(pub u64);

/// Identifies a queued (waiting) acquire request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WaitId(pub u64);

/// A queued request that the table answered after the command that queued it returned.
/// The server hands each one to the connection that waits on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Wakeup {
    pub wait: WaitId,
    pub outcome: Woken,
}

/// How a queued request ended, other than by its timeout or its connection closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Woken {
    /// Granted, with this fencing token.
    Granted(u64),
    /// Its turn came, but granting it would have taken the table past `max_locks`: it is
    /// refused as it would have been on arrival, rather than left waiting for room that
    /// other waiters may be holding on to.
    TooManyLocks,
    /// An operator ended its session while it waited (SESSION KILL).
    Revoked,
}
