//! The client's errors.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("not allowed: {0}")]
    NoPermission(String),
    #[error("the lock was not granted within the timeout")]
    Timeout,
    #[error("refused: waiting would deadlock with session {session}")]
    Deadlock { session: String },
    #[error("refused: the server holds its maximum number of locks")]
    TooManyLocks,
    #[error("no such session, or it has a live connection: {0}")]
    Session(String),
    #[error("connection to the server lost")]
    ConnectionLost,
    #[error("this guard's locks were already let go (by release_all or release)")]
    NotHeld,
    #[error("refused: this client already holds or is acquiring a conflicting lock on {0:?} (one Client per concurrent locker)")]
    HeldHere(String),
    #[error("quorum not reached: {granted} of {needed} servers granted")]
    NoQuorum { granted: usize, needed: usize },
    #[error("server error: {0}")]
    Server(String),
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Maps a RESP error line to a typed error by its code.
    pub(crate) fn from_server(line: &str) -> Error {
        let (code, rest) = line.split_once(' ').unwrap_or((line, ""));
        match code {
            "DEADLOCK" => Error::Deadlock {
                session: rest.rsplit(' ').next().unwrap_or_default().to_string(),
            },
            "TOOMANYLOCKS" => Error::TooManyLocks,
            "NOAUTH" | "WRONGPASS" => Error::Auth(line.to_string()),
            "NOPERM" => Error::NoPermission(line.to_string()),
            "NOSESSION" | "BUSYSESSION" => Error::Session(line.to_string()),
            "ERR" if rest == "TLS is required" => {
                Error::Tls("the server requires TLS (give a CA file)".into())
            }
            _ => Error::Server(line.to_string()),
        }
    }
}
