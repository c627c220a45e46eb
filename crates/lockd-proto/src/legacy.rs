//! The legacy request format `SESSION:KEY:COMMAND:TYPE:VALUES` and its reply lines,
//! exactly as MediaWiki's LockServerDaemon.php speaks them (see `shared/protocol/legacy.md`).

use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::LockType;

/// Length of a session id, in bytes.
pub const SESSION_LEN: usize = 32;
/// Length of a legacy lock key, in bytes.
pub const KEY_LEN: usize = 31;

/// Which signature schemes a server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthScheme {
    /// `hmac_sha1(authKey, SESSION\nCOMMAND\nTYPE\nVALUES)`: MediaWiki's LSLockManager.
    Hmac,
    /// `sha1(SESSION . COMMAND . TYPE . VALUES . authKey)`: the seed daemon.
    Sha1,
    /// Either.
    #[default]
    Both,
}

impl std::str::FromStr for AuthScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hmac" => Ok(AuthScheme::Hmac),
            "sha1" => Ok(AuthScheme::Sha1),
            "both" => Ok(AuthScheme::Both),
            other => Err(format!(
                "unknown auth scheme {other:?} (expected hmac, sha1 or both)"
            )),
        }
    }
}

/// Checks request signatures against the server's `authKey`.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
    // Keyed once: cloning the keyed state skips re-deriving the pads for every request.
    hmac: Hmac<Sha1>,
    scheme: AuthScheme,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(auth_key: &[u8], scheme: AuthScheme) -> Signer {
        Signer {
            key: auth_key.to_vec(),
            hmac: <Hmac<Sha1> as Mac>::new_from_slice(auth_key).expect("HMAC takes any key length"),
            scheme,
        }
    }

    /// The HMAC-SHA1 scheme's signature, as 40 lowercase hex digits.
    pub fn hmac_sig(&self, session: &[u8], command: &[u8], ty: &[u8], values: &[u8]) -> [u8; 40] {
        let mut m = self.hmac.clone();
        for (i, part) in [session, command, ty, values].into_iter().enumerate() {
            if i > 0 {
                m.update(b"\n");
            }
            m.update(part);
        }
        hex40(&m.finalize().into_bytes())
    }

    /// The seed daemon's SHA-1 scheme's signature, as 40 lowercase hex digits.
    pub fn sha1_sig(&self, session: &[u8], command: &[u8], ty: &[u8], values: &[u8]) -> [u8; 40] {
        let mut h = Sha1::new();
        for part in [session, command, ty, values, &self.key[..]] {
            h.update(part);
        }
        hex40(&h.finalize())
    }

    /// Whether `sig` signs the request under an accepted scheme. Each comparison takes
    /// the same time whatever the bytes. Under `Both`, SHA-1 is computed only when the HMAC
    /// did not match: the time then tells only which scheme the requester itself used.
    pub fn verify(
        &self,
        sig: &[u8],
        session: &[u8],
        command: &[u8],
        ty: &[u8],
        values: &[u8],
    ) -> bool {
        let check = |want: [u8; 40]| -> subtle::Choice { want[..].ct_eq(sig) };
        let ok = match self.scheme {
            AuthScheme::Hmac => check(self.hmac_sig(session, command, ty, values)),
            AuthScheme::Sha1 => check(self.sha1_sig(session, command, ty, values)),
            AuthScheme::Both => {
                let hmac = check(self.hmac_sig(session, command, ty, values));
                if bool::from(hmac) {
                    return true;
                }
                check(self.sha1_sig(session, command, ty, values))
            }
        };
        ok.into()
    }

    /// A signed request line (without newline), as a client makes it; for tests and tools.
    pub fn sign_line(&self, session: &[u8], command: &[u8], ty: &[u8], values: &[u8]) -> Vec<u8> {
        let sig = match self.scheme {
            AuthScheme::Sha1 => self.sha1_sig(session, command, ty, values),
            _ => self.hmac_sig(session, command, ty, values),
        };
        let mut line =
            Vec::with_capacity(session.len() + 48 + command.len() + ty.len() + values.len());
        for (i, part) in [session, &sig[..], command, ty, values]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                line.push(b':');
            }
            line.extend_from_slice(part);
        }
        line
    }
}

