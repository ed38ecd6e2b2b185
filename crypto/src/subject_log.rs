//! Per-subject keys kept in a compacted Kafka topic that every gateway in
//! front of a cluster shares: the records, and the state they add up to.
//!
//! A sled store belongs to one process, so gateways behind one load balancer
//! could not open each other's per-subject envelopes, and a shredding on one
//! left the others revealing. The topic has one partition: its order is the
//! one every gateway applies, so all of them reach the same state. This
//! module is that state, with no I/O; `proxy/src/subject_topic.rs` moves the
//! records.
//!
//! Records:
//! - **key**: Kafka key `'k' ‖ token(32) ‖ version(u32 BE) ‖ nonce(8)`, value
//!   the wrapped DEK as JSON; a null value (tombstone) withdraws it. The
//!   writer's random nonce keeps two gateways that create the same version at
//!   once from overwriting each other under compaction.
//! - **erased**: Kafka key `'e' ‖ token(32)`, value the versions shredded.
//!   Compaction keeps the newest, so every marker lists all of them.
//! - **stored DEK**: Kafka key `'d' ‖ id(16)`, value a topic DEK wrapped by
//!   its KEK (JSON, with its encryption context), for envelopes that name
//!   their DEK by id (`KeyRef::Stored`). Ids are random, so one writer per
//!   id; a rewrap writes the same key again and the newest record wins, as
//!   compaction keeps it.
//!
//! Rules every reader applies alike:
//! - among live key records for one (subject, version), the one earliest in
//!   the log wins. A creator reads the log back up to its own record before
//!   it uses its key, so it knows whether it won; a loser withdraws its
//!   record, and a rewrap withdraws every loser in the batch that rewrites the
//!   winner (so compaction cannot reorder the survivors).
//! - a version listed in an erased marker is erased, whatever key records
//!   remain; shredding writes the marker and tombstones for every key record
//!   in one batch, and compaction then removes the wrapped keys from the
//!   broker (bounded by the topic's `max.compaction.lag.ms`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::key_ref::{DekId, DEK_ID_LEN, SUBJECT_TOKEN_LEN};
use crate::kms::WrappedKey;
use crate::subject_store::{
    decode_stored_dek, encode_stored_dek, StoredDek, SubjectKey, SubjectToken,
};

/// Length of a writer's nonce in a key record's Kafka key.
pub const NONCE_LEN: usize = 8;
const KEY_TAG: u8 = b'k';
const ERASED_TAG: u8 = b'e';
const DEK_TAG: u8 = b'd';

/// A record to write to the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The Kafka record key.
    pub key: Vec<u8>,
    /// The value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Why a record read from the topic was not applied.
#[derive(Debug, thiserror::Error)]
#[error("subject key topic record at offset {offset} is malformed: {why}")]
pub struct BadRecord {
    /// Its offset.
    pub offset: i64,
    /// What is wrong.
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct KeyValue {
    kek_id: String,
    kek_version: u32,
    /// base64 of the KMS's wrapped bytes.
    blob: String,
    created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ErasedValue {
    versions: BTreeSet<u32>,
    at: u64,
}

/// One live key record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    offset: i64,
    nonce: [u8; NONCE_LEN],
    wrapped: WrappedKey,
}

#[derive(Debug, Default, Clone)]
struct Subject {
    /// Live key records per version, in log order.
    keys: BTreeMap<u32, Vec<Entry>>,
    erased: BTreeSet<u32>,
}

impl Subject {
    fn winner(&self, version: u32) -> Option<&Entry> {
        self.keys.get(&version)?.iter().min_by_key(|e| e.offset)
    }

    fn highest_version(&self) -> u32 {
        let k = self.keys.keys().next_back().copied().unwrap_or(0);
        let e = self.erased.iter().next_back().copied().unwrap_or(0);
        k.max(e)
    }
}

/// What applying one record changed that others must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing anyone waits for.
    Quiet,
    /// The subject's keys were (further) shredded.
    Shredded(SubjectToken),
}

