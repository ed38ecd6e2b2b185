//! Offline verification, inclusion proofs.
//!
//! The verifier trusts nothing in the store but the public key. It walks every
//! record in sequence order, recomputes the chain hash and compares it with
//! the stored one, feeds the Merkle frontier, and at every checkpoint checks
//! the Ed25519 signature, the chain head and the Merkle root. It stops at the
//! first problem and names the first sequence number that is not proven.
//!
//! What this detects, and what it cannot:
//! - A changed byte in a record or in its stored hash: the chain hash of that
//!   record no longer matches — reported at exactly that seq.
//! - A deleted record: a gap in the sequence — reported at the missing seq.
//! - Two records swapped (or one moved): each record carries its own seq, so
//!   the first one out of place is reported at its position.
//! - A chain rewritten consistently from some record on (every later hash
//!   recomputed, which needs no key): the first checkpoint after the change no
//!   longer matches (chain head, Merkle root), and a checkpoint re-signed with
//!   another key fails its signature. The change is then known to lie between
//!   the last good checkpoint and that one: reported as the range
//!   `seq..=last`, starting after the last good checkpoint. Checkpoints more
//!   often narrow the range.
//! - Truncation of records that a surviving checkpoint covers: reported at
//!   the first missing seq.
//!
//! Not detectable from the store alone:
//! - Truncating records after the last checkpoint: they are chained but not
//!   signed yet, so cutting them off leaves a valid shorter log. The report
//!   counts them (`unsigned_tail`) so nobody mistakes them for proven. At most
//!   one checkpoint interval (1 s by default) of records is exposed this way.
//! - Truncating records *together with* the checkpoints that cover them:
//!   what remains is a valid prefix. Detecting that needs a checkpoint kept
//!   outside the store (published to the Kafka audit topic, held by an
//!   auditor, a previous export): pass it as [`VerifyOptions::anchor`] and
//!   the store must reach and match it.
//! - Deleting a checkpoint in the middle: later checkpoints still cover the
//!   records, so nothing is lost, and nothing is reported.
//! - Anything done by someone holding the signing key: they can re-sign a
//!   rewritten log. Only anchors held elsewhere catch that.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, PublicKey, SignedCheckpoint};
use crate::codec::{self, FORMAT_VERSION};
use crate::error::AuditError;
use crate::hex;
use crate::merkle::{self, chain_hash, leaf_hash, Frontier, Hash, GENESIS};
use crate::reader::{AuditReader, RawCheckpoint, RawRecord};
use crate::record::AuditRecord;

/// What the verifier should additionally hold the store to.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// A checkpoint obtained outside the store; the store must contain records
    /// up to its seq and match it (this is what catches truncation of
    /// records and checkpoints together).
    pub anchor: Option<SignedCheckpoint>,
}

/// Why the first unproven record is unproven.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The record is missing (deleted, or the sequence jumps).
    Missing {
        /// The next sequence number present, if any.
        next_present: Option<u64>,
    },
    /// The stored value or record is malformed.
    Unreadable(String),
    /// The record at this position carries another sequence number (moved or swapped).
    WrongSeq {
        /// The sequence number inside the record.
        found: u64,
    },
    /// The recomputed chain hash differs from the stored one.
    HashMismatch,
    /// A checkpoint does not parse, names another key, or its signature fails.
    BadCheckpoint {
        /// Sequence number the checkpoint is stored under.
        checkpoint: u64,
        /// What is wrong.
        why: String,
    },
    /// A validly signed checkpoint commits to another chain head.
    ChainHeadMismatch {
        /// The checkpoint's seq.
        checkpoint: u64,
    },
    /// A validly signed checkpoint commits to another Merkle root.
    MerkleRootMismatch {
        /// The checkpoint's seq.
        checkpoint: u64,
    },
    /// The log ends before a validly signed checkpoint's seq.
    Truncated {
        /// The checkpoint's seq.
        checkpoint: u64,
    },
    /// An export's readable fields, hash or manifest disagree with its canonical bytes.
    ExportMismatch(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing {
                next_present: Some(n),
            } => write!(f, "record missing (next present is {n})"),
            Reason::Missing { next_present: None } => write!(f, "record missing"),
            Reason::Unreadable(why) => write!(f, "unreadable: {why}"),
            Reason::WrongSeq { found } => write!(f, "record in this position carries seq {found}"),
            Reason::HashMismatch => {
                write!(f, "chain hash mismatch (record or stored hash changed)")
            }
            Reason::BadCheckpoint { checkpoint, why } => {
                write!(f, "checkpoint {checkpoint} is bad: {why}")
            }
            Reason::ChainHeadMismatch { checkpoint } => write!(
                f,
                "signed checkpoint {checkpoint} commits to another chain head (records rewritten)"
            ),
            Reason::MerkleRootMismatch { checkpoint } => write!(
                f,
                "signed checkpoint {checkpoint} commits to another Merkle root (records rewritten)"
            ),
            Reason::Truncated { checkpoint } => write!(
                f,
                "log ends before seq {checkpoint}, which a signed checkpoint covers (truncated)"
            ),
            Reason::ExportMismatch(why) => write!(f, "export inconsistent: {why}"),
        }
    }
}

