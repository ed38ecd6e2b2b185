//! ApiVersions answers advertise only what Custos forwards.
//!
//! Clients choose api versions from this answer, so it is where the allow-list
//! of [`crate::versions`] becomes visible: apis Custos refuses disappear, and
//! each remaining range is the intersection of the broker's and Custos's.

use async_trait::async_trait;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ResponseKind};
use kafka_protocol::protocol::VersionRange;

use crate::message::Response;
use crate::pipeline::{Blame, SessionInfo, Stage, StageError};
use crate::versions;

/// Narrows ApiVersions answers to the allow-list.
pub struct ApiVersionsFilter {
    /// Authorization is on: cap apis whose newer versions name topics by id.
    pub name_based: bool,
}

/// Caps apis whose newer versions name topics only by id (or are broker-only)
/// at the last version Custos can authorize by name.
pub fn cap_name_based(list: &mut [ApiVersion]) {
    for v in list {
        let Ok(key) = ApiKey::try_from(v.api_key) else {
            continue;
        };
        if let Some(max) = crate::resources::name_based_max_version(key) {
            v.max_version = v.max_version.min(max);
        }
    }
}

/// Drops apis Custos refuses and intersects the rest with Custos's ranges.
pub fn narrow(list: &mut Vec<ApiVersion>) {
    list.retain_mut(|v| {
        let Some((_, ours)) = versions::allowed_raw(v.api_key) else {
            return false;
        };
        let both = ours.intersect(&VersionRange {
            min: v.min_version,
            max: v.max_version,
        });
        if both.is_empty() {
            return false;
        }
        v.min_version = both.min;
        v.max_version = both.max;
        true
    });
}

const NAME: &str = "api_versions";

#[async_trait]
impl Stage for ApiVersionsFilter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn response_api_keys(&self) -> &[ApiKey] {
        &[ApiKey::ApiVersions]
    }

    async fn on_response(
        &self,
        _session: &SessionInfo,
        response: &mut Response,
    ) -> Result<(), StageError> {
        let body = response
            .body_mut()
            .map_err(|e| StageError::codec(NAME, Blame::Upstream, e))?;
        if let ResponseKind::ApiVersions(av) = body {
            narrow(&mut av.api_keys);
            if self.name_based {
                cap_name_based(&mut av.api_keys);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::ApiVersionsResponse;

    fn session() -> SessionInfo {
        SessionInfo::new(
            1,
            "127.0.0.1:1".parse().expect("addr"),
            Some(1),
            false,
            crate::auth::Identity::anonymous(),
        )
    }

    fn av(key: i16, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key)
            .with_min_version(min)
            .with_max_version(max)
    }

    async fn filter(version: i16, body: ApiVersionsResponse) -> ApiVersionsResponse {
        let raw = Response::encode_local(
            ApiKey::ApiVersions,
            version,
            5,
            &ResponseKind::ApiVersions(body),
        )
        .expect("encode");
        let mut r = Response::parse(raw, ApiKey::ApiVersions, version).expect("parse");
        ApiVersionsFilter { name_based: false }
            .on_response(&session(), &mut r)
            .await
            .expect("filter");
        let out: Bytes = r.into_bytes().expect("bytes");
        let mut back = Response::parse(out, ApiKey::ApiVersions, version).expect("reparse");
        assert_eq!(back.correlation_id, 5);
        match back.body().expect("body") {
            ResponseKind::ApiVersions(b) => b.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn drops_refused_apis_and_intersects_ranges() {
        let produce_max = ApiKey::Produce.valid_versions().max;
        let broker = ApiVersionsResponse::default().with_api_keys(vec![
            av(0, 3, produce_max + 5), // Produce: broker newer than Custos
            av(3, 0, 4),               // Metadata: broker older
            av(17, 0, 1),              // SaslHandshake: refused
            av(4, 0, 7),               // LeaderAndIsr: internal
            av(9999, 0, 1),            // unknown
        ]);
        let got = filter(3, broker).await;
        let keys: Vec<_> = got
            .api_keys
            .iter()
            .map(|v| (v.api_key, v.min_version, v.max_version))
            .collect();
        assert_eq!(keys, vec![(0, 3, produce_max), (3, 0, 4)]);
    }

    #[tokio::test]
    async fn unsupported_version_answer_is_read_as_version_zero() {
        let broker = ApiVersionsResponse::default()
            .with_error_code(crate::message::UNSUPPORTED_VERSION)
            .with_api_keys(vec![av(18, 0, 4), av(17, 0, 1)]);
        // The broker lays out the error answer in version 0 whatever was asked.
        let raw = Response::encode_local(
            ApiKey::ApiVersions,
            0,
            5,
            &ResponseKind::ApiVersions(broker),
        )
        .expect("encode");
        let mut r = Response::parse(raw, ApiKey::ApiVersions, 9).expect("parse");
        assert_eq!(r.body_version(), 0);
        ApiVersionsFilter { name_based: false }
            .on_response(&session(), &mut r)
            .await
            .expect("filter");
        match r.body().expect("body") {
            ResponseKind::ApiVersions(b) => {
                assert_eq!(b.api_keys.len(), 1);
                assert_eq!(b.api_keys[0].api_key, 18);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
