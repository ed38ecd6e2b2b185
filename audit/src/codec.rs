//! Canonical binary encoding of an [`AuditRecord`] (format version 1).
//!
//! The hash chain and the Merkle tree hash these bytes, so the encoding must be
//! deterministic: one record has exactly one encoding, and the decoder accepts
//! only that encoding (it refuses bad tags, non-0/1 booleans, unsorted or
//! duplicate detail keys, invalid UTF-8 and trailing bytes). Hence
//! `encode(decode(b)) == b` for every `b` that decodes. `audit/FORMAT.md` has
//! the same specification with a worked example.
//!
//! ```text
//! Integers are big-endian, fixed width. Signed ones are two's complement.
//! str      = u32 length || UTF-8 bytes
//! opt(T)   = u8 0x00 (absent) | u8 0x01 || T
//! list(T)  = u32 count || T*
//! bool     = u8 0x00 | 0x01
//!
//! record (v1) =
//!   u8        version            = 0x01
//!   u64       seq                  (always at byte offset 1: the writer patches it)
//!   u64       time_ms              (unix milliseconds)
//!   str       instance
//!   u8        kind                 (1 authorization, 2 produce, 3 fetch, 4 admin,
//!                                   5 start, 6 stop, 7 config_reload, 8 policy_reload,
//!                                   9 key_rotation, 10 key_shredding, 11 dsr,
//!                                   12 audit_query, 13 request)
//!   opt(str)  action
//!   opt(principal)    principal = str name || str auth_method
//!   opt(client)       client    = str addr || opt(str) client_id
//!   opt(request)      request   = i16 api_key || i16 api_version || i32 correlation_id
//!   list(resource)    resource  = u8 type (0 other, 1 topic, 2 group,
//!                                   3 transactional_id, 4 cluster,
//!                                   5 delegation_token, 6 key)
//!                                 || [str type_name, only when type = 0]
//!                                 || str name
//!                                 || list(partition)
//!                     partition = i32 partition || opt(i64) offset
//!                                 || u64 records || u64 bytes
//!   opt(decision)     decision  = bool allowed || list(str) policy_ids || str policy_hash
//!   opt(error)        error     = opt(i16) kafka_code || u8 blame (1 client,
//!                                 2 upstream, 3 internal) || str message
//!   list(str) key_ids
//!   list(str) subject_tokens       (lowercase hex, 32..=128 digits)
//!   list(detail)      detail    = str key || str value; keys strictly ascending
//!                                 by bytes (so no duplicates)
//!   (end: no trailing bytes)
//! ```
//!
//! A future version changes the first byte; a v1 decoder refuses anything else.

use std::collections::BTreeMap;

use crate::record::{
    AuditRecord, Client, Decision, ErrorInfo, EventKind, KafkaRequest, PartitionEntry, Principal,
    Resource, ResourceType, SubjectToken,
};
use crate::Blame;

/// The record format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Byte range of the sequence number inside an encoded record.
pub const SEQ_RANGE: std::ops::Range<usize> = 1..9;

/// Why a record could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string or list is longer than a u32 length prefix can say.
    #[error("audit record field `{0}` is too long to encode")]
    TooLong(&'static str),
}

/// Why bytes are not a canonical record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a canonical audit record at byte {offset}: {what}")]
pub struct DecodeError {
    /// Byte offset where decoding stopped.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

/// Encodes a record canonically.
pub fn encode(record: &AuditRecord) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    encode_into(record, &mut out)?;
    Ok(out)
}

