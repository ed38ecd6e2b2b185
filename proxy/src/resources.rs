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
        | ApiKey::ConsumerGroupHeartbeat
        | ApiKey::OffsetDelete => {
            t.groups.push(r.str("group id").map_err(wire)?);
        }
        ApiKey::DescribeGroups | ApiKey::DeleteGroups | ApiKey::ConsumerGroupDescribe => {
            let n = r.array_len("groups").map_err(wire)?.unwrap_or(0);
            for _ in 0..n {
                t.groups.push(r.str("group id").map_err(wire)?);
            }
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
            let n = r.array_len("topic names").map_err(wire)?.unwrap_or(0);
            for _ in 0..n {
                let start = r.position();
                let name = r.str("topic name").map_err(wire)?;
                t.topics.push(TopicRef {
                    name,
                    partitions: vec![],
                    span: start..r.position(),
                });
            }
        }
        ApiKey::CreateTopics => create_topics(&mut r, &mut t).map_err(wire)?,
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
            t.topics.push(TopicRef {
                name,
                partitions,
                span: entry..r.position(),
            });
        }
    }
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
                if let Some(name) = name {
                    t.topics.push(TopicRef {
                        name,
                        partitions: vec![],
                        span: entry..r.position(),
                    });
                }
            }
        }
    }
    t.topics_span = Some(start..r.position());
    t.allow_auto_topic_creation = if version >= 4 {
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
            r.skip("broker ids", nb * 4)?;
            r.tagged_fields()?;
        }
        let nc = r.array_len("configs")?.unwrap_or(0);
        for _ in 0..nc {
            r.str("config name")?;
            r.nullable_str("config value")?;
            r.tagged_fields()?;
        }
        r.tagged_fields()?;
        t.topics.push(TopicRef {
            name,
            partitions: vec![],
            span: entry..r.position(),
        });
    }
    t.topics_span = Some(start..r.position());
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Differential tests: requests encoded by the `kafka-protocol` crate at
    //! every version, read back here, must name the same resources.

    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

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
            let mut want = vec![("orders", vec![2, 5])];
            if v >= 7 {
                want.push(("old", vec![9]));
            }
            assert_eq!(names(&t), want, "v{v}");
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
}