/// The state the topic adds up to (see the module docs).
#[derive(Debug, Default)]
pub struct SubjectLog {
    subjects: HashMap<SubjectToken, Subject>,
    deks: HashMap<DekId, StoredDek>,
    /// The offset after the last record applied.
    next_offset: i64,
}

/// The Kafka key of a key record.
pub fn key_record_key(token: &SubjectToken, version: u32, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + SUBJECT_TOKEN_LEN + 4 + NONCE_LEN);
    k.push(KEY_TAG);
    k.extend_from_slice(token);
    k.extend_from_slice(&version.to_be_bytes());
    k.extend_from_slice(nonce);
    k
}

fn erased_record_key(token: &SubjectToken) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + SUBJECT_TOKEN_LEN);
    k.push(ERASED_TAG);
    k.extend_from_slice(token);
    k
}

/// The record that stores a topic DEK under `id` (or rewrites it, rewrapped).
pub fn dek_record(id: &DekId, dek: &StoredDek) -> LogRecord {
    let mut key = Vec::with_capacity(1 + DEK_ID_LEN);
    key.push(DEK_TAG);
    key.extend_from_slice(id);
    LogRecord {
        key,
        value: Some(encode_stored_dek(dek)),
    }
}

/// A key record holding `wrapped`.
pub fn key_record(
    token: &SubjectToken,
    version: u32,
    nonce: &[u8; NONCE_LEN],
    wrapped: &WrappedKey,
    created: u64,
) -> LogRecord {
    let value = KeyValue {
        kek_id: wrapped.kek_id.clone(),
        kek_version: wrapped.kek_version,
        blob: base64::engine::general_purpose::STANDARD.encode(&wrapped.blob),
        created,
    };
    LogRecord {
        key: key_record_key(token, version, nonce),
        value: Some(serde_json::to_vec(&value).unwrap_or_default()),
    }
}

