//! Read access to a store: single records, checkpoints, and the entry point
//! for query, verification, proofs and export.
//!
//! sled allows one process to open a store directory at a time, so a running
//! proxy reads through [`crate::AuditHandle::reader`] and offline tools through
//! [`AuditReader::open`] on a store no proxy is using. Readers see what the
//! writer has applied, which may include a batch whose flush is still running.

use std::fmt;
use std::path::Path;

use crate::checkpoint::{SignedCheckpoint, SIGNED_CHECKPOINT_LEN};
use crate::codec;
use crate::error::AuditError;
use crate::merkle::{Frontier, Hash};
use crate::record::AuditRecord;
use crate::store::layout;

/// Page cache of an open store.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Opens the sled database, waiting briefly for a lock this process held.
///
/// sled frees its file lock through crossbeam-epoch deferred destruction, so
/// the lock outlives the last handle until the epoch garbage is collected —
/// and that garbage may sit in this very thread's local bag. Reopening right
/// after a close (tests, a CLI verifying what it just wrote) would fail, so
/// we flush the epoch garbage and retry. The epoch only advances when every
/// thread pinned in it moves on, which on a loaded machine running many
/// threads (CI runs the tests in parallel on 2 cores) took over 3 s once, so
/// the wait is 10 s. Another process that holds the store still makes this
/// fail, after the wait.
fn open_db(dir: &Path) -> Result<sled::Db, AuditError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // sled's default page cache is 1 GiB; an append-mostly log read in
        // sequential scans needs far less.
        match sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e)) if lock_held(&e) && std::time::Instant::now() < deadline => {
                sled::pin().flush();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

/// Whether sled failed to open because the store's file lock is held. sled
/// 0.34 reports that as `ErrorKind::Other` with the lock error in the
/// message, not as `WouldBlock`, so the kind alone never matches.
fn lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().starts_with("could not acquire lock")
}

/// A stored checkpoint by the seq it is stored under, or why it does not parse.
pub(crate) type RawCheckpoint = (u64, Result<SignedCheckpoint, String>);

/// A record as stored: its sequence number, chain hash and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Sequence number.
    pub seq: u64,
    /// Chain hash.
    pub hash: Hash,
    /// The record.
    pub record: AuditRecord,
}

/// A read view of an audit store.
#[derive(Clone)]
pub struct AuditReader {
    // Kept so the store stays open as long as a reader exists.
    _db: sled::Db,
    tree: sled::Tree,
}

impl fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditReader")
    }
}

