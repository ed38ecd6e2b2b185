//! What a Kafka request touches: its topics, groups and transactional ids.
//!
//! Authorization needs the resource names inside client requests, and a
//! partial denial (one forbidden topic in a multi-topic Produce) needs to know
//! where each topic's entry sits in the frame so it can be cut out without
//! re-encoding the records of the others. Everything here reads with the
//! bounded [`Reader`], so hostile lengths are refused rather than allocated.
//!
//! Topic names are read only from versions that carry them: Produce v13+ and
//! Fetch v13+ name topics by id (KIP-516), so a gateway that authorizes by
//! name advertises those apis up to v12 (see [`name_based_max_version`]).

use std::ops::Range;

use kafka_protocol::messages::ApiKey;

use crate::wire::{Reader, WireError};

/// One topic named in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRef<'a> {
    /// Topic name.
    pub name: &'a str,
    /// Partition indexes named for it (empty when the request names none).
    pub partitions: Vec<i32>,
    /// Byte range of the topic's whole entry in the body.
    pub span: Range<usize>,
}

impl<'a> TopicRef<'a> {
    /// A topic named without partitions, its entry at `span`.
    pub fn named(name: &'a str, span: Range<usize>) -> Self {
        TopicRef {
            name,
            partitions: vec![],
            span,
        }
    }
}

/// One topic named by id in a request (share-group apis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicIdRef {
    /// Topic id.
    pub id: crate::topic_ids::TopicId,
    /// Partition indexes named for it.
    pub partitions: Vec<i32>,
    /// Byte range of the topic's whole entry in the body.
    pub span: Range<usize>,
}

/// The resources one request touches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touches<'a> {
    /// Topics, in request order.
    pub topics: Vec<TopicRef<'a>>,
    /// Consumer groups.
    pub groups: Vec<&'a str>,
    /// Transactional ids.
    pub transactional_ids: Vec<&'a str>,
    /// Metadata asked for every topic (null topic list).
    pub all_topics: bool,
    /// Metadata may create missing topics.
    pub allow_auto_topic_creation: bool,
    /// Byte range of the topic array (count prefix included), for rewriting.
    pub topics_span: Option<Range<usize>>,
    /// A follower (replica id >= 0) rather than a consumer sent this fetch.
    pub from_replica: bool,
    /// Fetch v7+: topics the client drops from its fetch session (not read).
    pub forgotten_topics: Vec<TopicRef<'a>>,
    /// Metadata v4+: offset of the allow-auto-topic-creation byte in the body.
    pub auto_create_at: Option<usize>,
    /// Metadata v10+: some topics were named by id only.
    pub topics_by_id: bool,
    /// Byte range of each group's entry, for apis whose groups sit in one
    /// array (DeleteGroups, DescribeGroups, ConsumerGroupDescribe).
    pub group_spans: Vec<Range<usize>>,
    /// Byte range of the group array (count prefix included).
    pub groups_span: Option<Range<usize>>,
    /// OffsetFetch: for each group (same order as `groups`), whether it asked
    /// for all topics, and the range of `topics` it named.
    pub group_topics: Vec<(bool, Range<usize>)>,
    /// Config resources (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs).
    pub configs: Vec<ConfigRef<'a>>,
    /// Byte range of the config resource array (count prefix included).
    pub configs_span: Option<Range<usize>>,
    /// Topics named by id (ShareFetch, ShareAcknowledge), in request order;
    /// `topics_span` is then their array's range.
    pub topic_ids: Vec<TopicIdRef>,
    /// ShareFetch, ShareAcknowledge: the request named no group (null).
    pub no_group: bool,
}

/// A config resource named in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRef<'a> {
    /// Kafka's resource type code (2 topic, 4 broker, 8 broker logger, 16
    /// client metrics, 32 group).
    pub resource_type: i8,
    /// Resource name.
    pub name: &'a str,
    /// Byte range of the entry in the body.
    pub span: Range<usize>,
}

/// Why a request's resources could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The body does not parse.
    #[error("{api:?} v{version}: {source}")]
    Wire {
        /// Api.
        api: ApiKey,
        /// Version.
        version: i16,
        /// Cause.
        source: WireError,
    },
    /// This version names topics by id only.
    #[error("{api:?} v{version} names topics by id; Custos authorizes by name up to v{max}")]
    TopicIdsOnly {
        /// Api.
        api: ApiKey,
        /// Version.
        version: i16,
        /// Highest version with names.
        max: i16,
    },
    /// No extractor for this api.
    #[error("no resource mapping for {0:?}")]
    Unmapped(ApiKey),
}

/// The highest version of `api` that names topics rather than topic ids.
pub fn name_based_max_version(api: ApiKey) -> Option<i16> {
    match api {
        ApiKey::Produce | ApiKey::Fetch => Some(12),
        ApiKey::DeleteTopics => Some(5),
        // v10 names topics by id (KIP-848).
        ApiKey::OffsetCommit | ApiKey::OffsetFetch => Some(9),
        // v4+ is the brokers' own batched verification, not a client api.
        ApiKey::AddPartitionsToTxn => Some(3),
        _ => None,
    }
}

fn flexible(api: ApiKey, version: i16) -> bool {
    api.request_header_version(version) >= 2
}

/// Reads the resources of a request body (the bytes after the header).
pub fn touches(api: ApiKey, version: i16, body: &[u8]) -> Result<Touches<'_>, ResourceError> {
    if let Some(max) = name_based_max_version(api) {
        if version > max {
            return Err(ResourceError::TopicIdsOnly { api, version, max });
        }
    }
    let wire = |source| ResourceError::Wire {
        api,
        version,
        source,
    };
    let mut r = Reader::new(body, flexible(api, version));
    let mut t = Touches::default();
    match api {
        ApiKey::Produce => produce(&mut r, &mut t).map_err(wire)?,
        ApiKey::Fetch => fetch(&mut r, version, &mut t).map_err(wire)?,
        ApiKey::Metadata => metadata(&mut r, version, &mut t).map_err(wire)?,
        ApiKey::ListOffsets => list_offsets(&mut r, version, &mut t).map_err(wire)?,
        ApiKey::FindCoordinator => find_coordinator(&mut r, version, &mut t).map_err(wire)?,
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::ConsumerGroupHeartbeat => {
            t.groups.push(r.str("group id").map_err(wire)?);
        }
        ApiKey::ShareGroupHeartbeat => {
            t.groups.push(r.str("group id").map_err(wire)?);
            r.str("member id").map_err(wire)?;
            r.i32("member epoch").map_err(wire)?;
            r.nullable_str("rack id").map_err(wire)?;
            // Null: unchanged since the last heartbeat.
            if let Some(n) = r.array_len("subscribed topic names").map_err(wire)? {
                for _ in 0..n {
                    let entry = r.position();
                    let name = r.str("topic name").map_err(wire)?;
                    t.topics.push(TopicRef::named(name, entry..r.position()));
                }
            }
        }
        ApiKey::ShareFetch | ApiKey::ShareAcknowledge => {
            share_fetch(&mut r, api, &mut t).map_err(wire)?
        }
        // Laid out as OffsetFetch v8's groups (without its trailing flag).
        ApiKey::DescribeShareGroupOffsets => offset_fetch(&mut r, 8, &mut t).map_err(wire)?,
        ApiKey::AlterShareGroupOffsets => {
            t.groups.push(r.str("group id").map_err(wire)?);
            topic_array(&mut r, &mut t, |r| {
                r.i64("start offset")?;
                r.tagged_fields()
            })
            .map_err(wire)?;
        }
        ApiKey::DeleteShareGroupOffsets => {
            t.groups.push(r.str("group id").map_err(wire)?);
            named_topics(&mut r, &mut t).map_err(wire)?;
        }
        ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::ConsumerGroupDescribe
        | ApiKey::ShareGroupDescribe => {
            let start = r.position();
            let n = r.array_len("groups").map_err(wire)?.unwrap_or(0);
            for _ in 0..n {
                let entry = r.position();
                t.groups.push(r.str("group id").map_err(wire)?);
                t.group_spans.push(entry..r.position());
            }
            t.groups_span = Some(start..r.position());
        }
        ApiKey::OffsetCommit => offset_commit(&mut r, version, &mut t).map_err(wire)?,
        ApiKey::TxnOffsetCommit => txn_offset_commit(&mut r, version, &mut t).map_err(wire)?,
        ApiKey::OffsetFetch => offset_fetch(&mut r, version, &mut t).map_err(wire)?,
        ApiKey::AddPartitionsToTxn => {
            t.transactional_ids
                .push(r.str("transactional id").map_err(wire)?);
            r.i64("producer id").map_err(wire)?;
            r.i16("producer epoch").map_err(wire)?;
            topic_array(&mut r, &mut t, |_| Ok(())).map_err(wire)?;
        }
        ApiKey::DeleteRecords => topic_array(&mut r, &mut t, |r| {
            r.i64("offset")?;
            r.tagged_fields()
        })
        .map_err(wire)?,
        ApiKey::CreatePartitions => create_partitions(&mut r, &mut t).map_err(wire)?,
        ApiKey::OffsetForLeaderEpoch => {
            if version >= 3 {
                r.i32("replica id").map_err(wire)?;
            }
            topic_array(&mut r, &mut t, |r| {
                r.i32("current leader epoch")?;
                r.i32("leader epoch")?;
                r.tagged_fields()
            })
            .map_err(wire)?;
        }
        ApiKey::DescribeProducers => topic_array(&mut r, &mut t, |_| Ok(())).map_err(wire)?,
        ApiKey::DescribeTransactions => {
            let n = r.array_len("transactional ids").map_err(wire)?.unwrap_or(0);
            for _ in 0..n {
                t.transactional_ids
                    .push(r.str("transactional id").map_err(wire)?);
            }
        }
        ApiKey::DescribeTopicPartitions => {
            t.all_topics = named_topics(&mut r, &mut t).map_err(wire)? == 0;
        }
        ApiKey::DescribeConfigs | ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            config_resources(&mut r, api, &mut t).map_err(wire)?
        }
        ApiKey::OffsetDelete => {
            t.groups.push(r.str("group id").map_err(wire)?);
            topic_array(&mut r, &mut t, |_| Ok(())).map_err(wire)?;
        }
        ApiKey::InitProducerId => {
            if let Some(id) = r.nullable_str("transactional id").map_err(wire)? {
                t.transactional_ids.push(id);
            }
        }
        ApiKey::EndTxn | ApiKey::AddOffsetsToTxn => {
            t.transactional_ids
                .push(r.str("transactional id").map_err(wire)?);
            if api == ApiKey::AddOffsetsToTxn {
                r.i64("producer id").map_err(wire)?;
                r.i16("producer epoch").map_err(wire)?;
                t.groups.push(r.str("group id").map_err(wire)?);
            }
        }
        ApiKey::DeleteTopics if version <= 5 => {
            let start = r.position();
            let n = r.array_len("topic names").map_err(wire)?.unwrap_or(0);
            for _ in 0..n {
                let entry = r.position();
                let name = r.str("topic name").map_err(wire)?;
                t.topics.push(TopicRef::named(name, entry..r.position()));
            }
            t.topics_span = Some(start..r.position());
        }
        ApiKey::CreateTopics => create_topics(&mut r, &mut t).map_err(wire)?,
        // Listings name no resource; their answers are filtered.
        ApiKey::ListGroups | ApiKey::ListTransactions | ApiKey::DescribeCluster => {}
        other => return Err(ResourceError::Unmapped(other)),
    }
    Ok(t)
}

