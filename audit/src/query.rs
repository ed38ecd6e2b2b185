//! Filtered, paged reads for the compliance API.
//!
//! A scan walks records in sequence order (oldest or newest first) from a
//! cursor, decodes each, and keeps those matching every set filter. Nothing is
//! indexed: a scan costs time linear in the records it examines, so each call
//! examines at most [`SCAN_BUDGET`] records and hands back a cursor to go on
//! from — a caller always gets an answer quickly, possibly an empty page with
//! a cursor. Times are not indexed either (records are in append order, which
//! is only roughly time order across client clocks), so a time filter is a filter.

use std::fmt;
use std::str::FromStr;

use crate::codec;
use crate::error::AuditError;
use crate::reader::{AuditReader, StoredRecord};
use crate::record::{AuditRecord, EventKind, ResourceType};

/// Most records one scan call examines.
pub const SCAN_BUDGET: usize = 100_000;

/// Which records a scan returns; unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanFilter {
    /// Principal name, exactly (`User:alice`).
    pub principal: Option<String>,
    /// A topic among the record's resources.
    pub topic: Option<String>,
    /// A consumer group among the record's resources.
    pub group: Option<String>,
    /// Kafka api key of the request.
    pub api_key: Option<i16>,
    /// Decision outcome (records without a decision never match).
    pub allowed: Option<bool>,
    /// Event kinds (any of them); empty matches all.
    pub kinds: Vec<EventKind>,
    /// Earliest time, unix ms, inclusive.
    pub since_ms: Option<u64>,
    /// Latest time, unix ms, exclusive.
    pub until_ms: Option<u64>,
    /// Walk from the newest record backwards.
    pub newest_first: bool,
}

impl ScanFilter {
    /// Whether a record passes the filter.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        if let Some(p) = &self.principal {
            if r.principal.as_ref().is_none_or(|x| &x.name != p) {
                return false;
            }
        }
        if let Some(t) = &self.topic {
            if !r.touches(&ResourceType::Topic, t) {
                return false;
            }
        }
        if let Some(g) = &self.group {
            if !r.touches(&ResourceType::Group, g) {
                return false;
            }
        }
        if let Some(k) = self.api_key {
            if r.request.is_none_or(|q| q.api_key != k) {
                return false;
            }
        }
        if let Some(a) = self.allowed {
            if r.decision.as_ref().is_none_or(|d| d.allowed != a) {
                return false;
            }
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&r.kind) {
            return false;
        }
        if self.since_ms.is_some_and(|s| r.time_ms < s) {
            return false;
        }
        if self.until_ms.is_some_and(|u| r.time_ms >= u) {
            return false;
        }
        true
    }
}

/// Where a scan goes on from: the next sequence number to examine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub u64);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Cursor {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Cursor)
    }
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Matching records, in scan order.
    pub records: Vec<StoredRecord>,
    /// Cursor for the next page; `None` once the end (or start) is reached.
    pub next: Option<Cursor>,
}

impl AuditReader {
    /// Up to `limit` records matching `filter`, from `cursor` (or the start /
    /// the newest record) on. Blocking: call it off the async runtime.
    pub fn scan(
        &self,
        filter: &ScanFilter,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<ScanPage, AuditError> {
        let mut records = Vec::new();
        let mut examined = 0usize;
        let end = self.next_seq()?;
        let iter: Box<dyn Iterator<Item = _>> = if filter.newest_first {
            let from = cursor.map_or(end.saturating_sub(1), |c| c.0.min(end.saturating_sub(1)));
            if end == 0 {
                return Ok(ScanPage {
                    records,
                    next: None,
                });
            }
            Box::new(self.raw_span(0, from).rev())
        } else {
            Box::new(self.raw_range(cursor.map_or(0, |c| c.0)))
        };
        for item in iter {
            let r = item?;
            let (seq, hash) = (r.seq, r.hash);
            let record =
                codec::decode(r.bytes()).map_err(|source| AuditError::Decode { seq, source })?;
            examined += 1;
            if filter.matches(&record) {
                records.push(StoredRecord { seq, hash, record });
            }
            if records.len() >= limit || examined >= SCAN_BUDGET {
                let next = if filter.newest_first {
                    seq.checked_sub(1).map(Cursor)
                } else {
                    (seq + 1 < end).then_some(Cursor(seq + 1))
                };
                return Ok(ScanPage { records, next });
            }
        }
        Ok(ScanPage {
            records,
            next: None,
        })
    }
}
