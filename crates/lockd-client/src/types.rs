//! Values the client hands back.

/// A lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Shared: compatible with other shared locks.
    Sh,
    /// Exclusive.
    Ex,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sh => "SH",
            Mode::Ex => "EX",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Mode> {
        match s {
            "SH" => Some(Mode::Sh),
            "EX" => Some(Mode::Ex),
            _ => None,
        }
    }
}

/// A holder of a key, from [`crate::Client::inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub session: String,
    pub mode: Mode,
    pub token: u64,
    pub held_ms: u64,
}

/// A queued request on a key, from [`crate::Client::inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub session: String,
    pub mode: Mode,
    pub waited_ms: u64,
}

/// Holders and waiters (in queue order) of a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyInfo {
    pub holders: Vec<Holder>,
    pub waiters: Vec<Waiter>,
}

/// A lock a session holds, from [`crate::Client::locks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub key: Vec<u8>,
    pub mode: Mode,
    pub token: u64,
}