/// The first problem found: records `seq..=last` are not proven (`last == seq`
/// when one record is known to be bad).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// First sequence number not proven.
    pub seq: u64,
    /// Last sequence number of the unproven range.
    pub last: u64,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.last == self.seq {
            write!(f, "seq {}: {}", self.seq, self.reason)
        } else {
            write!(f, "seqs {}..={}: {}", self.seq, self.last, self.reason)
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// First sequence number looked at (0 for a store, the export's start otherwise).
    pub start: u64,
    /// Records whose chain hash checked out (before any problem).
    pub records: u64,
    /// Checkpoints whose signature, chain head and root checked out.
    pub checkpoints: u64,
    /// The last checkpoint that checked out.
    pub last_checkpoint: Option<Checkpoint>,
    /// Records after the last good checkpoint: chained, but not yet signed, so
    /// their truncation would not be detectable.
    pub unsigned_tail: u64,
    /// Chain hash of the last record that checked out.
    pub chain_head: Hash,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

impl Report {
    /// Whether everything checked out.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(f, "OK: ")?,
            Some(p) => write!(f, "FAILED at {p}; before it: ")?,
        }
        write!(
            f,
            "{} records, {} checkpoints verified",
            self.records, self.checkpoints
        )?;
        if let Some(c) = &self.last_checkpoint {
            write!(f, ", signed up to seq {} (key {})", c.seq, c.key_id)?;
        }
        if self.unsigned_tail > 0 {
            write!(
                f,
                ", {} later records chained but not yet signed",
                self.unsigned_tail
            )?;
        }
        Ok(())
    }
}

/// The verification loop shared by stores and exports.
pub(crate) struct Engine<'k> {
    key: &'k PublicKey,
    start: u64,
    next: u64,
    prev: Hash,
    frontier: Frontier,
    checkpoints: Vec<RawCheckpoint>,
    cp_idx: usize,
    last_good: Option<Checkpoint>,
    good: u64,
    problem: Option<Problem>,
    /// Whether this engine computes the Merkle tree itself; when false another
    /// thread does, and root comparisons wait in `pending_roots`.
    inline_merkle: bool,
    pending_roots: Vec<PendingRoot>,
}

/// A checkpoint whose signature and chain head checked out, waiting for the
/// Merkle thread's root at its seq.
struct PendingRoot {
    seq: u64,
    expected: Hash,
    chain_head: Hash,
    /// First seq the checkpoint newly covers.
    from: u64,
    /// State to roll back to if the root does not match.
    last_good_before: Option<Checkpoint>,
    good_before: u64,
}

impl<'k> Engine<'k> {
    /// Starts at `start` with the chain and tree state before it.
    pub(crate) fn new(
        key: &'k PublicKey,
        start: u64,
        prev: Hash,
        frontier: Frontier,
        mut checkpoints: Vec<RawCheckpoint>,
    ) -> Self {
        checkpoints.retain(|(s, _)| *s >= start);
        checkpoints.sort_by_key(|(s, _)| *s);
        Self {
            key,
            start,
            next: start,
            prev,
            frontier,
            checkpoints,
            cp_idx: 0,
            last_good: None,
            good: 0,
            problem: None,
            inline_merkle: true,
            pending_roots: Vec::new(),
        }
    }

    /// Leaves the Merkle tree to another thread (see [`AuditReader::verify`]).
    fn defer_merkle(mut self) -> Self {
        self.inline_merkle = false;
        self
    }

    /// The seqs at which the Merkle thread must report its root.
    fn checkpoint_seqs(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.checkpoints.iter().map(|(s, _)| *s).collect();
        seqs.dedup();
        seqs
    }

