//! The allow-list of Kafka APIs and versions Custos forwards.
//!
//! A security gateway fails closed: an API it does not know could carry data
//! past every stage, so Custos forwards only the client-facing APIs listed here,
//! at versions the `kafka-protocol` crate can decode (a stage may need to read
//! any of them). ApiVersions answers advertise the intersection of this list
//! and what the broker supports; anything else is refused.
//!
//! Deliberately absent: broker-to-broker and controller APIs (a client has no
//! business sending them), SASL and delegation tokens (clients authenticate to
//! Custos, not through it), DescribeQuorum (its answer names controller
//! addresses Custos does not map), and the share-group state apis brokers
//! send each other (KIP-932).

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

/// Client-facing APIs Custos forwards.
pub const FORWARDED: &[ApiKey] = &[
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::Metadata,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::SyncGroup,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::ApiVersions,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::DeleteRecords,
    ApiKey::InitProducerId,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::AddPartitionsToTxn,
    ApiKey::AddOffsetsToTxn,
    ApiKey::EndTxn,
    ApiKey::TxnOffsetCommit,
    ApiKey::DescribeAcls,
    ApiKey::CreateAcls,
    ApiKey::DeleteAcls,
    ApiKey::DescribeConfigs,
    ApiKey::AlterConfigs,
    ApiKey::AlterReplicaLogDirs,
    ApiKey::DescribeLogDirs,
    ApiKey::CreatePartitions,
    ApiKey::DeleteGroups,
    ApiKey::ElectLeaders,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::AlterPartitionReassignments,
    ApiKey::ListPartitionReassignments,
    ApiKey::OffsetDelete,
    ApiKey::DescribeClientQuotas,
    ApiKey::AlterClientQuotas,
    ApiKey::DescribeUserScramCredentials,
    ApiKey::AlterUserScramCredentials,
    ApiKey::UpdateFeatures,
    ApiKey::DescribeCluster,
    ApiKey::DescribeProducers,
    ApiKey::DescribeTransactions,
    ApiKey::ListTransactions,
    ApiKey::ConsumerGroupHeartbeat,
    ApiKey::ConsumerGroupDescribe,
    ApiKey::GetTelemetrySubscriptions,
    ApiKey::PushTelemetry,
    ApiKey::ListConfigResources,
    ApiKey::DescribeTopicPartitions,
    ApiKey::ShareGroupHeartbeat,
    ApiKey::ShareGroupDescribe,
    ApiKey::ShareFetch,
    ApiKey::ShareAcknowledge,
    ApiKey::DescribeShareGroupOffsets,
    ApiKey::AlterShareGroupOffsets,
    ApiKey::DeleteShareGroupOffsets,
];

/// Versions of `key` Custos accepts, or `None` when the API is refused.
pub fn allowed(key: ApiKey) -> Option<VersionRange> {
    FORWARDED.contains(&key).then(|| key.valid_versions())
}

/// Versions of a raw api key Custos accepts, or `None` when it is refused.
pub fn allowed_raw(api_key: i16) -> Option<(ApiKey, VersionRange)> {
    let key = ApiKey::try_from(api_key).ok()?;
    allowed(key).map(|r| (key, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_sasl_and_unknown_apis() {
        for k in [
            ApiKey::SaslHandshake,
            ApiKey::SaslAuthenticate,
            ApiKey::WriteTxnMarkers,
            ApiKey::Envelope,
            ApiKey::Vote,
            ApiKey::BrokerHeartbeat,
            ApiKey::DescribeQuorum,
            ApiKey::CreateDelegationToken,
            ApiKey::ReadShareGroupState,
            ApiKey::InitializeShareGroupState,
        ] {
            assert!(allowed(k).is_none(), "{k:?} must be refused");
        }
        assert!(allowed_raw(9999).is_none());
        assert!(allowed_raw(-1).is_none());
    }

    #[test]
    fn client_apis_are_forwarded_at_decodable_versions() {
        let produce = allowed(ApiKey::Produce).expect("produce");
        assert_eq!(produce.max, ApiKey::Produce.valid_versions().max);
        assert!(allowed(ApiKey::ConsumerGroupHeartbeat).is_some());
        assert!(allowed_raw(18).is_some(), "ApiVersions");
    }
}
