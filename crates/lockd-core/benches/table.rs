//! Micro-benchmarks of the lock table: the cost of the operations themselves, without I/O.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use lockd_core::{Config, ConnId, Key, LockTable, Mode, SessionId, Wait};

fn sid(i: u32) -> SessionId {
    let mut id = [b's'; 32];
    id[..4].copy_from_slice(&i.to_be_bytes());
    SessionId(id)
}

fn key(i: u64) -> Key {
    Key::new(format!("{i:031}").as_bytes()).unwrap()
}

fn table() -> LockTable {
    LockTable::new(Config {
        max_locks: u64::MAX,
        ..Config::default()
    })
}

fn acquire_release(c: &mut Criterion) {
    let mut t = table();
    let s = sid(1);
    t.use_session(s, ConnId(1));
    let keys: Vec<Key> = (0..1024).map(key).collect();
    let mut i = 0;
    c.bench_function("acquire+release EX, one key", |b| {
        b.iter(|| {
            let k = std::slice::from_ref(&keys[i & 1023]);
            i += 1;
            black_box(t.acquire(s, Mode::Ex, k, Wait::No, 0));
            black_box(t.release(s, Mode::Ex, k, 0));
        })
    });
    let batch: Vec<Key> = (0..16).map(key).collect();
    c.bench_function("acquire+release SH, 16 keys", |b| {
        b.iter(|| {
            black_box(t.acquire(s, Mode::Sh, &batch, Wait::No, 0));
            black_box(t.release(s, Mode::Sh, &batch, 0));
        })
    });
}

fn with_a_million_locks(c: &mut Criterion) {
    let mut t = table();
    for s in 0..1000u32 {
        t.use_session(sid(s), ConnId(s as u64));
        let keys: Vec<Key> = (0..1000).map(|k| key(s as u64 * 1000 + k)).collect();
        t.acquire(sid(s), Mode::Ex, &keys, Wait::No, 0);
    }
    let s = sid(5000);
    t.use_session(s, ConnId(5000));
    let held = [key(123_456)];
    let free = [key(9_999_999)];
    c.bench_function("conflict on a held key (1M locks held)", |b| {
        b.iter(|| black_box(t.acquire(s, Mode::Ex, &held, Wait::No, 0)))
    });
    c.bench_function("acquire+release a free key (1M locks held)", |b| {
        b.iter(|| {
            black_box(t.acquire(s, Mode::Ex, &free, Wait::No, 0));
            black_box(t.release(s, Mode::Ex, &free, 0));
        })
    });
}

fn hand_off(c: &mut Criterion) {
    c.bench_function("hand-off to the next of 1000 queued EX", |b| {
        b.iter_batched(
            || {
                let mut t = table();
                let k = [key(0)];
                for s in 0..1001u32 {
                    t.use_session(sid(s), ConnId(s as u64));
                    let w = if s == 0 { Wait::No } else { Wait::Queue };
                    t.acquire(sid(s), Mode::Ex, &k, w, 0);
                }
                t
            },
            |mut t| {
                black_box(t.release(sid(0), Mode::Ex, &[key(0)], 0));
                t
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, acquire_release, with_a_million_locks, hand_off);
criterion_main!(benches);