    /// Compares the Merkle thread's roots with the checkpoints that waited
    /// for them; a mismatch replaces any later problem, as it comes first.
    fn resolve_roots(&mut self, roots: &[(u64, Hash)]) {
        for p in std::mem::take(&mut self.pending_roots) {
            let root = roots
                .binary_search_by_key(&p.seq, |(s, _)| *s)
                .ok()
                .map(|i| roots[i].1);
            if root != Some(p.expected) {
                self.problem = Some(Problem {
                    seq: p.from,
                    last: p.seq,
                    reason: Reason::MerkleRootMismatch { checkpoint: p.seq },
                });
                self.last_good = p.last_good_before;
                self.good = p.good_before;
                self.next = p.seq + 1;
                self.prev = p.chain_head;
                return;
            }
        }
    }

    fn fail(&mut self, seq: u64, last: u64, reason: Reason) -> bool {
        self.problem = Some(Problem { seq, last, reason });
        false
    }

    /// Records a problem found outside the loop.
    pub(crate) fn fail_at(&mut self, seq: u64, reason: Reason) {
        if self.problem.is_none() {
            self.fail(seq, seq, reason);
        }
    }

    /// The next sequence number expected.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Checks one record; false once a problem is found (stop feeding).
    #[inline]
    pub(crate) fn push(&mut self, seq: u64, stored: &Hash, bytes: &[u8]) -> bool {
        if seq != self.next {
            let next = self.next;
            let reason = if seq > next {
                Reason::Missing {
                    next_present: Some(seq),
                }
            } else {
                Reason::Unreadable(format!("stored chunks overlap (seq {seq} again)"))
            };
            return self.fail(next, next, reason);
        }
        match codec::peek_seq(bytes) {
            Some((FORMAT_VERSION, s)) if s == seq => {}
            Some((FORMAT_VERSION, s)) => return self.fail(seq, seq, Reason::WrongSeq { found: s }),
            _ => return self.fail(seq, seq, Reason::Unreadable("unknown record format".into())),
        }
        let h = chain_hash(&self.prev, bytes);
        if h != *stored {
            return self.fail(seq, seq, Reason::HashMismatch);
        }
        if self.inline_merkle {
            self.frontier.push(leaf_hash(bytes));
        }
        self.prev = h;
        self.next += 1;
        match self.checkpoints.get(self.cp_idx) {
            Some((s, _)) if *s == seq => self.check_checkpoints(),
            _ => true,
        }
    }

    /// Checks every checkpoint at the current position.
    fn check_checkpoints(&mut self) -> bool {
        let at = self.next - 1;
        while let Some((s, cp)) = self.checkpoints.get(self.cp_idx) {
            if *s != at {
                break;
            }
            let from = self.last_good.map_or(self.start, |c| c.seq + 1);
            let reason = match cp {
                Err(why) => Some(Reason::BadCheckpoint {
                    checkpoint: at,
                    why: why.clone(),
                }),
                Ok(cp) => match cp.verify(self.key) {
                    Err(why) => Some(Reason::BadCheckpoint {
                        checkpoint: at,
                        why,
                    }),
                    Ok(()) if cp.checkpoint.chain_head != self.prev => {
                        Some(Reason::ChainHeadMismatch { checkpoint: at })
                    }
                    Ok(())
                        if self.inline_merkle
                            && cp.checkpoint.merkle_root != self.frontier.root() =>
                    {
                        Some(Reason::MerkleRootMismatch { checkpoint: at })
                    }
                    Ok(()) => None,
                },
            };
            if let Some(reason) = reason {
                return self.fail(from, at, reason);
            }
            if let Some((_, Ok(cp))) = self.checkpoints.get(self.cp_idx) {
                if !self.inline_merkle {
                    self.pending_roots.push(PendingRoot {
                        seq: at,
                        expected: cp.checkpoint.merkle_root,
                        chain_head: cp.checkpoint.chain_head,
                        from,
                        last_good_before: self.last_good,
                        good_before: self.good,
                    });
                }
                self.last_good = Some(cp.checkpoint);
            }
            self.good += 1;
            self.cp_idx += 1;
        }
        true
    }

    /// Ends the walk: any checkpoint beyond the last record means truncation.
    pub(crate) fn finish(mut self) -> Report {
        if self.problem.is_none() {
            if let Some((s, cp)) = self.checkpoints.get(self.cp_idx).cloned() {
                let next = self.next;
                let reason = match cp.and_then(|c| c.verify(self.key)) {
                    // A checkpoint that does not verify proves nothing about
                    // length; report it as bad rather than as truncation.
                    Err(why) => Reason::BadCheckpoint { checkpoint: s, why },
                    Ok(()) => Reason::Truncated { checkpoint: s },
                };
                self.fail(next, s, reason);
            }
        }
        let covered = self.last_good.map_or(self.start, |c| c.seq + 1);
        Report {
            start: self.start,
            records: self.next - self.start,
            checkpoints: self.good,
            last_checkpoint: self.last_good,
            unsigned_tail: self.next.saturating_sub(covered),
            chain_head: self.prev,
            problem: self.problem,
        }
    }
}