/// Encodes a record canonically, appending to `out`.
pub fn encode_into(r: &AuditRecord, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&r.seq.to_be_bytes());
    out.extend_from_slice(&r.time_ms.to_be_bytes());
    put_str(out, &r.instance, "instance")?;
    out.push(r.kind.code());
    put_opt_str(out, r.action.as_deref(), "action")?;
    match &r.principal {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_str(out, &p.name, "principal.name")?;
            put_str(out, &p.auth_method, "principal.auth_method")?;
        }
    }
    match &r.client {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            put_str(out, &c.addr, "client.addr")?;
            put_opt_str(out, c.id.as_deref(), "client.id")?;
        }
    }
    match &r.request {
        None => out.push(0),
        Some(q) => {
            out.push(1);
            out.extend_from_slice(&q.api_key.to_be_bytes());
            out.extend_from_slice(&q.api_version.to_be_bytes());
            out.extend_from_slice(&q.correlation_id.to_be_bytes());
        }
    }
    put_len(out, r.resources.len(), "resources")?;
    for res in &r.resources {
        // Normalise through the name so that `Other("Topic")` and `Topic`
        // cannot be two encodings of one record.
        let kind = match &res.kind {
            ResourceType::Other(name) => ResourceType::from_name(name),
            known => known.clone(),
        };
        match &kind {
            ResourceType::Other(name) => {
                out.push(0);
                put_str(out, name, "resource.type")?;
            }
            known => out.push(resource_code(known)),
        }
        put_str(out, &res.name, "resource.name")?;
        put_len(out, res.partitions.len(), "resource.partitions")?;
        for p in &res.partitions {
            out.extend_from_slice(&p.partition.to_be_bytes());
            match p.offset {
                None => out.push(0),
                Some(o) => {
                    out.push(1);
                    out.extend_from_slice(&o.to_be_bytes());
                }
            }
            out.extend_from_slice(&p.records.to_be_bytes());
            out.extend_from_slice(&p.bytes.to_be_bytes());
        }
    }
    match &r.decision {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            out.push(u8::from(d.allowed));
            put_str_list(out, &d.policy_ids, "decision.policy_ids")?;
            put_str(out, &d.policy_hash, "decision.policy_hash")?;
        }
    }
    match &r.error {
        None => out.push(0),
        Some(e) => {
            out.push(1);
            match e.code {
                None => out.push(0),
                Some(c) => {
                    out.push(1);
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            out.push(blame_code(e.blame));
            put_str(out, &e.message, "error.message")?;
        }
    }
    put_str_list(out, &r.key_ids, "key_ids")?;
    put_len(out, r.subject_tokens.len(), "subject_tokens")?;
    for t in &r.subject_tokens {
        put_str(out, t.as_str(), "subject_tokens")?;
    }
    // BTreeMap iterates in ascending byte order of the keys: canonical.
    put_len(out, r.details.len(), "details")?;
    for (k, v) in &r.details {
        put_str(out, k, "details.key")?;
        put_str(out, v, "details.value")?;
    }
    Ok(())
}

fn resource_code(kind: &ResourceType) -> u8 {
    match kind {
        ResourceType::Other(_) => 0,
        ResourceType::Topic => 1,
        ResourceType::Group => 2,
        ResourceType::TransactionalId => 3,
        ResourceType::Cluster => 4,
        ResourceType::DelegationToken => 5,
        ResourceType::Key => 6,
    }
}

fn blame_code(blame: Blame) -> u8 {
    match blame {
        Blame::Client => 1,
        Blame::Upstream => 2,
        Blame::Internal => 3,
    }
}

fn put_len(out: &mut Vec<u8>, len: usize, field: &'static str) -> Result<(), EncodeError> {
    let len = u32::try_from(len).map_err(|_| EncodeError::TooLong(field))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), EncodeError> {
    put_len(out, s.len(), field)?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>, field: &'static str) -> Result<(), EncodeError> {
    match s {
        None => {
            out.push(0);
            Ok(())
        }
        Some(s) => {
            out.push(1);
            put_str(out, s, field)
        }
    }
}

fn put_str_list(
    out: &mut Vec<u8>,
    items: &[String],
    field: &'static str,
) -> Result<(), EncodeError> {
    put_len(out, items.len(), field)?;
    for s in items {
        put_str(out, s, field)?;
    }
    Ok(())
}

/// Decodes canonical bytes into a record.
pub fn decode(bytes: &[u8]) -> Result<AuditRecord, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(r.fail_at(0, format!("unknown format version {version}")));
    }
    let seq = r.u64()?;
    let time_ms = r.u64()?;
    let instance = r.string()?;
    let code = r.u8()?;
    let kind = EventKind::from_code(code)
        .ok_or_else(|| r.fail_at(r.pos - 1, format!("unknown event kind {code}")))?;
    let action = r.opt(|r| r.string())?;
    let principal = r.opt(|r| {
        Ok(Principal {
            name: r.string()?,
            auth_method: r.string()?,
        })
    })?;
    let client = r.opt(|r| {
        Ok(Client {
            addr: r.string()?,
            id: r.opt(|r| r.string())?,
        })
    })?;
    let request = r.opt(|r| {
        Ok(KafkaRequest {
            api_key: r.i16()?,
            api_version: r.i16()?,
            correlation_id: r.i32()?,
        })
    })?;
    let resources = r.list(|r| {
        let at = r.pos;
        let kind = match r.u8()? {
            0 => {
                let name = r.string()?;
                match ResourceType::from_name(&name) {
                    ResourceType::Other(name) => ResourceType::Other(name),
                    _ => return Err(r.fail_at(at, "known resource type spelled as other".into())),
                }
            }
            1 => ResourceType::Topic,
            2 => ResourceType::Group,
            3 => ResourceType::TransactionalId,
            4 => ResourceType::Cluster,
            5 => ResourceType::DelegationToken,
            6 => ResourceType::Key,
            c => return Err(r.fail_at(at, format!("unknown resource type {c}"))),
        };
        let name = r.string()?;
        let partitions = r.list(|r| {
            Ok(PartitionEntry {
                partition: r.i32()?,
                offset: r.opt(|r| r.i64())?,
                records: r.u64()?,
                bytes: r.u64()?,
            })
        })?;
        Ok(Resource {
            kind,
            name,
            partitions,
        })
    })?;
    let decision = r.opt(|r| {
        Ok(Decision {
            allowed: r.bool()?,
            policy_ids: r.list(|r| r.string())?,
            policy_hash: r.string()?,
        })
    })?;
    let error = r.opt(|r| {
        let code = r.opt(|r| r.i16())?;
        let at = r.pos;
        let blame = match r.u8()? {
            1 => Blame::Client,
            2 => Blame::Upstream,
            3 => Blame::Internal,
            b => return Err(r.fail_at(at, format!("unknown blame {b}"))),
        };
        Ok(ErrorInfo {
            code,
            blame,
            message: r.string()?,
        })
    })?;
    let key_ids = r.list(|r| r.string())?;
    let subject_tokens = r.list(|r| {
        let at = r.pos;
        let s = r.string()?;
        SubjectToken::from_hex(&s).map_err(|e| r.fail_at(at, e))
    })?;
    let mut details = BTreeMap::new();
    let count = r.u32()?;
    let mut last: Option<String> = None;
    for _ in 0..count {
        let at = r.pos;
        let k = r.string()?;
        let v = r.string()?;
        if last
            .as_deref()
            .is_some_and(|l| l.as_bytes() >= k.as_bytes())
        {
            return Err(r.fail_at(at, "detail keys not strictly ascending".into()));
        }
        last = Some(k.clone());
        details.insert(k, v);
    }
    if r.pos != bytes.len() {
        return Err(r.fail_at(r.pos, format!("{} trailing bytes", bytes.len() - r.pos)));
    }
    Ok(AuditRecord {
        seq,
        time_ms,
        instance,
        kind,
        action,
        principal,
        client,
        request,
        resources,
        decision,
        error,
        key_ids,
        subject_tokens,
        details,
    })
}

