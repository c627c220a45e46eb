//! lockd's wire formats, as pure functions over bytes: the legacy line protocol of
//! MediaWiki's LockServerDaemon (`legacy`), line framing (`line`) and RESP (`resp`).
//! Nothing here does I/O; the server feeds bytes in and writes the bytes that come out.

pub mod legacy;
pub mod line;
pub mod resp;

/// A lock mode as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    Sh,
    Ex,
}
