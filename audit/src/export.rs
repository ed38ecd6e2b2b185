//! Export of closed segments, and their offline verification.
//!
//! An export is a directory of three files:
//!
//! - `manifest.json`: the range (`from_seq..=to_seq`), the chain hash before
//!   `from_seq` (`prev_hash`) and the Merkle frontier of records `0..from_seq`
//!   (`frontier`), so the segment can be verified without the records before it.
//! - `records.jsonl`: one record per line, `{"seq", "hash", "record", "canonical"}`:
//!   `record` is the readable form, `canonical` the exact bytes that were
//!   hashed (base64). The verifier hashes `canonical` and also checks that
//!   decoding it gives exactly `record`, so the readable fields cannot be
//!   edited on their own.
//! - `checkpoints.jsonl`: the checkpoint just before `from_seq` (the anchor:
//!   `prev_hash` and `frontier` must match it) and every checkpoint in the
//!   range; the last one is at `to_seq`.
//!
//! A segment starts at 0 or right after a checkpoint and ends at a checkpoint,
//! so both of its ends are signed: removing lines from either end, or anywhere
//! inside, is detected.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::checkpoint::PublicKey;
use crate::codec;
use crate::error::AuditError;
use crate::hex;
use crate::merkle::{Frontier, GENESIS};
use crate::reader::AuditReader;
use crate::record::AuditRecord;
use crate::verify::{CheckpointJson, Engine, Reason, Report};

const MANIFEST: &str = "manifest.json";
const RECORDS: &str = "records.jsonl";
const CHECKPOINTS: &str = "checkpoints.jsonl";

/// Which records to export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportRange {
    /// First seq: 0, or one past a checkpoint's seq.
    pub from_seq: u64,
    /// Last seq: a checkpoint's seq; `None` for the latest checkpoint.
    pub to_seq: Option<u64>,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    /// First seq exported.
    pub from_seq: u64,
    /// Last seq exported.
    pub to_seq: u64,
    /// Records written.
    pub records: u64,
    /// Checkpoints written (anchor included).
    pub checkpoints: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    from_seq: u64,
    to_seq: u64,
    records: u64,
    prev_hash: String,
    frontier_size: u64,
    frontier: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordLine {
    seq: u64,
    hash: String,
    record: serde_json::Value,
    canonical: String,
}

const FORMAT_NAME: &str = "custos-audit-export";

/// Exports a segment of the store in `dir` to `out` (see the module docs).
pub fn export(dir: &Path, out: &Path, range: ExportRange) -> Result<ExportSummary, AuditError> {
    AuditReader::open(dir)?.export(out, range)
}

/// Verifies an export directory against `key`, the same way as a store.
pub fn verify_export(dir: &Path, key: &PublicKey) -> Result<Report, AuditError> {
    let bad = |what: String| AuditError::Export(what);
    let manifest_path = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&manifest_path).map_err(|e| AuditError::io(&manifest_path, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if m.format != FORMAT_NAME || m.version != 1 {
        return Err(bad(format!("{MANIFEST}: not a version 1 audit export")));
    }
    let prev =
        hex::decode_array(&m.prev_hash).ok_or_else(|| bad("prev_hash is not a hash".into()))?;
    let nodes = m
        .frontier
        .iter()
        .map(|h| hex::decode_array(h))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("frontier entry is not a hash".into()))?;
    let frontier = Frontier::from_parts(m.frontier_size, nodes)
        .ok_or_else(|| bad("frontier size and entries disagree".into()))?;

    let cp_path = dir.join(CHECKPOINTS);
    let file = File::open(&cp_path).map_err(|e| AuditError::io(&cp_path, e))?;
    let mut checkpoints = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| AuditError::io(&cp_path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<CheckpointJson>(&line)
            .ok()
            .and_then(|j| j.to_signed().map(|s| (j.seq, s)));
        match parsed {
            Some((seq, cp)) => checkpoints.push((seq, Ok(cp))),
            None => {
                return Err(bad(format!(
                    "{CHECKPOINTS} line {}: not a checkpoint",
                    n + 1
                )))
            }
        }
    }

    let mut engine = Engine::new(key, m.from_seq, prev, frontier.clone(), checkpoints.clone());
    // The segment's starting state must be the one its anchor signed.
    if m.from_seq == 0 {
        if prev != GENESIS || frontier.size() != 0 {
            engine.fail_at(
                0,
                Reason::ExportMismatch("a segment from 0 starts at genesis".into()),
            );
        }
    } else {
        let anchor = checkpoints
            .iter()
            .find(|(s, _)| *s + 1 == m.from_seq)
            .and_then(|(_, c)| c.as_ref().ok());
        let why = match anchor {
            None => Some("no anchor checkpoint just before the segment".to_string()),
            Some(a) => match a.verify(key) {
                Err(e) => Some(format!("anchor: {e}")),
                Ok(()) if a.checkpoint.chain_head != prev => {
                    Some("prev_hash differs from the anchor's chain head".into())
                }
                Ok(())
                    if frontier.size() != m.from_seq
                        || frontier.root() != a.checkpoint.merkle_root =>
                {
                    Some("frontier differs from the anchor's Merkle root".into())
                }
                Ok(()) => None,
            },
        };
        if let Some(why) = why {
            engine.fail_at(m.from_seq, Reason::ExportMismatch(why));
        }
    }
    if !checkpoints.iter().any(|(s, _)| *s == m.to_seq) {
        engine.fail_at(
            m.from_seq,
            Reason::ExportMismatch("no checkpoint at the segment's end".into()),
        );
    }

    let rec_path = dir.join(RECORDS);
    let file = File::open(&rec_path).map_err(|e| AuditError::io(&rec_path, e))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| AuditError::io(&rec_path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = engine.next();
        let Ok(l) = serde_json::from_str::<RecordLine>(&line) else {
            engine.fail_at(at, Reason::Unreadable("line is not a record".into()));
            break;
        };
        let (Some(hash), Ok(bytes)) = (hex::decode_array(&l.hash), b64.decode(&l.canonical)) else {
            engine.fail_at(
                l.seq,
                Reason::Unreadable("hash or canonical bytes malformed".into()),
            );
            break;
        };
        match codec::decode(&bytes) {
            Ok(decoded) if serde_json::to_value(&decoded).ok().as_ref() == Some(&l.record) => {}
            Ok(_) => {
                engine.fail_at(
                    l.seq,
                    Reason::ExportMismatch(
                        "readable fields differ from the canonical bytes".into(),
                    ),
                );
                break;
            }
            Err(e) => {
                engine.fail_at(l.seq, Reason::Unreadable(e.to_string()));
                break;
            }
        }
        if !engine.push(l.seq, &hash, &bytes) {
            break;
        }
    }
    let report = engine.finish();
    Ok(report)
}