impl AuditReader {
    /// Verifies the whole store against `key` (see the module docs for what
    /// is and is not detected).
    pub fn verify(&self, key: &PublicKey, options: &VerifyOptions) -> Result<Report, AuditError> {
        let mut checkpoints = self.raw_checkpoints()?;
        if let Some(anchor) = options.anchor {
            let seq = anchor.checkpoint.seq;
            if !checkpoints
                .iter()
                .any(|(s, c)| *s == seq && c.as_ref().ok() == Some(&anchor))
            {
                checkpoints.push((seq, Ok(anchor)));
            }
        }
        // Two threads, because the hashing is the cost and splits in two
        // independent halves: this one reads the store and walks the chain,
        // the other hashes Merkle leaves and reports its root at every
        // checkpoint seq. Records reach it only once the chain accepted them.
        let mut engine = Engine::new(key, 0, GENESIS, Frontier::new(), checkpoints).defer_merkle();
        let cp_seqs = engine.checkpoint_seqs();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<RawRecord>>(8);
        let roots = std::thread::scope(|scope| {
            let merkle = scope.spawn(move || merkle_roots(rx, &cp_seqs));
            let walked = self.walk_chain(&mut engine, &tx);
            drop(tx);
            let roots = merkle.join();
            walked.map(|()| roots)
        })?
        .map_err(|_| AuditError::Store("the Merkle thread of the verifier panicked".into()))?;
        engine.resolve_roots(&roots);
        Ok(engine.finish())
    }

    /// Feeds every stored record to the chain engine, passing accepted ones on
    /// to the Merkle thread in batches.
    fn walk_chain(
        &self,
        engine: &mut Engine<'_>,
        tx: &std::sync::mpsc::SyncSender<Vec<RawRecord>>,
    ) -> Result<(), AuditError> {
        const BATCH: usize = 2048;
        let mut batch = Vec::with_capacity(BATCH);
        for item in self.raw_range(0) {
            let r = match item {
                Ok(r) => r,
                Err(AuditError::Damaged { seq, reason }) => {
                    engine.fail_at(seq, Reason::Unreadable(reason));
                    break;
                }
                Err(e) => return Err(e),
            };
            if !engine.push(r.seq, &r.hash, r.bytes()) {
                break;
            }
            batch.push(r);
            if batch.len() == BATCH {
                // A send fails only if the Merkle thread died; join reports it.
                if tx
                    .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                    .is_err()
                {
                    break;
                }
            }
        }
        // As above: a dead receiver shows when the thread is joined.
        let _ = tx.send(batch);
        Ok(())
    }

    /// An inclusion proof of record `seq` against the latest checkpoint. Reads
    /// every record up to that checkpoint (the tree's inner nodes are not stored).
    pub fn prove(&self, seq: u64) -> Result<InclusionProof, AuditError> {
        let checkpoint = self
            .latest_checkpoint()?
            .ok_or(AuditError::NotCovered(seq))?;
        let size = checkpoint.checkpoint.tree_size();
        if seq >= size {
            return Err(AuditError::NotCovered(seq));
        }
        let mut leaves = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut record = None;
        for item in self.raw_span(0, size - 1) {
            let r = item?;
            let (s, bytes) = (r.seq, r.bytes());
            if s != leaves.len() as u64 {
                return Err(AuditError::CorruptTail {
                    seq: leaves.len() as u64,
                    reason: "record missing".into(),
                });
            }
            leaves.push(leaf_hash(bytes));
            if s == seq {
                record = Some(bytes.to_vec());
            }
        }
        let record = record.ok_or(AuditError::NotCovered(seq))?;
        let index = usize::try_from(seq).map_err(|_| AuditError::NotCovered(seq))?;
        Ok(InclusionProof {
            seq,
            record,
            path: merkle::audit_path(&leaves, index),
            checkpoint,
        })
    }
}

/// The Merkle half of store verification: leaf hashes into a frontier, and
/// the root at each of `checkpoint_seqs` (sorted) that the records reach.
fn merkle_roots(
    rx: std::sync::mpsc::Receiver<Vec<RawRecord>>,
    checkpoint_seqs: &[u64],
) -> Vec<(u64, Hash)> {
    let mut frontier = Frontier::new();
    let mut roots = Vec::new();
    let mut next_cp = checkpoint_seqs.iter().peekable();
    for batch in rx {
        for r in batch {
            frontier.push(leaf_hash(r.bytes()));
            while next_cp.next_if(|&&s| s < r.seq).is_some() {}
            if next_cp.next_if(|&&s| s == r.seq).is_some() {
                roots.push((r.seq, frontier.root()));
            }
        }
    }
    roots
}

