//! The RESP request parser, two ways.
//!
//! 1. Any bytes: no panic, progress on every success, and what parses re-encodes to a
//!    request that parses back to the same arguments.
//! 2. Requests built from the input (arrays of bulk strings of random lengths, any bytes),
//!    encoded, then kept whole, truncated, or corrupted at one byte: a whole request parses
//!    back exactly, consuming all of it; a truncated one needs more bytes; a corrupted one
//!    may fail, but never panics, and what it parses to still round-trips.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lockd_proto::resp::{encode_request, parse_request, parse_spans, Limits};

const LIMITS: Limits = Limits { max_args: 64, keep_args: 32, max_bulk: 4096, max_request: 64 * 1024 };

fn round_trips(buf: &mut BytesMut) {
    loop {
        let before = buf.len();
        match parse_request(buf, &LIMITS) {
            Ok(Some(args)) => {
                assert!(buf.len() < before, "a parsed request consumes input");
                if !args.is_empty() {
                    let mut again = BytesMut::new();
                    encode_request(&args, &mut again);
                    let back = parse_request(&mut again.clone(), &LIMITS).unwrap().unwrap();
                    assert_eq!(back, args);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    round_trips(&mut BytesMut::from(data));

    let Some((&shape, rest)) = data.split_first() else { return };
    // Arguments: each takes a length byte, then that many bytes of the input (or fewer).
    let mut args: Vec<&[u8]> = Vec::new();
    let mut rest = rest;
    while let Some((&len, more)) = rest.split_first() {
        let n = (len as usize).min(more.len());
        args.push(&more[..n]);
        rest = &more[n..];
        if args.len() == 40 {
            break;
        }
    }
    if args.is_empty() {
        return;
    }
    let mut enc = BytesMut::new();
    encode_request(&args, &mut enc);
    let whole = enc.len();
    match shape % 3 {
        0 => {
            let f = parse_spans(&enc, &LIMITS).unwrap().expect("a whole request parses");
            assert_eq!(f.len, whole);
            assert_eq!(f.args, args.len());
            assert_eq!(f.spans.len(), args.len().min(LIMITS.keep_args));
            for (&(p, l), a) in f.spans.iter().zip(&args) {
                assert_eq!(&enc[p..p + l], *a);
            }
            let back = parse_request(&mut enc, &LIMITS).unwrap().unwrap();
            assert_eq!(back.len(), args.len().min(LIMITS.keep_args));
            assert!(enc.is_empty());
        }
        1 => {
            let cut = (shape as usize / 3) * whole / 86;
            let cut = cut.min(whole - 1);
            assert_eq!(parse_spans(&enc[..cut], &LIMITS), Ok(None), "cut at {cut} of {whole}");
        }
        _ => {
            let at = (shape as usize * 31) % whole;
            enc[at] ^= 1 + (shape >> 4);
            round_trips(&mut enc);
        }
    }
});
