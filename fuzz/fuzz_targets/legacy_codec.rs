//! The legacy framing and parser, two ways.
//!
//! 1. Any bytes: no panic, and whatever parses is well formed (32-byte session, 31-byte
//!    keys).
//! 2. Requests built from the input, signed (HMAC-SHA1 or the seed's SHA-1), of every
//!    command, with random keys, sometimes broken in one chosen way, and delivered in
//!    random pieces: the line comes out of the framing whole, and the parser's answer is
//!    exactly the one the protocol's rules give (legacy.md's checks, in their order), keys
//!    split as they were joined. Random bytes alone almost never carry a valid signature,
//!    so without this half nothing past the signature check would be fuzzed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lockd_proto::legacy::{parse, AuthScheme, BadRequest, Command, Signer, KEY_LEN, SESSION_LEN};
use lockd_proto::line::{next_line, MAX_LINE};
use lockd_proto::LockType;

/// Reads choices off the input; past its end, zeros.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// `n` bytes of a key or session alphabet (no `:`, `|`, newline or trailing blank).
    fn text(&mut self, n: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-.";
        (0..n).map(|_| ALPHABET[self.byte() as usize % ALPHABET.len()]).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let both = Signer::new(b"fuzz", AuthScheme::Both);
    let mut buf = BytesMut::from(data);
    let mut scanned = 0;
    while let Ok(Some(line)) = next_line(&mut buf, &mut scanned, MAX_LINE) {
        if let Ok(req) = parse(&line, &both) {
            assert_eq!(req.session.len(), SESSION_LEN);
            if let Command::Acquire(_, keys) | Command::Release(_, keys) = req.command {
                assert!(keys.iter().all(|k| k.len() == KEY_LEN));
            }
        }
    }

    let mut c = Choices(data);
    let signer = match c.byte() % 2 {
        0 => Signer::new(b"fuzz", AuthScheme::Hmac),
        _ => Signer::new(b"fuzz", AuthScheme::Sha1),
    };
    // One way to break the request, or none.
    let broken = c.byte() % 8;
    let command: &[u8] = match c.byte() % 5 {
        0 => b"ACQUIRE",
        1 => b"RELEASE",
        2 => b"RELEASE_ALL",
        3 => b"STAT",
        _ => b"acquire",
    };
    let ty: &[u8] = match c.byte() % 4 {
        0 | 1 => b"SH",
        2 => b"EX",
        _ => b"XX",
    };
    let session = c.text(if broken == 1 { 31 } else { 32 });
    let nkeys = (c.byte() % 6) as usize;
    let keys: Vec<Vec<u8>> = (0..nkeys)
        .map(|i| c.text(if broken == 2 && i == 0 { 30 } else { KEY_LEN }))
        .collect();
    let values = keys.join(&b'|');
    let mut line = signer.sign_line(&session, command, ty, &values);
    if broken == 3 {
        // One hex digit of the signature changed.
        let at = session.len() + 1 + (c.byte() % 40) as usize;
        line[at] = if line[at] == b'0' { b'1' } else { b'0' };
    }
    if broken == 4 {
        line.extend_from_slice(b":extra");
    }
    // Trailing white space is stripped before parsing; \r\n endings work.
    match c.byte() % 3 {
        0 => line.extend_from_slice(b"\r"),
        1 => line.extend_from_slice(b" \t"),
        _ => {}
    }
    line.push(b'\n');
    // Delivered in pieces, as reads would bring it.
    let mut framed = BytesMut::new();
    let mut scanned = 0;
    let mut got = None;
    let mut rest = &line[..];
    while !rest.is_empty() {
        let n = (1 + c.byte() as usize * 97).min(rest.len());
        framed.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let out = next_line(&mut framed, &mut scanned, MAX_LINE).expect("short lines fit");
        if let Some(l) = out {
            assert!(got.is_none() && rest.is_empty(), "a line came out before its end");
            got = Some(l);
        }
    }
    let got = got.expect("the whole line came out");
    assert_eq!(&got[..], &line[..line.len() - 1]);
    let trimmed = lockd_proto::line::rtrim(&got);

    // The protocol's checks, in order.
    let lock = matches!(command, b"ACQUIRE" | b"RELEASE");
    let expect: Result<(), BadRequest> = if broken == 4 {
        Err(BadRequest::Format)
    } else if broken == 3 {
        Err(BadRequest::Key)
    } else if session.len() != SESSION_LEN {
        Err(BadRequest::Session)
    } else if !matches!(command, b"ACQUIRE" | b"RELEASE" | b"RELEASE_ALL" | b"STAT") {
        Err(BadRequest::Command)
    } else if lock && ty == b"XX" {
        Err(BadRequest::Type)
    } else if lock && (keys.is_empty() || keys.iter().any(|k| k.len() != KEY_LEN)) {
        Err(BadRequest::Format)
    } else {
        Ok(())
    };
    match (parse(trimmed, &both), expect) {
        (Ok(req), Ok(())) => {
            assert_eq!(req.session, &session[..]);
            let want_ty = if ty == b"EX" { LockType::Ex } else { LockType::Sh };
            let want: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
            match (req.command, command) {
                (Command::Acquire(t, k), b"ACQUIRE") | (Command::Release(t, k), b"RELEASE") => {
                    assert_eq!((t, k), (want_ty, want));
                }
                (Command::ReleaseAll, b"RELEASE_ALL") | (Command::Stat, b"STAT") => {}
                (other, _) => panic!("parsed as {other:?}"),
            }
        }
        (Err(got), Err(want)) => assert_eq!(got, want),
        (got, want) => panic!("parsed {got:?}, the rules say {want:?}"),
    }
});
