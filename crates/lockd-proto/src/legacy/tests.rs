//! Unit tests of the legacy codec: every reply code, the check order, both signature
//! schemes against the shipped vectors, bytes not characters.

use super::*;

const SESSION: &[u8] = b"0123456789abcdef0123456789abcdef";
const K1: &[u8] = b"0000000000000000000000000000001";

fn signer() -> Signer {
    Signer::new(b"secret", AuthScheme::Both)
}

fn signed(command: &str, ty: &str, values: &str) -> Vec<u8> {
    signer().sign_line(
        SESSION,
        command.as_bytes(),
        ty.as_bytes(),
        values.as_bytes(),
    )
}

#[test]
fn shipped_vectors_match_both_schemes() {
    let tsv = include_str!("../../testdata/legacy-auth-vectors.tsv");
    let mut n = 0;
    for line in tsv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 7, "{line}");
        let s = Signer::new(f[0].as_bytes(), AuthScheme::Both);
        let args = (
            f[1].as_bytes(),
            f[2].as_bytes(),
            f[3].as_bytes(),
            f[4].as_bytes(),
        );
        assert_eq!(
            &s.hmac_sig(args.0, args.1, args.2, args.3)[..],
            f[5].as_bytes(),
            "{line}"
        );
        assert_eq!(
            &s.sha1_sig(args.0, args.1, args.2, args.3)[..],
            f[6].as_bytes(),
            "{line}"
        );
        for sig in [f[5], f[6]] {
            let req = format!("{}:{}:{}:{}:{}", f[1], sig, f[2], f[3], f[4]);
            assert!(parse(req.as_bytes(), &s).is_ok(), "{req}");
        }
        n += 1;
    }
    assert_eq!(n, 7);
}

#[test]
fn vectors_in_shared_agree_with_the_copy_here() {
    // CI lays shared/ beside the clone; when it is there, our copy must not have drifted.
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/protocol/legacy-auth-vectors.tsv"
    );
    match std::fs::read_to_string(shared) {
        Ok(s) => assert_eq!(s, include_str!("../../testdata/legacy-auth-vectors.tsv")),
        Err(e) => {
            // Not laid beside this clone: say so where every run shows it (the harness
            // does not capture a direct write), and fail where it must be (CI).
            assert!(
                std::env::var_os("LOCKD_REQUIRE_INTEROP").is_none(),
                "{shared}: {e} (CI lays ../shared beside the clone)"
            );
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: ../shared is not beside this clone ({e}); the vectors were not compared"
            );
        }
    }
}

#[test]
fn schemes_can_be_restricted() {
    let tsv_hmac = "0d4cb1bfe12e6904adb8a61e8ecd428784137dfb";
    let tsv_sha1 = "ae71b0b03da6653780d4715f78ad60dba669ae8d";
    let req = |sig: &str| {
        format!("0123456789abcdef0123456789abcdef:{sig}:ACQUIRE:EX:0000000000000000000000000000001")
    };
    let hmac = Signer::new(b"secret", AuthScheme::Hmac);
    let sha1 = Signer::new(b"secret", AuthScheme::Sha1);
    assert!(parse(req(tsv_hmac).as_bytes(), &hmac).is_ok());
    assert_eq!(parse(req(tsv_sha1).as_bytes(), &hmac), Err(BadRequest::Key));
    assert!(parse(req(tsv_sha1).as_bytes(), &sha1).is_ok());
    assert_eq!(parse(req(tsv_hmac).as_bytes(), &sha1), Err(BadRequest::Key));
    assert_eq!("hmac".parse::<AuthScheme>(), Ok(AuthScheme::Hmac));
    assert!("md5".parse::<AuthScheme>().is_err());
}

#[test]
fn parses_every_command() {
    let line = signed(
        "ACQUIRE",
        "SH",
        "0000000000000000000000000000001|0000000000000000000000000000002",
    );
    let r = parse(&line, &signer()).unwrap();
    assert_eq!(r.session, SESSION);
    assert_eq!(
        r.command,
        Command::Acquire(LockType::Sh, vec![K1, b"0000000000000000000000000000002"])
    );
    let line = signed("RELEASE", "EX", std::str::from_utf8(K1).unwrap());
    assert_eq!(
        parse(&line, &signer()).unwrap().command,
        Command::Release(LockType::Ex, vec![K1])
    );
    let line = signed("RELEASE_ALL", "junk", "anything|at all");
    assert_eq!(
        parse(&line, &signer()).unwrap().command,
        Command::ReleaseAll
    );
    let line = signed("STAT", "", "");
    assert_eq!(parse(&line, &signer()).unwrap().command, Command::Stat);
}

#[test]
fn trailing_whitespace_is_stripped_leading_kept() {
    let mut line = signed("STAT", "", "");
    line.extend_from_slice(b" \t\r\0\x0B");
    assert!(parse(&line, &signer()).is_ok());
    let mut lead = b" ".to_vec();
    lead.extend_from_slice(&signed("STAT", "", ""));
    // The leading space is part of SESSION: the signature no longer matches.
    assert_eq!(parse(&lead, &signer()), Err(BadRequest::Key));
}