/// The version byte and sequence number of encoded bytes, without decoding
/// the rest (the verifier's fast path).
pub fn peek_seq(bytes: &[u8]) -> Option<(u8, u64)> {
    let version = *bytes.first()?;
    let seq: [u8; 8] = bytes.get(SEQ_RANGE)?.try_into().ok()?;
    Some((version, u64::from_be_bytes(seq)))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn fail_at(&self, offset: usize, what: String) -> DecodeError {
        DecodeError { offset, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.fail_at(self.pos, format!("truncated: wanted {n} more bytes")))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.fail_at(at, format!("boolean byte {b}"))),
        }
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let at = self.pos;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.fail_at(at, "invalid UTF-8".into()))
    }

    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        let at = self.pos;
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            t => Err(self.fail_at(at, format!("option tag {t}"))),
        }
    }

    fn list<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.u32()? as usize;
        // Each element takes at least one byte, so a count beyond the bytes
        // left is a lie; checking first stops a huge allocation.
        if count > self.buf.len() - self.pos {
            return Err(self.fail_at(
                self.pos - 4,
                format!("list count {count} exceeds the record"),
            ));
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(f(self)?);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use crate::merkle::{chain_hash, leaf_hash, GENESIS};

    fn minimal() -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::Start, "i1").at_ms(1_700_000_000_000);
        r.seq = 7;
        r
    }

    pub(crate) fn full() -> AuditRecord {
        let mut r = AuditRecord::new(EventKind::Produce, "custos-a")
            .at_ms(1_700_000_000_123)
            .with_action("Write")
            .with_principal("User:alice", "SCRAM-SHA-512")
            .with_client("10.0.0.7:51234", Some("billing-app".into()))
            .with_request(0, 9, 42)
            .with_resource(
                Resource::topic("orders")
                    .with_partition(0, Some(1000), 5, 640)
                    .with_partition(3, None, 1, 90),
            )
            .with_resource(Resource::new(
                ResourceType::Other("Schema".into()),
                "orders-value",
            ))
            .with_decision(true, vec!["allow-billing".into()], "ab12")
            .with_error(Some(29), Blame::Client, "denied on one partition")
            .with_key_id("kek-1/dek-9")
            .with_subject(
                SubjectToken::from_hex("00112233445566778899aabbccddeeff").expect("token"),
            )
            .with_detail("z", "last")
            .with_detail("broker_id", "1");
        r.seq = 1;
        r
    }

    // Written by hand from the specification in the module docs, so that this
    // test pins the format itself, not whatever the encoder happens to do.
    const MINIMAL_GOLDEN: &str = concat!(
        "01",               // version
        "0000000000000007", // seq
        "0000018bcfe56800", // time_ms 1_700_000_000_000
        "00000002",
        "6931", // instance "i1"
        "05",   // kind start
        "00",
        "00",
        "00",
        "00",       // action, principal, client, request absent
        "00000000", // no resources
        "00",
        "00", // decision, error absent
        "00000000",
        "00000000",
        "00000000", // key ids, tokens, details
    );

    const FULL_GOLDEN: &str = concat!(
        "0100000000000000010000018bcfe5687b00000008637573746f732d610201000000055772697465",
        "010000000a557365723a616c6963650000000d534352414d2d5348412d353132010000000e31302e",
        "302e302e373a3531323334010000000b62696c6c696e672d61707001000000090000002a00000002",
        "01000000066f726465727300000002000000000100000000000003e8000000000000000500000000",
        "0000028000000003000000000000000001000000000000005a0000000006536368656d610000000c",
        "6f72646572732d76616c7565000000000101000000010000000d616c6c6f772d62696c6c696e6700",
        "000004616231320101001d010000001764656e696564206f6e206f6e6520706172746974696f6e00",
        "0000010000000b6b656b2d312f64656b2d3900000001000000203030313132323333343435353636",
        "373738383939616162626363646465656666000000020000000962726f6b65725f69640000000131",
        "000000017a000000046c617374",
    );

    #[test]
    fn minimal_record_matches_the_specification() {
        let bytes = encode(&minimal()).expect("encode");
        assert_eq!(hex::encode(&bytes), MINIMAL_GOLDEN);
        assert_eq!(decode(&bytes).expect("decode"), minimal());
    }

    #[test]
    fn full_record_golden_bytes_and_hashes() {
        let bytes = encode(&full()).expect("encode");
        assert_eq!(hex::encode(&bytes), FULL_GOLDEN);
        assert_eq!(decode(&bytes).expect("decode"), full());
        // Pinned hashes: the chain and the tree hash exactly these bytes.
        assert_eq!(
            hex::encode(&chain_hash(&GENESIS, &bytes)),
            "eea1ad0064c72886d11af66d7396100fe7e6d795338ae6ee9a674c484c59bd88"
        );
        assert_eq!(
            hex::encode(&leaf_hash(&bytes)),
            "3a58171d3476d17fc76d5c7cac043fac5163d71ce9877b000418ec6a9d589301"
        );
    }

    #[test]
    fn encoding_is_independent_of_detail_insertion_order() {
        let a = AuditRecord::new(EventKind::Admin, "x")
            .at_ms(1)
            .with_detail("b", "2")
            .with_detail("a", "1");
        let b = AuditRecord::new(EventKind::Admin, "x")
            .at_ms(1)
            .with_detail("a", "1")
            .with_detail("b", "2");
        assert_eq!(encode(&a), encode(&b));
    }

    #[test]
    fn other_resource_type_with_a_known_name_encodes_as_the_known_type() {
        let a = AuditRecord::new(EventKind::Admin, "x")
            .at_ms(1)
            .with_resource(Resource::new(ResourceType::Other("Topic".into()), "t"));
        let b = AuditRecord::new(EventKind::Admin, "x")
            .at_ms(1)
            .with_resource(Resource::topic("t"));
        assert_eq!(encode(&a), encode(&b));
    }

    #[test]
    fn decoder_accepts_only_the_canonical_encoding() {
        let good = encode(&full()).expect("encode");
        // Every strict prefix is refused, and so is any trailing byte.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        // Unknown version.
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(decode(&v2).is_err());
        // An option tag other than 0/1 (the action tag sits right after the kind).
        let min = encode(&minimal()).expect("encode");
        let action_tag = 1 + 8 + 8 + 4 + 2 + 1;
        let mut bad = min.clone();
        bad[action_tag] = 2;
        assert!(decode(&bad).is_err());
        // Unsorted detail keys.
        let mut r = minimal();
        r.details.insert("a".into(), "1".into());
        r.details.insert("b".into(), "2".into());
        let mut bytes = encode(&r).expect("encode");
        let a = bytes.len() - 2 * (4 + 1 + 4 + 1);
        let (first, second) = bytes[a..].split_at_mut(10);
        first.swap_with_slice(second);
        assert!(
            decode(&bytes).is_err(),
            "swapped detail keys must be refused"
        );
        // A huge list count fails without allocating.
        let mut huge = min.clone();
        let res_count = action_tag + 4;
        huge[res_count..res_count + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge).is_err());
    }

    #[test]
    fn every_single_byte_change_is_refused_or_changes_the_record() {
        let good = encode(&full()).expect("encode");
        let original = full();
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x01;
            if let Ok(r) = decode(&b) {
                assert_ne!(r, original, "byte {i}");
                assert_eq!(encode(&r).expect("re-encode"), b, "byte {i}: not canonical");
            }
        }
    }

    #[test]
    fn subject_tokens_must_look_like_hashes() {
        assert!(SubjectToken::from_hex("alice@example.com").is_err());
        assert!(SubjectToken::from_hex("00112233").is_err());
        assert!(SubjectToken::from_hex("00112233445566778899AABBCCDDEEFF").is_err());
        assert!(SubjectToken::from_bytes(&[7u8; 32]).is_ok());
    }

    #[test]
    fn seq_sits_at_its_documented_offset() {
        let bytes = encode(&full()).expect("encode");
        assert_eq!(peek_seq(&bytes), Some((FORMAT_VERSION, 1)));
        assert_eq!(&bytes[SEQ_RANGE], &1u64.to_be_bytes());
    }
}