/// Reads a topic array whose entries are `name, partitions[index, …],
/// tagged fields`; `rest` reads what follows each partition index.
fn topic_array<'a>(
    r: &mut Reader<'a>,
    t: &mut Touches<'a>,
    mut rest: impl FnMut(&mut Reader<'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let start = r.position();
    let n = r.array_len("topics")?.unwrap_or(0);
    for _ in 0..n {
        let entry = r.position();
        let name = r.str("topic name")?;
        let np = r.array_len("partitions")?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(np.min(64));
        for _ in 0..np {
            partitions.push(r.i32("partition")?);
            rest(r)?;
        }
        r.tagged_fields()?;
        t.topics.push(TopicRef {
            name,
            partitions,
            span: entry..r.position(),
        });
    }
    t.topics_span = Some(start..r.position());
    Ok(())
}

/// Reads a topic array whose entries are `name, tagged fields` (no
/// partitions); returns how many it held.
fn named_topics<'a>(r: &mut Reader<'a>, t: &mut Touches<'a>) -> Result<usize, WireError> {
    let start = r.position();
    let n = r.array_len("topics")?.unwrap_or(0);
    for _ in 0..n {
        let entry = r.position();
        let name = r.str("topic name")?;
        r.tagged_fields()?;
        t.topics.push(TopicRef::named(name, entry..r.position()));
    }
    t.topics_span = Some(start..r.position());
    Ok(n)
}

/// ShareFetch and ShareAcknowledge (v1): a group, then topics by id, each
/// with partitions carrying acknowledgement batches.
fn share_fetch<'a>(r: &mut Reader<'a>, api: ApiKey, t: &mut Touches<'a>) -> Result<(), WireError> {
    match r.nullable_str("group id")? {
        Some(g) => t.groups.push(g),
        None => t.no_group = true,
    }
    r.nullable_str("member id")?;
    r.i32("share session epoch")?;
    if api == ApiKey::ShareFetch {
        r.i32("max wait")?;
        r.i32("min bytes")?;
        r.i32("max bytes")?;
        r.i32("max records")?;
        r.i32("batch size")?;
    }
    let start = r.position();
    let n = r.array_len("topics")?.unwrap_or(0);
    for _ in 0..n {
        let entry = r.position();
        let id = r.uuid("topic id")?;
        let np = r.array_len("partitions")?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(np.min(64));
        for _ in 0..np {
            partitions.push(r.i32("partition")?);
            let nb = r.array_len("acknowledgement batches")?.unwrap_or(0);
            for _ in 0..nb {
                r.i64("first offset")?;
                r.i64("last offset")?;
                let nt = r.array_len("acknowledge types")?.unwrap_or(0);
                r.skip("acknowledge types", nt)?;
                r.tagged_fields()?;
            }
            r.tagged_fields()?;
        }
        r.tagged_fields()?;
        t.topic_ids.push(TopicIdRef {
            id,
            partitions,
            span: entry..r.position(),
        });
    }
    t.topics_span = Some(start..r.position());
    if api == ApiKey::ShareFetch {
        // Topics the member drops from its share session: nothing is read.
        let n = r.array_len("forgotten topics")?.unwrap_or(0);
        for _ in 0..n {
            r.uuid("forgotten topic id")?;
            let np = r.array_len("forgotten partitions")?.unwrap_or(0);
            r.skip("forgotten partitions", np.saturating_mul(4))?;
            r.tagged_fields()?;
        }
    }
    r.tagged_fields()
}

fn produce<'a>(r: &mut Reader<'a>, t: &mut Touches<'a>) -> Result<(), WireError> {
    if let Some(id) = r.nullable_str("transactional id")? {
        t.transactional_ids.push(id);
    }
    r.i16("acks")?;
    r.i32("timeout")?;
    topic_array(r, t, |r| {
        r.nullable_bytes("records")?;
        r.tagged_fields()
    })
}

fn fetch<'a>(r: &mut Reader<'a>, version: i16, t: &mut Touches<'a>) -> Result<(), WireError> {
    // Versions up to 12 (the only ones read here) carry the replica id inline.
    t.from_replica = r.i32("replica id")? >= 0;
    r.i32("max wait")?;
    r.i32("min bytes")?;
    r.i32("max bytes")?;
    r.i8("isolation level")?;
    if version >= 7 {
        r.i32("session id")?;
        r.i32("session epoch")?;
    }
    topic_array(r, t, |r| {
        if version >= 9 {
            r.i32("current leader epoch")?;
        }
        r.i64("fetch offset")?;
        if version >= 12 {
            r.i32("last fetched epoch")?;
        }
        if version >= 5 {
            r.i64("log start offset")?;
        }
        r.i32("partition max bytes")?;
        r.tagged_fields()
    })?;
    if version >= 7 {
        // Topics the client drops from its fetch session: reading them needs
        // Read too, or a session could be probed for names.
        let n = r.array_len("forgotten topics")?.unwrap_or(0);
        for _ in 0..n {
            let entry = r.position();
            let name = r.str("forgotten topic")?;
            let np = r.array_len("forgotten partitions")?.unwrap_or(0);
            let mut partitions = Vec::with_capacity(np.min(64));
            for _ in 0..np {
                partitions.push(r.i32("partition")?);
            }
            r.tagged_fields()?;
            t.forgotten_topics.push(TopicRef {
                name,
                partitions,
                span: entry..r.position(),
            });
        }
    }
    Ok(())
}

fn offset_commit<'a>(
    r: &mut Reader<'a>,
    version: i16,
    t: &mut Touches<'a>,
) -> Result<(), WireError> {
    t.groups.push(r.str("group id")?);
    r.i32("generation id")?;
    r.str("member id")?;
    if version >= 7 {
        r.nullable_str("group instance id")?;
    }
    if version <= 4 {
        r.i64("retention time")?;
    }
    topic_array(r, t, |r| {
        r.i64("committed offset")?;
        if version >= 6 {
            r.i32("committed leader epoch")?;
        }
        r.nullable_str("committed metadata")?;
        r.tagged_fields()
    })
}

fn txn_offset_commit<'a>(
    r: &mut Reader<'a>,
    version: i16,
    t: &mut Touches<'a>,
) -> Result<(), WireError> {
    t.transactional_ids.push(r.str("transactional id")?);
    t.groups.push(r.str("group id")?);
    r.i64("producer id")?;
    r.i16("producer epoch")?;
    if version >= 3 {
        r.i32("generation id")?;
        r.str("member id")?;
        r.nullable_str("group instance id")?;
    }
    topic_array(r, t, |r| {
        r.i64("committed offset")?;
        if version >= 2 {
            r.i32("committed leader epoch")?;
        }
        r.nullable_str("committed metadata")?;
        r.tagged_fields()
    })
}

/// OffsetFetch: one group (v1-7) or many (v8+), each with named topics or
/// null for all. `all_topics` is set when any group asks for all topics.
fn offset_fetch<'a>(
    r: &mut Reader<'a>,
    version: i16,
    t: &mut Touches<'a>,
) -> Result<(), WireError> {
    let topics = |r: &mut Reader<'a>, t: &mut Touches<'a>| -> Result<(), WireError> {
        let first = t.topics.len();
        let all = match r.array_len("topics")? {
            None => {
                t.all_topics = true;
                true
            }
            Some(n) => {
                for _ in 0..n {
                    let entry = r.position();
                    let name = r.str("topic name")?;
                    let np = r.array_len("partitions")?.unwrap_or(0);
                    let mut partitions = Vec::with_capacity(np.min(64));
                    for _ in 0..np {
                        partitions.push(r.i32("partition")?);
                    }
                    r.tagged_fields()?;
                    t.topics.push(TopicRef {
                        name,
                        partitions,
                        span: entry..r.position(),
                    });
                }
                false
            }
        };
        t.group_topics.push((all, first..t.topics.len()));
        Ok(())
    };
    if version <= 7 {
        t.groups.push(r.str("group id")?);
        topics(r, t)?;
    } else {
        let n = r.array_len("groups")?.unwrap_or(0);
        for _ in 0..n {
            t.groups.push(r.str("group id")?);
            if version >= 9 {
                r.nullable_str("member id")?;
                r.i32("member epoch")?;
            }
            topics(r, t)?;
            r.tagged_fields()?;
        }
    }
    Ok(())
}

fn create_partitions<'a>(r: &mut Reader<'a>, t: &mut Touches<'a>) -> Result<(), WireError> {
    let start = r.position();
    let n = r.array_len("topics")?.unwrap_or(0);
    for _ in 0..n {
        let entry = r.position();
        let name = r.str("topic name")?;
        r.i32("count")?;
        if let Some(na) = r.array_len("assignments")? {
            for _ in 0..na {
                let nb = r.array_len("broker ids")?.unwrap_or(0);
                r.skip("broker ids", nb.saturating_mul(4))?;
                r.tagged_fields()?;
            }
        }
        r.tagged_fields()?;
        t.topics.push(TopicRef::named(name, entry..r.position()));
    }
    t.topics_span = Some(start..r.position());
    Ok(())
}

