//! Micro-benchmarks of the codecs, and of the legacy signature check, whose share of a
//! legacy request's cost BENCHMARKS.md reports.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lockd_proto::legacy::{parse, AuthScheme, Signer};
use lockd_proto::resp::{encode_request, parse_request, Limits, Value};

fn legacy(c: &mut Criterion) {
    let signer = Signer::new(b"a-reasonably-long-shared-secret", AuthScheme::Both);
    let session = [b'a'; 32];
    let key = [b'k'; 31];
    let hmac_line = signer.sign_line(&session, b"ACQUIRE", b"EX", &key);
    let sha1_line = Signer::new(b"a-reasonably-long-shared-secret", AuthScheme::Sha1)
        .sign_line(&session, b"ACQUIRE", b"EX", &key);
    c.bench_function("legacy parse+verify, HMAC-signed", |b| {
        b.iter(|| black_box(parse(black_box(&hmac_line), &signer)))
    });
    c.bench_function("legacy parse+verify, SHA-1-signed", |b| {
        b.iter(|| black_box(parse(black_box(&sha1_line), &signer)))
    });
    c.bench_function("HMAC-SHA1 signature alone", |b| {
        b.iter(|| black_box(signer.hmac_sig(&session, b"ACQUIRE", b"EX", &key)))
    });
}

fn resp(c: &mut Criterion) {
    let mut req = BytesMut::new();
    encode_request(
        &["ACQUIRE", "EX", "0", "0000000000000000000000000000001"],
        &mut req,
    );
    let limits = Limits::default();
    c.bench_function("RESP parse ACQUIRE", |b| {
        b.iter(|| {
            let mut buf = req.clone();
            black_box(parse_request(&mut buf, &limits).unwrap())
        })
    });
    let mut out = BytesMut::with_capacity(64);
    c.bench_function("RESP encode integer reply", |b| {
        b.iter(|| {
            out.clear();
            Value::Integer(black_box(1_795_686_594_286_785)).encode(2, &mut out);
        })
    });
}

criterion_group!(benches, legacy, resp);
criterion_main!(benches);
