//! RESP, the Redis serialization protocol: parsing client requests (arrays of bulk
//! strings, which is what every Redis client and `redis-cli` send) and encoding replies
//! in RESP2 or RESP3.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Limits on one request, so that no client can make the server buffer without bound. A
/// request is refused as soon as its headers announce more than the limits allow, before
/// its bytes arrive.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most elements in a request array; more is a protocol error.
    pub max_args: usize,
    /// Most elements whose spans are kept: a request with more (up to `max_args`) is
    /// parsed to its end and reported with [`Frame::args`] > `spans.len()`, so the server
    /// can refuse it and go on with the next request.
    pub keep_args: usize,
    /// Longest bulk string.
    pub max_bulk: usize,
    /// Most bytes in one request, framing included.
    pub max_request: usize,
}

/// The largest request lockd serves: 4,096 keys of 1,024 bytes, each framed as
/// `$1024\r\n...\r\n` (1,033 bytes), plus 4 KiB for the array header, the command, its
/// mode and timeout.
pub const MAX_REQUEST: usize = 4096 * 1033 + 4096;

impl Limits {
    /// For an authenticated connection: one maximal request ([`MAX_REQUEST`]); arguments
    /// past the 4,099 that an ACQUIRE of 4,096 keys has are counted, not kept.
    pub const AUTHENTICATED: Limits = Limits {
        max_args: MAX_REQUEST / 6,
        keep_args: 4099,
        max_bulk: 64 * 1024,
        max_request: MAX_REQUEST,
    };

    /// Before authentication: enough for `HELLO 3 AUTH user password SETNAME name`, and
    /// no more, as Redis bounds its unauthenticated clients.
    pub const UNAUTHENTICATED: Limits = Limits {
        max_args: 16,
        keep_args: 16,
        max_bulk: 4096,
        max_request: 4096,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::AUTHENTICATED
    }
}

/// A request that cannot be parsed. The connection cannot be resynchronised after one,
/// so the server answers it and closes, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("Protocol error: expected '{expected}', got '{got}'")]
    Unexpected { expected: char, got: String },
    #[error("Protocol error: invalid multibulk length")]
    BadArrayLen,
    #[error("Protocol error: invalid bulk length")]
    BadBulkLen,
    #[error("Protocol error: too many arguments (at most {0})")]
    TooManyArgs(usize),
    #[error("Protocol error: bulk string longer than {0} bytes")]
    BulkTooLong(usize),
    #[error("Protocol error: request larger than {0} bytes")]
    RequestTooLarge(usize),
    #[error("Protocol error: line too long")]
    LineTooLong,
}

const MAX_HEADER_LINE: usize = 32;
/// The fewest bytes one argument takes: `$0\r\n\r\n`.
const MIN_ARG_BYTES: usize = 6;

/// Where a request's arguments are in the buffer it was parsed from: (start, length) each.
pub type Spans = smallvec::SmallVec<[(usize, usize); 8]>;

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Bytes it takes at the front of the buffer.
    pub len: usize,
    /// Its first `keep_args` arguments.
    pub spans: Spans,
    /// How many arguments it has (more than `spans.len()` when some were not kept).
    pub args: usize,
}

/// Parses one request at the front of `buf` without copying or consuming anything: how
/// many bytes it takes, and where its arguments are. `Ok(None)` means more bytes are
/// needed. An empty array (`*0`, `*-1`) is a request with no arguments.
pub fn parse_spans(buf: &[u8], limits: &Limits) -> Result<Option<Frame>, ProtocolError> {
    let mut pos = 0;
    let Some(n) = header(buf, &mut pos, b'*')? else {
        return Ok(None);
    };
    if n <= 0 {
        if n < -1 {
            return Err(ProtocolError::BadArrayLen);
        }
        return Ok(Some(Frame {
            len: pos,
            spans: Spans::new(),
            args: 0,
        }));
    }
    let n = n as usize;
    if n > limits.max_args {
        return Err(ProtocolError::TooManyArgs(limits.max_args));
    }
    if n.saturating_mul(MIN_ARG_BYTES) > limits.max_request.saturating_sub(pos) {
        return Err(ProtocolError::RequestTooLarge(limits.max_request));
    }
    let mut spans = Spans::with_capacity(n.min(limits.keep_args));
    for i in 0..n {
        let Some(len) = header(buf, &mut pos, b'$')? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(ProtocolError::BadBulkLen);
        }
        let len = len as usize;
        if len > limits.max_bulk {
            return Err(ProtocolError::BulkTooLong(limits.max_bulk));
        }
        // What this argument and the smallest possible rest would take.
        let need = pos + len + 2 + (n - i - 1) * MIN_ARG_BYTES;
        if need > limits.max_request {
            return Err(ProtocolError::RequestTooLarge(limits.max_request));
        }
        if buf.len() < pos + len + 2 {
            return Ok(None);
        }
        if &buf[pos + len..pos + len + 2] != b"\r\n" {
            return Err(ProtocolError::BadBulkLen);
        }
        if spans.len() < limits.keep_args {
            spans.push((pos, len));
        }
        pos += len + 2;
    }
    Ok(Some(Frame {
        len: pos,
        spans,
        args: n,
    }))
}