fn config_resources<'a>(
    r: &mut Reader<'a>,
    api: ApiKey,
    t: &mut Touches<'a>,
) -> Result<(), WireError> {
    let start = r.position();
    let n = r.array_len("resources")?.unwrap_or(0);
    for _ in 0..n {
        let entry = r.position();
        let resource_type = r.i8("resource type")?;
        let name = r.str("resource name")?;
        let nc = r.array_len("configs")?.unwrap_or(0);
        for _ in 0..nc {
            r.str("config name")?;
            match api {
                ApiKey::AlterConfigs => {
                    r.nullable_str("config value")?;
                }
                ApiKey::IncrementalAlterConfigs => {
                    r.i8("config operation")?;
                    r.nullable_str("config value")?;
                }
                _ => {}
            }
            if api != ApiKey::DescribeConfigs {
                r.tagged_fields()?;
            }
        }
        r.tagged_fields()?;
        t.configs.push(ConfigRef {
            resource_type,
            name,
            span: entry..r.position(),
        });
    }
    t.configs_span = Some(start..r.position());
    Ok(())
}

fn metadata<'a>(r: &mut Reader<'a>, version: i16, t: &mut Touches<'a>) -> Result<(), WireError> {
    let start = r.position();
    match r.array_len("topics")? {
        None => t.all_topics = true,
        // Version 0 has no null: an empty list means every topic.
        Some(0) if version == 0 => t.all_topics = true,
        Some(n) => {
            for _ in 0..n {
                let entry = r.position();
                if version >= 10 {
                    r.uuid("topic id")?;
                }
                let name = if version >= 10 {
                    r.nullable_str("topic name")?
                } else {
                    Some(r.str("topic name")?)
                };
                r.tagged_fields()?;
                match name {
                    Some(name) => t.topics.push(TopicRef::named(name, entry..r.position())),
                    None => t.topics_by_id = true,
                }
            }
        }
    }
    t.topics_span = Some(start..r.position());
    t.allow_auto_topic_creation = if version >= 4 {
        t.auto_create_at = Some(r.position());
        r.i8("allow auto topic creation")? != 0
    } else {
        true
    };
    Ok(())
}

fn list_offsets<'a>(
    r: &mut Reader<'a>,
    version: i16,
    t: &mut Touches<'a>,
) -> Result<(), WireError> {
    r.i32("replica id")?;
    if version >= 2 {
        r.i8("isolation level")?;
    }
    topic_array(r, t, |r| {
        if version >= 4 {
            r.i32("current leader epoch")?;
        }
        r.i64("timestamp")?;
        r.tagged_fields()
    })
}

/// Kafka's coordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

fn find_coordinator<'a>(
    r: &mut Reader<'a>,
    version: i16,
    t: &mut Touches<'a>,
) -> Result<(), WireError> {
    let mut keys = Vec::new();
    if version <= 3 {
        keys.push(r.str("coordinator key")?);
    }
    let key_type = if version >= 1 {
        r.i8("key type")?
    } else {
        KEY_TYPE_GROUP
    };
    if version >= 4 {
        let n = r.array_len("coordinator keys")?.unwrap_or(0);
        for _ in 0..n {
            keys.push(r.str("coordinator key")?);
        }
    }
    match key_type {
        KEY_TYPE_GROUP => t.groups.extend(keys),
        KEY_TYPE_TRANSACTION => t.transactional_ids.extend(keys),
        // Share-group and other coordinator types are not forwarded.
        other => {
            return Err(WireError::Invalid {
                what: "coordinator key type",
                at: 0,
                value: i64::from(other),
            })
        }
    }
    Ok(())
}