#[test]
fn checks_come_in_the_original_order() {
    let s = signer();
    // Field count first, even with a bad key.
    assert_eq!(parse(b"", &s), Err(BadRequest::Format));
    assert_eq!(parse(b"a:b:c:d", &s), Err(BadRequest::Format));
    assert_eq!(parse(b"a:b:c:d:e:f", &s), Err(BadRequest::Format));
    // Then the signature, even with a short session and an unknown command.
    assert_eq!(parse(b"short:0000:NOPE:XX:", &s), Err(BadRequest::Key));
    // Uppercase hex is not the expected signature.
    let line = String::from_utf8(signed("STAT", "", "")).unwrap();
    let (sess, rest) = line.split_once(':').unwrap();
    let (sig, rest) = rest.split_once(':').unwrap();
    assert_eq!(
        parse(
            format!("{sess}:{}:{rest}", sig.to_uppercase()).as_bytes(),
            &s
        ),
        Err(BadRequest::Key)
    );
    // Then the session length.
    let short = s.sign_line(b"short", b"STAT", b"", b"");
    assert_eq!(parse(&short, &s), Err(BadRequest::Session));
    let long = s.sign_line(&[b'x'; 33], b"NOPE", b"", b"");
    assert_eq!(parse(&long, &s), Err(BadRequest::Session));
    // Then the command (case-sensitive).
    assert_eq!(
        parse(&signed("acquire", "EX", "x"), &s),
        Err(BadRequest::Command)
    );
    assert_eq!(
        parse(&signed("NOPE", "EX", "x"), &s),
        Err(BadRequest::Command)
    );
    // Then the type, before the values.
    assert_eq!(
        parse(&signed("ACQUIRE", "ex", "x"), &s),
        Err(BadRequest::Type)
    );
    assert_eq!(parse(&signed("RELEASE", "", ""), &s), Err(BadRequest::Type));
    // Then the values: every part exactly 31 bytes, so empty VALUES fails.
    assert_eq!(
        parse(&signed("ACQUIRE", "EX", ""), &s),
        Err(BadRequest::Format)
    );
    assert_eq!(
        parse(
            &signed("ACQUIRE", "EX", "000000000000000000000000000001"),
            &s
        ),
        Err(BadRequest::Format)
    );
    let ok_then_bad = "0000000000000000000000000000001|";
    assert_eq!(
        parse(&signed("RELEASE", "SH", ok_then_bad), &s),
        Err(BadRequest::Format)
    );
}

#[test]
fn keys_are_bytes_not_characters() {
    let s = signer();
    // 31 bytes including multi-byte UTF-8 and a NUL.
    let mut key = "é".repeat(10).into_bytes(); // 20 bytes
    key.extend_from_slice(b"\0abcdefghij"); // 31
    assert_eq!(key.len(), 31);
    let line = s.sign_line(SESSION, b"ACQUIRE", b"EX", &key);
    assert_eq!(
        parse(&line, &s).unwrap().command,
        Command::Acquire(LockType::Ex, vec![&key[..]])
    );
    let session = "ü".repeat(16).into_bytes();
    let line = s.sign_line(&session, b"STAT", b"", b"");
    assert!(parse(&line, &s).is_ok(), "32 bytes, 16 characters");
}

#[test]
fn reply_lines() {
    let cases = [
        (Reply::Acquired, "ACQUIRED\n"),
        (Reply::CantAcquire, "CANT_ACQUIRE\n"),
        (Reply::TooManyLocks, "TOO_MANY_LOCKS\n"),
        (Reply::Released, "RELEASED\n"),
        (Reply::ReleasedAll, "RELEASED_ALL\n"),
        (
            Reply::Stat {
                uptime_secs: 1803,
                memory_bytes: 468312,
            },
            "1803:468312\n",
        ),
        (Reply::Bad(BadRequest::Format), "BAD_FORMAT\n"),
        (Reply::Bad(BadRequest::Key), "BAD_KEY\n"),
        (Reply::Bad(BadRequest::Session), "BAD_SESSION\n"),
        (Reply::Bad(BadRequest::Command), "BAD_COMMAND\n"),
        (Reply::Bad(BadRequest::Type), "BAD_TYPE\n"),
    ];
    for (r, want) in cases {
        let mut out = Vec::new();
        r.write_to(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

proptest::proptest! {
    /// The first two checks decide any line of unsigned fields: not five fields is
    /// BAD_FORMAT; five fields whose second is not the signature is BAD_KEY, whatever the
    /// rest holds. (Signed requests are the fuzz target's: `fuzz/fuzz_targets/legacy_codec.rs`.)
    #[test]
    fn unsigned_lines_fail_the_first_checks(
        fields in proptest::collection::vec("[ -9;-~]{0,40}", 1..9),
    ) {
        let line = fields.join(":");
        let got = parse(line.as_bytes(), &signer());
        let want = if fields.len() == 5 { BadRequest::Key } else { BadRequest::Format };
        proptest::prop_assert_eq!(got.err(), Some(want), "{:?}", line);
    }
}
