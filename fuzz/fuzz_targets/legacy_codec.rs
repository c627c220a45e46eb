//! Any bytes through the legacy framing and parser: no panic, and whatever parses is a
//! well-formed request (32-byte session, 31-byte keys).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lockd_proto::legacy::{parse, AuthScheme, Command, Signer, KEY_LEN, SESSION_LEN};
use lockd_proto::line::{next_line, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let signer = Signer::new(b"fuzz", AuthScheme::Both);
    let mut buf = BytesMut::from(data);
    let mut scanned = 0;
    while let Ok(Some(line)) = next_line(&mut buf, &mut scanned, MAX_LINE) {
        if let Ok(req) = parse(&line, &signer) {
            assert_eq!(req.session.len(), SESSION_LEN);
            if let Command::Acquire(_, keys) | Command::Release(_, keys) = req.command {
                assert!(keys.iter().all(|k| k.len() == KEY_LEN));
            }
        }
    }
    // Signed requests built from the input parse back to what was signed.
    if data.len() >= 32 {
        let (session, rest) = data.split_at(32);
        let values: Vec<u8> = rest.iter().map(|&b| if b == b':' || b == b'\n' { b'x' } else { b }).collect();
        let line = signer.sign_line(session, b"RELEASE_ALL", b"", &values);
        if !session.contains(&b':') && !session.contains(&b'\n') && !matches!(values.last(), Some(b' ' | b'\t' | b'\r' | 0 | 0x0B)) {
            let req = parse(&line, &signer).expect("a signed RELEASE_ALL parses");
            assert_eq!(req.session, session);
        }
    }
});
