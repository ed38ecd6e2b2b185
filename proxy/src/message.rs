//! Requests and responses as they cross Custos: raw bytes first, decoded on demand.
//!
//! Every request header is decoded (api key, version, correlation id, client
//! id): Custos needs it to route, refuse and match responses. Bodies stay the
//! `Bytes` they arrived in unless a stage asks for them; a body that a stage
//! only reads is never re-encoded, and one it changed is re-encoded behind the
//! original header bytes.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, VersionRange};

use crate::versions;

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// Why a request frame was refused before any stage saw it.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RequestError {
    /// Too short to hold a request header.
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    /// An api key Kafka does not define, or Custos does not forward.
    #[error("api key {0} is not allowed through Custos")]
    RefusedApiKey(i16),
    /// A version outside what Custos accepts for that api.
    #[error("{key:?} version {version} is outside the accepted range {range}")]
    UnsupportedVersion {
        /// The api.
        key: ApiKey,
        /// Version asked for.
        version: i16,
        /// Versions accepted.
        range: VersionRange,
    },
    /// The header or body did not decode.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which part.
        what: &'static str,
        /// Decoder's reason.
        why: String,
    },
}

/// Why a body could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
#[error("{api:?} v{version} body: {why}")]
pub struct CodecError {
    /// The api.
    pub api: ApiKey,
    /// The version.
    pub version: i16,
    /// Decoder's or encoder's reason.
    pub why: String,
}

/// A change to make to the broker's answer when it arrives, decided while the
/// request was handled (e.g. error entries for the topics a stage cut out).
pub type Amend = Box<dyn FnOnce(&mut ResponseKind) -> Result<(), String> + Send>;

/// The amendments a request carries to its response, in the order made.
#[derive(Default)]
pub struct Amends(pub Vec<Amend>);

impl std::fmt::Debug for Amends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Amends({})", self.0.len())
    }
}

/// A client request on its way to the broker.
#[derive(Debug)]
pub struct Request {
    /// The api.
    pub api_key: ApiKey,
    /// The decoded header.
    pub header: RequestHeader,
    /// Changes to apply to the broker's answer to this request.
    pub amends: Amends,
    /// Audit records this request's handling produced.
    pub audit: crate::audit_trail::AuditNotes,
    raw: Bytes,
    body_offset: usize,
    body: Option<RequestKind>,
    dirty: bool,
}

impl Request {
    /// Decodes the header of a request frame and checks the allow-list.
    pub fn parse(raw: Bytes) -> Result<Request, RequestError> {
        if raw.len() < 8 {
            return Err(RequestError::TooShort(raw.len()));
        }
        let api_key_raw = i16::from_be_bytes([raw[0], raw[1]]);
        let version = i16::from_be_bytes([raw[2], raw[3]]);
        let (api_key, range) =
            versions::allowed_raw(api_key_raw).ok_or(RequestError::RefusedApiKey(api_key_raw))?;
        // ApiVersions is the one api a client may send at a version the server
        // does not know: the broker answers with its list at version 0, which
        // is how clients negotiate (KIP-511).
        let version_ok = if api_key == ApiKey::ApiVersions {
            version >= 0
        } else {
            version >= range.min && version <= range.max
        };
        if !version_ok {
            return Err(RequestError::UnsupportedVersion {
                key: api_key,
                version,
                range,
            });
        }
        let header_version = api_key.request_header_version(version.min(range.max));
        let mut buf = raw.clone();
        let header = RequestHeader::decode(&mut buf, header_version).map_err(|e| {
            RequestError::Malformed {
                what: "request header",
                why: e.to_string(),
            }
        })?;
        let body_offset = raw.len() - buf.remaining();
        Ok(Request {
            api_key,
            header,
            amends: Amends::default(),
            audit: crate::audit_trail::AuditNotes::default(),
            raw,
            body_offset,
            body: None,
            dirty: false,
        })
    }