fn hex40(digest: &[u8]) -> [u8; 40] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 40];
    for (i, b) in digest.iter().take(20).enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

/// A legacy command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Acquire(LockType, Vec<&'a [u8]>),
    Release(LockType, Vec<&'a [u8]>),
    ReleaseAll,
    Stat,
}

/// A request that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Exactly [`SESSION_LEN`] bytes.
    pub session: &'a [u8],
    pub command: Command<'a>,
}

/// Why a request was refused; each is a reply code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRequest {
    Format,
    Key,
    Session,
    Command,
    Type,
}

impl BadRequest {
    pub fn code(self) -> &'static str {
        match self {
            BadRequest::Format => "BAD_FORMAT",
            BadRequest::Key => "BAD_KEY",
            BadRequest::Session => "BAD_SESSION",
            BadRequest::Command => "BAD_COMMAND",
            BadRequest::Type => "BAD_TYPE",
        }
    }
}

/// Parses one request line (its newline already removed; trailing white space is
/// stripped here), checking in the original's order: five fields, signature, session
/// length, command, type, values.
pub fn parse<'a>(line: &'a [u8], signer: &Signer) -> Result<Request<'a>, BadRequest> {
    let line = crate::line::rtrim(line);
    let mut fields = line.splitn(6, |&b| b == b':');
    let (Some(session), Some(sig), Some(command), Some(ty), Some(values), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(BadRequest::Format);
    };
    if !signer.verify(sig, session, command, ty, values) {
        return Err(BadRequest::Key);
    }
    if session.len() != SESSION_LEN {
        return Err(BadRequest::Session);
    }
    let with_keys = |f: fn(LockType, Vec<&'a [u8]>) -> Command<'a>| {
        let ty = match ty {
            b"SH" => LockType::Sh,
            b"EX" => LockType::Ex,
            _ => return Err(BadRequest::Type),
        };
        let keys: Vec<&[u8]> = values.split(|&b| b == b'|').collect();
        if keys.iter().any(|k| k.len() != KEY_LEN) {
            return Err(BadRequest::Format);
        }
        Ok(f(ty, keys))
    };
    let command = match command {
        b"ACQUIRE" => with_keys(Command::Acquire)?,
        b"RELEASE" => with_keys(Command::Release)?,
        b"RELEASE_ALL" => Command::ReleaseAll,
        b"STAT" => Command::Stat,
        _ => return Err(BadRequest::Command),
    };
    Ok(Request { session, command })
}

/// A reply line's content (the server adds the `\n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Acquired,
    CantAcquire,
    TooManyLocks,
    Released,
    ReleasedAll,
    Stat { uptime_secs: u64, memory_bytes: u64 },
    Bad(BadRequest),
}

impl Reply {
    /// Appends the reply line, newline included.
    pub fn write_to(self, out: &mut impl bytes::BufMut) {
        let s = match self {
            Reply::Acquired => "ACQUIRED",
            Reply::CantAcquire => "CANT_ACQUIRE",
            Reply::TooManyLocks => "TOO_MANY_LOCKS",
            Reply::Released => "RELEASED",
            Reply::ReleasedAll => "RELEASED_ALL",
            Reply::Bad(b) => b.code(),
            Reply::Stat {
                uptime_secs,
                memory_bytes,
            } => {
                out.put_slice(format!("{uptime_secs}:{memory_bytes}\n").as_bytes());
                return;
            }
        };
        out.put_slice(s.as_bytes());
        out.put_u8(b'\n');
    }
}

#[cfg(test)]
mod tests;
