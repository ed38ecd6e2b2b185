//! What a consumer sees instead of a protected value it may not decrypt.
//!
//! A rule names a mask; on fetch, a principal without the `Decrypt` permission
//! gets the mask in place of each protected field (as JSON text spliced into
//! the document) or of a whole value, key or header (as raw bytes). Masks never
//! carry plaintext beyond what they are configured to reveal, and a mask that
//! cannot be computed (a token mask without its key) falls back to redaction
//! rather than to the original.
//!
//! When a data subject's key has been shredded, the ciphertext can no longer be
//! opened by anyone; fetches show [`ERASED_PLACEHOLDER`] so consumers see an
//! explicit, recognisable value rather than an error.

use std::fmt;

use crate::json_fields::{json_string_value, write_json_string};
use crate::SubjectTokenizer;

/// The text shown for a field, value, key or header whose subject key was shredded.
pub const ERASED_PLACEHOLDER: &str = "custos:erased";

/// [`ERASED_PLACEHOLDER`] as a JSON string, spliced in place of an erased field.
pub const ERASED_JSON: &[u8] = b"\"custos:erased\"";

/// [`ERASED_PLACEHOLDER`] as raw bytes, in place of an erased value, key or header.
pub const ERASED_BYTES: &[u8] = ERASED_PLACEHOLDER.as_bytes();

/// The text [`Mask::Redact`] shows unless configured otherwise.
pub const DEFAULT_REDACTION: &str = "***";

/// How a protected value is shown to a consumer who may not decrypt it.
///
/// Configuration forms (YAML): `redact`, `{redact: "XXX"}`, `{keep_last: 4}`,
/// `token`, and `null` (YAML's null or the string `"null"`).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mask {
    /// A fixed text in place of the value ([`DEFAULT_REDACTION`] by default).
    Redact(String),
    /// The last N characters (Unicode scalar values) kept, each other one
    /// shown as `*`; at most half of a value's characters are kept.
    KeepLast(usize),
    /// A keyed-hash token of the value (lowercase hex HMAC-SHA-256): equal
    /// values give equal tokens, so masked data stays joinable.
    Token,
    /// JSON `null` for fields; a Kafka null for values, keys and headers.
    Null,
}

impl Default for Mask {
    fn default() -> Self {
        Mask::Redact(DEFAULT_REDACTION.to_owned())
    }
}

impl fmt::Debug for Mask {
    // Only the mask's kind and its configuration, which are not secret; kept
    // explicit so a future variant holding key material must choose.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mask::Redact(t) => f.debug_tuple("Redact").field(t).finish(),
            Mask::KeepLast(n) => f.debug_tuple("KeepLast").field(n).finish(),
            Mask::Token => f.write_str("Token"),
            Mask::Null => f.write_str("Null"),
        }
    }
}

/// Keeps the last `n` characters of `s`, replacing the others with `*`, but
/// never more than half of them: a value of `n` characters or fewer would
/// otherwise be shown whole (a short secret, unmasked).
fn keep_last(s: &str, n: usize) -> String {
    let total = s.chars().count();
    let hidden = total - n.min(total / 2);
    let mut out = String::with_capacity(s.len());
    out.extend(std::iter::repeat_n('*', hidden));
    out.extend(s.chars().skip(hidden));
    out
}

impl Mask {
    /// JSON text to splice in place of a field whose JSON text is `raw_value`.
    ///
    /// Redact, KeepLast and Token give a JSON string; Null gives `null`. A
    /// string value is masked on its unescaped text (so `"al\u0069ce"` and
    /// `"alice"` mask alike); any other value on its JSON text. Token without a
    /// tokenizer gives the default redaction.
    pub fn mask_json_value(
        &self,
        raw_value: &[u8],
        tokenizer: Option<&SubjectTokenizer>,
    ) -> Vec<u8> {
        let text =
            || json_string_value(raw_value).unwrap_or_else(|| String::from_utf8_lossy(raw_value));
        let mut out = Vec::new();
        match self {
            Mask::Redact(t) => write_json_string(t, &mut out),
            Mask::KeepLast(n) => write_json_string(&keep_last(&text(), *n), &mut out),
            Mask::Token => match tokenizer {
                Some(tk) => write_json_string(&tk.token(text().as_bytes()), &mut out),
                None => write_json_string(DEFAULT_REDACTION, &mut out),
            },
            Mask::Null => out.extend_from_slice(b"null"),
        }
        out
    }