    /// The request's api version.
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }

    /// The correlation id the response will carry.
    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }

    /// The whole frame as received (or as re-encoded, once `into_bytes` ran).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether the broker will answer: a Produce with `acks=0` gets no response.
    pub fn expects_response(&self) -> Result<bool, RequestError> {
        if self.api_key != ApiKey::Produce {
            return Ok(true);
        }
        if let Some(RequestKind::Produce(p)) = &self.body {
            return Ok(p.acks != 0);
        }
        let acks = produce_acks(&self.raw[self.body_offset..], self.version()).ok_or(
            RequestError::Malformed {
                what: "produce request",
                why: "too short to hold acks".into(),
            },
        )?;
        Ok(acks != 0)
    }

    /// The body bytes as they will be forwarded (after the header).
    pub fn body_bytes(&self) -> &[u8] {
        &self.raw[self.body_offset..]
    }

    /// The header bytes as received, which every forwarded form keeps.
    pub fn head(&self) -> &[u8] {
        &self.raw[..self.body_offset]
    }

    /// Replaces the whole frame with one a stage built from [`Request::head`]
    /// and a new body, saving [`Request::replace_body`]'s copy; refused when
    /// `raw` does not start with the header unchanged. Drops any decoded body.
    pub fn replace_frame(&mut self, raw: Bytes) -> Result<(), RequestError> {
        if raw.get(..self.body_offset) != Some(self.head()) {
            return Err(RequestError::Malformed {
                what: "rebuilt request",
                why: "the request header was not kept".into(),
            });
        }
        self.raw = raw;
        self.body = None;
        self.dirty = false;
        Ok(())
    }

    /// Replaces the body with bytes a stage built (e.g. with entries cut out),
    /// keeping the original header bytes. Drops any decoded body.
    pub fn replace_body(&mut self, body: &[u8]) {
        let mut out = BytesMut::with_capacity(self.body_offset + body.len());
        out.extend_from_slice(&self.raw[..self.body_offset]);
        out.extend_from_slice(body);
        self.raw = out.freeze();
        self.body = None;
        self.dirty = false;
    }

    /// The decoded body; decoded on first use, not marked as changed.
    ///
    /// The decoder sizes vectors from counts in the frame, so only call this
    /// on bodies already walked by the bounded reader (`resources::touches`).
    pub fn body(&mut self) -> Result<&RequestKind, CodecError> {
        self.decode()?;
        self.body
            .as_ref()
            .ok_or_else(|| self.codec_err("not decoded"))
    }

    /// The decoded body for changing; the request is re-encoded when forwarded.
    pub fn body_mut(&mut self) -> Result<&mut RequestKind, CodecError> {
        self.decode()?;
        self.dirty = true;
        let err = self.codec_err("not decoded");
        self.body.as_mut().ok_or(err)
    }

    fn decode(&mut self) -> Result<(), CodecError> {
        if self.body.is_none() {
            let mut buf = self.raw.slice(self.body_offset..);
            let body = RequestKind::decode(self.api_key, &mut buf, self.version())
                .map_err(|e| self.codec_err(&e.to_string()))?;
            self.body = Some(body);
        }
        Ok(())
    }

    fn codec_err(&self, why: &str) -> CodecError {
        CodecError {
            api: self.api_key,
            version: self.version(),
            why: why.to_string(),
        }
    }

    /// The frame to forward: the original bytes, or the header bytes followed
    /// by the re-encoded body when a stage changed it.
    pub fn into_bytes(self) -> Result<Bytes, CodecError> {
        match (&self.body, self.dirty) {
            (Some(body), true) => {
                let mut out = BytesMut::with_capacity(self.raw.len());
                out.extend_from_slice(&self.raw[..self.body_offset]);
                body.encode(&mut out, self.version())
                    .map_err(|e| self.codec_err(&e.to_string()))?;
                Ok(out.freeze())
            }
            _ => Ok(self.raw),
        }
    }
}

/// Reads `acks` from a Produce body without decoding its records.
pub fn produce_acks(body: &[u8], version: i16) -> Option<i16> {
    // transactional_id is a compact nullable string from v9 (flexible versions).
    let mut r = crate::wire::Reader::new(body, version >= 9);
    r.nullable_bytes_str("transactional id").ok()?;
    r.i16("acks").ok()
}

/// Whether `head` (a request without its length prefix) reaches past its
/// client id. Decoding a header cut short inside it fails in `kafka-protocol`
/// with an `anyhow` error, which captures a backtrace when `RUST_BACKTRACE`
/// is set: tens of microseconds for every partial look at a request.
pub fn holds_client_id(head: &[u8]) -> bool {
    // api key, version and correlation id, then the client id: a classic
    // nullable string in every header version.
    let mut r = crate::wire::Reader::new(head.get(8..).unwrap_or_default(), false);
    r.nullable_bytes_str("client id").is_ok() && r.remaining() > 0
}

