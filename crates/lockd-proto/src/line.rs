//! Line framing for the legacy protocol: one request per `\n`-terminated line.

use bytes::BytesMut;
use thiserror::Error;

/// The longest line the original daemon buffers (its `SocketArray::BUFFER_SIZE`).
pub const MAX_LINE: usize = 65_535;

/// A partial line grew past the limit without a newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("request line longer than {max} bytes without a newline", max = MAX_LINE)]
pub struct LineTooLong;

/// Takes the next complete line (without its `\n`) off the front of `buf`.
/// `Ok(None)` means more bytes are needed. `scanned` remembers how far a previous call
/// searched, so that a line arriving in many small pieces costs linear time.
pub fn next_line(
    buf: &mut BytesMut,
    scanned: &mut usize,
    max: usize,
) -> Result<Option<BytesMut>, LineTooLong> {
    let start = (*scanned).min(buf.len());
    match buf[start..].iter().position(|&b| b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(start + i + 1);
            line.truncate(start + i);
            *scanned = 0;
            Ok(Some(line))
        }
        None if buf.len() > max => Err(LineTooLong),
        None => {
            *scanned = buf.len();
            Ok(None)
        }
    }
}

/// PHP's `rtrim`: strips trailing space, `\t`, `\n`, `\r`, `\0` and `\x0B`.
pub fn rtrim(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., last] = line {
        if matches!(last, b' ' | b'\t' | b'\n' | b'\r' | 0 | 0x0B) {
            line = rest;
        } else {
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pipelined_lines_in_order() {
        let mut buf = BytesMut::from(&b"one\ntwo\r\nthr"[..]);
        let mut scanned = 0;
        assert_eq!(
            &next_line(&mut buf, &mut scanned, MAX_LINE)
                .unwrap()
                .unwrap()[..],
            b"one"
        );
        assert_eq!(
            &next_line(&mut buf, &mut scanned, MAX_LINE)
                .unwrap()
                .unwrap()[..],
            b"two\r"
        );
        assert_eq!(next_line(&mut buf, &mut scanned, MAX_LINE).unwrap(), None);
        buf.extend_from_slice(b"ee\n");
        assert_eq!(
            &next_line(&mut buf, &mut scanned, MAX_LINE)
                .unwrap()
                .unwrap()[..],
            b"three"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_overlong_partial_line_only() {
        let mut scanned = 0;
        let mut buf = BytesMut::from(&vec![b'a'; MAX_LINE][..]);
        assert_eq!(next_line(&mut buf, &mut scanned, MAX_LINE), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(
            next_line(&mut buf, &mut scanned, MAX_LINE)
                .unwrap()
                .unwrap()
                .len(),
            MAX_LINE
        );
        let mut buf = BytesMut::from(&vec![b'a'; MAX_LINE + 1][..]);
        scanned = 0;
        assert_eq!(
            next_line(&mut buf, &mut scanned, MAX_LINE),
            Err(LineTooLong)
        );
    }

    #[test]
    fn rtrim_matches_php() {
        assert_eq!(rtrim(b" a b \t\r\n\0\x0B"), b" a b");
        assert_eq!(rtrim(b"\r\n"), b"");
        assert_eq!(
            rtrim(b"x\x0C"),
            b"x\x0C",
            "form feed is not stripped by rtrim"
        );
    }
}
