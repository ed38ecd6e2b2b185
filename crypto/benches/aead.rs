//! AEAD backend benchmarks: aws-lc-rs against RustCrypto `aes-gcm`.
//!
//! The proxy's default AES-256-GCM backend is whichever is faster here, so
//! both run the same calls on the same sizes: 32 B (a short JSON field),
//! 256 B, 1 KiB (the record size of the throughput targets) and 16 KiB. The
//! envelope group measures a whole 1 KiB field sealed and opened, including
//! the header, the associated data and (for the raw-key calls) the key setup.
//!
//! Run: `cargo bench -p custos-crypto --bench aead -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use custos_crypto::aead::{Backend, GcmKey, SivKey, GCM_TAG_LEN, KEY_LEN, NONCE_LEN};
use custos_crypto::envelope::{self, Algorithm, Binding, PreparedKey};
use custos_crypto::key_ref::KeyRef;
use custos_crypto::kms::WrappedKey;

const SIZES: [usize; 4] = [32, 256, 1024, 16 * 1024];
const KEY: [u8; KEY_LEN] = [0x42; KEY_LEN];
// Fixed nonce: benchmarks only, never reuse a nonce for real data.
const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];
const AAD: &[u8] = b"c57d0101010a-header-and-binding-of-a-typical-size";

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn gcm(c: &mut Criterion) {
    let mut seal = c.benchmark_group("gcm-seal");
    for size in SIZES {
        let pt = payload(size);
        seal.throughput(Throughput::Bytes(size as u64));
        for backend in Backend::ALL {
            let key = GcmKey::new(backend, &KEY).expect("key");
            let mut out = Vec::with_capacity(size + GCM_TAG_LEN);
            seal.bench_with_input(BenchmarkId::new(backend.name(), size), &pt, |b, pt| {
                b.iter(|| {
                    out.clear();
                    key.seal_append(&NONCE, AAD, black_box(pt), &mut out)
                        .expect("seal");
                    black_box(&out);
                })
            });
        }
    }
    seal.finish();

    let mut open = c.benchmark_group("gcm-open");
    for size in SIZES {
        let mut sealed = Vec::new();
        GcmKey::new(Backend::AwsLc, &KEY)
            .expect("key")
            .seal_append(&NONCE, AAD, &payload(size), &mut sealed)
            .expect("seal");
        open.throughput(Throughput::Bytes(size as u64));
        for backend in Backend::ALL {
            let key = GcmKey::new(backend, &KEY).expect("key");
            let mut out = Vec::with_capacity(size);
            open.bench_with_input(
                BenchmarkId::new(backend.name(), size),
                &sealed,
                |b, sealed| {
                    b.iter(|| {
                        out.clear();
                        key.open_append(&NONCE, AAD, black_box(sealed), &mut out)
                            .expect("open");
                        black_box(&out);
                    })
                },
            );
        }
    }
    open.finish();

    // What a call with a raw key pays before any byte is encrypted.
    let mut setup = c.benchmark_group("key-setup");
    for backend in Backend::ALL {
        setup.bench_function(BenchmarkId::new("gcm", backend.name()), |b| {
            b.iter(|| black_box(GcmKey::new(backend, black_box(&KEY)).expect("key")))
        });
    }
    setup.bench_function("siv-hkdf", |b| {
        b.iter(|| black_box(SivKey::derive(black_box(&KEY)).expect("derive")))
    });
    setup.finish();
}

fn envelope_1k(c: &mut Criterion) {
    let pt = payload(1024);
    // A wrapped key the size an AWS KMS data key blob has.
    let key_ref = KeyRef::Wrapped(WrappedKey {
        kek_id: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            .into(),
        kek_version: 0,
        blob: vec![0xb1; 184],
    });
    let binding = Binding {
        topic: "orders.v1",
        field: "value",
    };
    let prepared = PreparedKey::new(&KEY).expect("key");
    let mut g = c.benchmark_group("envelope-1KiB");
    g.throughput(Throughput::Bytes(pt.len() as u64));
    for alg in [Algorithm::Aes256Gcm, Algorithm::Aes256Siv] {
        let mut out = Vec::with_capacity(2048);
        g.bench_function(BenchmarkId::new("seal-raw-key", alg.name()), |b| {
            b.iter(|| {
                out.clear();
                envelope::seal(alg, &KEY, &key_ref, &binding, black_box(&pt), &mut out)
                    .expect("seal");
                black_box(&out);
            })
        });
        g.bench_function(BenchmarkId::new("seal-prepared", alg.name()), |b| {
            b.iter(|| {
                out.clear();
                envelope::seal_prepared(
                    alg,
                    &prepared,
                    &key_ref,
                    &binding,
                    black_box(&pt),
                    &mut out,
                )
                .expect("seal");
                black_box(&out);
            })
        });
        let mut sealed = Vec::new();
        envelope::seal(alg, &KEY, &key_ref, &binding, &pt, &mut sealed).expect("seal");
        g.bench_function(BenchmarkId::new("open-raw-key", alg.name()), |b| {
            b.iter(|| {
                out.clear();
                let env = envelope::parse(black_box(&sealed)).expect("parse");
                env.open(&KEY, &binding, &mut out).expect("open");
                black_box(&out);
            })
        });
        g.bench_function(BenchmarkId::new("open-prepared", alg.name()), |b| {
            b.iter(|| {
                out.clear();
                let env = envelope::parse(black_box(&sealed)).expect("parse");
                env.open_prepared(&prepared, &binding, &mut out)
                    .expect("open");
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gcm, envelope_1k);
criterion_main!(benches);
