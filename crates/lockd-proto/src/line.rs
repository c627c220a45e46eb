//! Line framing for the legacy protocol: one request per `\n`-terminated line.

use bytes::BytesMut;
use thiserror::Error;

/// The longest line, newline included, that the original daemon can answer. It reads at
/// most 65,535 bytes at a time and keeps a partial line of at most 65,535 bytes
/// (`SocketArray::BUFFER_SIZE`); the read that ends in `\n` is appended to it unchecked.
/// So a line of up to 2 × 65,535 bytes is answered when it arrives in two reads, and a
/// longer one never is. lockd does not depend on how the bytes were split into reads: it
/// answers every line up to this length and closes the connection on a longer one.
pub const MAX_LINE: usize = 2 * 65_535;

/// A line grew past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("request line longer than {max} bytes", max = MAX_LINE)]
pub struct LineTooLong;

/// Takes the next complete line (without its `\n`) off the front of `buf`; a line of more
/// than `max` bytes, its `\n` included, is an error as soon as that is known.
/// `Ok(None)` means more bytes are needed. `scanned` remembers how far a previous call
/// searched, so that a line arriving in many small pieces costs linear time.
pub fn next_line(
    buf: &mut BytesMut,
    scanned: &mut usize,
    max: usize,
) -> Result<Option<BytesMut>, LineTooLong> {
    let start = (*scanned).min(buf.len());
    match buf[start..].iter().position(|&b| b == b'\n') {
        Some(i) if start + i + 1 > max => Err(LineTooLong),
        Some(i) => {
            let mut line = buf.split_to(start + i + 1);
            line.truncate(start + i);
            *scanned = 0;
            Ok(Some(line))
        }
        // Even the newline that would end it makes it too long.
        None if buf.len() >= max => Err(LineTooLong),
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
    fn a_line_of_max_bytes_with_its_newline_is_taken_and_no_longer() {
        let mut scanned = 0;
        let mut buf = BytesMut::from(&vec![b'a'; MAX_LINE - 1][..]);
        assert_eq!(next_line(&mut buf, &mut scanned, MAX_LINE), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(
            next_line(&mut buf, &mut scanned, MAX_LINE)
                .unwrap()
                .unwrap()
                .len(),
            MAX_LINE - 1
        );
        // No newline yet, and no room left for one.
        let mut buf = BytesMut::from(&vec![b'a'; MAX_LINE][..]);
        scanned = 0;
        assert_eq!(
            next_line(&mut buf, &mut scanned, MAX_LINE),
            Err(LineTooLong)
        );
        // The newline arrived in the same read as the bytes that made the line too long.
        let mut buf = BytesMut::from(&vec![b'a'; MAX_LINE][..]);
        buf.extend_from_slice(b"\n");
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