/// Parses one request off the front of `buf` into owned arguments. `Ok(None)` means more
/// bytes are needed (nothing is consumed then).
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(f) = parse_spans(buf, limits)? else {
        return Ok(None);
    };
    let frame = buf.split_to(f.len).freeze();
    Ok(Some(
        f.spans
            .into_iter()
            .map(|(p, l)| frame.slice(p..p + l))
            .collect(),
    ))
}

/// Reads a `<prefix><integer>\r\n` line at `*pos`.
fn header(buf: &[u8], pos: &mut usize, prefix: u8) -> Result<Option<i64>, ProtocolError> {
    let Some(&first) = buf.get(*pos) else {
        return Ok(None);
    };
    if first != prefix {
        return Err(ProtocolError::Unexpected {
            expected: prefix as char,
            got: String::from_utf8_lossy(&[first]).into_owned(),
        });
    }
    let rest = &buf[*pos + 1..];
    let Some(end) = rest
        .iter()
        .take(MAX_HEADER_LINE + 1)
        .position(|&b| b == b'\r')
    else {
        return if rest.len() > MAX_HEADER_LINE {
            Err(ProtocolError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    if rest.len() < end + 2 {
        return Ok(None);
    }
    if rest[end + 1] != b'\n' {
        return Err(ProtocolError::LineTooLong);
    }
    let bad = || {
        if prefix == b'*' {
            ProtocolError::BadArrayLen
        } else {
            ProtocolError::BadBulkLen
        }
    };
    let n = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(bad)?;
    *pos += 1 + end + 2;
    Ok(Some(n))
}

/// A reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Simple(String),
    /// An error line: an upper-case code, a space, a message.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Value>),
    /// A map in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Value, Value)>),
    /// A RESP3 push message (`>`): out of band, between replies. Encoded as an array in
    /// RESP2, which a server never sends (pushes are RESP3 only).
    Push(Vec<Value>),
}

impl Value {
    pub fn ok() -> Value {
        Value::Simple("OK".into())
    }

    pub fn error(code_and_message: impl Into<String>) -> Value {
        Value::Error(code_and_message.into())
    }

    pub fn bulk(b: impl AsRef<[u8]>) -> Value {
        Value::Bulk(Bytes::copy_from_slice(b.as_ref()))
    }

    /// A map with string keys.
    pub fn map<K: AsRef<str>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::bulk(k.as_ref()), v))
                .collect(),
        )
    }

    /// Appends the encoding of this value for protocol version `proto` (2 or 3).
    pub fn encode(&self, proto: u8, out: &mut BytesMut) {
        match self {
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            Value::Error(s) => line(out, b'-', s.as_bytes()),
            Value::Integer(i) => number(out, b':', *i),
            Value::Bulk(b) => {
                number(out, b'$', b.len() as i64);
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Value::Null if proto >= 3 => out.put_slice(b"_\r\n"),
            Value::Null => out.put_slice(b"$-1\r\n"),
            Value::Array(items) => {
                number(out, b'*', items.len() as i64);
                for v in items {
                    v.encode(proto, out);
                }
            }
            Value::Push(items) => {
                number(
                    out,
                    if proto >= 3 { b'>' } else { b'*' },
                    items.len() as i64,
                );
                for v in items {
                    v.encode(proto, out);
                }
            }
            Value::Map(entries) => {
                if proto >= 3 {
                    number(out, b'%', entries.len() as i64);
                } else {
                    number(out, b'*', (entries.len() * 2) as i64);
                }
                for (k, v) in entries {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

/// `<prefix><n>\r\n`, without allocating.
fn number(out: &mut BytesMut, prefix: u8, n: i64) {
    out.put_u8(prefix);
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.put_u8(prefix);
    // A simple string or error must not contain a line break.
    out.extend(
        body.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

/// Encodes a request as a client sends it (for clients, tools and tests).
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    encode_array_header(args.len(), out);
    for a in args {
        encode_bulk(a.as_ref(), out);
    }
}

/// `*n\r\n`: the start of a request of `n` arguments, each then written by [`encode_bulk`].
pub fn encode_array_header(n: usize, out: &mut BytesMut) {
    number(out, b'*', n as i64);
}

/// One argument of a request: a bulk string.
pub fn encode_bulk(a: &[u8], out: &mut BytesMut) {
    number(out, b'$', a.len() as i64);
    out.put_slice(a);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        parse_request(&mut BytesMut::from(bytes), &Limits::default())
    }

    #[test]
    fn parses_a_request_and_leaves_the_rest() {
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nPING\r\n$4\r\na\r\nb\r\n*1\r\n$4\r\nQU"[..]);
        let req = parse_request(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            req,
            vec![Bytes::from_static(b"PING"), Bytes::from_static(b"a\r\nb")]
        );
        assert_eq!(&buf[..], b"*1\r\n$4\r\nQU");
        assert_eq!(parse_request(&mut buf, &Limits::default()), Ok(None));
        assert_eq!(
            &buf[..],
            b"*1\r\n$4\r\nQU",
            "incomplete input is not consumed"
        );
    }

    #[test]
    fn every_prefix_of_a_request_needs_more() {
        let full = b"*3\r\n$7\r\nACQUIRE\r\n$2\r\nEX\r\n$0\r\n\r\n";
        for i in 0..full.len() {
            assert_eq!(parse_all(&full[..i]), Ok(None), "prefix {i}");
        }
        assert_eq!(parse_all(full).unwrap().unwrap().len(), 3);
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(matches!(
            parse_all(b"PING\r\n"),
            Err(ProtocolError::Unexpected { .. })
        ));
        assert!(matches!(
            parse_all(b"*1\r\n:1\r\n"),
            Err(ProtocolError::Unexpected { .. })
        ));
        assert_eq!(parse_all(b"*x\r\n"), Err(ProtocolError::BadArrayLen));
        assert_eq!(parse_all(b"*-2\r\n"), Err(ProtocolError::BadArrayLen));
        assert_eq!(parse_all(b"*1\r\n$-1\r\n"), Err(ProtocolError::BadBulkLen));
        assert_eq!(
            parse_all(b"*1\r\n$1\r\nab\r\n"),
            Err(ProtocolError::BadBulkLen)
        );
        assert_eq!(
            parse_all(b"*99999999\r\n"),
            Err(ProtocolError::TooManyArgs(Limits::AUTHENTICATED.max_args))
        );
        // A count whose smallest possible encoding passes the byte limit is refused at once.
        let tight = Limits {
            max_args: 1000,
            keep_args: 10,
            max_bulk: 100,
            max_request: 600,
        };
        assert_eq!(
            parse_spans(b"*200\r\n", &tight),
            Err(ProtocolError::RequestTooLarge(600))
        );
        assert_eq!(parse_spans(b"*99\r\n", &tight), Ok(None));
        assert_eq!(
            parse_all(b"*1\r\n$999999\r\n"),
            Err(ProtocolError::BulkTooLong(65536))
        );
        assert_eq!(parse_all(&[b'*'; 100]), Err(ProtocolError::LineTooLong));
        let mut long = b"*1".to_vec();
        long.extend(std::iter::repeat_n(b'1', 40));
        assert_eq!(parse_all(&long), Err(ProtocolError::LineTooLong));
        assert_eq!(parse_all(b"*1\n$1\r\n"), Err(ProtocolError::BadArrayLen));
    }

    #[test]
    fn empty_arrays_are_consumed() {
        let mut buf = BytesMut::from(&b"*0\r\n*-1\r\n"[..]);
        assert_eq!(
            parse_request(&mut buf, &Limits::default()),
            Ok(Some(vec![]))
        );
        assert_eq!(
            parse_request(&mut buf, &Limits::default()),
            Ok(Some(vec![]))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn encodes_resp2_and_resp3() {
        let v = Value::Array(vec![
            Value::ok(),
            Value::error("ERR bad\r\nthing"),
            Value::Integer(-7),
            Value::bulk("hi"),
            Value::Null,
            Value::map([("a", Value::Integer(1))]),
        ]);
        let mut two = BytesMut::new();
        v.encode(2, &mut two);
        assert_eq!(
            &two[..],
            &b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-7\r\n$2\r\nhi\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n"[..]
        );
        let mut three = BytesMut::new();
        v.encode(3, &mut three);
        assert_eq!(
            &three[..],
            &b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-7\r\n$2\r\nhi\r\n_\r\n%1\r\n$1\r\na\r\n:1\r\n"[..]
        );
    }

    #[test]
    fn a_push_is_a_gt_frame_in_resp3() {
        let v = Value::Push(vec![Value::bulk("lost"), Value::Integer(7)]);
        let mut three = BytesMut::new();
        v.encode(3, &mut three);
        assert_eq!(&three[..], b">2\r\n$4\r\nlost\r\n:7\r\n");
        let mut two = BytesMut::new();
        v.encode(2, &mut two);
        assert_eq!(&two[..], b"*2\r\n$4\r\nlost\r\n:7\r\n");
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let args: Vec<&[u8]> = vec![b"ACQUIRE", b"EX", b"0", b"", b"\r\n\x00\xff"];
        let mut buf = BytesMut::new();
        encode_request(&args, &mut buf);
        let got = parse_request(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(got.iter().map(|b| &b[..]).collect::<Vec<_>>(), args);
        let mut exact = BytesMut::new();
        encode_request(&["SET", "k", ""], &mut exact);
        assert_eq!(&exact[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn a_request_is_refused_when_its_headers_announce_too_much() {
        let u = Limits::UNAUTHENTICATED;
        let p = |b: &[u8]| parse_spans(b, &u);
        assert_eq!(p(b"*17\r\n"), Err(ProtocolError::TooManyArgs(16)));
        assert_eq!(
            p(b"*2\r\n$4\r\nAUTH\r\n$4097\r\n"),
            Err(ProtocolError::BulkTooLong(4096))
        );
        // Two bulks of 3,000 bytes pass the bulk limit, not the request limit: refused at
        // the second header, before its bytes are sent.
        let mut b = b"*2\r\n$3000\r\n".to_vec();
        b.extend(std::iter::repeat_n(b'x', 3000));
        b.extend_from_slice(b"\r\n$3000\r\n");
        assert_eq!(p(&b), Err(ProtocolError::RequestTooLarge(4096)));
        // The largest valid request fits after authentication.
        let key = vec![b'k'; 1024];
        let mut args: Vec<&[u8]> = vec![b"ACQUIRE", b"EX", b"4294967295"];
        args.extend(std::iter::repeat_n(&key[..], 4096));
        let mut buf = BytesMut::new();
        encode_request(&args, &mut buf);
        assert!(buf.len() <= MAX_REQUEST, "{} > {MAX_REQUEST}", buf.len());
        let f = parse_spans(&buf, &Limits::AUTHENTICATED).unwrap().unwrap();
        assert_eq!((f.len, f.args, f.spans.len()), (buf.len(), 4099, 4099));
    }

    #[test]
    fn arguments_past_keep_args_are_counted_and_skipped() {
        let mut buf = BytesMut::new();
        let args: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        encode_request(&args, &mut buf);
        buf.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        let f = parse_spans(&buf, &Limits::AUTHENTICATED).unwrap().unwrap();
        assert_eq!((f.args, f.spans.len()), (5000, 4099));
        assert_eq!(
            &buf[f.len..],
            b"*1\r\n$4\r\nPING\r\n",
            "the next request follows"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_never_overreads(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            if let Ok(Some(_)) = parse_request(&mut buf, &Limits::default()) {
                proptest::prop_assert!(buf.len() < before);
            }
        }
    }
}