/// Verifies the store in `dir` against `key`.
pub fn verify_store(dir: &Path, key: &PublicKey) -> Result<Report, AuditError> {
    AuditReader::open(dir)?.verify(key, &VerifyOptions::default())
}

/// An inclusion proof of record `seq` against the latest checkpoint of `dir`.
pub fn prove(dir: &Path, seq: u64) -> Result<InclusionProof, AuditError> {
    AuditReader::open(dir)?.prove(seq)
}

/// Proof that one record is in the log a signed checkpoint commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The record's sequence number (its leaf index).
    pub seq: u64,
    /// The record's canonical bytes.
    pub record: Vec<u8>,
    /// RFC 6962 audit path, leaf to root.
    pub path: Vec<Hash>,
    /// The checkpoint proven against.
    pub checkpoint: SignedCheckpoint,
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inclusion proof invalid: {0}")]
pub struct ProofError(pub String);

/// Checks the checkpoint's signature and the audit path; returns the proven record.
pub fn verify_proof(proof: &InclusionProof, key: &PublicKey) -> Result<AuditRecord, ProofError> {
    proof.checkpoint.verify(key).map_err(ProofError)?;
    let record = codec::decode(&proof.record).map_err(|e| ProofError(e.to_string()))?;
    if record.seq != proof.seq {
        return Err(ProofError(format!(
            "record carries seq {}, proof claims {}",
            record.seq, proof.seq
        )));
    }
    let cp = &proof.checkpoint.checkpoint;
    let root = merkle::root_from_path(
        proof.seq,
        cp.tree_size(),
        &leaf_hash(&proof.record),
        &proof.path,
    )
    .ok_or_else(|| ProofError("audit path has the wrong length".into()))?;
    if root != cp.merkle_root {
        return Err(ProofError(
            "audit path does not lead to the checkpoint's root".into(),
        ));
    }
    Ok(record)
}

/// A signed checkpoint in JSON (exports, proofs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointJson {
    /// Last seq covered.
    pub seq: u64,
    /// Chain head, hex.
    pub chain_head: String,
    /// Merkle root, hex.
    pub merkle_root: String,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Signing key id, hex.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

impl From<&SignedCheckpoint> for CheckpointJson {
    fn from(s: &SignedCheckpoint) -> Self {
        let c = &s.checkpoint;
        Self {
            seq: c.seq,
            chain_head: hex::encode(&c.chain_head),
            merkle_root: hex::encode(&c.merkle_root),
            time_ms: c.time_ms,
            key_id: c.key_id.to_string(),
            signature: hex::encode(&s.signature),
        }
    }
}

impl CheckpointJson {
    /// The checkpoint, if every field parses.
    pub fn to_signed(&self) -> Option<SignedCheckpoint> {
        Some(SignedCheckpoint {
            checkpoint: Checkpoint {
                seq: self.seq,
                chain_head: hex::decode_array(&self.chain_head)?,
                merkle_root: hex::decode_array(&self.merkle_root)?,
                time_ms: self.time_ms,
                key_id: crate::checkpoint::KeyId(hex::decode_array(&self.key_id)?),
            },
            signature: hex::decode_array(&self.signature)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct ProofJson {
    seq: u64,
    record: String,
    path: Vec<String>,
    checkpoint: CheckpointJson,
}

impl InclusionProof {
    /// The proof as JSON (record in base64, hashes in hex).
    pub fn to_json(&self) -> String {
        let j = ProofJson {
            seq: self.seq,
            record: base64::engine::general_purpose::STANDARD.encode(&self.record),
            path: self.path.iter().map(|h| hex::encode(h)).collect(),
            checkpoint: (&self.checkpoint).into(),
        };
        serde_json::to_string_pretty(&j).unwrap_or_default()
    }

    /// Parses [`InclusionProof::to_json`].
    pub fn from_json(text: &str) -> Result<Self, ProofError> {
        let bad = |what: &str| ProofError(format!("proof JSON: {what}"));
        let j: ProofJson = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            seq: j.seq,
            record: base64::engine::general_purpose::STANDARD
                .decode(&j.record)
                .map_err(|_| bad("record is not base64"))?,
            path: j
                .path
                .iter()
                .map(|h| hex::decode_array(h))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("path entry is not a hex hash"))?,
            checkpoint: j
                .checkpoint
                .to_signed()
                .ok_or_else(|| bad("checkpoint fields"))?,
        })
    }
}