fn create_topics<'a>(r: &mut Reader<'a>, t: &mut Touches<'a>) -> Result<(), WireError> {
    let start = r.position();
    let n = r.array_len("topics")?.unwrap_or(0);
    for _ in 0..n {
        let entry = r.position();
        let name = r.str("topic name")?;
        r.i32("partitions")?;
        r.i16("replication factor")?;
        let na = r.array_len("assignments")?.unwrap_or(0);
        for _ in 0..na {
            r.i32("partition")?;
            let nb = r.array_len("broker ids")?.unwrap_or(0);
            r.skip("broker ids", nb.saturating_mul(4))?;
            r.tagged_fields()?;
        }
        let nc = r.array_len("configs")?.unwrap_or(0);
        for _ in 0..nc {
            r.str("config name")?;
            r.nullable_str("config value")?;
            r.tagged_fields()?;
        }
        r.tagged_fields()?;
        t.topics.push(TopicRef::named(name, entry..r.position()));
    }
    t.topics_span = Some(start..r.position());
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Differential tests: requests encoded by the `kafka-protocol` crate at
    //! every version, read back here, must name the same resources.

    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::alter_configs_request as ac;
    use kafka_protocol::messages::create_partitions_request::{
        CreatePartitionsAssignment, CreatePartitionsTopic,
    };
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
    };
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::describe_producers_request as dp;
    use kafka_protocol::messages::describe_topic_partitions_request as dtp;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::incremental_alter_configs_request as iac;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
    use std::fmt::Debug;
    use std::ops::RangeInclusive;

    fn enc<T: Encodable>(m: &T, v: i16) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b, v).expect("encode");
        b.to_vec()
    }

    fn s(x: &'static str) -> StrBytes {
        StrBytes::from_static_str(x)
    }

    fn names<'a>(t: &'a Touches<'a>) -> Vec<(&'a str, Vec<i32>)> {
        t.topics
            .iter()
            .map(|x| (x.name, x.partitions.clone()))
            .collect()
    }

    #[test]
    fn produce_every_named_version() {
        for v in 3..=12 {
            let req = ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(s("txn-1"))))
                .with_acks(-1)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(s("orders")))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(bytes::Bytes::from_static(b"batch-0"))),
                            PartitionProduceData::default().with_index(3),
                        ]),
                    TopicProduceData::default()
                        .with_name(TopicName(s("payments")))
                        .with_partition_data(vec![PartitionProduceData::default().with_index(1)]),
                ]);
            let body = enc(&req, v);
            let t = touches(ApiKey::Produce, v, &body).expect("touches");
            assert_eq!(
                names(&t),
                vec![("orders", vec![0, 3]), ("payments", vec![1])],
                "v{v}"
            );
            assert_eq!(t.transactional_ids, vec!["txn-1"]);
            // Spans tile the topic array exactly.
            let span = t.topics_span.clone().expect("span");
            assert!(t.topics[0].span.start > span.start);
            assert_eq!(t.topics[1].span.end, span.end);
            assert_eq!(t.topics[0].span.end, t.topics[1].span.start);
        }
        assert!(matches!(
            touches(ApiKey::Produce, 13, &[]),
            Err(ResourceError::TopicIdsOnly { max: 12, .. })
        ));
    }

    #[test]
    fn share_apis_name_their_group_and_topics_by_id() {
        use kafka_protocol::messages::{
            share_acknowledge_request as sa, share_fetch_request as sf,
        };
        let id = |b: u8| uuid::Uuid::from_bytes([b; 16]);
        let batch = || {
            sf::AcknowledgementBatch::default()
                .with_first_offset(10)
                .with_last_offset(12)
                .with_acknowledge_types(vec![1, 1, 2])
        };
        let fetch = ShareFetchRequest::default()
            .with_group_id(Some(GroupId(s("sg"))))
            .with_member_id(Some(s("m-1")))
            .with_share_session_epoch(3)
            .with_max_records(500)
            .with_topics(vec![
                sf::FetchTopic::default()
                    .with_topic_id(id(1))
                    .with_partitions(vec![
                        sf::FetchPartition::default()
                            .with_partition_index(0)
                            .with_acknowledgement_batches(vec![batch(), batch()]),
                        sf::FetchPartition::default().with_partition_index(4),
                    ]),
                sf::FetchTopic::default()
                    .with_topic_id(id(2))
                    .with_partitions(vec![sf::FetchPartition::default().with_partition_index(1)]),
            ])
            .with_forgotten_topics_data(vec![sf::ForgottenTopic::default()
                .with_topic_id(id(3))
                .with_partitions(vec![7, 8])]);
        let ack = ShareAcknowledgeRequest::default()
            .with_group_id(Some(GroupId(s("sg"))))
            .with_topics(vec![sa::AcknowledgeTopic::default()
                .with_topic_id(id(2))
                .with_partitions(vec![sa::AcknowledgePartition::default()
                    .with_partition_index(1)
                    .with_acknowledgement_batches(vec![
                        sa::AcknowledgementBatch::default().with_acknowledge_types(vec![3]),
                    ])])]);
        for (api, body, expect) in [
            (
                ApiKey::ShareFetch,
                enc(&fetch, 1),
                vec![(1u8, vec![0, 4]), (2, vec![1])],
            ),
            (ApiKey::ShareAcknowledge, enc(&ack, 1), vec![(2, vec![1])]),
        ] {
            let t = touches(api, 1, &body).expect("touches");
            assert_eq!(t.groups, vec!["sg"], "{api:?}");
            let got: Vec<(u8, Vec<i32>)> = t
                .topic_ids
                .iter()
                .map(|x| (x.id[0], x.partitions.clone()))
                .collect();
            assert_eq!(got, expect, "{api:?}");
            // Each span is the whole entry: cutting one out leaves a body
            // the crate decodes, with the other entries intact.
            let array = t.topics_span.clone().expect("span");
            let mut cut = body[..array.start].to_vec();
            cut.push(2); // compact array of one entry
            cut.extend_from_slice(&body[t.topic_ids[expect.len() - 1].span.clone()]);
            cut.extend_from_slice(&body[array.end..]);
            let again = touches(api, 1, &cut).expect("cut body");
            assert_eq!(again.topic_ids.len(), 1, "{api:?}");
            assert_eq!(again.topic_ids[0].id, t.topic_ids[expect.len() - 1].id);
            // Every truncation is refused, none panics.
            for len in 0..body.len() {
                assert!(
                    touches(api, 1, &body[..len]).is_err(),
                    "{api:?} cut at {len}"
                );
            }
        }
        let no_group = enc(&ShareFetchRequest::default(), 1);
        assert!(
            touches(ApiKey::ShareFetch, 1, &no_group)
                .expect("touches")
                .no_group
        );

        let hb = ShareGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s("sg")))
            .with_member_id(s("m-1"))
            .with_subscribed_topic_names(Some(vec![TopicName(s("a")), TopicName(s("b"))]));
        let hb_body = enc(&hb, 1);
        let t = touches(ApiKey::ShareGroupHeartbeat, 1, &hb_body).expect("heartbeat");
        assert_eq!(t.groups, vec!["sg"]);
        assert_eq!(names(&t), vec![("a", vec![]), ("b", vec![])]);
        let later = hb.with_subscribed_topic_names(None);
        let later_body = enc(&later, 1);
        let t = touches(ApiKey::ShareGroupHeartbeat, 1, &later_body).expect("heartbeat");
        assert!(t.topics.is_empty());

        let d = ShareGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(s("g1")), GroupId(s("g2"))]);
        let d_body = enc(&d, 1);
        let t = touches(ApiKey::ShareGroupDescribe, 1, &d_body).expect("describe");
        assert_eq!(t.groups, vec!["g1", "g2"]);
        assert_eq!(t.group_spans.len(), 2);
    }

    #[test]
    fn fetch_every_named_version_with_forgotten_topics() {
        for v in 4..=12 {
            let mut req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(s("orders")))
                    .with_partitions(vec![
                        FetchPartition::default().with_partition(2),
                        FetchPartition::default().with_partition(5),
                    ])]);
            if v >= 7 {
                req = req.with_forgotten_topics_data(vec![ForgottenTopic::default()
                    .with_topic(TopicName(s("old")))
                    .with_partitions(vec![9])]);
            }
            let body = enc(&req, v);
            let t = touches(ApiKey::Fetch, v, &body).expect("touches");
            assert_eq!(names(&t), vec![("orders", vec![2, 5])], "v{v}");
            let forgotten: Vec<_> = t.forgotten_topics.iter().map(|x| x.name).collect();
            assert_eq!(forgotten, if v >= 7 { vec!["old"] } else { vec![] }, "v{v}");
            assert!(!t.from_replica);
        }
    }

    #[test]
    fn metadata_named_null_and_empty_lists() {
        for v in 0..=13 {
            let req = MetadataRequest::default()
                .with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(TopicName(s("orders"))))
                ]))
                .with_allow_auto_topic_creation(v < 4);
            let body = enc(&req, v);
            let t = touches(ApiKey::Metadata, v, &body).expect("touches");
            assert_eq!(names(&t), vec![("orders", vec![])], "v{v}");
            assert!(!t.all_topics);
            assert_eq!(t.allow_auto_topic_creation, v < 4);
            if v >= 1 {
                let all = MetadataRequest::default().with_topics(None);
                let body = enc(&all, v);
                let t = touches(ApiKey::Metadata, v, &body).expect("touches");
                assert!(t.all_topics, "v{v} null list");
            }
        }
    }

    #[test]
    fn list_offsets_find_coordinator_and_groups() {
        for v in 1..=10 {
            let req = ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(s("orders")))
                .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(4)])]);
            let body = enc(&req, v);
            let t = touches(ApiKey::ListOffsets, v, &body).expect("touches");
            assert_eq!(names(&t), vec![("orders", vec![4])], "v{v}");
        }
        for v in 0..=6 {
            let mut req = FindCoordinatorRequest::default().with_key_type(1);
            if v <= 3 {
                req = req.with_key(s("txn-a"));
            } else {
                req = req.with_coordinator_keys(vec![s("txn-a"), s("txn-b")]);
            }
            if v == 0 {
                req = req.with_key_type(0);
            }
            let body = enc(&req, v);
            let t = touches(ApiKey::FindCoordinator, v, &body).expect("touches");
            if v == 0 {
                assert_eq!(t.groups, vec!["txn-a"]);
            } else if v <= 3 {
                assert_eq!(t.transactional_ids, vec!["txn-a"], "v{v}");
            } else {
                assert_eq!(t.transactional_ids, vec!["txn-a", "txn-b"], "v{v}");
            }
        }
        for v in 0..=9 {
            let req = JoinGroupRequest::default().with_group_id(GroupId(s("g1")));
            let body = enc(&req, v);
            let t = touches(ApiKey::JoinGroup, v, &body).expect("touches");
            assert_eq!(t.groups, vec!["g1"], "JoinGroup v{v}");
        }
        for v in 0..=1 {
            let req = ConsumerGroupHeartbeatRequest::default().with_group_id(GroupId(s("g2")));
            let body = enc(&req, v);
            let t = touches(ApiKey::ConsumerGroupHeartbeat, v, &body).expect("touches");
            assert_eq!(t.groups, vec!["g2"]);
        }
        for v in 0..=5 {
            let req = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(s("txn-9"))));
            let body = enc(&req, v);
            let t = touches(ApiKey::InitProducerId, v, &body).expect("touches");
            assert_eq!(t.transactional_ids, vec!["txn-9"], "v{v}");
        }
        for v in 0..=4 {
            let req = AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(s("txn-9")))
                .with_group_id(GroupId(s("g3")));
            let body = enc(&req, v);
            let t = touches(ApiKey::AddOffsetsToTxn, v, &body).expect("touches");
            assert_eq!(
                (t.transactional_ids.clone(), t.groups.clone()),
                (vec!["txn-9"], vec!["g3"])
            );
        }
    }

    #[test]
    fn create_and_delete_topics() {
        for v in 2..=7 {
            let req = CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(s("a")))
                    .with_configs(vec![CreatableTopicConfig::default()
                        .with_name(s("cleanup.policy"))
                        .with_value(Some(s("compact")))]),
                CreatableTopic::default().with_name(TopicName(s("b"))),
            ]);
            let body = enc(&req, v);
            let t = touches(ApiKey::CreateTopics, v, &body).expect("touches");
            assert_eq!(names(&t), vec![("a", vec![]), ("b", vec![])], "v{v}");
        }
        for v in 1..=5 {
            let req = DeleteTopicsRequest::default()
                .with_topic_names(vec![TopicName(s("a")), TopicName(s("b"))]);
            let body = enc(&req, v);
            let t = touches(ApiKey::DeleteTopics, v, &body).expect("touches");
            assert_eq!(names(&t), vec![("a", vec![]), ("b", vec![])], "v{v}");
        }
    }

    #[test]
    fn hostile_counts_are_refused() {
        // Produce v3: null txn id, acks, timeout, then 2^31-1 topics in 4 bytes.
        let body = [0xff, 0xff, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            touches(ApiKey::Produce, 3, &body),
            Err(ResourceError::Wire { .. })
        ));
    }

    // ---- Helpers for the span and cut tests ----

    /// Decodes `bytes` as a whole `T` at `v`: nothing may be left over.
    fn dec<T: Decodable>(bytes: &[u8], v: i16) -> T {
        let mut b = bytes;
        let m = T::decode(&mut b, v).unwrap_or_else(|e| panic!("v{v}: decode: {e}"));
        assert!(b.is_empty(), "v{v}: {} bytes left after decode", b.len());
        m
    }

    /// The crate's valid version range for a message.
    fn versions<T: Message>() -> RangeInclusive<i16> {
        T::VERSIONS.min..=T::VERSIONS.max
    }

    /// An array count as Kafka writes it: INT32, or UNSIGNED_VARINT n + 1
    /// when flexible (also the length prefix of a compact string).
    fn count_prefix(n: usize, flex: bool) -> Vec<u8> {
        if !flex {
            return i32::try_from(n).expect("count").to_be_bytes().to_vec();
        }
        let mut x = u32::try_from(n + 1).expect("count");
        let mut out = Vec::new();
        loop {
            let b = (x & 0x7f) as u8;
            x >>= 7;
            if x == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// A non-null string as Kafka writes it.
    fn str_bytes(x: &str, flex: bool) -> Vec<u8> {
        let mut out = if flex {
            count_prefix(x.len(), true)
        } else {
            i16::try_from(x.len()).expect("len").to_be_bytes().to_vec()
        };
        out.extend_from_slice(x.as_bytes());
        out
    }

    /// Reads `body`, after checking that no truncation of it panics.
    fn read(api: ApiKey, v: i16, body: &[u8]) -> Touches<'_> {
        for end in 0..body.len() {
            let _ = touches(api, v, &body[..end]);
        }
        touches(api, v, body).unwrap_or_else(|e| panic!("{api:?} v{v}: {e}"))
    }

    /// The entries tile the array: its count prefix, then each entry where
    /// the previous one ends, the last ending at the array's end.
    fn assert_tiles(
        body: &[u8],
        array: &Range<usize>,
        spans: &[Range<usize>],
        flex: bool,
        what: &str,
    ) {
        let prefix = count_prefix(spans.len(), flex);
        let mut at = array.start + prefix.len();
        assert!(array.end <= body.len(), "{what}: array inside the body");
        assert_eq!(&body[array.start..at], &prefix[..], "{what}: count prefix");
        for (i, sp) in spans.iter().enumerate() {
            assert_eq!(sp.start, at, "{what}: entry {i} follows the previous one");
            assert!(sp.end > sp.start, "{what}: entry {i} is not empty");
            at = sp.end;
        }
        assert_eq!(at, array.end, "{what}: the last entry ends the array");
    }

    /// The bytes at `span` decode, by themselves, into `want`.
    fn reparse<T: Decodable + PartialEq + Debug>(
        body: &[u8],
        span: &Range<usize>,
        v: i16,
        want: &T,
    ) {
        assert_eq!(
            &dec::<T>(&body[span.clone()], v),
            want,
            "v{v}: entry {span:?}"
        );
    }

    /// `body` with entry `drop` cut out of the array and the count rewritten.
    fn cut(
        body: &[u8],
        array: &Range<usize>,
        spans: &[Range<usize>],
        drop: usize,
        flex: bool,
    ) -> Vec<u8> {
        let mut out = body[..array.start].to_vec();
        out.extend(count_prefix(spans.len() - 1, flex));
        for (i, sp) in spans.iter().enumerate() {
            if i != drop {
                out.extend_from_slice(&body[sp.clone()]);
            }
        }
        out.extend_from_slice(&body[array.end..]);
        out
    }

    type ArraySpans = (Range<usize>, Vec<Range<usize>>);

    fn topic_spans(t: &Touches<'_>) -> ArraySpans {
        let array = t.topics_span.clone().expect("topics span");
        (array, t.topics.iter().map(|x| x.span.clone()).collect())
    }

    fn group_spans(t: &Touches<'_>) -> ArraySpans {
        let array = t.groups_span.clone().expect("groups span");
        (array, t.group_spans.clone())
    }

    fn config_spans(t: &Touches<'_>) -> ArraySpans {
        let array = t.configs_span.clone().expect("configs span");
        (array, t.configs.iter().map(|x| x.span.clone()).collect())
    }

    /// Cuts each entry of an array out in turn: the result must be exactly
    /// the crate's encoding of the request minus that entry, decode to it,
    /// and read back here with one entry fewer.
    fn check_cuts<R>(
        api: ApiKey,
        v: i16,
        req: &R,
        spans: fn(&Touches<'_>) -> ArraySpans,
        remove: impl Fn(&mut R, usize),
    ) where
        R: Encodable + Decodable + PartialEq + Debug + Clone,
    {
        let flex = flexible(api, v);
        let what = format!("{api:?} v{v}");
        let body = enc(req, v);
        assert_eq!(&dec::<R>(&body, v), req, "{what}: round trip");
        let t = read(api, v, &body);
        let (array, entries) = spans(&t);
        assert!(entries.len() >= 2, "{what}: needs two entries to cut");
        assert_tiles(&body, &array, &entries, flex, &what);
        for drop in 0..entries.len() {
            let cut_body = cut(&body, &array, &entries, drop, flex);
            let mut want = req.clone();
            remove(&mut want, drop);
            assert_eq!(dec::<R>(&cut_body, v), want, "{what}: without entry {drop}");
            assert_eq!(cut_body, enc(&want, v), "{what}: without entry {drop}");
            let t2 = read(api, v, &cut_body);
            let (array2, entries2) = spans(&t2);
            assert_eq!(entries2.len(), entries.len() - 1, "{what}");
            assert_tiles(&cut_body, &array2, &entries2, flex, &what);
        }
    }

    /// Names and partitions match, the entries tile the topic array, and each
    /// entry's bytes decode into the crate's entry.
    fn check_topic_array<E: Decodable + PartialEq + Debug>(
        api: ApiKey,
        v: i16,
        body: &[u8],
        t: &Touches<'_>,
        want: &[(&str, Vec<i32>)],
        entries: &[E],
    ) {
        let what = format!("{api:?} v{v}");
        assert_eq!(names(t), want.to_vec(), "{what}");
        let (array, spans) = topic_spans(t);
        assert_tiles(body, &array, &spans, flexible(api, v), &what);
        assert_eq!(spans.len(), entries.len(), "{what}");
        for (e, sp) in entries.iter().zip(&spans) {
            reparse(body, sp, v, e);
        }
    }

    /// Config resources match, tile their array, and each decodes alone.
    fn check_config_array<E: Decodable + PartialEq + Debug>(
        api: ApiKey,
        v: i16,
        body: &[u8],
        t: &Touches<'_>,
        want: &[(i8, &str)],
        entries: &[E],
    ) {
        let what = format!("{api:?} v{v}");
        let got: Vec<_> = t
            .configs
            .iter()
            .map(|c| (c.resource_type, c.name))
            .collect();
        assert_eq!(got, want.to_vec(), "{what}");
        let (array, spans) = config_spans(t);
        assert_tiles(body, &array, &spans, flexible(api, v), &what);
        assert_eq!(spans.len(), entries.len(), "{what}");
        for (e, sp) in entries.iter().zip(&spans) {
            reparse(body, sp, v, e);
        }
        assert!(t.topics.is_empty() && t.topics_span.is_none(), "{what}");
    }

    /// An unknown tagged field on an entry in flexible versions, so spans
    /// must cover tagged fields too.
    fn tag(v: i16, api: ApiKey) -> std::collections::BTreeMap<i32, Bytes> {
        let mut m = std::collections::BTreeMap::new();
        if flexible(api, v) {
            m.insert(7, Bytes::from_static(b"tagged"));
        }
        m
    }

    // ---- Produce and CreateTopics cuts ----

    fn produce_req() -> ProduceRequest {
        let part = |i: i32, records: Option<&'static [u8]>| {
            PartitionProduceData::default()
                .with_index(i)
                .with_records(records.map(Bytes::from_static))
        };
        ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(s("txn-1"))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(s("orders")))
                    .with_partition_data(vec![
                        part(0, Some(b"batch-0")),
                        part(3, None),
                        part(4, Some(b"")),
                    ]),
                TopicProduceData::default()
                    .with_name(TopicName(s("payments")))
                    .with_partition_data(vec![part(1, Some(b"batch-1"))]),
                TopicProduceData::default()
                    .with_name(TopicName(s("audit")))
                    .with_partition_data(vec![part(2, Some(b"x")), part(5, Some(b"yz"))]),
            ])
    }

    #[test]
    fn produce_cut_each_topic() {
        for v in 3..=12 {
            let req = produce_req();
            let body = enc(&req, v);
            let t = read(ApiKey::Produce, v, &body);
            check_topic_array(
                ApiKey::Produce,
                v,
                &body,
                &t,
                &[
                    ("orders", vec![0, 3, 4]),
                    ("payments", vec![1]),
                    ("audit", vec![2, 5]),
                ],
                &req.topic_data,
            );
            check_cuts(ApiKey::Produce, v, &req, topic_spans, |r, i| {
                r.topic_data.remove(i);
            });
        }
    }

    #[test]
    fn create_topics_spans_and_cuts() {
        for v in versions::<CreateTopicsRequest>() {
            let req = CreateTopicsRequest::default()
                .with_timeout_ms(5_000)
                .with_validate_only(true)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(TopicName(s("a")))
                        .with_num_partitions(3)
                        .with_replication_factor(2)
                        .with_configs(vec![
                            CreatableTopicConfig::default()
                                .with_name(s("cleanup.policy"))
                                .with_value(Some(s("compact"))),
                            CreatableTopicConfig::default()
                                .with_name(s("x"))
                                .with_value(None),
                        ]),
                    CreatableTopic::default()
                        .with_name(TopicName(s("b")))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                        .with_assignments(vec![
                            CreatableReplicaAssignment::default()
                                .with_partition_index(0)
                                .with_broker_ids(vec![BrokerId(1), BrokerId(2)]),
                            CreatableReplicaAssignment::default()
                                .with_partition_index(1)
                                .with_broker_ids(vec![BrokerId(2), BrokerId(3)]),
                        ])
                        .with_unknown_tagged_fields(tag(v, ApiKey::CreateTopics)),
                    CreatableTopic::default().with_name(TopicName(s("c"))),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::CreateTopics, v, &body);
            check_topic_array(
                ApiKey::CreateTopics,
                v,
                &body,
                &t,
                &[("a", vec![]), ("b", vec![]), ("c", vec![])],
                &req.topics,
            );
            check_cuts(ApiKey::CreateTopics, v, &req, topic_spans, |r, i| {
                r.topics.remove(i);
            });
        }
    }

    // ---- Offsets and transactions ----

    fn offset_commit_req(v: i16) -> OffsetCommitRequest {
        let part = |i: i32, meta: Option<&'static str>| {
            let p = OffsetCommitRequestPartition::default()
                .with_partition_index(i)
                .with_committed_offset(100 + i64::from(i))
                .with_committed_metadata(meta.map(s));
            if v >= 6 {
                p.with_committed_leader_epoch(3)
            } else {
                p
            }
        };
        let mut req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("g1")))
            .with_generation_id_or_member_epoch(5)
            .with_member_id(s("member-1"))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("orders")))
                    .with_partitions(vec![part(0, Some("m")), part(3, None), part(7, Some(""))]),
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("payments")))
                    .with_partitions(vec![part(1, None), part(2, Some("x"))])
                    .with_unknown_tagged_fields(tag(v, ApiKey::OffsetCommit)),
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("audit")))
                    .with_partitions(vec![part(9, None)]),
            ]);
        if v >= 7 {
            req = req.with_group_instance_id(Some(s("instance-1")));
        }
        if v <= 4 {
            req = req.with_retention_time_ms(60_000);
        }
        req
    }

    #[test]
    fn offset_commit_every_version() {
        for v in versions::<OffsetCommitRequest>() {
            let req = offset_commit_req(v);
            let body = enc(&req, v);
            let t = read(ApiKey::OffsetCommit, v, &body);
            assert_eq!(t.groups, vec!["g1"], "v{v}");
            assert!(t.transactional_ids.is_empty());
            check_topic_array(
                ApiKey::OffsetCommit,
                v,
                &body,
                &t,
                &[
                    ("orders", vec![0, 3, 7]),
                    ("payments", vec![1, 2]),
                    ("audit", vec![9]),
                ],
                &req.topics,
            );
            // Only the request's tagged fields follow the topic array.
            let flex = flexible(ApiKey::OffsetCommit, v);
            assert_eq!(
                t.topics_span.clone().expect("span").end,
                body.len() - usize::from(flex)
            );
            check_cuts(ApiKey::OffsetCommit, v, &req, topic_spans, |r, i| {
                r.topics.remove(i);
            });
        }
    }

    #[test]
    fn txn_offset_commit_every_version() {
        for v in versions::<TxnOffsetCommitRequest>() {
            let part = |i: i32| {
                let p = TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(i)
                    .with_committed_offset(10)
                    .with_committed_metadata(Some(s("meta")));
                if v >= 2 {
                    p.with_committed_leader_epoch(4)
                } else {
                    p
                }
            };
            let mut req = TxnOffsetCommitRequest::default()
                .with_transactional_id(TransactionalId(s("txn-1")))
                .with_group_id(GroupId(s("g1")))
                .with_producer_id(ProducerId(77))
                .with_producer_epoch(2)
                .with_topics(vec![
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("orders")))
                        .with_partitions(vec![part(0), part(1), part(5)]),
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("payments")))
                        .with_partitions(vec![part(2)])
                        .with_unknown_tagged_fields(tag(v, ApiKey::TxnOffsetCommit)),
                ]);
            if v >= 3 {
                req = req
                    .with_generation_id(8)
                    .with_member_id(s("member-1"))
                    .with_group_instance_id(Some(s("instance-1")));
            }
            let body = enc(&req, v);
            let t = read(ApiKey::TxnOffsetCommit, v, &body);
            assert_eq!(t.transactional_ids, vec!["txn-1"], "v{v}");
            assert_eq!(t.groups, vec!["g1"], "v{v}");
            check_topic_array(
                ApiKey::TxnOffsetCommit,
                v,
                &body,
                &t,
                &[("orders", vec![0, 1, 5]), ("payments", vec![2])],
                &req.topics,
            );
            check_cuts(ApiKey::TxnOffsetCommit, v, &req, topic_spans, |r, i| {
                r.topics.remove(i);
            });
        }
    }

    #[test]
    fn offset_fetch_single_group_versions() {
        for v in 1..=7 {
            let flex = flexible(ApiKey::OffsetFetch, v);
            let topics = vec![
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s("orders")))
                    .with_partition_indexes(vec![0, 1, 2]),
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s("payments")))
                    .with_partition_indexes(vec![4])
                    .with_unknown_tagged_fields(tag(v, ApiKey::OffsetFetch)),
            ];
            let mut req = OffsetFetchRequest::default()
                .with_group_id(GroupId(s("g1")))
                .with_topics(Some(topics.clone()));
            if v >= 7 {
                req = req.with_require_stable(true);
            }
            let body = enc(&req, v);
            let t = read(ApiKey::OffsetFetch, v, &body);
            assert_eq!(t.groups, vec!["g1"], "v{v}");
            assert!(!t.all_topics, "v{v}");
            assert_eq!(
                names(&t),
                vec![("orders", vec![0, 1, 2]), ("payments", vec![4])],
                "v{v}"
            );
            // Group id, topic count, then the topics back to back; only
            // require-stable (v7+) and tagged fields (v6+) follow.
            let first = str_bytes("g1", flex).len() + count_prefix(2, flex).len();
            assert_eq!(t.topics[0].span.start, first, "v{v}");
            assert_eq!(t.topics[0].span.end, t.topics[1].span.start, "v{v}");
            let trailing = usize::from(v >= 7) + usize::from(flex);
            assert_eq!(t.topics[1].span.end, body.len() - trailing, "v{v}");
            for (e, x) in topics.iter().zip(&t.topics) {
                reparse(&body, &x.span, v, e);
            }
            if v >= 2 {
                let all = OffsetFetchRequest::default()
                    .with_group_id(GroupId(s("g1")))
                    .with_topics(None);
                let body = enc(&all, v);
                let t = read(ApiKey::OffsetFetch, v, &body);
                assert!(t.all_topics, "v{v}");
                assert!(t.topics.is_empty());
                assert_eq!(t.groups, vec!["g1"]);
            }
        }
    }

    #[test]
    fn offset_fetch_multi_group_versions() {
        for v in 8..=OffsetFetchRequest::VERSIONS.max {
            let topic = |name: &'static str, parts: Vec<i32>| {
                OffsetFetchRequestTopics::default()
                    .with_name(TopicName(s(name)))
                    .with_partition_indexes(parts)
            };
            let group = |id: &'static str, topics: Option<Vec<OffsetFetchRequestTopics>>| {
                let g = OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s(id)))
                    .with_topics(topics);
                if v >= 9 {
                    g.with_member_id(Some(s("member-1"))).with_member_epoch(3)
                } else {
                    g
                }
            };
            let g1 = vec![
                topic("orders", vec![0, 1]),
                topic("payments", vec![3, 4, 5]),
            ];
            let g3 = vec![topic("audit", vec![7])];
            let named = OffsetFetchRequest::default()
                .with_groups(vec![
                    group("g1", Some(g1.clone())),
                    group("g3", Some(g3.clone())),
                ])
                .with_require_stable(true);
            let body = enc(&named, v);
            let t = read(ApiKey::OffsetFetch, v, &body);
            assert_eq!(t.groups, vec!["g1", "g3"], "v{v}");
            assert!(!t.all_topics, "v{v}");
            assert_eq!(
                names(&t),
                vec![
                    ("orders", vec![0, 1]),
                    ("payments", vec![3, 4, 5]),
                    ("audit", vec![7]),
                ],
                "v{v}"
            );
            assert_eq!(t.topics[0].span.end, t.topics[1].span.start, "v{v}");
            for (e, x) in g1.iter().chain(&g3).zip(&t.topics) {
                reparse(&body, &x.span, v, e);
            }

            let mixed = OffsetFetchRequest::default().with_groups(vec![
                group("g1", Some(g1.clone())),
                group("g2", None),
                group("g3", Some(g3.clone())),
            ]);
            let body = enc(&mixed, v);
            let t = read(ApiKey::OffsetFetch, v, &body);
            assert_eq!(t.groups, vec!["g1", "g2", "g3"], "v{v}");
            assert!(t.all_topics, "v{v}: one group asks for all topics");
            assert_eq!(names(&t).len(), 3, "v{v}");
        }
    }

    #[test]
    fn add_partitions_to_txn_named_versions() {
        for v in AddPartitionsToTxnRequest::VERSIONS.min..=3 {
            let req = AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(s("txn-1")))
                .with_v3_and_below_producer_id(ProducerId(9))
                .with_v3_and_below_producer_epoch(1)
                .with_v3_and_below_topics(vec![
                    AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(s("orders")))
                        .with_partitions(vec![0, 2, 4]),
                    AddPartitionsToTxnTopic::default()
                        .with_name(TopicName(s("payments")))
                        .with_partitions(vec![1])
                        .with_unknown_tagged_fields(tag(v, ApiKey::AddPartitionsToTxn)),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::AddPartitionsToTxn, v, &body);
            assert_eq!(t.transactional_ids, vec!["txn-1"], "v{v}");
            check_topic_array(
                ApiKey::AddPartitionsToTxn,
                v,
                &body,
                &t,
                &[("orders", vec![0, 2, 4]), ("payments", vec![1])],
                &req.v3_and_below_topics,
            );
            check_cuts(ApiKey::AddPartitionsToTxn, v, &req, topic_spans, |r, i| {
                r.v3_and_below_topics.remove(i);
            });
        }
        for v in 4..=AddPartitionsToTxnRequest::VERSIONS.max {
            assert!(matches!(
                touches(ApiKey::AddPartitionsToTxn, v, &[]),
                Err(ResourceError::TopicIdsOnly { max: 3, .. })
            ));
        }
    }

    #[test]
    fn delete_records_every_version() {
        for v in versions::<DeleteRecordsRequest>() {
            let part = |i: i32| {
                DeleteRecordsPartition::default()
                    .with_partition_index(i)
                    .with_offset(1_000 + i64::from(i))
            };
            let req = DeleteRecordsRequest::default()
                .with_timeout_ms(3_000)
                .with_topics(vec![
                    DeleteRecordsTopic::default()
                        .with_name(TopicName(s("orders")))
                        .with_partitions(vec![part(0), part(1), part(6)]),
                    DeleteRecordsTopic::default()
                        .with_name(TopicName(s("payments")))
                        .with_partitions(vec![part(2)])
                        .with_unknown_tagged_fields(tag(v, ApiKey::DeleteRecords)),
                    DeleteRecordsTopic::default()
                        .with_name(TopicName(s("audit")))
                        .with_partitions(vec![]),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::DeleteRecords, v, &body);
            check_topic_array(
                ApiKey::DeleteRecords,
                v,
                &body,
                &t,
                &[
                    ("orders", vec![0, 1, 6]),
                    ("payments", vec![2]),
                    ("audit", vec![]),
                ],
                &req.topics,
            );
            check_cuts(ApiKey::DeleteRecords, v, &req, topic_spans, |r, i| {
                r.topics.remove(i);
            });
        }
    }

    #[test]
    fn create_partitions_every_version_with_null_assignments() {
        for v in versions::<CreatePartitionsRequest>() {
            let brokers = |ids: &[i32]| {
                CreatePartitionsAssignment::default()
                    .with_broker_ids(ids.iter().copied().map(BrokerId).collect())
            };
            let req = CreatePartitionsRequest::default()
                .with_timeout_ms(1_000)
                .with_validate_only(true)
                .with_topics(vec![
                    CreatePartitionsTopic::default()
                        .with_name(TopicName(s("orders")))
                        .with_count(6)
                        .with_assignments(Some(vec![brokers(&[1, 2]), brokers(&[2, 3, 1])])),
                    CreatePartitionsTopic::default()
                        .with_name(TopicName(s("payments")))
                        .with_count(3)
                        .with_assignments(None)
                        .with_unknown_tagged_fields(tag(v, ApiKey::CreatePartitions)),
                    CreatePartitionsTopic::default()
                        .with_name(TopicName(s("audit")))
                        .with_count(2)
                        .with_assignments(Some(vec![])),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::CreatePartitions, v, &body);
            check_topic_array(
                ApiKey::CreatePartitions,
                v,
                &body,
                &t,
                &[("orders", vec![]), ("payments", vec![]), ("audit", vec![])],
                &req.topics,
            );
            check_cuts(ApiKey::CreatePartitions, v, &req, topic_spans, |r, i| {
                r.topics.remove(i);
            });
        }
    }

    #[test]
    fn offset_for_leader_epoch_every_version() {
        for v in versions::<OffsetForLeaderEpochRequest>() {
            let part = |i: i32| {
                OffsetForLeaderPartition::default()
                    .with_partition(i)
                    .with_current_leader_epoch(5)
                    .with_leader_epoch(4)
            };
            let mut req = OffsetForLeaderEpochRequest::default().with_topics(vec![
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(s("orders")))
                    .with_partitions(vec![part(0), part(3)]),
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(s("payments")))
                    .with_partitions(vec![part(1), part(2), part(8)])
                    .with_unknown_tagged_fields(tag(v, ApiKey::OffsetForLeaderEpoch)),
            ]);
            if v >= 3 {
                req = req.with_replica_id(BrokerId(-1));
            }
            let body = enc(&req, v);
            let t = read(ApiKey::OffsetForLeaderEpoch, v, &body);
            check_topic_array(
                ApiKey::OffsetForLeaderEpoch,
                v,
                &body,
                &t,
                &[("orders", vec![0, 3]), ("payments", vec![1, 2, 8])],
                &req.topics,
            );
            check_cuts(
                ApiKey::OffsetForLeaderEpoch,
                v,
                &req,
                topic_spans,
                |r, i| {
                    r.topics.remove(i);
                },
            );
        }
    }

    #[test]
    fn describe_producers_and_transactions() {
        for v in versions::<DescribeProducersRequest>() {
            let req = DescribeProducersRequest::default().with_topics(vec![
                dp::TopicRequest::default()
                    .with_name(TopicName(s("orders")))
                    .with_partition_indexes(vec![0, 1, 2]),
                dp::TopicRequest::default()
                    .with_name(TopicName(s("payments")))
                    .with_partition_indexes(vec![7])
                    .with_unknown_tagged_fields(tag(v, ApiKey::DescribeProducers)),
            ]);
            let body = enc(&req, v);
            let t = read(ApiKey::DescribeProducers, v, &body);
            check_topic_array(
                ApiKey::DescribeProducers,
                v,
                &body,
                &t,
                &[("orders", vec![0, 1, 2]), ("payments", vec![7])],
                &req.topics,
            );
            check_cuts(ApiKey::DescribeProducers, v, &req, topic_spans, |r, i| {
                r.topics.remove(i);
            });
        }
        for v in versions::<DescribeTransactionsRequest>() {
            let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(s("txn-1")),
                TransactionalId(s("txn-2")),
                TransactionalId(s("txn-3")),
            ]);
            let body = enc(&req, v);
            let t = read(ApiKey::DescribeTransactions, v, &body);
            assert_eq!(t.transactional_ids, vec!["txn-1", "txn-2", "txn-3"], "v{v}");
            assert!(t.topics.is_empty() && t.groups.is_empty());
        }
    }

    #[test]
    fn describe_topic_partitions_named_and_all() {
        for v in versions::<DescribeTopicPartitionsRequest>() {
            let req = DescribeTopicPartitionsRequest::default()
                .with_response_partition_limit(100)
                .with_cursor(Some(
                    dtp::Cursor::default()
                        .with_topic_name(TopicName(s("orders")))
                        .with_partition_index(2),
                ))
                .with_topics(vec![
                    dtp::TopicRequest::default().with_name(TopicName(s("orders"))),
                    dtp::TopicRequest::default()
                        .with_name(TopicName(s("payments")))
                        .with_unknown_tagged_fields(tag(v, ApiKey::DescribeTopicPartitions)),
                    dtp::TopicRequest::default().with_name(TopicName(s("audit"))),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::DescribeTopicPartitions, v, &body);
            assert!(!t.all_topics, "v{v}");
            check_topic_array(
                ApiKey::DescribeTopicPartitions,
                v,
                &body,
                &t,
                &[("orders", vec![]), ("payments", vec![]), ("audit", vec![])],
                &req.topics,
            );
            check_cuts(
                ApiKey::DescribeTopicPartitions,
                v,
                &req,
                topic_spans,
                |r, i| {
                    r.topics.remove(i);
                },
            );

            let all = DescribeTopicPartitionsRequest::default().with_topics(vec![]);
            let body = enc(&all, v);
            let t = read(ApiKey::DescribeTopicPartitions, v, &body);
            assert!(t.all_topics, "v{v}: empty list describes every topic");
            assert!(t.topics.is_empty());
            assert_eq!(t.topics_span, Some(0..1), "v{v}");
        }
    }

    // ---- Config resources ----

    #[test]
    fn describe_configs_every_version() {
        for v in versions::<DescribeConfigsRequest>() {
            let mut req = DescribeConfigsRequest::default()
                .with_include_synonyms(true)
                .with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("orders"))
                        .with_configuration_keys(Some(vec![
                            s("retention.ms"),
                            s("cleanup.policy"),
                        ])),
                    DescribeConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s("1"))
                        .with_configuration_keys(None)
                        .with_unknown_tagged_fields(tag(v, ApiKey::DescribeConfigs)),
                    DescribeConfigsResource::default()
                        .with_resource_type(8)
                        .with_resource_name(s("2"))
                        .with_configuration_keys(Some(vec![])),
                ]);
            if v >= 3 {
                req = req.with_include_documentation(true);
            }
            let body = enc(&req, v);
            let t = read(ApiKey::DescribeConfigs, v, &body);
            check_config_array(
                ApiKey::DescribeConfigs,
                v,
                &body,
                &t,
                &[(2, "orders"), (4, "1"), (8, "2")],
                &req.resources,
            );
            assert_eq!(t.configs_span.clone().expect("span").start, 0, "v{v}");
            check_cuts(ApiKey::DescribeConfigs, v, &req, config_spans, |r, i| {
                r.resources.remove(i);
            });
        }
    }

    #[test]
    fn alter_configs_every_version() {
        for v in versions::<AlterConfigsRequest>() {
            let cfg = |name: &'static str, value: Option<&'static str>| {
                ac::AlterableConfig::default()
                    .with_name(s(name))
                    .with_value(value.map(s))
            };
            let req = AlterConfigsRequest::default()
                .with_validate_only(true)
                .with_resources(vec![
                    ac::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("orders"))
                        .with_configs(vec![
                            cfg("retention.ms", Some("1000")),
                            cfg("cleanup.policy", None),
                        ]),
                    ac::AlterConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s("1"))
                        .with_configs(vec![cfg("log.cleaner.threads", Some("2"))])
                        .with_unknown_tagged_fields(tag(v, ApiKey::AlterConfigs)),
                    ac::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("payments"))
                        .with_configs(vec![]),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::AlterConfigs, v, &body);
            check_config_array(
                ApiKey::AlterConfigs,
                v,
                &body,
                &t,
                &[(2, "orders"), (4, "1"), (2, "payments")],
                &req.resources,
            );
            check_cuts(ApiKey::AlterConfigs, v, &req, config_spans, |r, i| {
                r.resources.remove(i);
            });
        }
    }

    #[test]
    fn incremental_alter_configs_every_version() {
        for v in versions::<IncrementalAlterConfigsRequest>() {
            let cfg = |name: &'static str, op: i8, value: Option<&'static str>| {
                iac::AlterableConfig::default()
                    .with_name(s(name))
                    .with_config_operation(op)
                    .with_value(value.map(s))
            };
            let req = IncrementalAlterConfigsRequest::default()
                .with_validate_only(false)
                .with_resources(vec![
                    iac::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("orders"))
                        .with_configs(vec![
                            cfg("retention.ms", 0, Some("1000")),
                            cfg("cleanup.policy", 1, None),
                            cfg("follower.replication.throttled.replicas", 2, Some("0:1")),
                        ]),
                    iac::AlterConfigsResource::default()
                        .with_resource_type(32)
                        .with_resource_name(s("g1"))
                        .with_configs(vec![cfg("consumer.session.timeout.ms", 0, Some("45000"))])
                        .with_unknown_tagged_fields(tag(v, ApiKey::IncrementalAlterConfigs)),
                    iac::AlterConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s(""))
                        .with_configs(vec![]),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::IncrementalAlterConfigs, v, &body);
            check_config_array(
                ApiKey::IncrementalAlterConfigs,
                v,
                &body,
                &t,
                &[(2, "orders"), (32, "g1"), (4, "")],
                &req.resources,
            );
            check_cuts(
                ApiKey::IncrementalAlterConfigs,
                v,
                &req,
                config_spans,
                |r, i| {
                    r.resources.remove(i);
                },
            );
        }
    }

    // ---- Groups ----

    /// Groups match, tile their array, and each entry is just the string.
    fn check_group_array(api: ApiKey, v: i16, body: &[u8], t: &Touches<'_>, want: &[&str]) {
        let what = format!("{api:?} v{v}");
        let flex = flexible(api, v);
        assert_eq!(t.groups, want.to_vec(), "{what}");
        let (array, spans) = group_spans(t);
        assert_eq!(array.start, 0, "{what}");
        assert_tiles(body, &array, &spans, flex, &what);
        for (g, sp) in want.iter().zip(&spans) {
            assert_eq!(&body[sp.clone()], &str_bytes(g, flex)[..], "{what}: {g}");
        }
    }

    #[test]
    fn group_arrays_spans_and_cuts() {
        let ids = || vec![GroupId(s("g1")), GroupId(s("group-two")), GroupId(s(""))];
        let want = ["g1", "group-two", ""];
        for v in versions::<DeleteGroupsRequest>() {
            let req = DeleteGroupsRequest::default().with_groups_names(ids());
            let body = enc(&req, v);
            let t = read(ApiKey::DeleteGroups, v, &body);
            check_group_array(ApiKey::DeleteGroups, v, &body, &t, &want);
            assert_eq!(t.groups_span, Some(0..body.len() - usize::from(v >= 2)));
            check_cuts(ApiKey::DeleteGroups, v, &req, group_spans, |r, i| {
                r.groups_names.remove(i);
            });
        }
        for v in versions::<DescribeGroupsRequest>() {
            let req = DescribeGroupsRequest::default()
                .with_groups(ids())
                .with_include_authorized_operations(v >= 3);
            let body = enc(&req, v);
            let t = read(ApiKey::DescribeGroups, v, &body);
            check_group_array(ApiKey::DescribeGroups, v, &body, &t, &want);
            check_cuts(ApiKey::DescribeGroups, v, &req, group_spans, |r, i| {
                r.groups.remove(i);
            });
        }
        for v in versions::<ConsumerGroupDescribeRequest>() {
            let req = ConsumerGroupDescribeRequest::default()
                .with_group_ids(ids())
                .with_include_authorized_operations(true);
            let body = enc(&req, v);
            let t = read(ApiKey::ConsumerGroupDescribe, v, &body);
            check_group_array(ApiKey::ConsumerGroupDescribe, v, &body, &t, &want);
            check_cuts(
                ApiKey::ConsumerGroupDescribe,
                v,
                &req,
                group_spans,
                |r, i| {
                    r.group_ids.remove(i);
                },
            );
        }
    }

    #[test]
    fn offset_delete_group_and_topics() {
        for v in versions::<OffsetDeleteRequest>() {
            let parts = |ids: &[i32]| {
                ids.iter()
                    .map(|&i| OffsetDeleteRequestPartition::default().with_partition_index(i))
                    .collect::<Vec<_>>()
            };
            let req = OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("g1")))
                .with_topics(vec![
                    OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(s("orders")))
                        .with_partitions(parts(&[0, 1, 2])),
                    OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(s("payments")))
                        .with_partitions(parts(&[5])),
                ]);
            let body = enc(&req, v);
            let t = read(ApiKey::OffsetDelete, v, &body);
            assert_eq!(t.groups, vec!["g1"], "v{v}");
            check_topic_array(
                ApiKey::OffsetDelete,
                v,
                &body,
                &t,
                &[("orders", vec![0, 1, 2]), ("payments", vec![5])],
                &req.topics,
            );
            check_cuts(ApiKey::OffsetDelete, v, &req, topic_spans, |r, i| {
                r.topics.remove(i);
            });
        }
    }

    // ---- Metadata ----

    #[test]
    fn metadata_spans_auto_create_byte_and_ids() {
        // A topic named by id only; the crate's Uuid type is reached by
        // decoding (id bytes, null compact name, no tagged fields).
        let mut raw: Vec<u8> = (1..=16).collect();
        raw.extend([0, 0]);
        let by_id: MetadataRequestTopic = dec(&raw, 12);
        assert!(by_id.name.is_none());

        for v in versions::<MetadataRequest>() {
            let flex = flexible(ApiKey::Metadata, v);
            let named =
                |n: &'static str| MetadataRequestTopic::default().with_name(Some(TopicName(s(n))));
            let mut req = MetadataRequest::default().with_topics(Some(vec![
                named("orders"),
                named("payments"),
                named("audit"),
            ]));
            if v >= 8 {
                req = req.with_include_topic_authorized_operations(true);
            }
            let body = enc(&req, v);
            let t = read(ApiKey::Metadata, v, &body);
            assert!(!t.all_topics && !t.topics_by_id, "v{v}");
            check_topic_array(
                ApiKey::Metadata,
                v,
                &body,
                &t,
                &[("orders", vec![]), ("payments", vec![]), ("audit", vec![])],
                req.topics.as_deref().expect("topics"),
            );
            let array = t.topics_span.clone().expect("span");
            assert_eq!(array.start, 0);
            if v >= 4 {
                // The byte right after the topic array says whether missing
                // topics may be created; flipping it flips just that field.
                let at = t.auto_create_at.expect("auto create offset");
                assert_eq!(at, array.end, "v{v}");
                assert_eq!(body[at], 1, "v{v}");
                assert!(t.allow_auto_topic_creation);
                let mut flipped = body.clone();
                flipped[at] = 0;
                let want = req.clone().with_allow_auto_topic_creation(false);
                assert_eq!(dec::<MetadataRequest>(&flipped, v), want, "v{v}");
                assert_eq!(flipped, enc(&want, v), "v{v}");
                let t2 = read(ApiKey::Metadata, v, &flipped);
                assert!(!t2.allow_auto_topic_creation, "v{v}");
                assert_eq!(t2.auto_create_at, Some(at));
            } else {
                assert_eq!(t.auto_create_at, None, "v{v}");
                assert!(t.allow_auto_topic_creation, "v{v}");
                assert_eq!(array.end, body.len(), "v{v}");
            }
            check_cuts(ApiKey::Metadata, v, &req, topic_spans, |r, i| {
                r.topics.as_mut().expect("topics").remove(i);
            });

            if v >= 10 {
                let mixed = MetadataRequest::default()
                    .with_allow_auto_topic_creation(false)
                    .with_topics(Some(vec![named("orders"), by_id.clone(), named("audit")]));
                let body = enc(&mixed, v);
                let t = read(ApiKey::Metadata, v, &body);
                assert!(t.topics_by_id, "v{v}");
                assert!(!t.all_topics && !t.allow_auto_topic_creation, "v{v}");
                assert_eq!(names(&t), vec![("orders", vec![]), ("audit", vec![])]);
                // The id-only entry (16-byte id, null name, tags) sits between.
                assert_eq!(t.topics[1].span.start - t.topics[0].span.end, 18, "v{v}");
                reparse(
                    &body,
                    &(t.topics[0].span.end..t.topics[1].span.start),
                    v,
                    &by_id,
                );
                let array = t.topics_span.clone().expect("span");
                assert_eq!(t.topics[0].span.start, count_prefix(3, flex).len());
                assert_eq!(t.topics[1].span.end, array.end);
                assert_eq!(t.auto_create_at, Some(array.end));
                assert_eq!(body[array.end], 0);
            }
        }
    }

    // ---- Listings ----

    #[test]
    fn listings_touch_nothing() {
        for v in versions::<ListGroupsRequest>() {
            let mut req = ListGroupsRequest::default();
            if v >= 4 {
                req = req.with_states_filter(vec![s("Stable"), s("Empty")]);
            }
            if v >= 5 {
                req = req.with_types_filter(vec![s("consumer")]);
            }
            let body = enc(&req, v);
            assert_eq!(
                read(ApiKey::ListGroups, v, &body),
                Touches::default(),
                "v{v}"
            );
        }
        for v in versions::<ListTransactionsRequest>() {
            let mut req = ListTransactionsRequest::default()
                .with_state_filters(vec![s("Ongoing")])
                .with_producer_id_filters(vec![ProducerId(3)]);
            if v >= 1 {
                req = req.with_duration_filter(60_000);
            }
            if v >= 2 {
                req = req.with_transactional_id_pattern(Some(s("txn-.*")));
            }
            let body = enc(&req, v);
            assert_eq!(
                read(ApiKey::ListTransactions, v, &body),
                Touches::default(),
                "v{v}"
            );
        }
    }

    // ---- Hostile counts ----

    /// Asserts `body` is refused as a wire error (not a panic or allocation).
    fn refused(api: ApiKey, v: i16, body: &[u8]) {
        match touches(api, v, body) {
            Err(ResourceError::Wire { .. }) => {}
            other => panic!("{api:?} v{v}: expected a wire error, got {other:?}"),
        }
    }

    #[test]
    fn hostile_counts_in_new_apis_are_refused() {
        const HUGE_I32: [u8; 4] = [0x7f, 0xff, 0xff, 0xff];
        const NEG_I32: [u8; 4] = [0xff, 0xff, 0xff, 0xfe];
        // Largest 5-byte varint Kafka writes: count 2^32 - 2.
        const HUGE_VARINT: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];

        // OffsetCommit v2: group "", generation, member "", retention, topics.
        let head = [&[0, 0][..], &[0; 4], &[0, 0], &[0; 8]].concat();
        refused(ApiKey::OffsetCommit, 2, &[&head[..], &HUGE_I32].concat());
        refused(ApiKey::OffsetCommit, 2, &[&head[..], &NEG_I32].concat());
        // ... and one topic claiming 2^31-1 partitions.
        let one_topic = [&head[..], &[0, 0, 0, 1], &str_bytes("t", false), &HUGE_I32].concat();
        refused(ApiKey::OffsetCommit, 2, &one_topic);
        // OffsetCommit v8 (flexible): group, generation, member, instance, topics.
        let head = [&[1][..], &[0; 4], &[1], &[0]].concat();
        refused(ApiKey::OffsetCommit, 8, &[&head[..], &HUGE_VARINT].concat());

        // OffsetFetch v8: a huge group array.
        refused(ApiKey::OffsetFetch, 8, &HUGE_VARINT);
        // DescribeConfigs v4 and AlterConfigs v0: huge resource arrays.
        refused(ApiKey::DescribeConfigs, 4, &HUGE_VARINT);
        refused(ApiKey::AlterConfigs, 0, &HUGE_I32);
        // IncrementalAlterConfigs v0: one resource claiming 2^31-1 configs.
        let res = [&[2][..], &str_bytes("t", false), &HUGE_I32].concat();
        refused(
            ApiKey::IncrementalAlterConfigs,
            0,
            &[&[0, 0, 0, 1][..], &res].concat(),
        );
        // DeleteGroups, DescribeTransactions, DescribeTopicPartitions.
        refused(ApiKey::DeleteGroups, 0, &HUGE_I32);
        refused(ApiKey::DescribeTransactions, 0, &HUGE_VARINT);
        refused(ApiKey::DescribeTopicPartitions, 0, &HUGE_VARINT);
        // CreatePartitions v0: one topic whose assignment claims 2^31-1
        // brokers (skipped as count * 4 bytes), then a huge assignment array.
        let topic = [&[0, 0, 0, 1][..], &str_bytes("t", false), &[0, 0, 0, 3]].concat();
        let brokers = [&topic[..], &[0, 0, 0, 1], &HUGE_I32].concat();
        refused(ApiKey::CreatePartitions, 0, &brokers);
        // A broker count that fits the bytes left but not count * 4 of them.
        let short = [&topic[..], &[0, 0, 0, 1], &[0, 0, 0, 4], &[0; 8]].concat();
        refused(ApiKey::CreatePartitions, 0, &short);
        refused(
            ApiKey::CreatePartitions,
            0,
            &[&topic[..], &HUGE_I32].concat(),
        );
        // DeleteRecords v2: one topic claiming 2^32-2 partitions.
        let dr = [&[2][..], &str_bytes("t", true), &HUGE_VARINT].concat();
        refused(ApiKey::DeleteRecords, 2, &dr);
    }
}