    /// The bytes to show in place of a whole value, key or header; `None` is a
    /// Kafka null (the Null mask).
    ///
    /// KeepLast works on characters when `raw` is UTF-8; other bytes are all
    /// hidden (one `*` per byte), since a byte tail of binary data is not a
    /// meaningful hint and may split a character. Token without a tokenizer
    /// gives the default redaction.
    pub fn mask_bytes(&self, raw: &[u8], tokenizer: Option<&SubjectTokenizer>) -> Option<Vec<u8>> {
        Some(match self {
            Mask::Redact(t) => t.as_bytes().to_vec(),
            Mask::KeepLast(n) => match std::str::from_utf8(raw) {
                Ok(s) => keep_last(s, *n).into_bytes(),
                Err(_) => vec![b'*'; raw.len()],
            },
            Mask::Token => match tokenizer {
                Some(tk) => tk.token(raw).into_bytes(),
                None => DEFAULT_REDACTION.as_bytes().to_vec(),
            },
            Mask::Null => return None,
        })
    }
}

const EXPECTED_FORMS: &str = "one of: redact, {redact: TEXT}, {keep_last: N}, token, null";

impl<'de> serde::Deserialize<'de> for Mask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MaskVisitor)
    }
}

struct MaskVisitor;

impl<'de> serde::de::Visitor<'de> for MaskVisitor {
    type Value = Mask;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a mask, {EXPECTED_FORMS}")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Mask, E> {
        match v {
            "redact" => Ok(Mask::default()),
            "token" => Ok(Mask::Token),
            "null" => Ok(Mask::Null),
            other => Err(E::custom(format_args!(
                "unknown mask `{other}`; expected {EXPECTED_FORMS}"
            ))),
        }
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Mask, E> {
        Ok(Mask::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Mask, E> {
        Ok(Mask::Null)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Mask, A::Error> {
        use serde::de::Error;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format_args!(
                "an empty map is not a mask; expected {EXPECTED_FORMS}"
            )));
        };
        let mask = match key.as_str() {
            "redact" => Mask::Redact(map.next_value::<String>()?),
            "keep_last" => Mask::KeepLast(map.next_value::<usize>()?),
            other => {
                return Err(A::Error::custom(format_args!(
                    "unknown mask `{other}`; expected {EXPECTED_FORMS}"
                )))
            }
        };
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom(format_args!(
                "a mask map has exactly one key; expected {EXPECTED_FORMS}"
            )));
        }
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tk(k: u8) -> SubjectTokenizer {
        SubjectTokenizer::new(&[k; 32]).expect("key")
    }

    fn yaml(s: &str) -> Result<Mask, String> {
        serde_yaml_ng::from_str::<Mask>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn redact_replaces_any_value_with_a_json_string() {
        let m = Mask::default();
        assert_eq!(m.mask_json_value(br#""4111 1111""#, None), br#""***""#);
        assert_eq!(m.mask_json_value(b"{\"a\":1}", None), br#""***""#);
        let custom = Mask::Redact("he said \"no\"".into());
        assert_eq!(custom.mask_json_value(b"12", None), br#""he said \"no\"""#);
        assert_eq!(
            custom.mask_bytes(b"secret", None),
            Some(b"he said \"no\"".to_vec())
        );
    }

    #[test]
    fn keep_last_counts_characters_not_bytes() {
        let m = Mask::KeepLast(4);
        assert_eq!(
            m.mask_json_value(br#""4111-1111-1111-1234""#, None),
            br#""***************1234""#
        );
        // Unicode: 9 chars, 5 hidden; multi-byte chars kept whole.
        assert_eq!(
            m.mask_json_value("\"Zoë Ünïon\"".as_bytes(), None),
            "\"*****nïon\"".as_bytes()
        );
        assert_eq!(
            m.mask_bytes("Zoë Ünïon".as_bytes(), None),
            Some("*****nïon".as_bytes().to_vec())
        );
        // Escapes are unescaped before counting: \u00fc is one char.
        assert_eq!(
            m.mask_json_value(br#""xyzab\u00fcde""#, None),
            "\"****büde\"".as_bytes()
        );
        // Short values: at most half is kept, so none is shown whole;
        // N = 0: everything hidden.
        for (value, masked) in [
            (&br#""""#[..], &br#""""#[..]),
            (br#""a""#, br#""*""#),
            (br#""ab""#, br#""*b""#),
            (br#""a@x""#, br#""**x""#),
            (br#""abcd""#, br#""**cd""#),
            (br#""abcdefg""#, br#""****efg""#),
            (br#""abcdefgh""#, br#""****efgh""#),
        ] {
            assert_eq!(
                m.mask_json_value(value, None),
                masked,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(m.mask_bytes(b"1234", None), Some(b"**34".to_vec()));
        assert_eq!(
            Mask::KeepLast(0).mask_json_value(br#""abc""#, None),
            br#""***""#
        );
        // Non-string values work on their JSON text.
        assert_eq!(m.mask_json_value(b"123456789", None), br#""*****6789""#);
        assert_eq!(m.mask_json_value(b"[1,2]", None), br#""***2]""#);
        // Binary bytes: all hidden.
        assert_eq!(
            m.mask_bytes(&[0xff, 0xfe, 1, 2, 3], None),
            Some(b"*****".to_vec())
        );
    }

    #[test]
    fn keep_last_escapes_what_it_keeps() {
        let m = Mask::KeepLast(3);
        assert_eq!(
            m.mask_json_value(br#""abc\"\\\n""#, None),
            br#""***\"\\\n""#
        );
    }

    #[test]
    fn tokens_are_stable_keyed_and_escape_insensitive() {
        let (a, b) = (tk(1), tk(2));
        let m = Mask::Token;
        let t1 = m.mask_json_value(br#""alice@example.com""#, Some(&a));
        assert_eq!(t1, m.mask_json_value(br#""alice@example.com""#, Some(&a)));
        assert_eq!(
            t1,
            m.mask_json_value(br#""alice\u0040example.com""#, Some(&a))
        );
        assert_ne!(t1, m.mask_json_value(br#""bob@example.com""#, Some(&a)));
        assert_ne!(t1, m.mask_json_value(br#""alice@example.com""#, Some(&b)));
        // The field token equals the token of the unescaped text, and of the
        // same bytes as a whole value.
        let hex = a.token(b"alice@example.com");
        assert_eq!(t1, format!("\"{hex}\"").into_bytes());
        assert_eq!(
            m.mask_bytes(b"alice@example.com", Some(&a)),
            Some(hex.into_bytes())
        );
        // Pinned: HMAC-SHA-256 under 32 bytes of 0x0b (see lib.rs's vector).
        assert_eq!(
            m.mask_bytes(b"subject-42", Some(&tk(0x0b))),
            Some(b"1fcf1aeb994af3c80acf20342079e270214b6d3d92caa8add29dcf712a79de2d".to_vec())
        );
    }

    #[test]
    fn token_without_a_key_redacts_rather_than_leaking() {
        assert_eq!(
            Mask::Token.mask_json_value(br#""alice""#, None),
            br#""***""#
        );
        assert_eq!(
            Mask::Token.mask_bytes(b"alice", None),
            Some(b"***".to_vec())
        );
    }

    #[test]
    fn null_is_json_null_or_kafka_null() {
        assert_eq!(Mask::Null.mask_json_value(br#""x""#, None), b"null");
        assert_eq!(Mask::Null.mask_bytes(b"x", None), None);
    }

    #[test]
    fn erased_placeholders_agree() {
        assert_eq!(ERASED_BYTES, b"custos:erased");
        assert_eq!(
            crate::json_fields::json_string_value(ERASED_JSON).as_deref(),
            Some(ERASED_PLACEHOLDER)
        );
    }

    #[test]
    fn deserialises_every_config_form() {
        assert_eq!(yaml("redact"), Ok(Mask::Redact("***".into())));
        assert_eq!(yaml("{redact: XXX}"), Ok(Mask::Redact("XXX".into())));
        assert_eq!(
            yaml("redact: \"[hidden]\""),
            Ok(Mask::Redact("[hidden]".into()))
        );
        assert_eq!(yaml("{keep_last: 4}"), Ok(Mask::KeepLast(4)));
        assert_eq!(yaml("token"), Ok(Mask::Token));
        assert_eq!(yaml("null"), Ok(Mask::Null));
        assert_eq!(yaml("\"null\""), Ok(Mask::Null));
        assert_eq!(yaml("~"), Ok(Mask::Null));

        #[derive(serde::Deserialize, Debug)]
        struct Rule {
            mask: Mask,
        }
        let r: Rule = serde_yaml_ng::from_str("mask: {keep_last: 2}").expect("rule");
        assert_eq!(r.mask, Mask::KeepLast(2));
    }

    #[test]
    fn unknown_forms_name_the_accepted_ones() {
        for bad in [
            "hash",
            "{blur: 3}",
            "{keep_last: -1}",
            "{}",
            "{redact: a, keep_last: 2}",
            "7",
        ] {
            let e = yaml(bad).expect_err(bad);
            assert!(
                e.contains("redact") || e.contains("keep_last") || e.contains("invalid value"),
                "{bad}: {e}"
            );
        }
        let e = yaml("hash").expect_err("hash");
        assert!(
            e.contains("unknown mask `hash`") && e.contains("{keep_last: N}"),
            "{e}"
        );
    }

    #[test]
    fn debug_shows_only_configuration() {
        assert_eq!(format!("{:?}", Mask::KeepLast(4)), "KeepLast(4)");
        assert_eq!(format!("{:?}", Mask::default()), "Redact(\"***\")");
    }
}