impl SubjectLog {
    /// An empty state, before offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The offset after the last record applied.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Notes that the log continues at `offset` (records below it were
    /// compacted away, or were control records).
    pub fn skip_to(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset);
    }

    /// Applies the record at `offset`. A malformed record is skipped (and
    /// reported): the topic is Custos's own, but one bad write must not stop
    /// every gateway from reading the rest.
    pub fn apply(
        &mut self,
        offset: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Applied, BadRecord> {
        self.next_offset = self.next_offset.max(offset + 1);
        let bad = |why: &str| BadRecord {
            offset,
            why: why.to_owned(),
        };
        let (&tag, rest) = key.split_first().ok_or_else(|| bad("empty key"))?;
        if tag == DEK_TAG {
            let id: DekId = rest
                .try_into()
                .map_err(|_| bad("stored DEK record key has the wrong length"))?;
            match value {
                Some(v) => {
                    let dek =
                        decode_stored_dek(v).map_err(|e| bad(&format!("stored DEK value: {e}")))?;
                    self.deks.insert(id, dek);
                }
                None => {
                    self.deks.remove(&id);
                }
            }
            return Ok(Applied::Quiet);
        }
        if rest.len() < SUBJECT_TOKEN_LEN {
            return Err(bad("key shorter than a token"));
        }
        let (token, rest) = rest.split_at(SUBJECT_TOKEN_LEN);
        let token: SubjectToken = token.try_into().map_err(|_| bad("token"))?;
        match tag {
            KEY_TAG => {
                if rest.len() != 4 + NONCE_LEN {
                    return Err(bad("key record key has the wrong length"));
                }
                let version = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let nonce: [u8; NONCE_LEN] = rest[4..].try_into().map_err(|_| bad("nonce"))?;
                let subject = self.subjects.entry(token).or_default();
                let entries = subject.keys.entry(version).or_default();
                entries.retain(|e| e.nonce != nonce);
                if let Some(v) = value {
                    let v: KeyValue =
                        serde_json::from_slice(v).map_err(|e| bad(&format!("key value: {e}")))?;
                    let blob = base64::engine::general_purpose::STANDARD
                        .decode(&v.blob)
                        .map_err(|_| bad("wrapped key is not base64"))?;
                    entries.push(Entry {
                        offset,
                        nonce,
                        wrapped: WrappedKey {
                            kek_id: v.kek_id,
                            kek_version: v.kek_version,
                            blob,
                        },
                    });
                }
                if entries.is_empty() {
                    subject.keys.remove(&version);
                }
                Ok(Applied::Quiet)
            }
            ERASED_TAG => {
                if !rest.is_empty() {
                    return Err(bad("erased record key has the wrong length"));
                }
                // A tombstone of a marker would un-erase: ignored.
                let Some(v) = value else {
                    return Ok(Applied::Quiet);
                };
                let v: ErasedValue =
                    serde_json::from_slice(v).map_err(|e| bad(&format!("erased value: {e}")))?;
                let subject = self.subjects.entry(token).or_default();
                let before = subject.erased.len();
                subject.erased.extend(v.versions);
                Ok(if subject.erased.len() > before {
                    Applied::Shredded(token)
                } else {
                    Applied::Quiet
                })
            }
            _ => Err(bad("unknown record tag")),
        }
    }

    /// The topic DEK stored under `id`.
    pub fn stored_dek(&self, id: &DekId) -> Option<StoredDek> {
        self.deks.get(id).cloned()
    }

    /// Every stored DEK, by id (sorted).
    pub fn all_deks(&self) -> Vec<(DekId, StoredDek)> {
        let mut out: Vec<_> = self.deks.iter().map(|(i, d)| (*i, d.clone())).collect();
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// The subject's newest unshredded key.
    pub fn current(&self, token: &SubjectToken) -> Option<(u32, WrappedKey)> {
        let s = self.subjects.get(token)?;
        s.keys
            .keys()
            .rev()
            .filter(|v| !s.erased.contains(v))
            .find_map(|&v| s.winner(v).map(|e| (v, e.wrapped.clone())))
    }

    /// The subject's current key when it is newer than `replaces`, the
    /// version a writer saw before it made a key: another gateway's key,
    /// applied since, that the writer must use instead of adding a version.
    pub fn created_since(
        &self,
        token: &SubjectToken,
        replaces: Option<u32>,
    ) -> Option<(u32, WrappedKey)> {
        self.current(token)
            .filter(|(v, _)| replaces.is_none_or(|r| *v > r))
    }

    /// One version of the subject's key.
    pub fn lookup(&self, token: &SubjectToken, version: u32) -> SubjectKey {
        let Some(s) = self.subjects.get(token) else {
            return SubjectKey::Unknown;
        };
        if s.erased.contains(&version) {
            return SubjectKey::Erased;
        }
        match s.winner(version) {
            Some(e) => SubjectKey::Wrapped(e.wrapped.clone()),
            None => SubjectKey::Unknown,
        }
    }

    /// The version a new key of the subject gets: after every version it
    /// ever had, shredded ones included.
    pub fn next_version(&self, token: &SubjectToken) -> u32 {
        self.subjects
            .get(token)
            .map_or(0, Subject::highest_version)
            .saturating_add(1)
    }

    /// Whether the record written with `nonce` won its version.
    pub fn won(&self, token: &SubjectToken, version: u32, nonce: &[u8; NONCE_LEN]) -> bool {
        self.subjects
            .get(token)
            .and_then(|s| s.winner(version))
            .is_some_and(|e| &e.nonce == nonce)
    }

    /// The records that shred the subject: a marker listing every version it
    /// ever had, then a tombstone for every live key record. Also the versions
    /// newly destroyed.
    pub fn shred_records(&self, token: &SubjectToken, at: u64) -> (Vec<LogRecord>, Vec<u32>) {
        let s = self.subjects.get(token).cloned().unwrap_or_default();
        let mut versions = s.erased.clone();
        let destroyed: Vec<u32> = s
            .keys
            .keys()
            .copied()
            .filter(|v| !s.erased.contains(v))
            .collect();
        versions.extend(s.keys.keys().copied());
        let mut out = vec![LogRecord {
            key: erased_record_key(token),
            value: Some(serde_json::to_vec(&ErasedValue { versions, at }).unwrap_or_default()),
        }];
        for (version, entries) in &s.keys {
            for e in entries {
                out.push(LogRecord {
                    key: key_record_key(token, *version, &e.nonce),
                    value: None,
                });
            }
        }
        (out, destroyed)
    }

    /// Every winning unshredded key: `(token, version, wrapped)`.
    pub fn all_wrapped(&self) -> Vec<(SubjectToken, u32, WrappedKey)> {
        let mut out = Vec::new();
        for (token, s) in &self.subjects {
            for &version in s.keys.keys() {
                if s.erased.contains(&version) {
                    continue;
                }
                if let Some(e) = s.winner(version) {
                    out.push((*token, version, e.wrapped.clone()));
                }
            }
        }
        out.sort_by_key(|a| (a.0, a.1));
        out
    }

    /// The records that rewrite the winner of (subject, version) from `old`
    /// to `new`, withdrawing every other live record of that version first;
    /// `None` if `old` is no longer the winner (shredded or replaced).
    pub fn rewrap_records(
        &self,
        token: &SubjectToken,
        version: u32,
        old: &WrappedKey,
        new: &WrappedKey,
        created: u64,
    ) -> Option<Vec<LogRecord>> {
        let s = self.subjects.get(token)?;
        if s.erased.contains(&version) {
            return None;
        }
        let winner = s.winner(version)?;
        if &winner.wrapped != old {
            return None;
        }
        let mut out: Vec<LogRecord> = s.keys[&version]
            .iter()
            .filter(|e| e.nonce != winner.nonce)
            .map(|e| LogRecord {
                key: key_record_key(token, version, &e.nonce),
                value: None,
            })
            .collect();
        out.push(key_record(token, version, &winner.nonce, new, created));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(tag: u8) -> WrappedKey {
        WrappedKey {
            kek_id: "k".into(),
            kek_version: 1,
            blob: vec![tag; 60],
        }
    }

    /// Applies records from `offset` on; returns the next offset.
    fn write(log: &mut SubjectLog, recs: &[LogRecord]) -> Vec<Applied> {
        recs.iter()
            .map(|r| {
                let o = log.next_offset();
                log.apply(o, &r.key, r.value.as_deref()).expect("apply")
            })
            .collect()
    }

    /// What compaction leaves: the newest record per key, tombstones gone.
    fn compact(all: &[(i64, LogRecord)]) -> Vec<(i64, LogRecord)> {
        let mut newest: HashMap<Vec<u8>, (i64, LogRecord)> = HashMap::new();
        for (o, r) in all {
            newest.insert(r.key.clone(), (*o, r.clone()));
        }
        let mut out: Vec<_> = newest
            .into_values()
            .filter(|(_, r)| r.value.is_some())
            .collect();
        out.sort_by_key(|(o, _)| *o);
        out
    }

    fn replay(recs: &[(i64, LogRecord)]) -> SubjectLog {
        let mut log = SubjectLog::new();
        for (o, r) in recs {
            log.apply(*o, &r.key, r.value.as_deref()).expect("apply");
        }
        log
    }

    #[test]
    fn the_first_creator_wins_before_and_after_compaction() {
        let t = [1u8; 32];
        let mut all = Vec::new();
        let mut log = SubjectLog::new();
        assert_eq!(log.next_version(&t), 1);
        // Two gateways both create version 1; A's record lands first.
        let a = key_record(&t, 1, &[0xAA; 8], &w(1), 0);
        let b = key_record(&t, 1, &[0xBB; 8], &w(2), 0);
        for r in [a, b] {
            all.push((log.next_offset(), r.clone()));
            write(&mut log, &[r]);
        }
        assert!(log.won(&t, 1, &[0xAA; 8]));
        assert!(!log.won(&t, 1, &[0xBB; 8]));
        assert_eq!(log.current(&t), Some((1, w(1))));
        // Compaction keeps both (different keys), so A still wins.
        assert_eq!(replay(&compact(&all)).current(&t), Some((1, w(1))));
        // B withdraws its record; the state is unchanged.
        let withdraw = LogRecord {
            key: key_record_key(&t, 1, &[0xBB; 8]),
            value: None,
        };
        all.push((log.next_offset(), withdraw.clone()));
        write(&mut log, &[withdraw]);
        assert_eq!(log.current(&t), Some((1, w(1))));
        assert_eq!(replay(&compact(&all)).current(&t), Some((1, w(1))));
        assert_eq!(log.next_version(&t), 2);
    }

    #[test]
    fn a_key_applied_after_the_writer_looked_is_used_instead_of_a_new_version() {
        let t = [3u8; 32];
        let mut log = SubjectLog::new();
        // The writer saw no key; none was made since: it may create one.
        assert_eq!(log.created_since(&t, None), None);
        // Another gateway's version 1 is applied before the writer creates.
        write(&mut log, &[key_record(&t, 1, &[0xAA; 8], &w(1), 0)]);
        assert_eq!(log.created_since(&t, None), Some((1, w(1))));
        // A writer that saw version 1 (whose KEK was destroyed) replaces it.
        assert_eq!(log.created_since(&t, Some(1)), None);
        write(&mut log, &[key_record(&t, 2, &[0xBB; 8], &w(2), 0)]);
        assert_eq!(log.created_since(&t, Some(1)), Some((2, w(2))));
        // After a shredding nothing is current: the next writer creates.
        let (records, _) = log.shred_records(&t, 0);
        write(&mut log, &records);
        assert_eq!(log.created_since(&t, None), None);
        assert_eq!(log.next_version(&t), 3);
    }

    #[test]
    fn a_rewrap_keeps_the_winner_even_when_a_loser_was_left_behind() {
        let t = [2u8; 32];
        let mut all = Vec::new();
        let mut log = SubjectLog::new();
        for r in [
            key_record(&t, 1, &[1; 8], &w(1), 0),
            key_record(&t, 1, &[2; 8], &w(2), 0), // a loser that crashed
        ] {
            all.push((log.next_offset(), r.clone()));
            write(&mut log, &[r]);
        }
        let mut rewrapped = w(1);
        rewrapped.kek_version = 2;
        let recs = log
            .rewrap_records(&t, 1, &w(1), &rewrapped, 0)
            .expect("winner");
        assert_eq!(recs.len(), 2, "the loser is withdrawn in the same batch");
        for r in recs {
            all.push((log.next_offset(), r.clone()));
            write(&mut log, &[r]);
        }
        assert_eq!(log.current(&t), Some((1, rewrapped.clone())));
        assert_eq!(
            replay(&compact(&all)).current(&t),
            Some((1, rewrapped.clone()))
        );
        // A stale rewrap (from the old key) is refused.
        assert!(log.rewrap_records(&t, 1, &w(1), &w(9), 0).is_none());
    }

    #[test]
    fn shredding_erases_every_version_and_compaction_drops_the_keys() {
        let t = [3u8; 32];
        let other = [4u8; 32];
        let mut all = Vec::new();
        let mut log = SubjectLog::new();
        for r in [
            key_record(&t, 1, &[1; 8], &w(1), 0),
            key_record(&other, 1, &[1; 8], &w(7), 0),
        ] {
            all.push((log.next_offset(), r.clone()));
            write(&mut log, &[r]);
        }
        let (recs, destroyed) = log.shred_records(&t, 99);
        assert_eq!(destroyed, vec![1]);
        let mut events = Vec::new();
        for r in recs {
            all.push((log.next_offset(), r.clone()));
            events.extend(write(&mut log, &[r]));
        }
        assert_eq!(events[0], Applied::Shredded(t));
        assert_eq!(log.lookup(&t, 1), SubjectKey::Erased);
        assert_eq!(log.current(&t), None);
        assert_eq!(log.lookup(&other, 1), SubjectKey::Wrapped(w(7)));
        // After compaction no record holds t's wrapped key, and it still reads erased.
        let left = compact(&all);
        let blob = base64::engine::general_purpose::STANDARD.encode(w(1).blob);
        assert!(left.iter().all(|(_, r)| !String::from_utf8_lossy(
            r.value.as_deref().unwrap_or_default()
        )
        .contains(&blob)));
        let replayed = replay(&left);
        assert_eq!(replayed.lookup(&t, 1), SubjectKey::Erased);
        // The next key is version 2, and a second shredding lists both.
        assert_eq!(log.next_version(&t), 2);
        write(&mut log, &[key_record(&t, 2, &[5; 8], &w(5), 0)]);
        assert_eq!(log.current(&t), Some((2, w(5))));
        let (recs, destroyed) = log.shred_records(&t, 100);
        assert_eq!(destroyed, vec![2]);
        write(&mut log, &recs);
        assert_eq!(log.lookup(&t, 1), SubjectKey::Erased);
        assert_eq!(log.lookup(&t, 2), SubjectKey::Erased);
        assert_eq!(log.all_wrapped(), vec![(other, 1, w(7))]);
    }

    #[test]
    fn malformed_records_are_reported_and_skipped() {
        let mut log = SubjectLog::new();
        assert!(log.apply(0, b"", Some(b"{}")).is_err());
        assert!(log.apply(1, b"k123", Some(b"{}")).is_err());
        let t = [5u8; 32];
        let mut key = key_record_key(&t, 1, &[1; 8]);
        assert!(log.apply(2, &key, Some(b"not json")).is_err());
        key[0] = b'x';
        let err = log.apply(3, &key, Some(b"{}")).expect_err("tag");
        assert_eq!(
            err.to_string(),
            "subject key topic record at offset 3 is malformed: unknown record tag"
        );
        assert_eq!(log.next_offset(), 4);
        assert_eq!(log.lookup(&t, 1), SubjectKey::Unknown);
    }

    #[test]
    fn stored_deks_are_found_rewritten_and_survive_compaction() {
        let ctx = |t: &str| {
            let mut c = crate::kms::EncryptionContext::new();
            c.insert("custos:topic".into(), t.into());
            c
        };
        let dek = |tag: u8, t: &str| StoredDek {
            wrapped: w(tag),
            context: ctx(t),
            created: 1_700_000_000 + u64::from(tag),
        };
        let (a, b) = ([1u8; DEK_ID_LEN], [2u8; DEK_ID_LEN]);
        let mut all = Vec::new();
        let mut log = SubjectLog::new();
        for r in [
            dek_record(&a, &dek(1, "orders")),
            key_record(&[9; 32], 1, &[1; 8], &w(3), 0),
            dek_record(&b, &dek(2, "people")),
            // A rewrap of a: same key, newest wins.
            dek_record(&a, &dek(4, "orders")),
        ] {
            let o = log.next_offset();
            all.push((o, r.clone()));
            write(&mut log, &[r]);
        }
        assert_eq!(log.stored_dek(&a), Some(dek(4, "orders")));
        assert_eq!(log.stored_dek(&b), Some(dek(2, "people")));
        assert_eq!(log.stored_dek(&[3; DEK_ID_LEN]), None);
        assert_eq!(log.all_deks().len(), 2);
        // Subject keys are untouched by DEK records, and the other way round.
        assert_eq!(log.current(&[9; 32]), Some((1, w(3))));
        let again = replay(&compact(&all));
        assert_eq!(again.stored_dek(&a), Some(dek(4, "orders")));
        assert_eq!(again.all_deks(), log.all_deks());
        // A tombstone removes; a key of the wrong length is reported.
        let mut key = dek_record(&a, &dek(1, "orders")).key;
        let o = log.next_offset();
        log.apply(o, &key, None).expect("tombstone");
        assert_eq!(log.stored_dek(&a), None);
        key.push(0);
        assert!(log.apply(o + 1, &key, Some(b"{}")).is_err());
        key.pop();
        assert!(log.apply(o + 2, &key, Some(b"{}")).is_err());
        assert_eq!(log.stored_dek(&a), None);
    }
}
