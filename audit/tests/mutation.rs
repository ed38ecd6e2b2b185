//! Tamper with a closed store through sled directly and check that
//! verification names the right sequence number and reason.

mod common;

use common::{
    build_store, chunks, get_record, locate, public, raw_tree, remove_record, set_record,
    truncate_from,
};
use custos_audit::merkle::{chain_hash, GENESIS};
use custos_audit::store::layout::{checkpoint_key, record_key};
use custos_audit::{
    verify_store, AuditReader, Checkpoint, Reason, SignedCheckpoint, SignerKey, VerifyOptions,
};

// 5 checkpoints, at seqs 99, 199, 299, 399, 499.
const CHUNKS: u64 = 5;
const PER: u64 = 100;
const TOTAL: u64 = CHUNKS * PER;

fn fresh() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    build_store(dir.path(), CHUNKS, PER);
    let report = verify_store(dir.path(), &public()).expect("verify");
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, TOTAL);
    assert_eq!(report.checkpoints, CHUNKS);
    assert_eq!(report.unsigned_tail, 0);
    dir
}

/// Flips one byte of a chunk value in place.
fn flip(dir: &std::path::Path, chunk: u64, offset: usize) {
    let (db, tree) = raw_tree(dir);
    let mut v = tree
        .get(record_key(chunk))
        .expect("get")
        .expect("chunk")
        .to_vec();
    v[offset] ^= 0x40;
    tree.insert(record_key(chunk), v).expect("insert");
    db.flush().expect("flush");
}

#[test]
fn flipping_any_byte_of_a_stored_record_is_found_at_that_record() {
    let dir = fresh();
    let seq = 137;
    let (chunk, entry_at, len) = {
        let (_db, tree) = raw_tree(dir.path());
        let (chunk, _, at) = locate(&tree, seq);
        (chunk, at, 4 + 32 + get_record(&tree, seq).1.len())
    };
    // Every byte of the stored entry: its length prefix, the stored hash, the
    // version byte, the seq, and every content byte.
    for pos in 0..len {
        flip(dir.path(), chunk, entry_at + pos);
        let report = verify_store(dir.path(), &public()).expect("verify");
        let problem = report.problem.clone().expect("tamper must be detected");
        assert_eq!(
            (problem.seq, problem.last),
            (seq, seq),
            "byte {pos}: {report}"
        );
        let expected_reason = match pos {
            // A changed length either breaks the chunk or shifts this record's bytes.
            0..=3 => matches!(problem.reason, Reason::Unreadable(_) | Reason::HashMismatch),
            36 => matches!(problem.reason, Reason::Unreadable(_)),
            37..=44 => matches!(problem.reason, Reason::WrongSeq { .. }),
            _ => problem.reason == Reason::HashMismatch,
        };
        assert!(expected_reason, "byte {pos}: {problem}");
        assert_eq!(
            report.records, seq,
            "records before the bad one still verify"
        );
        // Undo, and the store is whole again.
        flip(dir.path(), chunk, entry_at + pos);
    }
    assert!(verify_store(dir.path(), &public()).expect("verify").ok());
}

