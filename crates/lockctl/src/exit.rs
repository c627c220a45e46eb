//! Exit statuses (sysexits.h where one fits) and error reporting.

use lockd_client::Error;

/// The lock could not be had in time (EX_TEMPFAIL).
pub const TEMPFAIL: u8 = 75;
/// Server unreachable or connection lost (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Wrong auth key, or a key without the admin right for an operator's command
/// (EX_NOPERM).
pub const NOPERM: u8 = 77;
/// Anything else (EX_SOFTWARE).
pub const SOFTWARE: u8 = 70;
/// The command to run could not be started (as a shell says: 127).
pub const NOINPUT_CMD: u8 = 127;
/// Bad usage, as clap reports it.
pub const USAGE: u8 = 2;

pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }

    pub fn other(message: impl Into<String>) -> Failure {
        Failure::new(SOFTWARE, message)
    }

    pub fn report(self, json: bool) -> std::process::ExitCode {
        if json {
            eprintln!(
                "{}",
                serde_json::json!({"error": self.message, "exit": self.code})
            );
        } else {
            eprintln!("lockctl: {}", self.message);
        }
        std::process::ExitCode::from(self.code)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Connect { .. } | Error::ConnectionLost | Error::Io(_) | Error::Tls(_) => {
                UNAVAILABLE
            }
            Error::Auth(_) | Error::NoPermission(_) => NOPERM,
            Error::Timeout | Error::Deadlock { .. } | Error::NoQuorum { .. } => TEMPFAIL,
            _ => SOFTWARE,
        };
        Failure::new(code, e.to_string())
    }
}

/// The exit status for a finished command: its code, or 128 + the signal that ended it.
pub fn of_status(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        _ => SOFTWARE,
    }
}
