//! Audit log benchmarks: encoding, verification, and durable appends.
//!
//! Run with `cargo bench -p custos-audit`. Records are built to be about 300
//! bytes encoded, the size the targets are stated for.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use custos_audit::merkle::{chain_hash, leaf_hash, Frontier, Hash, GENESIS};
use custos_audit::{
    codec, AuditLog, AuditOptions, AuditReader, AuditRecord, Blame, EventKind, Resource, SignerKey,
    SubjectToken, VerifyOptions,
};

fn record(i: u64) -> AuditRecord {
    let r = AuditRecord::new(
        if i.is_multiple_of(2) {
            EventKind::Produce
        } else {
            EventKind::Authorization
        },
        "custos-1",
    )
    .at_ms(1_700_000_000_000 + i)
    .with_action("Write")
    .with_principal(format!("User:svc-{}", i % 16), "SCRAM-SHA-512")
    .with_client("10.1.2.3:53412", Some("orders-app".into()))
    .with_request(0, 9, i as i32)
    .with_resource(Resource::topic("orders.v1").with_partition(
        (i % 12) as i32,
        Some(i as i64),
        10,
        4096,
    ))
    .with_decision(
        true,
        vec!["allow-writers".into()],
        "9f86d081884c7d659a2feaa0c55ad015",
    )
    .with_key_id("kek-1")
    .with_subject(SubjectToken::from_bytes(&[(i % 251) as u8; 16]).expect("token"))
    .with_detail("broker_id", "1");
    if i.is_multiple_of(50) {
        r.with_error(Some(29), Blame::Client, "denied")
    } else {
        r
    }
}

fn encoded(n: u64) -> Vec<(Hash, Vec<u8>)> {
    let mut prev = GENESIS;
    (0..n)
        .map(|i| {
            let mut r = record(i);
            r.seq = i;
            let bytes = codec::encode(&r).expect("encode");
            prev = chain_hash(&prev, &bytes);
            (prev, bytes)
        })
        .collect()
}

fn encode_bench(c: &mut Criterion) {
    let r = record(7);
    let size = codec::encode(&r).expect("encode").len();
    let mut g = c.benchmark_group(format!("codec ({size}-byte record)"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| codec::encode(black_box(&r))));
    let bytes = codec::encode(&r).expect("encode");
    g.bench_function("decode", |b| b.iter(|| codec::decode(black_box(&bytes))));
    g.finish();
}

const VERIFY_N: u64 = 200_000;

fn verify_bench(c: &mut Criterion) {
    let records = encoded(VERIFY_N);
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(VERIFY_N));
    g.sample_size(10);
    // The verifier's inner loop on records already in memory: chain hash,
    // compare, Merkle leaf, frontier push.
    g.bench_function("in-memory chain + merkle", |b| {
        b.iter(|| {
            let mut prev = GENESIS;
            let mut f = Frontier::new();
            for (stored, bytes) in &records {
                let h = chain_hash(&prev, bytes);
                assert!(h == *stored);
                f.push(leaf_hash(bytes));
                prev = h;
            }
            black_box(f.root())
        })
    });
    g.bench_function("in-memory chain only", |b| {
        b.iter(|| {
            let mut prev = GENESIS;
            for (stored, bytes) in &records {
                let h = chain_hash(&prev, bytes);
                assert!(h == *stored);
                prev = h;
            }
            black_box(prev)
        })
    });
    g.bench_function("in-memory merkle only", |b| {
        b.iter(|| {
            let mut f = Frontier::new();
            for (_, bytes) in &records {
                f.push(leaf_hash(bytes));
            }
            black_box(f.root())
        })
    });

    // End to end over a sled store: read, chain, tree, checkpoint signatures.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SignerKey::from_seed(&[5u8; 32]);
    let public = key.public();
    {
        let (handle, writer) =
            AuditLog::open(dir.path(), key, AuditOptions::default()).expect("open");
        let tickets: Vec<_> = (0..VERIFY_N)
            .map(|i| handle.append_blocking(&record(i)).expect("queue"))
            .collect();
        for t in tickets {
            t.wait().expect("durable");
        }
        handle.close_blocking().expect("close");
        drop(handle);
        writer.join().expect("writer");
    }
    let reader = AuditReader::open(dir.path()).expect("open");
    g.bench_function("verify_store (sled)", |b| {
        b.iter(|| {
            let report = reader
                .verify(&public, &VerifyOptions::default())
                .expect("verify");
            assert!(report.ok());
            report
        })
    });
    g.finish();
}

fn append_bench(c: &mut Criterion) {
    const N: u64 = 50_000;
    let mut g = c.benchmark_group("durable append");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let records: Vec<AuditRecord> = (0..N).map(record).collect();
    for (name, max_batch, producers) in [
        ("group commit, 2 producers", 8_192, 2u64),
        ("group commit, batches <= 64", 64, 2),
        ("group commit, batches <= 512", 512, 2),
    ] {
        let records = &records;
        g.bench_function(name, |b| {
            // Set up inside the closure so that a filtered-out run costs nothing.
            let dir = tempfile::tempdir().expect("tempdir");
            let options = AuditOptions {
                max_batch,
                ..AuditOptions::default()
            };
            let (handle, writer) =
                AuditLog::open(dir.path(), SignerKey::from_seed(&[5u8; 32]), options)
                    .expect("open");
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for p in 0..producers {
                            let h = handle.clone();
                            s.spawn(move || {
                                // Every record's ticket is awaited: the time
                                // counts until the last one is on disk.
                                let tickets: Vec<_> = records
                                    .iter()
                                    .skip(p as usize)
                                    .step_by(producers as usize)
                                    .map(|r| h.append_blocking(r).expect("queue"))
                                    .collect();
                                for t in tickets {
                                    t.wait().expect("durable");
                                }
                            });
                        }
                    });
                    total += start.elapsed();
                }
                total
            });
            let health = handle.health();
            eprintln!(
                "{name}: {} records in {} flushes, mean batch {:.0}",
                health.durable_records,
                health.flushes,
                health.durable_records as f64 / health.flushes.max(1) as f64
            );
            handle.close_blocking().expect("close");
            drop(handle);
            writer.join().expect("writer");
        });
    }
    g.finish();
}

fn batch_bench(c: &mut Criterion) {
    // Checkpoint signing cost, for sizing checkpoint_every.
    let key = SignerKey::from_seed(&[5u8; 32]);
    let cp = custos_audit::Checkpoint {
        seq: 1,
        chain_head: [1; 32],
        merkle_root: [2; 32],
        time_ms: 3,
        key_id: key.key_id(),
    };
    let public = key.public();
    let signed = key.sign(cp);
    let mut g = c.benchmark_group("checkpoint");
    g.bench_function("sign", |b| {
        b.iter_batched(|| cp, |cp| key.sign(cp), BatchSize::SmallInput)
    });
    g.bench_function("verify", |b| b.iter(|| signed.verify(&public)));
    g.finish();
}

criterion_group!(
    benches,
    encode_bench,
    verify_bench,
    append_bench,
    batch_bench
);
criterion_main!(benches);