#[test]
fn deleting_a_record_is_found_at_the_gap() {
    let dir = fresh();
    // Batching decides chunk boundaries: pick a chunk starting after 200,
    // and a record in the middle of a chunk.
    let pick = |dir: &std::path::Path| {
        let (_db, tree) = raw_tree(dir);
        let cs = chunks(&tree);
        let (first, entries) = cs
            .iter()
            .find(|(f, e)| *f > 200 && e.len() > 2)
            .expect("chunk");
        (*first, first + 1 + (entries.len() as u64 - 2) / 2)
    };
    let (_, inside) = pick(dir.path());

    // A record removed from inside its chunk: the records after it move up,
    // so the first of them is out of place.
    {
        let (db, tree) = raw_tree(dir.path());
        remove_record(&tree, inside);
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    assert_eq!(p.seq, inside, "{report}");
    assert_eq!(p.reason, Reason::WrongSeq { found: inside + 1 });
    assert_eq!(report.records, inside);

    // A whole chunk key deleted: a gap in the sequence.
    let dir = fresh();
    let (first_of_chunk, _) = pick(dir.path());
    {
        let (db, tree) = raw_tree(dir.path());
        tree.remove(record_key(first_of_chunk)).expect("remove");
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    assert_eq!(p.seq, first_of_chunk, "{report}");
    assert!(
        matches!(p.reason, Reason::Missing { next_present: Some(n) } if n > first_of_chunk),
        "{p}"
    );
}

#[test]
fn swapping_two_records_is_found_at_the_first_of_them() {
    let dir = fresh();
    {
        let (db, tree) = raw_tree(dir.path());
        let a = get_record(&tree, 310);
        let b = get_record(&tree, 320);
        set_record(&tree, 310, b.0, b.1);
        set_record(&tree, 320, a.0, a.1);
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    assert_eq!(p.seq, 310);
    assert_eq!(p.reason, Reason::WrongSeq { found: 320 });
}

#[test]
fn truncating_records_a_checkpoint_covers_is_detected() {
    let dir = fresh();
    {
        let (db, tree) = raw_tree(dir.path());
        truncate_from(&tree, 480);
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    assert_eq!(p.seq, 480, "{report}");
    assert_eq!(p.last, 499);
    assert_eq!(p.reason, Reason::Truncated { checkpoint: 499 });
}

#[test]
fn truncating_after_the_last_checkpoint_is_not_detectable_without_an_anchor() {
    let dir = fresh();
    // A crash before the last checkpoint was written looks like this:
    // records 400..500 are chained but not signed.
    let last = {
        let (db, tree) = raw_tree(dir.path());
        let v = tree
            .remove(checkpoint_key(499))
            .expect("remove")
            .expect("present");
        db.flush().expect("flush");
        SignedCheckpoint::from_bytes(&v[..153]).expect("checkpoint")
    };
    let report = verify_store(dir.path(), &public()).expect("verify");
    assert!(report.ok(), "{report}");
    assert_eq!(
        report.unsigned_tail, 100,
        "the tail is reported as unsigned"
    );
    assert_eq!(report.last_checkpoint.map(|c| c.seq), Some(399));

    // Cut the unsigned tail: the store alone cannot tell.
    {
        let (db, tree) = raw_tree(dir.path());
        truncate_from(&tree, 450);
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    assert!(report.ok(), "undetectable without an anchor: {report}");
    assert_eq!((report.records, report.unsigned_tail), (450, 50));

    // With the checkpoint kept elsewhere as an anchor, it is detected.
    let reader = AuditReader::open(dir.path()).expect("open");
    let report = reader
        .verify(&public(), &VerifyOptions { anchor: Some(last) })
        .expect("verify");
    let p = report.problem.clone().expect("detected with the anchor");
    assert_eq!((p.seq, p.last), (450, 499));
    assert_eq!(p.reason, Reason::Truncated { checkpoint: 499 });
}

#[test]
fn truncating_records_and_their_checkpoints_together_needs_an_anchor() {
    let dir = fresh();
    let anchor = {
        let (db, tree) = raw_tree(dir.path());
        let v = tree
            .get(checkpoint_key(499))
            .expect("get")
            .expect("present");
        let cp = SignedCheckpoint::from_bytes(&v[..153]).expect("checkpoint");
        truncate_from(&tree, 300);
        tree.remove(checkpoint_key(399)).expect("remove");
        tree.remove(checkpoint_key(499)).expect("remove");
        db.flush().expect("flush");
        cp
    };
    assert!(verify_store(dir.path(), &public()).expect("verify").ok());
    let report = AuditReader::open(dir.path())
        .expect("open")
        .verify(
            &public(),
            &VerifyOptions {
                anchor: Some(anchor),
            },
        )
        .expect("verify");
    let p = report.problem.clone().expect("detected");
    assert_eq!(p.seq, 300);
    assert_eq!(p.reason, Reason::Truncated { checkpoint: 499 });
}

/// Changes record `at` and recomputes every stored hash from there on, as an
/// attacker without the signing key can.
fn rewrite_chain_from(tree: &sled::Tree, at: u64) {
    let mut prev = if at == 0 {
        GENESIS
    } else {
        get_record(tree, at - 1).0
    };
    for s in at..TOTAL {
        let mut bytes = get_record(tree, s).1;
        if s == at {
            // Change the principal's last character: alice becomes someone else.
            let pos = bytes
                .windows(10)
                .position(|w| w == b"User:user0" || w == b"User:user1" || w == b"User:user2")
                .expect("principal")
                + 9;
            bytes[pos] = b'9';
        }
        let h = chain_hash(&prev, &bytes);
        set_record(tree, s, h, bytes);
        prev = h;
    }
}

#[test]
fn a_consistently_rewritten_chain_fails_at_the_next_checkpoint() {
    let dir = fresh();
    {
        let (db, tree) = raw_tree(dir.path());
        rewrite_chain_from(&tree, 205);
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    // The hashes are consistent, so the change shows at the first checkpoint
    // after it, as the range since the last good checkpoint.
    assert_eq!((p.seq, p.last), (200, 299), "{report}");
    assert_eq!(p.reason, Reason::ChainHeadMismatch { checkpoint: 299 });
    assert_eq!(report.checkpoints, 2);
}

#[test]
fn a_rewritten_chain_with_re_signed_checkpoints_fails_the_signatures() {
    let dir = fresh();
    let attacker = SignerKey::from_seed(&[66u8; 32]);
    {
        let (db, tree) = raw_tree(dir.path());
        rewrite_chain_from(&tree, 205);
        // Re-derive every checkpoint from the rewritten chain and sign it with
        // the attacker's key, once claiming the attacker's key id and once
        // forging the real key id.
        let mut frontier = custos_audit::merkle::Frontier::new();
        for s in 0..TOTAL {
            let (hash, bytes) = get_record(&tree, s);
            frontier.push(custos_audit::merkle::leaf_hash(&bytes));
            if (s + 1) % PER == 0 {
                let forged_id = if s < 300 {
                    attacker.key_id()
                } else {
                    common::key().key_id()
                };
                let cp = attacker.sign(Checkpoint {
                    seq: s,
                    chain_head: hash,
                    merkle_root: frontier.root(),
                    time_ms: 1,
                    key_id: forged_id,
                });
                let mut value = cp.to_bytes().to_vec();
                value.extend_from_slice(&frontier.to_bytes());
                tree.insert(checkpoint_key(s), value).expect("insert");
            }
        }
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    // The very first checkpoint is no longer the real key's: nothing is proven.
    assert_eq!((p.seq, p.last), (0, 99), "{report}");
    assert!(
        matches!(p.reason, Reason::BadCheckpoint { checkpoint: 99, .. }),
        "{p}"
    );
    assert_eq!(report.checkpoints, 0);

    // Checkpoints forging the real key id fail on the signature itself.
    let cp = {
        let (_db, tree) = raw_tree(dir.path());
        let v = tree
            .get(checkpoint_key(399))
            .expect("get")
            .expect("present");
        SignedCheckpoint::from_bytes(&v[..153]).expect("parse")
    };
    let err = cp.verify(&public()).expect_err("forged");
    assert!(err.contains("signature invalid"), "{err}");
}

#[test]
fn reopening_a_store_with_a_corrupt_tail_is_refused() {
    let dir = fresh();
    {
        let (db, tree) = raw_tree(dir.path());
        // Records after the last checkpoint, then damage the last one.
        tree.remove(checkpoint_key(499)).expect("remove");
        let (hash, mut bytes) = get_record(&tree, 499);
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        set_record(&tree, 499, hash, bytes);
        db.flush().expect("flush");
    }
    match custos_audit::AuditLog::open(dir.path(), common::key(), common::manual_checkpoints()) {
        Err(custos_audit::AuditError::CorruptTail { seq, reason }) => {
            assert_eq!(seq, 499, "{reason}")
        }
        other => panic!("expected a corrupt tail, got {other:?}"),
    }
    // A store truncated below its last checkpoint is refused too.
    {
        let (db, tree) = raw_tree(dir.path());
        truncate_from(&tree, 380);
        db.flush().expect("flush");
    }
    match custos_audit::AuditLog::open(dir.path(), common::key(), common::manual_checkpoints()) {
        Err(custos_audit::AuditError::CorruptTail { seq, .. }) => assert_eq!(seq, 380),
        other => panic!("expected a corrupt tail, got {other:?}"),
    }
}

#[test]
fn a_signed_checkpoint_with_a_wrong_merkle_root_is_reported_before_later_problems() {
    let dir = fresh();
    {
        let (db, tree) = raw_tree(dir.path());
        // What a buggy signer could produce: right chain head, wrong root.
        let v = tree
            .get(checkpoint_key(199))
            .expect("get")
            .expect("present");
        let mut cp = SignedCheckpoint::from_bytes(&v[..153])
            .expect("parse")
            .checkpoint;
        cp.merkle_root[0] ^= 1;
        let mut value = common::key().sign(cp).to_bytes().to_vec();
        value.extend_from_slice(&v[153..]);
        tree.insert(checkpoint_key(199), value).expect("insert");
        // And a later, separate problem, which must not hide the first.
        remove_record(&tree, 450);
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    assert_eq!((p.seq, p.last), (100, 199), "{report}");
    assert_eq!(p.reason, Reason::MerkleRootMismatch { checkpoint: 199 });
    assert_eq!(report.checkpoints, 1);
    assert_eq!(report.last_checkpoint.map(|c| c.seq), Some(99));
    assert_eq!(report.records, 200);
}