impl AuditReader {
    /// Exports a closed segment to `out` (which must not exist or be empty).
    pub fn export(&self, out: &Path, range: ExportRange) -> Result<ExportSummary, AuditError> {
        let bad = |what: String| AuditError::Export(what);
        let checkpoints = self.checkpoints()?;
        let to_seq = match range.to_seq {
            Some(s) => s,
            None => checkpoints
                .last()
                .map(|c| c.checkpoint.seq)
                .ok_or_else(|| bad("the store has no checkpoint yet".into()))?,
        };
        if !checkpoints.iter().any(|c| c.checkpoint.seq == to_seq) {
            return Err(bad(format!(
                "no checkpoint at seq {to_seq}: a segment ends at a checkpoint"
            )));
        }
        let from = range.from_seq;
        if from > to_seq {
            return Err(bad(format!("from_seq {from} is after to_seq {to_seq}")));
        }
        let (prev, frontier, anchor) = if from == 0 {
            (GENESIS, Frontier::new(), None)
        } else {
            let (cp, frontier) = self.checkpoint_with_frontier(from - 1)?.ok_or_else(|| {
                bad(format!(
                    "no checkpoint at seq {}: a segment starts after one",
                    from - 1
                ))
            })?;
            let frontier = frontier
                .filter(|f| f.size() == from && f.root() == cp.checkpoint.merkle_root)
                .ok_or_else(|| {
                    bad(format!(
                        "frontier stored with checkpoint {} is damaged",
                        from - 1
                    ))
                })?;
            (cp.checkpoint.chain_head, frontier, Some(cp))
        };

        if out.exists() {
            let empty = std::fs::read_dir(out)
                .map_err(|e| AuditError::io(out, e))?
                .next()
                .is_none();
            if !empty {
                return Err(bad(format!("{} exists and is not empty", out.display())));
            }
        }
        std::fs::create_dir_all(out).map_err(|e| AuditError::io(out, e))?;

        let rec_path = out.join(RECORDS);
        let mut w =
            BufWriter::new(File::create(&rec_path).map_err(|e| AuditError::io(&rec_path, e))?);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut count = 0u64;
        for item in self.raw_span(from, to_seq) {
            let r = item?;
            let (seq, hash, bytes) = (r.seq, r.hash, r.bytes());
            let record: AuditRecord =
                codec::decode(bytes).map_err(|source| AuditError::Decode { seq, source })?;
            let line = RecordLine {
                seq,
                hash: hex::encode(&hash),
                record: serde_json::to_value(&record).map_err(|e| bad(e.to_string()))?,
                canonical: b64.encode(bytes),
            };
            serde_json::to_writer(&mut w, &line).map_err(|e| bad(e.to_string()))?;
            w.write_all(b"\n")
                .map_err(|e| AuditError::io(&rec_path, e))?;
            count += 1;
        }
        w.flush().map_err(|e| AuditError::io(&rec_path, e))?;

        let cp_path = out.join(CHECKPOINTS);
        let mut w =
            BufWriter::new(File::create(&cp_path).map_err(|e| AuditError::io(&cp_path, e))?);
        let mut cps = 0u64;
        for cp in anchor.iter().chain(
            checkpoints
                .iter()
                .filter(|c| (from..=to_seq).contains(&c.checkpoint.seq)),
        ) {
            serde_json::to_writer(&mut w, &CheckpointJson::from(cp))
                .map_err(|e| bad(e.to_string()))?;
            w.write_all(b"\n")
                .map_err(|e| AuditError::io(&cp_path, e))?;
            cps += 1;
        }
        w.flush().map_err(|e| AuditError::io(&cp_path, e))?;

        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: 1,
            from_seq: from,
            to_seq,
            records: count,
            prev_hash: hex::encode(&prev),
            frontier_size: frontier.size(),
            frontier: frontier.nodes().iter().map(|h| hex::encode(h)).collect(),
        };
        let m_path = out.join(MANIFEST);
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| bad(e.to_string()))?;
        std::fs::write(&m_path, text + "\n").map_err(|e| AuditError::io(&m_path, e))?;
        Ok(ExportSummary {
            from_seq: from,
            to_seq,
            records: count,
            checkpoints: cps,
        })
    }
}