/// A broker response on its way to the client.
#[derive(Debug)]
pub struct Response {
    /// The api of the request it answers.
    pub api_key: ApiKey,
    /// The version of the request it answers.
    pub api_version: i16,
    /// Its correlation id.
    pub correlation_id: i32,
    /// Audit records of the exchange (the request's, plus what response
    /// stages add).
    pub audit: crate::audit_trail::AuditNotes,
    raw: Bytes,
    body_offset: usize,
    decode_version: i16,
    body: Option<ResponseKind>,
    dirty: bool,
    /// The frame in pieces laid end to end, when a stage spliced new bytes
    /// between slices of `raw` (which is then stale until flattened).
    parts: Option<Vec<Bytes>>,
}

impl Response {
    /// Decodes the header of a response to a request of `api_key` at `api_version`.
    pub fn parse(raw: Bytes, api_key: ApiKey, api_version: i16) -> Result<Response, CodecError> {
        let err = |why: String| CodecError {
            api: api_key,
            version: api_version,
            why,
        };
        let range = api_key.valid_versions();
        let header_version = api_key.response_header_version(api_version.min(range.max));
        let mut buf = raw.clone();
        let header = ResponseHeader::decode(&mut buf, header_version)
            .map_err(|e| err(format!("response header: {e}")))?;
        let body_offset = raw.len() - buf.remaining();
        // A broker that does not support the ApiVersions version asked for
        // answers UNSUPPORTED_VERSION in the version 0 layout.
        let mut decode_version = api_version;
        if api_key == ApiKey::ApiVersions {
            let body = &raw[body_offset..];
            let unsupported =
                body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) == UNSUPPORTED_VERSION;
            if unsupported || api_version > range.max {
                decode_version = 0;
            }
        }
        Ok(Response {
            api_key,
            api_version,
            correlation_id: header.correlation_id,
            audit: crate::audit_trail::AuditNotes::default(),
            raw,
            body_offset,
            decode_version,
            body: None,
            dirty: false,
            parts: None,
        })
    }

    /// The version the body is laid out in (differs from the request's only
    /// for an ApiVersions UNSUPPORTED_VERSION answer).
    pub fn body_version(&self) -> i16 {
        self.decode_version
    }

    /// The response header bytes as the broker sent them.
    pub fn head_bytes(&self) -> &[u8] {
        &self.raw[..self.body_offset]
    }

    /// The whole frame as it stands (header and body), sharing its bytes.
    pub fn raw_frame(&mut self) -> Bytes {
        self.flatten();
        self.raw.clone()
    }

    /// The body bytes as they stand (after the header), sharing the frame.
    pub fn raw_body(&mut self) -> Bytes {
        self.flatten();
        self.raw.slice(self.body_offset..)
    }

    /// Replaces the frame with pieces a stage built from this one, to be
    /// laid end to end: the same header bytes ([`head_bytes`](Self::head_bytes)),
    /// then a new body. Untouched stretches can be slices of the old frame,
    /// so nothing large is copied. Drops any decoded body, so a later stage
    /// that reads it decodes the new bytes.
    pub fn replace_frame_parts(&mut self, parts: Vec<Bytes>) -> Result<(), CodecError> {
        let mut head = self.head_bytes();
        for p in &parts {
            let n = head.len().min(p.len());
            if p[..n] != head[..n] {
                break;
            }
            head = &head[n..];
            if head.is_empty() {
                break;
            }
        }
        if !head.is_empty() {
            return Err(self.codec_err("a replacement frame must keep the response header".into()));
        }
        self.parts = Some(parts);
        self.body = None;
        self.dirty = false;
        Ok(())
    }

    /// Joins spliced pieces into one frame, for stages that read the body.
    fn flatten(&mut self) {
        if let Some(parts) = self.parts.take() {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in &parts {
                out.extend_from_slice(p);
            }
            self.raw = out.freeze();
        }
    }

    /// The decoded body; decoded on first use, not marked as changed.
    pub fn body(&mut self) -> Result<&ResponseKind, CodecError> {
        self.decode()?;
        let err = self.codec_err("not decoded".into());
        self.body.as_ref().ok_or(err)
    }

    /// The decoded body for changing; the response is re-encoded for the client.
    pub fn body_mut(&mut self) -> Result<&mut ResponseKind, CodecError> {
        self.decode()?;
        self.dirty = true;
        let err = self.codec_err("not decoded".into());
        self.body.as_mut().ok_or(err)
    }

    fn decode(&mut self) -> Result<(), CodecError> {
        if self.body.is_none() {
            self.flatten();
            let mut buf = self.raw.slice(self.body_offset..);
            let body = ResponseKind::decode(self.api_key, &mut buf, self.decode_version)
                .map_err(|e| self.codec_err(e.to_string()))?;
            self.body = Some(body);
        }
        Ok(())
    }

    fn codec_err(&self, why: String) -> CodecError {
        CodecError {
            api: self.api_key,
            version: self.decode_version,
            why,
        }
    }

    /// The frame for the client in pieces to lay end to end: as
    /// [`into_bytes`](Self::into_bytes), or the spliced pieces as they are.
    pub fn into_parts(self) -> Result<Vec<Bytes>, CodecError> {
        if !self.dirty {
            if let Some(parts) = self.parts {
                return Ok(parts);
            }
        }
        Ok(vec![self.into_bytes()?])
    }

    /// The frame for the client: the original bytes, or the original header
    /// bytes followed by the re-encoded body when a stage changed it.
    pub fn into_bytes(mut self) -> Result<Bytes, CodecError> {
        self.flatten();
        match (&self.body, self.dirty) {
            (Some(body), true) => {
                let mut out = BytesMut::with_capacity(self.raw.len() + 64);
                out.extend_from_slice(&self.raw[..self.body_offset]);
                body.encode(&mut out, self.decode_version)
                    .map_err(|e| self.codec_err(e.to_string()))?;
                Ok(out.freeze())
            }
            _ => Ok(self.raw),
        }
    }

    /// Encodes a response that Custos answers itself.
    pub fn encode_local(
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
        body: &ResponseKind,
    ) -> Result<Bytes, CodecError> {
        let err = |why: String| CodecError {
            api: api_key,
            version: api_version,
            why,
        };
        let mut out = BytesMut::new();
        let header = ResponseHeader::default().with_correlation_id(correlation_id);
        header
            .encode(&mut out, api_key.response_header_version(api_version))
            .map_err(|e| err(e.to_string()))?;
        body.encode(&mut out, api_version)
            .map_err(|e| err(e.to_string()))?;
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, ProduceRequest};
    use kafka_protocol::protocol::StrBytes;

    fn encode_request(key: ApiKey, version: i16, corr: i32, body: &RequestKind) -> Bytes {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(corr)
            .with_client_id(Some(StrBytes::from_static_str("test-client")))
            .encode(&mut out, key.request_header_version(version))
            .expect("header");
        body.encode(&mut out, version).expect("body");
        out.freeze()
    }

    #[test]
    fn header_is_decoded_and_untouched_body_is_not_reencoded() {
        let raw = encode_request(
            ApiKey::Metadata,
            12,
            7,
            &RequestKind::Metadata(MetadataRequest::default()),
        );
        let mut req = Request::parse(raw.clone()).expect("parse");
        assert_eq!(req.api_key, ApiKey::Metadata);
        assert_eq!(req.correlation_id(), 7);
        assert_eq!(
            req.header.client_id.as_ref().map(|s| s.as_str()),
            Some("test-client")
        );
        assert!(matches!(
            req.body().expect("decode"),
            RequestKind::Metadata(_)
        ));
        let out = req.into_bytes().expect("bytes");
        // Same allocation, not a copy: read-only inspection forwards the original.
        assert_eq!(out.as_ptr(), raw.as_ptr());
    }

    #[test]
    fn a_rebuilt_frame_must_keep_the_header() {
        let raw = encode_request(
            ApiKey::Metadata,
            12,
            7,
            &RequestKind::Metadata(MetadataRequest::default()),
        );
        let mut req = Request::parse(raw.clone()).expect("parse");
        let head = req.head().to_vec();
        assert_eq!(req.body_bytes(), &raw[head.len()..]);
        let mut other = head.clone();
        other[7] ^= 1; // the correlation id
        assert!(req.replace_frame(Bytes::from(other)).is_err());
        assert!(req.replace_frame(Bytes::from(head[..3].to_vec())).is_err());
        let mut rebuilt = head.clone();
        rebuilt.extend_from_slice(b"new body");
        req.replace_frame(Bytes::from(rebuilt))
            .expect("same header");
        assert_eq!(req.body_bytes(), b"new body");
        assert_eq!(req.correlation_id(), 7);
    }

    #[test]
    fn unknown_and_internal_api_keys_are_refused() {
        let mut raw = vec![0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
        assert_eq!(
            Request::parse(Bytes::from(raw.clone())).unwrap_err(),
            RequestError::RefusedApiKey(9999)
        );
        raw[0] = 0;
        raw[1] = 4; // LeaderAndIsr
        assert_eq!(
            Request::parse(Bytes::from(raw)).unwrap_err(),
            RequestError::RefusedApiKey(4)
        );
    }

    #[test]
    fn versions_outside_the_range_are_refused() {
        let raw = encode_request(
            ApiKey::Metadata,
            12,
            1,
            &RequestKind::Metadata(MetadataRequest::default()),
        );
        let mut bytes = raw.to_vec();
        bytes[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            Request::parse(Bytes::from(bytes)),
            Err(RequestError::UnsupportedVersion { version: 99, .. })
        ));
    }

    #[test]
    fn a_head_holds_its_client_id_only_once_past_it() {
        let mut head = vec![0, 0, 0, 9, 0, 0, 0, 7, 0, 4];
        head.extend_from_slice(b"perf");
        for cut in 0..=head.len() {
            assert!(!holds_client_id(&head[..cut]), "cut at {cut}");
        }
        head.push(0);
        assert!(holds_client_id(&head));
        // A null client id (length -1) ends at the length itself.
        let null = [0, 0, 0, 9, 0, 0, 0, 7, 0xff, 0xff, 0];
        assert!(!holds_client_id(&null[..10]));
        assert!(holds_client_id(&null));
    }

    #[test]
    fn produce_acks_zero_expects_no_response() {
        for version in [3i16, 8, 9, 12] {
            for (acks, txn) in [(0i16, None), (-1, Some("txn-1")), (1, None), (0, Some("t"))] {
                let body = ProduceRequest::default()
                    .with_acks(acks)
                    .with_transactional_id(txn.map(|t| StrBytes::from_static_str(t).into()));
                let raw = encode_request(ApiKey::Produce, version, 3, &RequestKind::Produce(body));
                let req = Request::parse(raw).expect("parse");
                assert_eq!(
                    req.expects_response().expect("acks"),
                    acks != 0,
                    "v{version} acks={acks} txn={txn:?}"
                );
            }
        }
    }

    /// Garbage must be refused, never panic: a tiny xorshift fuzz over the
    /// allowed api keys, covering everything Custos decodes from clients
    /// (request headers, Produce acks) and response headers.
    ///
    /// Bodies are left out on purpose: kafka-protocol 0.18 reserves
    /// `Vec::with_capacity(n)` from an untrusted array length, so a 20-byte
    /// body can demand gigabytes and abort the process. No stage decodes a
    /// client's request body yet (response bodies come from the broker, which
    /// Custos trusts); the first stage that decodes client bodies must bound
    /// array lengths by the bytes remaining before calling the crate's decoder.
    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let keys: Vec<i16> = versions::FORWARDED.iter().map(|k| *k as i16).collect();
        for i in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut bytes: Vec<u8> = (0..len.max(8)).map(|_| next() as u8).collect();
            let key = keys[i % keys.len()];
            bytes[0..2].copy_from_slice(&key.to_be_bytes());
            let range = ApiKey::try_from(key).expect("known").valid_versions();
            let version = range.min + (next() % (range.max - range.min + 1) as u64) as i16;
            bytes[2..4].copy_from_slice(&version.to_be_bytes());
            if let Ok(req) = Request::parse(Bytes::from(bytes.clone())) {
                let _ = req.expects_response();
            }
            let _ = Response::parse(
                Bytes::from(bytes),
                ApiKey::try_from(key).expect("known"),
                version,
            );
        }
    }
}
