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
    /// On a semaphore: the permits held (`mode` is then SH); 0 on a lock.
    pub permits: u16,
}

/// A queued request on a key, from [`crate::Client::inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub session: String,
    pub mode: Mode,
    pub waited_ms: u64,
    /// On a semaphore: the permits asked for (`mode` is then EX); 0 on a lock.
    pub permits: u16,
}

/// Holders and waiters (in queue order) of a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyInfo {
    pub holders: Vec<Holder>,
    pub waiters: Vec<Waiter>,
    /// A semaphore's capacity; 0 for a lock or a free key.
    pub capacity: u16,
}

/// A lock a session holds, from [`crate::Client::locks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub key: Vec<u8>,
    pub mode: Mode,
    pub token: u64,
    /// Of a semaphore: the permits held (`mode` is then SH); 0 for a lock.
    pub permits: u16,
}
