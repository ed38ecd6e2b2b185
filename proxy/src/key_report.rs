//! How much retained data sits under which key: reads protected topics
//! straight from the brokers (with Custos's own upstream credentials), opens
//! no ciphertext, and counts records by the key reference their envelopes
//! carry (`KEK#vN`, `dek:ID` for a stored data key, or `subject#vN`).
//!
//! After a KEK rotation this says when the old version still protects data
//! (and so may not be destroyed yet), and after shredding how many records
//! are now unreadable. Records of a protected topic without any envelope
//! (written before the rule existed, or around Custos) are counted as
//! `unprotected`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use kafka_protocol::messages::{
    fetch_request, list_offsets_request, metadata_request, ApiKey, BrokerId, FetchRequest,
    ListOffsetsRequest, MetadataRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::field_rules::{self, RuleSet};
use crate::record_batch::{self, Segment};
use crate::upstream::{Conn, UpstreamSecurity};

/// Counts for one topic and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportRow {
    /// The topic.
    pub topic: String,
    /// `KEK#vN`, `dek:ID`, `subject#vN` or `unprotected`.
    pub key: String,
    /// Records whose protected parts use this key.
    pub records: u64,
}

/// Bytes asked for per partition and fetch.
const FETCH_BYTES: i32 = 8 * 1024 * 1024;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Scans `topics` (every topic some rule covers, when empty) from their
/// log start to their high watermark.
pub async fn scan(
    servers: &[(String, u16)],
    security: &UpstreamSecurity,
    rules: &RuleSet,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<ReportRow>, String> {
    let (host, port) = servers.first().ok_or("no bootstrap server")?;
    let mut boot = Conn::open(host, *port, security, timeout, "custos-key-report").await?;
    let request = MetadataRequest::default().with_topics(if topics.is_empty() {
        None
    } else {
        Some(
            topics
                .iter()
                .map(|t| metadata_request::MetadataRequestTopic::default().with_name(Some(name(t))))
                .collect(),
        )
    });
    let ResponseKind::Metadata(md) = boot
        .call(ApiKey::Metadata, 12, RequestKind::Metadata(request))
        .await?
    else {
        return Err("not a Metadata answer".into());
    };
    let brokers: HashMap<BrokerId, (String, u16)> = md
        .brokers
        .iter()
        .filter_map(|b| Some((b.node_id, (b.host.to_string(), u16::try_from(b.port).ok()?))))
        .collect();
    let mut conns: HashMap<BrokerId, Conn> = HashMap::new();
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for t in &md.topics {
        let Some(topic) = t.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        if t.error_code != 0 {
            return Err(format!(
                "topic {topic}: Metadata error code {}",
                t.error_code
            ));
        }
        let Some(rule) = rules.for_topic(&topic) else {
            if !topics.is_empty() {
                return Err(format!("no encryption rule covers topic {topic}"));
            }
            continue;
        };
        for p in &t.partitions {
            let leader = p.leader_id;
            let conn = match conns.entry(leader) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let (h, port) = brokers
                        .get(&leader)
                        .ok_or_else(|| format!("{topic}-{}: leader unknown", p.partition_index))?;
                    e.insert(Conn::open(h, *port, security, timeout, "custos-key-report").await?)
                }
            };
            let (start, end) = bounds(conn, &topic, p.partition_index).await?;
            let mut offset = start;
            while offset < end {
                let next =
                    fetch_count(conn, rule, &topic, p.partition_index, offset, &mut counts).await?;
                if next <= offset {
                    return Err(format!(
                        "{topic}-{}: no progress at offset {offset}",
                        p.partition_index
                    ));
                }
                offset = next;
            }
        }
    }
    Ok(counts
        .into_iter()
        .map(|((topic, key), records)| ReportRow {
            topic,
            key,
            records,
        })
        .collect())
}

/// The partition's log start and high watermark.
async fn bounds(conn: &mut Conn, topic: &str, partition: i32) -> Result<(i64, i64), String> {
    let mut out = [0i64; 2];
    for (i, ts) in [-2i64, -1].into_iter().enumerate() {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(ts),
                ])]);
        let ResponseKind::ListOffsets(r) = conn
            .call(ApiKey::ListOffsets, 7, RequestKind::ListOffsets(request))
            .await?
        else {
            return Err("not a ListOffsets answer".into());
        };
        let p = r
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or("empty ListOffsets answer")?;
        if p.error_code != 0 {
            return Err(format!(
                "{topic}-{partition}: ListOffsets error code {}",
                p.error_code
            ));
        }
        out[i] = p.offset;
    }
    Ok((out[0], out[1]))
}

/// Fetches from `offset`, counts what came, and returns the next offset.
async fn fetch_count(
    conn: &mut Conn,
    rule: &field_rules::Rule,
    topic: &str,
    partition: i32,
    offset: i64,
    counts: &mut BTreeMap<(String, String), u64>,
) -> Result<i64, String> {
    let request = FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_BYTES)
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(FETCH_BYTES)])]);
    let ResponseKind::Fetch(f) = conn
        .call(ApiKey::Fetch, 12, RequestKind::Fetch(request))
        .await?
    else {
        return Err("not a Fetch answer".into());
    };
    let p = f
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("empty Fetch answer")?;
    if p.error_code != 0 {
        return Err(format!(
            "{topic}-{partition}: Fetch error code {}",
            p.error_code
        ));
    }
    let Some(records) = &p.records else {
        return Ok(offset);
    };
    let mut next = offset;
    for seg in record_batch::decode(records).map_err(|e| e.to_string())? {
        match seg {
            Segment::Batch(b) => {
                next = next.max(b.header.base_offset + i64::from(b.header.last_offset_delta) + 1);
                for r in &b.records {
                    let mut refs = HashSet::new();
                    field_rules::key_refs(rule, r, &mut refs);
                    let mut labels: Vec<String> =
                        refs.iter().map(crate::protection::key_label).collect();
                    if labels.is_empty() {
                        labels.push("unprotected".into());
                    }
                    labels.sort();
                    labels.dedup();
                    for l in labels {
                        *counts.entry((topic.to_string(), l)).or_default() += 1;
                    }
                }
            }
            // Control batches and old message sets hold no protected data; a
            // partial batch (shorter than its length says) is fetched again.
            Segment::Raw(raw) => {
                if let Some(end) = record_batch::raw_batch_end(&raw) {
                    next = next.max(end);
                }
            }
        }
    }
    Ok(next)
}
