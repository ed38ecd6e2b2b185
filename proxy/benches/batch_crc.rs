//! CRC-32C of record batches, which Custos computes twice for every batch it
//! rewrites (checking the broker's, sealing its own): `crc-fast` (used) against
//! the `crc32c` crate (the baseline), on the sizes batches come in (1 KiB
//! record alone up to a 1 MiB partition fetch).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 131 % 251) as u8).collect();
    let mut g = c.benchmark_group("batch_crc");
    for len in [1024usize, 16 * 1024, 64 * 1024, 1 << 20] {
        let input = &data[..len];
        assert_eq!(
            custos::record_batch::crc32c(input),
            crc32c::crc32c(input),
            "both compute CRC-32C"
        );
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("crc-fast/{len}"), |b| {
            b.iter(|| custos::record_batch::crc32c(std::hint::black_box(input)))
        });
        g.bench_function(format!("crc32c/{len}"), |b| {
            b.iter(|| crc32c::crc32c(std::hint::black_box(input)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