impl AuditReader {
    /// Opens an existing store (no proxy may have it open).
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        if !dir.join("conf").is_file() {
            return Err(AuditError::NoStore(dir.to_path_buf()));
        }
        let db = open_db(dir)?;
        if !db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == layout::TREE.as_bytes())
        {
            return Err(AuditError::NoStore(dir.to_path_buf()));
        }
        Self::from_db(db)
    }

    /// Opens or creates a store (the writer's way in).
    pub(crate) fn create(dir: &Path) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        let db = open_db(dir)?;
        let reader = Self::from_db(db)?;
        if reader.tree.get(layout::FORMAT_KEY)?.is_none() {
            reader.tree.insert(layout::FORMAT_KEY, &[layout::FORMAT])?;
            reader.tree.flush()?;
        }
        Ok(reader)
    }

    fn from_db(db: sled::Db) -> Result<Self, AuditError> {
        let tree = db.open_tree(layout::TREE)?;
        if let Some(v) = tree.get(layout::FORMAT_KEY)? {
            if v.as_ref() != [layout::FORMAT] {
                return Err(AuditError::Store(format!(
                    "store layout version {:?} is not {}",
                    v.as_ref(),
                    layout::FORMAT
                )));
            }
        }
        Ok(Self { _db: db, tree })
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Record `seq` as stored (chain hash and canonical bytes).
    pub(crate) fn raw(&self, seq: u64) -> Result<Option<RawRecord>, AuditError> {
        self.raw_span(seq, seq).next().transpose()
    }

    /// Record `seq`, decoded.
    pub fn record(&self, seq: u64) -> Result<Option<StoredRecord>, AuditError> {
        let Some(r) = self.raw(seq)? else {
            return Ok(None);
        };
        let record =
            codec::decode(r.bytes()).map_err(|source| AuditError::Decode { seq, source })?;
        Ok(Some(StoredRecord {
            seq,
            hash: r.hash,
            record,
        }))
    }

    /// One past the highest stored sequence number (0 for an empty store).
    pub fn next_seq(&self) -> Result<u64, AuditError> {
        let last = self
            .tree
            .range(layout::record_key(0)..=layout::record_key(u64::MAX))
            .next_back()
            .transpose()?;
        Ok(match last {
            None => 0,
            Some((k, v)) => {
                let first = layout::seq_of(&k).unwrap_or(u64::MAX);
                first.saturating_add(layout::entries(&v).len() as u64)
            }
        })
    }

    /// Every stored checkpoint, by sequence number; entries that do not parse
    /// are given as an error string (verification reports them).
    pub(crate) fn raw_checkpoints(&self) -> Result<Vec<RawCheckpoint>, AuditError> {
        let mut out = Vec::new();
        for item in self
            .tree
            .range(layout::checkpoint_key(0)..=layout::checkpoint_key(u64::MAX))
        {
            let (k, v) = item?;
            let seq = layout::seq_of(&k).unwrap_or(u64::MAX);
            let parsed = v
                .get(..SIGNED_CHECKPOINT_LEN)
                .and_then(SignedCheckpoint::from_bytes)
                .ok_or_else(|| format!("checkpoint stored at seq {seq} does not parse"))
                .and_then(|cp| {
                    if cp.checkpoint.seq == seq {
                        Ok(cp)
                    } else {
                        Err(format!(
                            "checkpoint stored at seq {seq} commits to seq {}",
                            cp.checkpoint.seq
                        ))
                    }
                });
            out.push((seq, parsed));
        }
        Ok(out)
    }

    /// Every checkpoint that parses, oldest first (signatures not checked).
    pub fn checkpoints(&self) -> Result<Vec<SignedCheckpoint>, AuditError> {
        Ok(self
            .raw_checkpoints()?
            .into_iter()
            .filter_map(|(_, c)| c.ok())
            .collect())
    }

    /// The newest checkpoint (signature not checked).
    pub fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, AuditError> {
        Ok(self.last_checkpoint_with_frontier()?.map(|(c, _)| c))
    }

    pub(crate) fn last_checkpoint_with_frontier(
        &self,
    ) -> Result<Option<(SignedCheckpoint, Option<Frontier>)>, AuditError> {
        let last = self
            .tree
            .range(layout::checkpoint_key(0)..=layout::checkpoint_key(u64::MAX))
            .next_back()
            .transpose()?;
        let Some((k, v)) = last else {
            return Ok(None);
        };
        let seq = layout::seq_of(&k).unwrap_or(u64::MAX);
        let cp = v
            .get(..SIGNED_CHECKPOINT_LEN)
            .and_then(SignedCheckpoint::from_bytes)
            .filter(|c| c.checkpoint.seq == seq)
            .ok_or_else(|| AuditError::CorruptTail {
                seq,
                reason: "last checkpoint does not parse".into(),
            })?;
        let frontier = v
            .get(SIGNED_CHECKPOINT_LEN..)
            .and_then(Frontier::from_bytes);
        Ok(Some((cp, frontier)))
    }

    pub(crate) fn checkpoint_with_frontier(
        &self,
        seq: u64,
    ) -> Result<Option<(SignedCheckpoint, Option<Frontier>)>, AuditError> {
        let Some(v) = self.tree.get(layout::checkpoint_key(seq))? else {
            return Ok(None);
        };
        let cp = v
            .get(..SIGNED_CHECKPOINT_LEN)
            .and_then(SignedCheckpoint::from_bytes)
            .filter(|c| c.checkpoint.seq == seq);
        let frontier = v
            .get(SIGNED_CHECKPOINT_LEN..)
            .and_then(Frontier::from_bytes);
        Ok(cp.map(|c| (c, frontier)))
    }

    /// Iterates stored records from `from` on.
    pub(crate) fn raw_range(
        &self,
        from: u64,
    ) -> impl DoubleEndedIterator<Item = Result<RawRecord, AuditError>> {
        self.raw_span(from, u64::MAX)
    }

    /// Iterates stored records with seq in `from..=to` (either direction).
    /// An entry that does not parse comes as [`AuditError::Damaged`].
    pub(crate) fn raw_span(
        &self,
        from: u64,
        to: u64,
    ) -> impl DoubleEndedIterator<Item = Result<RawRecord, AuditError>> {
        // The chunk holding `from` may start before it.
        let first = self
            .tree
            .range(layout::record_key(0)..=layout::record_key(from))
            .next_back()
            .and_then(|r| r.ok())
            .and_then(|(k, _)| layout::seq_of(&k))
            .unwrap_or(from);
        self.tree
            .range(layout::record_key(first)..=layout::record_key(to))
            .flat_map(|item| -> Vec<Result<RawRecord, AuditError>> {
                match item {
                    Err(e) => vec![Err(e.into())],
                    Ok((k, v)) => {
                        let base = layout::seq_of(&k).unwrap_or(u64::MAX);
                        layout::entries(&v)
                            .into_iter()
                            .enumerate()
                            .map(|(i, e)| {
                                let seq = base.saturating_add(i as u64);
                                match e {
                                    Ok((hash, range)) => Ok(RawRecord {
                                        seq,
                                        hash,
                                        chunk: v.clone(),
                                        range,
                                    }),
                                    Err(_) => Err(AuditError::Damaged {
                                        seq,
                                        reason: "chunk entry does not parse".into(),
                                    }),
                                }
                            })
                            .collect()
                    }
                }
            })
            .filter(move |r| match r {
                Ok(r) => (from..=to).contains(&r.seq),
                Err(_) => true,
            })
    }
}

/// One stored record, still in its chunk.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    /// Sequence number by position (chunk key + index).
    pub(crate) seq: u64,
    /// Stored chain hash.
    pub(crate) hash: Hash,
    chunk: sled::IVec,
    range: std::ops::Range<usize>,
}

impl RawRecord {
    /// The canonical record bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.chunk[self.range.clone()]
    }
}
