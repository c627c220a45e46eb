//! Any bytes through the RESP request parser: no panic, progress on every success, and
//! what parses re-encodes to a request that parses back to the same arguments.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lockd_proto::resp::{encode_request, parse_request, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_args: 64, keep_args: 32, max_bulk: 4096, max_request: 64 * 1024 };
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match parse_request(&mut buf, &limits) {
            Ok(Some(args)) => {
                assert!(buf.len() < before, "a parsed request consumes input");
                if !args.is_empty() {
                    let mut again = BytesMut::new();
                    encode_request(&args, &mut again);
                    let mut re = again.clone();
                    let back = parse_request(&mut re, &limits).unwrap().unwrap();
                    assert_eq!(back, args);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
});
