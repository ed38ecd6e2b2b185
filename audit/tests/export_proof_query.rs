//! Inclusion proofs, exports and their verification, and filtered scans.

mod common;

use std::path::Path;

use common::{build_store, public};
use custos_audit::{
    export, prove, verify_export, verify_proof, AuditReader, Cursor, EventKind, ExportRange,
    InclusionProof, Reason, ScanFilter,
};

const PER: u64 = 100;

#[test]
fn every_record_has_a_proof_against_the_latest_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_store(dir.path(), 3, PER);
    for seq in [0, 1, 99, 100, 150, 298, 299] {
        let proof = prove(dir.path(), seq).expect("prove");
        assert_eq!(proof.checkpoint.checkpoint.seq, 299);
        let record = verify_proof(&proof, &public()).expect("valid proof");
        assert_eq!(record.seq, seq);
        // Through JSON and back.
        let back = InclusionProof::from_json(&proof.to_json()).expect("json");
        assert_eq!(back, proof);
    }
    let proof = prove(dir.path(), 150).expect("prove");
    // A changed record, a changed path, a wrong key, or a forged seq fail.
    let mut p = proof.clone();
    let n = p.record.len();
    p.record[n - 1] ^= 1;
    assert!(verify_proof(&p, &public()).is_err());
    let mut p = proof.clone();
    p.path[2][0] ^= 1;
    assert!(verify_proof(&p, &public()).is_err());
    let other = custos_audit::SignerKey::from_seed(&[3u8; 32]).public();
    assert!(verify_proof(&proof, &other).is_err());
    let mut p = proof.clone();
    p.seq = 151;
    assert!(verify_proof(&p, &public()).is_err());
    assert!(matches!(
        prove(dir.path(), 300),
        Err(custos_audit::AuditError::NotCovered(300))
    ));
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

#[test]
fn exports_verify_offline_and_tampering_with_them_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_store(dir.path(), 4, PER);
    let out = tempfile::tempdir().expect("tempdir");

    // The whole log, then a middle segment anchored on the checkpoint before it.
    let whole = out.path().join("whole");
    let s = export(dir.path(), &whole, ExportRange::default()).expect("export");
    assert_eq!(
        (s.from_seq, s.to_seq, s.records, s.checkpoints),
        (0, 399, 400, 4)
    );
    let report = verify_export(&whole, &public()).expect("verify");
    assert!(report.ok(), "{report}");
    assert_eq!(report.records, 400);

    let mid = out.path().join("mid");
    let s = export(
        dir.path(),
        &mid,
        ExportRange {
            from_seq: 100,
            to_seq: Some(299),
        },
    )
    .expect("export");
    assert_eq!((s.records, s.checkpoints), (200, 3));
    let report = verify_export(&mid, &public()).expect("verify");
    assert!(report.ok(), "{report}");
    assert_eq!(
        (report.start, report.records, report.checkpoints),
        (100, 200, 2)
    );

    // Segments must start after and end at a checkpoint.
    assert!(export(
        dir.path(),
        &out.path().join("bad1"),
        ExportRange {
            from_seq: 50,
            to_seq: None
        }
    )
    .is_err());
    assert!(export(
        dir.path(),
        &out.path().join("bad2"),
        ExportRange {
            from_seq: 0,
            to_seq: Some(150)
        }
    )
    .is_err());

    let records = mid.join("records.jsonl");
    let original = lines(&records);
    let first_line: serde_json::Value = serde_json::from_str(&original[0]).expect("json");
    assert_eq!(first_line["seq"], 100);
    assert!(first_line["record"]["principal"]["name"]
        .as_str()
        .is_some_and(|p| p.starts_with("User:")));

    // Readable field edited alone.
    let mut edited = original.clone();
    edited[42] = edited[42].replace("User:user", "User:mallory");
    write_lines(&records, &edited);
    let p = verify_export(&mid, &public())
        .expect("verify")
        .problem
        .expect("detected");
    assert_eq!(p.seq, 142);
    assert!(matches!(p.reason, Reason::ExportMismatch(_)), "{p}");

    // A line removed.
    let mut removed = original.clone();
    removed.remove(42);
    write_lines(&records, &removed);
    let p = verify_export(&mid, &public())
        .expect("verify")
        .problem
        .expect("detected");
    assert_eq!(p.seq, 142);
    assert_eq!(
        p.reason,
        Reason::Missing {
            next_present: Some(143)
        }
    );

    // The last lines cut off: the segment's end is signed.
    write_lines(&records, &original[..150]);
    let p = verify_export(&mid, &public())
        .expect("verify")
        .problem
        .expect("detected");
    assert_eq!(
        (p.seq, p.reason),
        (250, Reason::Truncated { checkpoint: 299 })
    );

    // The anchor's state changed in the manifest.
    write_lines(&records, &original);
    let manifest = mid.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("read");
    let mut m: serde_json::Value = serde_json::from_str(&text).expect("json");
    m["prev_hash"] = serde_json::Value::String("00".repeat(32));
    std::fs::write(&manifest, m.to_string()).expect("write");
    let p = verify_export(&mid, &public())
        .expect("verify")
        .problem
        .expect("detected");
    assert_eq!(p.seq, 100);
    std::fs::write(&manifest, text).expect("write");
    assert!(verify_export(&mid, &public()).expect("verify").ok());
}

#[test]
fn scans_filter_and_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_store(dir.path(), 2, PER);
    let reader = AuditReader::open(dir.path()).expect("open");

    // All of user1's produce/fetch records on orders-2, oldest first, in pages of 3.
    let filter = ScanFilter {
        principal: Some("User:user1".into()),
        topic: Some("orders-2".into()),
        kinds: vec![EventKind::Produce, EventKind::Fetch],
        ..ScanFilter::default()
    };
    let expected: Vec<u64> = (0..200)
        .filter(|i| i % 3 == 1 && i % 5 == 2 && matches!(i % 4, 1 | 2))
        .collect();
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let page = reader.scan(&filter, cursor, 3).expect("scan");
        assert!(page.records.len() <= 3);
        got.extend(page.records.iter().map(|r| r.seq));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(got, expected);

    // Denied decisions, newest first, within a time range.
    let filter = ScanFilter {
        allowed: Some(false),
        since_ms: Some(1_700_000_000_010),
        until_ms: Some(1_700_000_000_150),
        newest_first: true,
        ..ScanFilter::default()
    };
    let page = reader.scan(&filter, None, 100).expect("scan");
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (10..150).rev().filter(|i| i % 7 == 0).collect();
    assert_eq!(seqs, expected);
    assert_eq!(page.next, None);

    // Api key filter, and a cursor round trip through its text form.
    let filter = ScanFilter {
        api_key: Some(1),
        ..ScanFilter::default()
    };
    let page = reader
        .scan(&filter, Some("100".parse::<Cursor>().expect("cursor")), 2)
        .expect("scan");
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![102, 106]
    );
    assert_eq!(page.next, Some(Cursor(107)));
}
