//! Helpers shared by the audit integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use custos_audit::merkle::Hash;
use custos_audit::store::layout;
use custos_audit::{
    AuditHandle, AuditLog, AuditOptions, AuditRecord, AuditWriter, Blame, EventKind, PublicKey,
    Resource, SignerKey, SubjectToken,
};

pub const SEED: [u8; 32] = [7u8; 32];

pub fn key() -> SignerKey {
    SignerKey::from_seed(&SEED)
}

pub fn public() -> PublicKey {
    key().public()
}

/// Options that checkpoint only when asked (or on close), so tests decide
/// where checkpoints fall.
pub fn manual_checkpoints() -> AuditOptions {
    AuditOptions {
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_every: u64::MAX,
        ..AuditOptions::default()
    }
}

/// A varied record of about 300 encoded bytes.
pub fn record(i: u64) -> AuditRecord {
    let topic = format!("orders-{}", i % 5);
    let base = AuditRecord::new(
        match i % 4 {
            0 => EventKind::Authorization,
            1 => EventKind::Produce,
            2 => EventKind::Fetch,
            _ => EventKind::Admin,
        },
        "custos-test-1",
    )
    .at_ms(1_700_000_000_000 + i)
    .with_principal(format!("User:user{}", i % 3), "SCRAM-SHA-512")
    .with_client("127.0.0.1:40000", Some("test-client".into()))
    .with_request(if i % 4 == 2 { 1 } else { 0 }, 9, i as i32)
    .with_resource(Resource::topic(topic).with_partition((i % 3) as i32, Some(i as i64), 3, 512))
    .with_decision(
        !i.is_multiple_of(7),
        vec!["allow-producers".into()],
        "9f86d081884c7d659a2feaa0c55ad015",
    )
    .with_key_id("kek-1")
    .with_subject(SubjectToken::from_bytes(&[i as u8; 16]).expect("token"))
    .with_detail("path", "/v1/test");
    if i.is_multiple_of(7) {
        base.with_error(Some(29), Blame::Client, "topic authorization failed")
    } else {
        base
    }
}

pub fn open(dir: &Path, options: AuditOptions) -> (AuditHandle, AuditWriter) {
    AuditLog::open(dir, key(), options).expect("open audit log")
}

/// Appends records `from..to` and waits until they are durable.
pub fn append_range(handle: &AuditHandle, from: u64, to: u64) {
    let tickets: Vec<_> = (from..to)
        .map(|i| handle.append_blocking(&record(i)).expect("queue"))
        .collect();
    for (i, t) in (from..).zip(tickets) {
        let r = t.wait().expect("durable");
        assert_eq!(r.seq, i);
    }
}

/// A closed store of `chunks` × `per` records with a checkpoint after each chunk
/// (at seqs per-1, 2·per-1, ...).
pub fn build_store(dir: &Path, chunks: u64, per: u64) {
    let (handle, writer) = open(dir, manual_checkpoints());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    for c in 0..chunks {
        append_range(&handle, c * per, (c + 1) * per);
        let cp = rt
            .block_on(handle.checkpoint())
            .expect("checkpoint")
            .expect("some");
        assert_eq!(cp.checkpoint.seq, (c + 1) * per - 1);
    }
    handle.close_blocking().expect("close");
    drop(handle);
    writer.join().expect("writer");
}

/// The store's sled tree, for tampering.
pub fn raw_tree(dir: &Path) -> (sled::Db, sled::Tree) {
    // sled frees its lock lazily after a close; wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                sled::pin().flush();
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("sled open: {e}"),
        }
    };
    let tree = db
        .open_tree(custos_audit::store::layout::TREE)
        .expect("tree");
    (db, tree)
}

/// A chunk's entries: (stored hash, canonical bytes).
pub type Entries = Vec<(Hash, Vec<u8>)>;

/// Every record chunk: (first seq, entries).
pub fn chunks(tree: &sled::Tree) -> Vec<(u64, Entries)> {
    tree.scan_prefix([layout::RECORD])
        .map(|item| {
            let (k, v) = item.expect("scan");
            let first = layout::seq_of(&k).expect("key");
            (first, layout::decode_chunk(&v).expect("chunk"))
        })
        .collect()
}

/// The chunk key holding `seq`, the entry's index, and its byte offset in the chunk.
pub fn locate(tree: &sled::Tree, seq: u64) -> (u64, usize, usize) {
    let (k, v) = tree
        .range(layout::record_key(0)..=layout::record_key(seq))
        .next_back()
        .expect("a chunk")
        .expect("read");
    let first = layout::seq_of(&k).expect("key");
    let index = (seq - first) as usize;
    let entries = layout::entries(&v);
    let range = entries[index].clone().expect("entry").1;
    (first, index, range.start - 36)
}

/// Record `seq`'s stored (hash, bytes).
pub fn get_record(tree: &sled::Tree, seq: u64) -> (Hash, Vec<u8>) {
    let (first, index, _) = locate(tree, seq);
    let v = tree
        .get(layout::record_key(first))
        .expect("get")
        .expect("chunk");
    layout::decode_chunk(&v).expect("chunk")[index].clone()
}

/// Replaces record `seq`'s stored entry.
pub fn set_record(tree: &sled::Tree, seq: u64, hash: Hash, bytes: Vec<u8>) {
    let (first, index, _) = locate(tree, seq);
    let v = tree
        .get(layout::record_key(first))
        .expect("get")
        .expect("chunk");
    let mut entries = layout::decode_chunk(&v).expect("chunk");
    entries[index] = (hash, bytes);
    tree.insert(layout::record_key(first), layout::encode_chunk(&entries))
        .expect("insert");
}

/// Removes record `seq`'s entry from its chunk (later entries shift down).
pub fn remove_record(tree: &sled::Tree, seq: u64) {
    let (first, index, _) = locate(tree, seq);
    let v = tree
        .get(layout::record_key(first))
        .expect("get")
        .expect("chunk");
    let mut entries = layout::decode_chunk(&v).expect("chunk");
    entries.remove(index);
    if entries.is_empty() {
        tree.remove(layout::record_key(first)).expect("remove");
    } else {
        tree.insert(layout::record_key(first), layout::encode_chunk(&entries))
            .expect("insert");
    }
}

/// Removes every record from `seq` on.
pub fn truncate_from(tree: &sled::Tree, seq: u64) {
    for (first, entries) in chunks(tree) {
        if first >= seq {
            tree.remove(layout::record_key(first)).expect("remove");
        } else if first + entries.len() as u64 > seq {
            let keep = &entries[..(seq - first) as usize];
            tree.insert(layout::record_key(first), layout::encode_chunk(keep))
                .expect("insert");
        }
    }
}
