//! Locating two protected fields in a ~1 KiB JSON record: the per-record cost
//! field encryption adds on the produce path before any cryptography.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use custos_crypto::json_fields::{
    count_ciphertexts, encode_ciphertext, locate, locate_ciphertexts_into, locate_into, splice,
    FieldPath,
};

/// An order event shaped like real traffic: nested customer, an items array,
/// strings with escapes and non-ASCII text, numbers of each form.
fn document() -> Vec<u8> {
    let mut items = String::new();
    for i in 0..6 {
        if i > 0 {
            items.push(',');
        }
        items.push_str(&format!(
            r#"{{"sku":"SKU-{i:05}","name":"Widget \"deluxe\" nº{i}","qty":{q},"price":{p}.99,"tags":["a","b","c"]}}"#,
            q = i + 1,
            p = 10 + i
        ));
    }
    let doc = format!(
        r#"{{"id":"3f1c2d7e-9a4b-4c1e-8d2f-6b7a9c0e1f23","ts":1718035200123,"type":"order.created","customer":{{"name":"Zoë Müller","email":"zoe.mueller@example.com","phone":"+49 30 1234567","address":{{"street":"Hauptstraße 5","city":"Berlin","zip":"10115"}}}},"items":[{items}],"total":123.45e0,"paid":true,"coupon":null,"notes":"Leave at the door\nthanks","channel":"web","locale":"de-DE","session":"b1946ac92492d2347c6235b4d2611184"}}"#
    );
    doc.into_bytes()
}

/// A 1 KiB document shaped like `deploy/bench.sh`'s payload: a few short
/// fields, then one long free-text string, as in the data-path benchmark.
fn bench_payload() -> Vec<u8> {
    let head = r#"{"id":0,"customer_id":"C83604450","name":"Echo Lima","email":"person0.375951@example.org","card":{"number":"8684-0475-7628-4080","brand":"amex","expiry":"01/28"},"address":{"city":"Gent","zip":"7091"},"items":[{"sku":"SKU-32318","qty":7,"price":272.34},{"sku":"SKU-75227","qty":4,"price":7.54},{"sku":"SKU-28407","qty":7,"price":140.46}],"created_at":"2026-11-15T04:08:00Z","notes":""#;
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let mut doc = head.to_string();
    let mut i = 0;
    while doc.len() < 1022 {
        doc.push_str(words[i % words.len()]);
        doc.push(' ');
        i += 1;
    }
    doc.truncate(1022);
    doc.push_str("\"}");
    doc.into_bytes()
}

fn bench(c: &mut Criterion) {
    let payload = bench_payload();
    let payload_paths = [
        FieldPath::parse("$.email").expect("path"),
        FieldPath::parse("$.card.number").expect("path"),
    ];
    assert_eq!(locate(&payload, &payload_paths).expect("valid").len(), 2);
    let doc = document();
    let paths = [
        FieldPath::parse("$.customer.email").expect("path"),
        FieldPath::parse("$.customer.address").expect("path"),
    ];
    assert_eq!(locate(&doc, &paths).expect("valid").len(), 2);

    let mut g = c.benchmark_group("json_fields");
    g.throughput(Throughput::Bytes(doc.len() as u64));
    let mut out = Vec::new();
    g.bench_function(format!("locate_2_fields_{}B", doc.len()), |b| {
        b.iter(|| {
            locate_into(black_box(&doc), black_box(&paths), &mut out).expect("valid");
            black_box(out.len())
        })
    });
    g.bench_function(
        format!("locate_2_fields_bench_payload_{}B", payload.len()),
        |b| {
            b.iter(|| {
                locate_into(black_box(&payload), black_box(&payload_paths), &mut out)
                    .expect("valid");
                black_box(out.len())
            })
        },
    );
    // The payload as the broker holds it: both fields sealed (an envelope
    // of about 140 bytes, as the local keyring makes for a short field).
    let found = locate(&payload, &payload_paths).expect("valid");
    let sealed_literal = encode_ciphertext(&[0x5au8; 140]);
    let reps: Vec<_> = found
        .iter()
        .map(|l| (l.span.clone(), sealed_literal.clone()))
        .collect();
    let sealed = splice(&payload, &reps);
    assert_eq!(count_ciphertexts(&sealed), 2);
    g.bench_function(
        format!("count_ciphertexts_sealed_bench_payload_{}B", sealed.len()),
        |b| b.iter(|| count_ciphertexts(black_box(&sealed))),
    );
    // A revealing reader's walk: to the last ciphertext, for envelopes of a
    // stored data key (70 bytes for a short field) and an inline one (140).
    for envelope_len in [70, 140] {
        let literal = encode_ciphertext(&vec![0x5au8; envelope_len]);
        let reps: Vec<_> = found
            .iter()
            .map(|l| (l.span.clone(), literal.clone()))
            .collect();
        let sealed = splice(&payload, &reps);
        g.bench_function(
            format!("reveal_walk_{envelope_len}B_envelopes_{}B", sealed.len()),
            |b| {
                b.iter(|| {
                    let n = count_ciphertexts(black_box(&sealed));
                    locate_ciphertexts_into(black_box(&sealed), &payload_paths, &mut out, n)
                        .expect("valid");
                    assert_eq!(out.len(), 2);
                })
            },
        );
    }
    let fake_envelope = [0x5au8; 60];
    g.bench_function(format!("locate_and_splice_2_fields_{}B", doc.len()), |b| {
        b.iter(|| {
            locate_into(black_box(&doc), black_box(&paths), &mut out).expect("valid");
            let reps: Vec<_> = out
                .iter()
                .map(|l| (l.span.clone(), encode_ciphertext(&fake_envelope)))
                .collect();
            black_box(splice(&doc, &reps))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
