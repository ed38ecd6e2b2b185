//! Tamper with a closed store through sled directly and check that
//! verification names the right sequence number and reason.

mod common;

use common::{build_store, public, raw_tree};
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

#[test]
fn flipping_any_byte_of_a_stored_record_is_found_at_that_record() {
    let dir = fresh();
    let seq = 137;
    let len = {
        let (_db, tree) = raw_tree(dir.path());
        tree.get(record_key(seq))
            .expect("get")
            .expect("present")
            .len()
    };
    // Every position: the 32 stored-hash bytes, the version byte, the seq
    // bytes, and every content byte.
    for pos in 0..len {
        {
            let (db, tree) = raw_tree(dir.path());
            let mut v = tree
                .get(record_key(seq))
                .expect("get")
                .expect("present")
                .to_vec();
            v[pos] ^= 0x40;
            tree.insert(record_key(seq), v).expect("insert");
            db.flush().expect("flush");
        }
        let report = verify_store(dir.path(), &public()).expect("verify");
        let problem = report.problem.clone().expect("tamper must be detected");
        assert_eq!(
            (problem.seq, problem.last),
            (seq, seq),
            "byte {pos}: {report}"
        );
        let expected_reason = match pos {
            32 => matches!(problem.reason, Reason::Unreadable(_)),
            33..=40 => matches!(problem.reason, Reason::WrongSeq { .. }),
            _ => problem.reason == Reason::HashMismatch,
        };
        assert!(expected_reason, "byte {pos}: {problem}");
        assert_eq!(
            report.records, seq,
            "records before the bad one still verify"
        );
        // Undo, and the store is whole again.
        let (db, tree) = raw_tree(dir.path());
        let mut v = tree
            .get(record_key(seq))
            .expect("get")
            .expect("present")
            .to_vec();
        v[pos] ^= 0x40;
        tree.insert(record_key(seq), v).expect("insert");
        db.flush().expect("flush");
    }
    assert!(verify_store(dir.path(), &public()).expect("verify").ok());
}

#[test]
fn deleting_a_record_is_found_at_the_gap() {
    let dir = fresh();
    {
        let (db, tree) = raw_tree(dir.path());
        tree.remove(record_key(250)).expect("remove");
        db.flush().expect("flush");
    }
    let report = verify_store(dir.path(), &public()).expect("verify");
    let p = report.problem.clone().expect("detected");
    assert_eq!(p.seq, 250);
    assert_eq!(
        p.reason,
        Reason::Missing {
            next_present: Some(251)
        }
    );
    assert_eq!(report.records, 250);
    assert_eq!(report.checkpoints, 2);
}

#[test]
fn swapping_two_records_is_found_at_the_first_of_them() {
    let dir = fresh();
    {
        let (db, tree) = raw_tree(dir.path());
        let a = tree.get(record_key(310)).expect("get").expect("a");
        let b = tree.get(record_key(320)).expect("get").expect("b");
        tree.insert(record_key(310), b).expect("insert");
        tree.insert(record_key(320), a).expect("insert");
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
        for s in 480..TOTAL {
            tree.remove(record_key(s)).expect("remove");
        }
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
        for s in 450..TOTAL {
            tree.remove(record_key(s)).expect("remove");
        }
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
        for s in 300..TOTAL {
            tree.remove(record_key(s)).expect("remove");
        }
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
        let v = tree.get(record_key(at - 1)).expect("get").expect("prev");
        v[..32].try_into().expect("hash")
    };
    for s in at..TOTAL {
        let v = tree.get(record_key(s)).expect("get").expect("present");
        let mut bytes = v[32..].to_vec();
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
        let mut value = h.to_vec();
        value.extend_from_slice(&bytes);
        tree.insert(record_key(s), value).expect("insert");
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
            let v = tree.get(record_key(s)).expect("get").expect("present");
            frontier.push(custos_audit::merkle::leaf_hash(&v[32..]));
            if (s + 1) % PER == 0 {
                let forged_id = if s < 300 {
                    attacker.key_id()
                } else {
                    common::key().key_id()
                };
                let cp = attacker.sign(Checkpoint {
                    seq: s,
                    chain_head: v[..32].try_into().expect("hash"),
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
        let mut v = tree
            .get(record_key(499))
            .expect("get")
            .expect("present")
            .to_vec();
        let n = v.len();
        v[n - 1] ^= 1;
        tree.insert(record_key(499), v).expect("insert");
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
        for s in 380..TOTAL {
            tree.remove(record_key(s)).expect("remove");
        }
        db.flush().expect("flush");
    }
    match custos_audit::AuditLog::open(dir.path(), common::key(), common::manual_checkpoints()) {
        Err(custos_audit::AuditError::CorruptTail { seq, .. }) => assert_eq!(seq, 380),
        other => panic!("expected a corrupt tail, got {other:?}"),
    }
}
