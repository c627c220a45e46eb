//! A request's arguments, with the checks every command needs and Redis-style errors.

use lockd_proto::resp::Value;
use smallvec::SmallVec;

/// Borrowed from the connection's input buffer: no copy, no allocation for up to eight.
pub(crate) struct Args<'a> {
    items: SmallVec<[&'a [u8]; 8]>,
}

pub(crate) type Reply = Result<Value, Value>;

/// An upper-cased command name, kept on the stack.
pub(crate) struct CommandName {
    buf: [u8; 16],
    len: usize,
}

impl CommandName {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<'a> Args<'a> {
    pub fn new(items: SmallVec<[&'a [u8]; 8]>) -> Args<'a> {
        Args { items }
    }

    /// Every item, the command name first.
    pub fn all(&self) -> &[&'a [u8]] {
        &self.items
    }

    /// The command name, upper-cased (names longer than any command come back empty, as
    /// an unknown command). No allocation: this runs for every request.
    pub fn name(&self) -> CommandName {
        let raw = self.items[0];
        let mut buf = [0u8; 16];
        let len = if raw.len() <= buf.len() { raw.len() } else { 0 };
        buf[..len].copy_from_slice(&raw[..len]);
        buf.make_ascii_uppercase();
        CommandName { buf, len }
    }

    /// Arguments after the command name.
    pub fn rest(&self) -> &[&'a [u8]] {
        &self.items[1..]
    }

    /// Errors unless the command has between `min` and `max` arguments after its name.
    pub fn arity(&self, min: usize, max: usize) -> Result<&[&'a [u8]], Value> {
        let n = self.items.len() - 1;
        if n < min || n > max {
            return Err(Value::error(format!(
                "ERR wrong number of arguments for '{}' command",
                String::from_utf8_lossy(self.items[0]).to_ascii_lowercase()
            )));
        }
        Ok(self.rest())
    }

    /// The answer to a request of `n` arguments, more than any command takes.
    pub fn too_many(&self, n: usize) -> Value {
        Value::error(format!(
            "ERR too many arguments for '{}' command ({n}; at most {} keys in one request)",
            String::from_utf8_lossy(self.items[0]).to_ascii_lowercase(),
            super::locks::MAX_KEYS
        ))
    }

    pub fn unknown(&self) -> Value {
        let mut msg = format!(
            "ERR unknown command '{}', with args beginning with:",
            String::from_utf8_lossy(self.items[0])
        );
        for a in self.rest().iter().take(3) {
            msg += &format!(" '{}'", String::from_utf8_lossy(a));
        }
        Value::error(msg)
    }
}

/// A non-negative integer argument.
pub(crate) fn uint(arg: &[u8], what: &str) -> Result<u64, Value> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Value::error(format!("ERR {what} is not a non-negative integer")))
}

pub(crate) fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}
