//! Locating chosen fields of a JSON record value by byte span.
//!
//! A consumer allowed to decrypt must get the producer's bytes back exactly, so
//! field encryption never re-serialises a document: it finds each selected
//! value's byte span in the original text, swaps just that span for a JSON
//! string holding the ciphertext ([`encode_ciphertext`]), and on fetch finds the
//! same paths again and splices the decrypted bytes back ([`splice`]).
//!
//! The scanner is strict RFC 8259 (records it cannot parse are rejected, never
//! forwarded half-protected), single-pass, non-recursive (an explicit stack
//! bounded by [`MAX_DEPTH`], so a hostile document cannot exhaust the stack),
//! and allocates nothing per token.
//!
//! Decisions where the RFC leaves room:
//! - `\u` escapes must form valid Unicode scalar values: a lone surrogate
//!   (`"\ud800"`) is rejected, as it has no UTF-8 form and parsers disagree on
//!   it (RFC 8259 §8.2).
//! - A byte-order mark is rejected (the RFC says senders must not add one).
//! - Object keys are compared after unescaping (`"em\u0061il"` is `email`).
//! - Duplicate keys: every occurrence is selected, so no copy of a protected
//!   field escapes encryption whichever one a consumer's parser keeps.
//! - Any top-level value is accepted, as RFC 8259 allows.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Deepest nesting of objects and arrays accepted in a document.
pub const MAX_DEPTH: usize = 128;

/// Marks a JSON string as Custos ciphertext: `"custos:v1:<base64>"`.
///
/// The base64 is the standard alphabet without padding; it needs no JSON
/// escaping, so the encoded string is exactly prefix + base64 between quotes.
pub const CIPHERTEXT_PREFIX: &str = "custos:v1:";

// ---------------------------------------------------------------------------
// Field paths
// ---------------------------------------------------------------------------

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Segment {
    /// An object member, by its unescaped name.
    Key(String),
    /// An array element, by position from 0.
    Index(usize),
    /// Every element of an array and every member value of an object (`[*]`).
    Wildcard,
}

/// A selection of values inside a JSON document (a JSONPath subset).
///
/// Accepted forms: `$.a.b`, `$.items[*].card`, `$.items[0].x`,
/// `$['odd key']` (or `$["odd key"]`), `$.a[*]`, `$.a.*`, and the shorthand
/// `a.b` (same as `$.a.b`). Bare names may hold ASCII letters, digits, `_`,
/// `-` and any non-ASCII character; other names need the quoted form, whose
/// escapes are JSON's plus `\'`. A path must name at least one step: the whole
/// document is protected by whole-value encryption, not by a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    segments: Vec<Segment>,
}

/// Why a field path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathErrorKind {
    /// Nothing after the optional `$`.
    #[error("the path names no field (the whole value is protected by whole-value encryption)")]
    Empty,
    /// A character that cannot start or continue a step.
    #[error("expected `.name`, `[index]`, `[*]` or `['quoted name']`")]
    ExpectedStep,
    /// `.` not followed by a name.
    #[error("expected a field name after `.` (names with spaces or punctuation need ['...'])")]
    ExpectedName,
    /// `[` not followed by an index, `*` or a quoted name.
    #[error("expected an index, `*` or a quoted name after `[`")]
    ExpectedBracketContent,
    /// An index with leading zeros or beyond the platform's range.
    #[error("an array index must be a non-negative integer without leading zeros")]
    BadIndex,
    /// A missing `]`.
    #[error("expected `]`")]
    ExpectedCloseBracket,
    /// A quoted name without its closing quote.
    #[error("unterminated quoted name")]
    UnterminatedQuote,
    /// A bad escape in a quoted name.
    #[error("invalid escape in a quoted name")]
    BadEscape,
}

/// A field path that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path `{path}` at byte {position}: {kind}")]
#[non_exhaustive]
pub struct PathError {
    /// The path as given.
    pub path: String,
    /// Byte offset of the offending character within `path`.
    pub position: usize,
    /// What is wrong there.
    pub kind: PathErrorKind,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || !c.is_ascii()
}

impl FieldPath {
    /// Parses a path such as `$.items[*].card` or `user.email`.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let err = |position, kind| PathError {
            path: text.to_owned(),
            position,
            kind,
        };
        let b = text.as_bytes();
        let mut segments = Vec::new();
        let mut i = match b.first() {
            Some(b'$') => 1,
            Some(b'[') | None => 0,
            Some(_) => {
                // Shorthand: `a.b` is `$.a.b`.
                let end = name_end(text, 0);
                if end == 0 {
                    return Err(err(0, PathErrorKind::ExpectedName));
                }
                segments.push(Segment::Key(text[..end].to_owned()));
                end
            }
        };
        while i < b.len() {
            match b[i] {
                b'.' => {
                    i += 1;
                    if b.get(i) == Some(&b'*') {
                        segments.push(Segment::Wildcard);
                        i += 1;
                        continue;
                    }
                    let end = name_end(text, i);
                    if end == i {
                        return Err(err(i, PathErrorKind::ExpectedName));
                    }
                    segments.push(Segment::Key(text[i..end].to_owned()));
                    i = end;
                }
                b'[' => {
                    i += 1;
                    match b.get(i) {
                        Some(b'*') => {
                            segments.push(Segment::Wildcard);
                            i += 1;
                        }
                        Some(&q @ (b'\'' | b'"')) => {
                            let (name, next) =
                                parse_quoted(text, i, q).map_err(|(p, k)| err(p, k))?;
                            segments.push(Segment::Key(name));
                            i = next;
                        }
                        Some(b'0'..=b'9') => {
                            let start = i;
                            while b.get(i).is_some_and(u8::is_ascii_digit) {
                                i += 1;
                            }
                            let digits = &text[start..i];
                            if digits.len() > 1 && digits.starts_with('0') {
                                return Err(err(start, PathErrorKind::BadIndex));
                            }
                            let n = digits
                                .parse::<usize>()
                                .map_err(|_| err(start, PathErrorKind::BadIndex))?;
                            segments.push(Segment::Index(n));
                        }
                        _ => return Err(err(i, PathErrorKind::ExpectedBracketContent)),
                    }
                    if b.get(i) != Some(&b']') {
                        return Err(err(i, PathErrorKind::ExpectedCloseBracket));
                    }
                    i += 1;
                }
                _ => return Err(err(i, PathErrorKind::ExpectedStep)),
            }
        }
        if segments.is_empty() {
            return Err(err(i, PathErrorKind::Empty));
        }
        Ok(Self { segments })
    }

    /// The steps of this path, outermost first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

/// Byte offset just past the bare name starting at `start`.
fn name_end(text: &str, start: usize) -> usize {
    text[start..]
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(text.len(), |(off, _)| start + off)
}

/// Parses a quoted name whose quote `q` is at `open`; returns the name and the
/// offset just past the closing quote.
fn parse_quoted(text: &str, open: usize, q: u8) -> Result<(String, usize), (usize, PathErrorKind)> {
    let b = text.as_bytes();
    let mut name = String::new();
    let mut i = open + 1;
    let mut run = i;
    loop {
        match b.get(i) {
            None => return Err((open, PathErrorKind::UnterminatedQuote)),
            Some(&c) if c == q => {
                name.push_str(&text[run..i]);
                return Ok((name, i + 1));
            }
            Some(b'\\') => {
                name.push_str(&text[run..i]);
                if b.get(i + 1) == Some(&b'\'') {
                    name.push('\'');
                    i += 2;
                } else {
                    let (c, next) =
                        decode_escape(b, i).map_err(|_| (i, PathErrorKind::BadEscape))?;
                    name.push(c);
                    i = next;
                }
                run = i;
            }
            Some(_) => i += 1,
        }
    }
}

impl fmt::Display for FieldPath {
    /// The canonical form, which [`FieldPath::parse`] reads back to an equal path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for s in &self.segments {
            match s {
                Segment::Key(k) if !k.is_empty() && k.chars().all(is_name_char) => {
                    write!(f, ".{k}")?;
                }
                Segment::Key(k) => {
                    f.write_str("['")?;
                    for c in k.chars() {
                        match c {
                            '\'' => f.write_str("\\'")?,
                            '\\' => f.write_str("\\\\")?,
                            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                            c => write!(f, "{c}")?,
                        }
                    }
                    f.write_str("']")?;
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Wildcard => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

impl FromStr for FieldPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Scanner
// ---------------------------------------------------------------------------

/// Why a document is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonErrorKind {
    /// The document ends inside a value, object or array.
    #[error("the document ends too early")]
    UnexpectedEnd,
    /// A character that cannot start a value.
    #[error("expected a value")]
    ExpectedValue,
    /// An object member that does not start with a string key.
    #[error("expected a string key")]
    ExpectedKey,
    /// A key not followed by `:`.
    #[error("expected ':' after an object key")]
    ExpectedColon,
    /// An object member not followed by `,` or `}`.
    #[error("expected ',' or '}}'")]
    ExpectedCommaOrBrace,
    /// An array element not followed by `,` or `]`.
    #[error("expected ',' or ']'")]
    ExpectedCommaOrBracket,
    /// A `,` directly before `}` or `]`.
    #[error("a trailing comma is not allowed")]
    TrailingComma,
    /// A string without its closing quote (offset of the opening quote).
    #[error("unterminated string")]
    UnterminatedString,
    /// A raw byte below 0x20 inside a string.
    #[error("a control character must be escaped inside a string")]
    ControlCharacter,
    /// A backslash not followed by a valid escape.
    #[error("invalid escape sequence")]
    InvalidEscape,
    /// A `\u` escape naming half of a surrogate pair without the other half.
    #[error("a \\u escape names an unpaired surrogate")]
    LoneSurrogate,
    /// Bytes inside a string that are not UTF-8.
    #[error("invalid UTF-8 in a string")]
    InvalidUtf8,
    /// A number such as `01`.
    #[error("a number must not have leading zeros")]
    LeadingZero,
    /// A malformed number (`-`, `1.`, `1e`).
    #[error("malformed number")]
    InvalidNumber,
    /// A word other than `true`, `false` or `null`.
    #[error("expected true, false or null")]
    InvalidLiteral,
    /// Objects and arrays nested deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Anything but whitespace after the top-level value.
    #[error("unexpected characters after the document")]
    TrailingCharacters,
}

/// A document that is not valid JSON, with where the problem was found.
///
/// Display names the offset and the problem, never the document's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {kind}")]
#[non_exhaustive]
pub struct JsonError {
    /// Byte offset of the problem in the document.
    pub offset: usize,
    /// What the problem is.
    pub kind: JsonErrorKind,
}

/// A value selected by a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Index into the `paths` given to [`locate`] of the path that selected it.
    pub path: usize,
    /// The value's bytes in the document: `"x@y.z"` with its quotes, `{...}`, `12`.
    pub span: Range<usize>,
}

fn jerr(offset: usize, kind: JsonErrorKind) -> JsonError {
    JsonError { offset, kind }
}

/// Finds every value selected by `paths` in `doc`, validating the whole document.
///
/// Results are in document order and never overlap: when one selected value
/// lies inside another, only the outer one is reported; when several paths
/// select the same value, the lowest path index is reported. Paths that select
/// nothing are simply absent. Every occurrence of a duplicate key is selected.
pub fn locate(doc: &[u8], paths: &[FieldPath]) -> Result<Vec<Located>, JsonError> {
    let mut out = Vec::new();
    locate_into(doc, paths, &mut out)?;
    Ok(out)
}

/// Checks that `doc` is one valid JSON document.
pub fn validate(doc: &[u8]) -> Result<(), JsonError> {
    locate_into(doc, &[], &mut Vec::new())
}

/// As [`locate`], appending to `out` (which is cleared first) so a caller can
/// reuse one buffer across records.
pub fn locate_into(
    doc: &[u8],
    paths: &[FieldPath],
    out: &mut Vec<Located>,
) -> Result<(), JsonError> {
    locate_until(doc, paths, out, usize::MAX, false)
}

/// How many times the opening of a ciphertext literal (`"custos:v1:`)
/// occurs anywhere in `doc`: at most the number of ciphertext values in it.
pub fn count_ciphertexts(doc: &[u8]) -> usize {
    // Built once: a searcher's set-up is not repeated for every record.
    static OPENING: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"custos:v1:"));
    debug_assert_eq!(&OPENING.needle()[1..], CIPHERTEXT_PREFIX.as_bytes());
    OPENING.find_iter(doc).count()
}

/// The selected values of `doc`, as [`locate_into`], but only as far as the
/// value that makes `ciphertexts` selected ciphertext strings: a reader who
/// may see plaintext needs nothing after the last ciphertext (with
/// `ciphertexts` from [`count_ciphertexts`], no selected ciphertext is
/// missed). The rest of the document is not read, so not validated either.
/// With zero, nothing is read.
pub fn locate_ciphertexts_into(
    doc: &[u8],
    paths: &[FieldPath],
    out: &mut Vec<Located>,
    ciphertexts: usize,
) -> Result<(), JsonError> {
    if ciphertexts == 0 {
        out.clear();
        return Ok(());
    }
    locate_until(doc, paths, out, ciphertexts, true)
}

fn is_ciphertext_literal(value: &[u8]) -> bool {
    value
        .strip_prefix(b"\"")
        .is_some_and(|v| v.starts_with(CIPHERTEXT_PREFIX.as_bytes()))
}

/// The walk behind [`locate_into`] and [`locate_ciphertexts_into`]: stops
/// once `stop_after` selected values are ciphertext strings. With
/// `skim_ciphertexts`, a selected string that opens like a ciphertext is
/// passed over to its closing quote without checking its characters (the
/// base64 decoder that reads it next refuses any that do not belong).
fn locate_until(
    doc: &[u8],
    paths: &[FieldPath],
    out: &mut Vec<Located>,
    stop_after: usize,
    skim_ciphertexts: bool,
) -> Result<(), JsonError> {
    out.clear();
    let mut ciphertexts = 0usize;
    // matched[p]: how many leading steps of path p the current position has
    // matched. Values deeper than a sibling's subtree are reset lazily when
    // the next value at a shallower depth is tested.
    let mut inline = [0u16; 16];
    let mut heap;
    let matched: &mut [u16] = if paths.len() <= inline.len() {
        &mut inline[..paths.len()]
    } else {
        heap = vec![0u16; paths.len()];
        &mut heap
    };
    let max_len = paths.iter().map(|p| p.segments.len()).max().unwrap_or(0);

    // The open containers: bit d of `arrays` tells whether level d is an
    // array (MAX_DEPTH is 128), and `indices[d]` the index of the current
    // element there, kept only for the levels a path step can test. Built
    // this way, not as an array of 128 frames, so a call initialises a few
    // bytes: zeroing a 2 KiB frame stack cost a tenth of a locate.
    const _: () = assert!(MAX_DEPTH <= 128);
    let mut arrays = 0u128;
    let mut inline_indices = [0u32; 16];
    let mut heap_indices;
    let indices: &mut [u32] = if max_len <= inline_indices.len() {
        &mut inline_indices[..max_len]
    } else {
        heap_indices = vec![0u32; max_len];
        &mut heap_indices
    };
    let mut depth = 0usize;
    // The selected container being skipped, if any: (depth once open, start, path).
    let mut selected: Option<(usize, usize, usize)> = None;
    // The key of the member whose value comes next (without quotes).
    let mut key = 0..0;
    let mut key_escaped = false;

    let n = doc.len();
    let mut pos = skip_ws(doc, 0);
    'value: loop {
        // Which path, if any, selects the value starting at `pos`.
        let mut hit = None;
        if selected.is_none() && depth > 0 && depth <= max_len {
            let d = depth - 1; // the step this value is matched against
            let parent_array = arrays & (1 << d) != 0;
            let parent_index = indices[d];
            for (p, path) in paths.iter().enumerate() {
                let m = &mut matched[p];
                if usize::from(*m) < d {
                    continue;
                }
                *m = d as u16;
                let Some(seg) = path.segments.get(d) else {
                    continue;
                };
                let ok = match seg {
                    Segment::Wildcard => true,
                    Segment::Index(i) => {
                        parent_array && usize::try_from(parent_index).is_ok_and(|x| x == *i)
                    }
                    Segment::Key(k) => {
                        !parent_array && key_eq(&doc[key.clone()], key_escaped, k.as_bytes())
                    }
                };
                if ok {
                    if d + 1 == path.segments.len() {
                        hit = Some(p);
                        break;
                    }
                    *m = (d + 1) as u16;
                }
            }
        }

        let start = pos;
        let Some(&c) = doc.get(pos) else {
            return Err(jerr(pos, JsonErrorKind::UnexpectedEnd));
        };
        match c {
            b'{' | b'[' => {
                if depth == MAX_DEPTH {
                    return Err(jerr(pos, JsonErrorKind::TooDeep));
                }
                let array = c == b'[';
                if array {
                    arrays |= 1 << depth;
                } else {
                    arrays &= !(1 << depth);
                }
                if let Some(index) = indices.get_mut(depth) {
                    *index = 0;
                }
                depth += 1;
                if let Some(p) = hit {
                    selected = Some((depth, start, p));
                }
                pos = skip_ws(doc, pos + 1);
                let close = if array { b']' } else { b'}' };
                if doc.get(pos) != Some(&close) {
                    if !array {
                        pos = read_key(doc, pos, &mut key, &mut key_escaped)?;
                    }
                    continue 'value;
                }
                // An empty container: fall through to closing it below.
            }
            b'"' => {
                let skimmed = match hit {
                    Some(_) if skim_ciphertexts => skimmed_ciphertext_end(doc, pos),
                    _ => None,
                };
                pos = match skimmed {
                    Some(end) => end,
                    None => scan_string(doc, pos)?.0,
                };
            }
            b'-' | b'0'..=b'9' => pos = scan_number(doc, pos)?,
            b't' | b'f' | b'n' => {
                let word: &[u8] = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !doc[pos..].starts_with(word) {
                    return Err(jerr(pos, JsonErrorKind::InvalidLiteral));
                }
                pos += word.len();
            }
            _ => return Err(jerr(pos, JsonErrorKind::ExpectedValue)),
        }
        if !matches!(c, b'{' | b'[') {
            if let Some(p) = hit {
                out.push(Located {
                    path: p,
                    span: start..pos,
                });
                if c == b'"' && is_ciphertext_literal(&doc[start..pos]) {
                    ciphertexts += 1;
                    if ciphertexts == stop_after {
                        return Ok(());
                    }
                }
            }
        }

        // A value (or an empty container's opening) ends just before `pos`:
        // close containers and move to the next value.
        let mut closing = matches!(c, b'{' | b'[');
        loop {
            if closing {
                // doc[pos] is the closing bracket of stack[depth - 1].
                pos += 1;
                if let Some((sd, s, p)) = selected {
                    if sd == depth {
                        out.push(Located {
                            path: p,
                            span: s..pos,
                        });
                        selected = None;
                    }
                }
                depth -= 1;
            }
            if depth == 0 {
                pos = skip_ws(doc, pos);
                if pos != n {
                    return Err(jerr(pos, JsonErrorKind::TrailingCharacters));
                }
                return Ok(());
            }
            pos = skip_ws(doc, pos);
            let top_array = arrays & (1 << (depth - 1)) != 0;
            let close = if top_array { b']' } else { b'}' };
            match doc.get(pos) {
                None => return Err(jerr(pos, JsonErrorKind::UnexpectedEnd)),
                Some(b',') => {
                    let comma = pos;
                    pos = skip_ws(doc, pos + 1);
                    if doc.get(pos) == Some(&close) {
                        return Err(jerr(comma, JsonErrorKind::TrailingComma));
                    }
                    if top_array {
                        if let Some(index) = indices.get_mut(depth - 1) {
                            // A record is under 2^31 bytes, so under 2^31 elements.
                            *index = index.saturating_add(1);
                        }
                    } else {
                        pos = read_key(doc, pos, &mut key, &mut key_escaped)?;
                    }
                    continue 'value;
                }
                Some(&b) if b == close => closing = true,
                Some(_) => {
                    let kind = if top_array {
                        JsonErrorKind::ExpectedCommaOrBracket
                    } else {
                        JsonErrorKind::ExpectedCommaOrBrace
                    };
                    return Err(jerr(pos, kind));
                }
            }
        }
    }
}

/// Just past the closing quote of the string at `open` when it opens like a
/// ciphertext and holds no backslash (base64 never needs one): a revealing
/// reader's walk crosses most of its bytes inside ciphertexts, and one
/// vectorised search is cheaper there than the validating scan.
#[inline]
fn skimmed_ciphertext_end(doc: &[u8], open: usize) -> Option<usize> {
    let body = open + 1 + CIPHERTEXT_PREFIX.len();
    if !doc.get(open + 1..body)?.eq(CIPHERTEXT_PREFIX.as_bytes()) {
        return None;
    }
    let at = memchr::memchr2(b'"', b'\\', doc.get(body..)?)?;
    (doc[body + at] == b'"').then_some(body + at + 1)
}

#[inline]
fn skip_ws(doc: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = doc.get(pos) {
        pos += 1;
    }
    pos
}

/// Reads `"key"` and `:` at `pos` (after whitespace), returning the offset of
/// the member's value.
// Inlined, as `scan_string`: a document is mostly short keys and values, so
// the calls cost about an eighth of a walk.
#[inline(always)]
fn read_key(
    doc: &[u8],
    pos: usize,
    key: &mut Range<usize>,
    escaped: &mut bool,
) -> Result<usize, JsonError> {
    match doc.get(pos) {
        Some(b'"') => {}
        None => return Err(jerr(pos, JsonErrorKind::UnexpectedEnd)),
        Some(_) => return Err(jerr(pos, JsonErrorKind::ExpectedKey)),
    }
    let (end, esc) = scan_string(doc, pos)?;
    *key = pos + 1..end - 1;
    *escaped = esc;
    let colon = skip_ws(doc, end);
    match doc.get(colon) {
        Some(b':') => Ok(skip_ws(doc, colon + 1)),
        None => Err(jerr(colon, JsonErrorKind::UnexpectedEnd)),
        Some(_) => Err(jerr(colon, JsonErrorKind::ExpectedColon)),
    }
}

/// Validates the string whose opening quote is at `open`; returns the offset
/// just past its closing quote and whether it holds escapes.
#[inline(always)]
fn scan_string(doc: &[u8], open: usize) -> Result<(usize, bool), JsonError> {
    let mut i = open + 1;
    let mut run = i;
    // The bytes of the current run OR-ed together: only their high bits
    // matter, to know whether the run needs a UTF-8 check.
    let mut seen = 0u64;
    let mut escaped = false;
    loop {
        // Strings are most of a document's bytes, so they are read a word
        // at a time, and the first byte that ends the run (a quote, a
        // backslash or a control character) is found from the word's stop
        // bits directly: most strings are short keys, which end in their
        // first word without a byte-at-a-time loop.
        let stop = loop {
            let w = word_at(doc, i);
            let stop = stop_bits(w);
            if stop != 0 {
                // The lowest flagged byte is always a real stop byte (see
                // `stop_bits`); the bytes below it belong to the run.
                let k = stop.trailing_zeros() / 8;
                seen |= w & ((1u64 << (k * 8)) - 1);
                break i + k as usize;
            }
            seen |= w;
            i += 8;
            // A long run: sixteen bytes per step (one branch per two words).
            while let Some(pair) = doc.get(i..i + 16) {
                let (lo, hi) = pair.split_at(8);
                let w0 = u64::from_le_bytes(lo.try_into().unwrap_or([0; 8]));
                let w1 = u64::from_le_bytes(hi.try_into().unwrap_or([0; 8]));
                if stop_bits(w0) | stop_bits(w1) != 0 {
                    break;
                }
                seen |= w0 | w1;
                i += 16;
            }
        };
        // Past the end, `word_at` reads quotes.
        let Some(&b) = doc.get(stop) else {
            return Err(jerr(open, JsonErrorKind::UnterminatedString));
        };
        match b {
            b'"' | b'\\' => {
                // '"' and '\\' are ASCII, so never inside a multi-byte sequence:
                // runs between them can be validated on their own.
                if seen & HIGH_BITS != 0 {
                    check_utf8(doc, run, stop)?;
                }
                if b == b'"' {
                    return Ok((stop + 1, escaped));
                }
                escaped = true;
                i = decode_escape(doc, stop).map_err(|k| jerr(stop, k))?.1;
                run = i;
                seen = 0;
            }
            _ => return Err(jerr(stop, JsonErrorKind::ControlCharacter)),
        }
    }
}

/// The eight bytes of `doc` at `i` as a little-endian word; bytes past the
/// end read as quotes, so a scan always stops at the end.
#[inline(always)]
fn word_at(doc: &[u8], i: usize) -> u64 {
    match doc.get(i..i + 8) {
        Some(word) => u64::from_le_bytes(word.try_into().unwrap_or([0; 8])),
        None => {
            let mut word = [b'"'; 8];
            let rest = doc.get(i..).unwrap_or(&[]);
            word[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(word)
        }
    }
}

/// 0x01 in every byte of a word.
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
/// 0x80 in every byte of a word.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Nonzero when some byte of `w` ends a string run: a quote, a backslash or
/// a control character. Each term is the classic "has a zero byte" test (on
/// `w` xor the byte, or `w` minus 0x20 for "below 0x20"); it may also flag
/// bytes above a real match (a borrow carries upwards), never a word
/// without one, so the lowest flagged byte is the first real stop byte.
/// Bytes of 0x80 and above never match. One expression, so the caller
/// branches once.
#[inline(always)]
fn stop_bits(w: u64) -> u64 {
    let quote = w ^ (LOW_BITS * u64::from(b'"'));
    let backslash = w ^ (LOW_BITS * u64::from(b'\\'));
    ((quote.wrapping_sub(LOW_BITS) & !quote)
        | (backslash.wrapping_sub(LOW_BITS) & !backslash)
        | (w.wrapping_sub(LOW_BITS * 0x20) & !w))
        & HIGH_BITS
}

fn check_utf8(doc: &[u8], from: usize, to: usize) -> Result<(), JsonError> {
    std::str::from_utf8(&doc[from..to])
        .map(|_| ())
        .map_err(|e| jerr(from + e.valid_up_to(), JsonErrorKind::InvalidUtf8))
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    let mut v = 0u32;
    for &d in digits {
        v = v * 16 + char::from(d).to_digit(16)?;
    }
    Some(v)
}

/// Decodes the escape whose backslash is at `i`; returns the character and
/// the offset just past the escape.
fn decode_escape(b: &[u8], i: usize) -> Result<(char, usize), JsonErrorKind> {
    let c = match b.get(i + 1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => {
            let hi = hex4(b, i + 2).ok_or(JsonErrorKind::InvalidEscape)?;
            return match hi {
                0xD800..=0xDBFF => {
                    if b.get(i + 6..i + 8) != Some(b"\\u") {
                        return Err(JsonErrorKind::LoneSurrogate);
                    }
                    let lo = hex4(b, i + 8).ok_or(JsonErrorKind::InvalidEscape)?;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return Err(JsonErrorKind::LoneSurrogate);
                    }
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    char::from_u32(cp)
                        .map(|c| (c, i + 12))
                        .ok_or(JsonErrorKind::LoneSurrogate)
                }
                0xDC00..=0xDFFF => Err(JsonErrorKind::LoneSurrogate),
                _ => char::from_u32(hi)
                    .map(|c| (c, i + 6))
                    .ok_or(JsonErrorKind::InvalidEscape),
            };
        }
        _ => return Err(JsonErrorKind::InvalidEscape),
    };
    Ok((c, i + 2))
}

/// Compares a raw key (between its quotes) with an unescaped name, without
/// allocating.
fn key_eq(raw: &[u8], escaped: bool, want: &[u8]) -> bool {
    if !escaped {
        return raw == want;
    }
    let (mut i, mut w) = (0, 0);
    while i < raw.len() {
        if raw[i] == b'\\' {
            let Ok((c, next)) = decode_escape(raw, i) else {
                return false;
            };
            let mut buf = [0u8; 4];
            let s = c.encode_utf8(&mut buf).as_bytes();
            if want.get(w..w + s.len()) != Some(s) {
                return false;
            }
            w += s.len();
            i = next;
        } else {
            if want.get(w) != Some(&raw[i]) {
                return false;
            }
            i += 1;
            w += 1;
        }
    }
    w == want.len()
}

fn scan_number(doc: &[u8], start: usize) -> Result<usize, JsonError> {
    let digit = |i: usize| doc.get(i).is_some_and(u8::is_ascii_digit);
    let mut i = start;
    if doc[i] == b'-' {
        i += 1;
    }
    match doc.get(i) {
        Some(b'0') => {
            i += 1;
            if digit(i) {
                return Err(jerr(start, JsonErrorKind::LeadingZero));
            }
        }
        Some(b'1'..=b'9') => {
            while digit(i) {
                i += 1;
            }
        }
        _ => return Err(jerr(i, JsonErrorKind::InvalidNumber)),
    }
    if doc.get(i) == Some(&b'.') {
        i += 1;
        if !digit(i) {
            return Err(jerr(i, JsonErrorKind::InvalidNumber));
        }
        while digit(i) {
            i += 1;
        }
    }
    if let Some(b'e' | b'E') = doc.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = doc.get(i) {
            i += 1;
        }
        if !digit(i) {
            return Err(jerr(i, JsonErrorKind::InvalidNumber));
        }
        while digit(i) {
            i += 1;
        }
    }
    Ok(i)
}

// ---------------------------------------------------------------------------
// Splicing and ciphertext strings
// ---------------------------------------------------------------------------

/// Copies `doc`, replacing each range with its bytes.
///
/// # Panics
/// If the ranges are not sorted, overlap, or fall outside `doc` (as
/// [`locate`]'s spans never do).
pub fn splice<R: AsRef<[u8]>>(doc: &[u8], replacements: &[(Range<usize>, R)]) -> Vec<u8> {
    let removed: usize = replacements.iter().map(|(r, _)| r.len()).sum();
    let added: usize = replacements.iter().map(|(_, b)| b.as_ref().len()).sum();
    let mut out = Vec::with_capacity((doc.len() + added).saturating_sub(removed));
    let mut pos = 0;
    for (r, with) in replacements {
        assert!(
            pos <= r.start && r.start <= r.end,
            "splice ranges must be sorted and disjoint"
        );
        out.extend_from_slice(&doc[pos..r.start]);
        out.extend_from_slice(with.as_ref());
        pos = r.end;
    }
    out.extend_from_slice(&doc[pos..]);
    out
}

/// A JSON string literal holding `envelope`: `"custos:v1:<base64>"`.
pub fn encode_ciphertext(envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_ciphertext_into(envelope, &mut out);
    out
}

/// Length of [`encode_ciphertext`]'s output for an envelope of `len` bytes.
pub fn ciphertext_json_len(len: usize) -> usize {
    CIPHERTEXT_PREFIX.len() + 2 + (len * 4).div_ceil(3)
}

/// As [`encode_ciphertext`], appended to `out`: a caller splicing a document
/// writes each field's literal in place instead of building it apart.
pub fn encode_ciphertext_into(envelope: &[u8], out: &mut Vec<u8>) {
    write_literal(b"", envelope, out);
}

/// Appends `"custos:v1:<text><base64 of rest>"`, where `text` is base64 of
/// whole 3-byte groups already encoded (empty for a whole envelope).
fn write_literal(text: &[u8], rest: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let b64_len = (rest.len() * 4).div_ceil(3);
    let text_start = start + 1 + CIPHERTEXT_PREFIX.len();
    let text_end = text_start + text.len();
    out.resize(text_end + b64_len + 1, b'"');
    out[start + 1..text_start].copy_from_slice(CIPHERTEXT_PREFIX.as_bytes());
    out[text_start..text_end].copy_from_slice(text);
    let written = base64_simd::STANDARD_NO_PAD
        .encode(
            rest,
            base64_simd::Out::from_slice(&mut out[text_end..text_end + b64_len]),
        )
        .len();
    // The slice is exactly the unpadded length, so the encoder fills it.
    debug_assert_eq!(written, b64_len);
}

/// Appends the bytes that `text` (standard alphabet, unpadded, canonical)
/// stands for; `false` when it is anything else.
fn decode_base64_append(text: &[u8], out: &mut Vec<u8>) -> bool {
    base64_simd::STANDARD_NO_PAD
        .decode_append(text, out)
        .is_ok()
}

/// The envelope inside a JSON value made by [`encode_ciphertext`]; `None` when
/// the value is anything else (another string, a number, padded or corrupt
/// base64).
pub fn decode_ciphertext(json_value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    decode_ciphertext_into(json_value, &mut out).then_some(out)
}

/// As [`decode_ciphertext`], into `out` (cleared first) so a caller can
/// reuse one buffer across fields; `false` when it is not ciphertext.
pub fn decode_ciphertext_into(json_value: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    ciphertext_base64(json_value).is_some_and(|b64| decode_base64_append(b64, out))
}

/// The base64 between `"custos:v1:` and the closing quote of a ciphertext
/// literal; `None` when `json_value` is not shaped like one.
fn ciphertext_base64(json_value: &[u8]) -> Option<&[u8]> {
    json_value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .and_then(|v| v.strip_prefix(CIPHERTEXT_PREFIX.as_bytes()))
}

/// The base64 of an envelope header's whole 3-byte groups, kept with the
/// bytes it stands for. Envelopes sealed under one data key share their
/// header (the key reference: most of a JSON field's envelope), so a run of
/// ciphertext literals repeats that text; [`CiphertextDecoder`] and
/// [`CiphertextEncoder`] compare it instead of decoding or encoding it again.
/// Groups are whole, so the rest of the literal is base64 of its own.
#[derive(Debug, Default)]
struct Opening {
    text: Vec<u8>,
    bytes: Vec<u8>,
}

impl Opening {
    /// Remembers `envelope`'s header (as [`crate::envelope::parse`] reads
    /// it) and the base64 text it begins with.
    fn remember(&mut self, envelope: &[u8], text: &[u8]) {
        self.text.clear();
        self.bytes.clear();
        let Ok(parsed) = crate::envelope::parse(envelope) else {
            return;
        };
        let groups = parsed.header_len() / 3;
        if let (Some(t), Some(b)) = (text.get(..groups * 4), envelope.get(..groups * 3)) {
            self.text.extend_from_slice(t);
            self.bytes.extend_from_slice(b);
        }
    }
}

/// [`decode_ciphertext_into`] for a run of literals, decoding the header
/// they share once.
#[derive(Debug, Default)]
pub struct CiphertextDecoder {
    opening: Opening,
}

impl CiphertextDecoder {
    /// As [`decode_ciphertext_into`]: the same bytes, the same answer.
    pub fn decode_into(&mut self, json_value: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(b64) = ciphertext_base64(json_value) else {
            return false;
        };
        let known = &self.opening.text;
        if !known.is_empty() && b64.len() > known.len() && b64.starts_with(known) {
            out.extend_from_slice(&self.opening.bytes);
            return decode_base64_append(&b64[known.len()..], out);
        }
        if !decode_base64_append(b64, out) {
            return false;
        }
        self.opening.remember(out, b64);
        true
    }
}

/// [`encode_ciphertext_into`] for a run of envelopes, encoding the header
/// they share once.
#[derive(Debug, Default)]
pub struct CiphertextEncoder {
    opening: Opening,
}

impl CiphertextEncoder {
    /// As [`encode_ciphertext_into`]: the same text.
    pub fn encode_into(&mut self, envelope: &[u8], out: &mut Vec<u8>) {
        let known = &self.opening.bytes;
        if known.is_empty() || envelope.len() <= known.len() || !envelope.starts_with(known) {
            let start = out.len();
            encode_ciphertext_into(envelope, out);
            let b64 = start + 1 + CIPHERTEXT_PREFIX.len()..out.len() - 1;
            self.opening.remember(envelope, &out[b64]);
            return;
        }
        write_literal(&self.opening.text, &envelope[known.len()..], out);
    }
}

/// The text of a JSON string literal (quotes included in `raw`), unescaped;
/// `None` when `raw` is not exactly one valid JSON string.
pub fn json_string_value(raw: &[u8]) -> Option<Cow<'_, str>> {
    if raw.first() != Some(&b'"') {
        return None;
    }
    let (end, escaped) = scan_string(raw, 0).ok()?;
    if end != raw.len() {
        return None;
    }
    let inner = &raw[1..end - 1];
    if !escaped {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    let mut s = String::with_capacity(inner.len());
    let (mut i, mut run) = (0, 0);
    while i < inner.len() {
        if inner[i] == b'\\' {
            s.push_str(std::str::from_utf8(&inner[run..i]).ok()?);
            let (c, next) = decode_escape(inner, i).ok()?;
            s.push(c);
            i = next;
            run = i;
        } else {
            i += 1;
        }
    }
    s.push_str(std::str::from_utf8(&inner[run..]).ok()?);
    Some(Cow::Owned(s))
}

/// Appends `s` to `out` as a JSON string literal (quotes, `"`, `\` and control
/// characters escaped; other characters kept as UTF-8).
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&b[run..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&b[run..]);
    out.push(b'"');
}

/// `s` as a JSON string literal; see [`write_json_string`].
pub fn encode_json_string(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    write_json_string(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time scan stops at every quote, backslash and control
    /// character and validates UTF-8 wherever they fall in a long string
    /// (inside the 16-byte stride, the 8-byte one, and the byte tail).
    #[test]
    fn long_strings_stop_at_the_right_byte_at_every_offset() {
        for at in (0..90).chain([127, 128, 129, 200, 1000]) {
            let doc = |special: &[u8]| {
                let mut d = vec![b'"'];
                d.extend(std::iter::repeat_n(b'a', at));
                d.extend_from_slice(special);
                d.extend(std::iter::repeat_n(b'b', 20));
                d.push(b'"');
                d
            };
            let q = doc(b"\"");
            assert_eq!(
                scan_string(&q, 0).expect("quote"),
                (at + 2, false),
                "at {at}"
            );
            let e = doc(b"\\n");
            assert_eq!(
                scan_string(&e, 0).expect("escape"),
                (e.len(), true),
                "at {at}"
            );
            let u = doc("\u{e9}".as_bytes());
            assert_eq!(
                scan_string(&u, 0).expect("utf-8"),
                (u.len(), false),
                "at {at}"
            );
            for (special, kind) in [
                (&b"\x1f"[..], JsonErrorKind::ControlCharacter),
                (b"\x00", JsonErrorKind::ControlCharacter),
                (b"\xff", JsonErrorKind::InvalidUtf8),
                (b"\xc3", JsonErrorKind::InvalidUtf8),
            ] {
                let err = scan_string(&doc(special), 0).expect_err("bad byte");
                assert_eq!(
                    (err.offset, err.kind),
                    (at + 1, kind),
                    "at {at}, {special:?}"
                );
            }
        }
    }

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).expect("path")
    }

    fn key(s: &str) -> Segment {
        Segment::Key(s.to_owned())
    }

    /// The selected texts, in order, for one document and paths.
    fn texts<'a>(doc: &'a str, paths: &[&str]) -> Vec<(usize, &'a str)> {
        let paths: Vec<_> = paths.iter().map(|s| p(s)).collect();
        locate(doc.as_bytes(), &paths)
            .expect("valid JSON")
            .into_iter()
            .map(|l| (l.path, &doc[l.span]))
            .collect()
    }

    fn error(doc: &[u8]) -> JsonError {
        validate(doc).expect_err("must be rejected")
    }

    // --- paths ---------------------------------------------------------------

    #[test]
    fn parses_every_path_form() {
        assert_eq!(p("$.a.b").segments(), [key("a"), key("b")]);
        assert_eq!(p("a.b"), p("$.a.b"));
        assert_eq!(
            p("$.items[*].card").segments(),
            [key("items"), Segment::Wildcard, key("card")]
        );
        assert_eq!(
            p("$.items[0].x").segments(),
            [key("items"), Segment::Index(0), key("x")]
        );
        assert_eq!(
            p("$.items[12]").segments(),
            [key("items"), Segment::Index(12)]
        );
        assert_eq!(p("$['odd key']").segments(), [key("odd key")]);
        assert_eq!(p(r#"$["it's"]"#).segments(), [key("it's")]);
        assert_eq!(p(r"$['it\'s \\ \u00e9']").segments(), [key("it's \\ é")]);
        assert_eq!(p("$.a[*]").segments(), [key("a"), Segment::Wildcard]);
        assert_eq!(p("$.a.*"), p("$.a[*]"));
        assert_eq!(p("[0].x").segments(), [Segment::Index(0), key("x")]);
        assert_eq!(
            p("$.first-name.ünï_2").segments(),
            [key("first-name"), key("ünï_2")]
        );
        assert_eq!(p("$['']").segments(), [key("")]);
    }

    #[test]
    fn path_errors_name_the_position() {
        let cases: &[(&str, usize, PathErrorKind)] = &[
            ("", 0, PathErrorKind::Empty),
            ("$", 1, PathErrorKind::Empty),
            ("$.", 2, PathErrorKind::ExpectedName),
            ("$.a..b", 4, PathErrorKind::ExpectedName),
            ("$.a b", 3, PathErrorKind::ExpectedStep),
            ("$a", 1, PathErrorKind::ExpectedStep),
            (".a", 0, PathErrorKind::ExpectedName),
            ("$.a[", 4, PathErrorKind::ExpectedBracketContent),
            ("$.a[-1]", 4, PathErrorKind::ExpectedBracketContent),
            ("$.a[01]", 4, PathErrorKind::BadIndex),
            ("$.a[99999999999999999999999]", 4, PathErrorKind::BadIndex),
            ("$.a[1", 5, PathErrorKind::ExpectedCloseBracket),
            ("$.a[*", 5, PathErrorKind::ExpectedCloseBracket),
            ("$['abc]", 2, PathErrorKind::UnterminatedQuote),
            ("$['a\\x']", 4, PathErrorKind::BadEscape),
            ("$['\\ud800']", 3, PathErrorKind::BadEscape),
        ];
        for &(text, position, kind) in cases {
            let e = FieldPath::parse(text).expect_err(text);
            assert_eq!((e.position, e.kind), (position, kind), "{text}");
        }
        let e = FieldPath::parse("$.a b").expect_err("space");
        assert_eq!(
            e.to_string(),
            "invalid field path `$.a b` at byte 3: expected `.name`, `[index]`, `[*]` or `['quoted name']`"
        );
    }

    #[test]
    fn paths_display_canonically_and_round_trip() {
        for (text, shown) in [
            ("a.b", "$.a.b"),
            ("$.items[*].card", "$.items[*].card"),
            ("$.a.*", "$.a[*]"),
            ("$['odd key'][3]", "$['odd key'][3]"),
            (r"$['it\'s\\']", r"$['it\'s\\']"),
            (r#"$["tab\there"]"#, r"$['tab\u0009here']"),
            ("$['']", "$['']"),
        ] {
            let path = p(text);
            assert_eq!(path.to_string(), shown);
            assert_eq!(p(shown), path);
        }
    }

    #[test]
    fn paths_deserialise_from_config() {
        let v: Vec<FieldPath> = serde_yaml_ng::from_str("[\"$.a[*]\", b.c]").expect("yaml");
        assert_eq!(v, [p("$.a[*]"), p("$.b.c")]);
        let e = serde_yaml_ng::from_str::<FieldPath>("\"$.a[\"").expect_err("bad");
        assert!(e.to_string().contains("at byte 4"), "{e}");
    }

    // --- spans ---------------------------------------------------------------

    #[test]
    fn spans_are_exact_for_every_value_type() {
        let doc = r#" { "s" : "x@y.z" , "n":-12.5e+3,"z":0,"t":true,"f" : false,"u":null,
            "o":{ "k" : [ 1 ] },"a":[ ],"e":{},"esc":"a\"b\\c\u00e9\n" } "#;
        let got = texts(doc, &["s", "n", "z", "t", "f", "u", "o", "a", "e", "esc"]);
        assert_eq!(
            got,
            [
                (0, r#""x@y.z""#),
                (1, "-12.5e+3"),
                (2, "0"),
                (3, "true"),
                (4, "false"),
                (5, "null"),
                (6, r#"{ "k" : [ 1 ] }"#),
                (7, "[ ]"),
                (8, "{}"),
                (9, r#""a\"b\\c\u00e9\n""#),
            ]
        );
        // Byte offsets, not just texts.
        let located = locate(doc.as_bytes(), &[p("s")]).expect("valid");
        assert_eq!(
            located,
            [Located {
                path: 0,
                span: 9..16
            }]
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        let doc = r#"{"user":{"email":"a@b.c","address":{"zip":"10115"}},
            "items":[{"card":"4111","n":1},{"n":2},{"card":"5500","x":{"card":"no"}}],
            "grid":[[1,2],[3,[4,5]]]}"#;
        assert_eq!(texts(doc, &["$.user.email"]), [(0, r#""a@b.c""#)]);
        assert_eq!(texts(doc, &["$.user.address.zip"]), [(0, r#""10115""#)]);
        assert_eq!(
            texts(doc, &["$.items[*].card"]),
            [(0, r#""4111""#), (0, r#""5500""#)]
        );
        assert_eq!(texts(doc, &["$.items[2].card"]), [(0, r#""5500""#)]);
        assert_eq!(texts(doc, &["$.items[1].card"]), []);
        assert_eq!(texts(doc, &["$.items[2].x.card"]), [(0, r#""no""#)]);
        assert_eq!(texts(doc, &["$.grid[1][1][0]"]), [(0, "4")]);
        assert_eq!(texts(doc, &["$.grid[*][0]"]), [(0, "1"), (0, "3")]);
        assert_eq!(texts(doc, &["$.grid[1][*]"]), [(0, "3"), (0, "[4,5]")]);
        // A wildcard over an object selects its member values.
        assert_eq!(
            texts(doc, &["$.user.*"]),
            [(0, r#""a@b.c""#), (0, r#"{"zip":"10115"}"#)]
        );
        // Missing, or of the wrong kind: simply not located.
        assert_eq!(
            texts(
                doc,
                &["$.nope", "$.user[0]", "$.items.card", "$.user.email.x"]
            ),
            []
        );
    }

    #[test]
    fn a_sibling_subtree_does_not_leak_matches() {
        // After descending $.a.b in the first member, the path must not
        // consider `c` under an unrelated key to be under `a.b`.
        let doc =
            r#"{"a":{"b":{"x":1}},"q":{"b":{"c":"no"}},"a2":{"c":"no"},"a":{"b":{"c":"yes"}}}"#;
        assert_eq!(texts(doc, &["$.a.b.c"]), [(0, r#""yes""#)]);
        let doc =
            r#"[{"k":{"k":{"k":1}}},{"z":{"k":{"k":2}}},{"k":{"z":{"k":3}}},{"k":{"k":{"k":4}}}]"#;
        assert_eq!(texts(doc, &["$[*].k.k.k"]), [(0, "1"), (0, "4")]);
    }

    #[test]
    fn outer_selection_wins_and_lowest_path_index_on_ties() {
        let doc = r#"{"a":{"b":{"c":1},"d":2},"e":3}"#;
        assert_eq!(
            texts(doc, &["$.a.b.c", "$.a", "$.e"]),
            [(1, r#"{"b":{"c":1},"d":2}"#), (2, "3")]
        );
        assert_eq!(texts(doc, &["$.a.b", "$.a.b.c"]), [(0, r#"{"c":1}"#)]);
        assert_eq!(texts(doc, &["$.e", "e", "$['e']"]), [(0, "3")]);
        assert_eq!(
            texts(doc, &["$.a.*", "$.a.d"]),
            [(0, r#"{"c":1}"#), (0, "2")]
        );
    }

    #[test]
    fn keys_compare_unescaped() {
        let doc =
            r#"{"em\u0061il":"a@b.c","\u00fcber":1,"\ud83d\ude00":2,"a\/b":3,"q\"k":4,"tab\t":5}"#;
        assert_eq!(texts(doc, &["$.email"]), [(0, r#""a@b.c""#)]);
        assert_eq!(texts(doc, &["$.über"]), [(0, "1")]);
        assert_eq!(texts(doc, &["$['😀']"]), [(0, "2")]);
        assert_eq!(texts(doc, &["$['a/b']"]), [(0, "3")]);
        assert_eq!(texts(doc, &[r#"$['q"k']"#]), [(0, "4")]);
        assert_eq!(texts(doc, &[r"$['tab\t']"]), [(0, "5")]);
        // Raw UTF-8 keys match too; near misses do not.
        assert_eq!(texts(r#"{"über":1}"#, &["$.über", "$.ube"]), [(0, "1")]);
        assert_eq!(texts(r#"{"emai\u006c":1,"email2":2}"#, &["$.emai"]), []);
    }

    #[test]
    fn duplicate_keys_select_every_occurrence() {
        let doc = r#"{"ssn":"1","x":0,"ssn":"2"}"#;
        assert_eq!(texts(doc, &["$.ssn"]), [(0, r#""1""#), (0, r#""2""#)]);
    }

    #[test]
    fn unicode_values_and_top_level_scalars() {
        let doc = "{\"name\":\"Zoë 😀 日本\",\"n\":\"\\ud83d\\ude00\"}";
        assert_eq!(
            texts(doc, &["$.name", "$.n"]),
            [(0, "\"Zoë 😀 日本\""), (1, r#""\ud83d\ude00""#)]
        );
        for scalar in ["\"x\"", "1", " true ", "null"] {
            assert_eq!(texts(scalar, &["$.a"]), []);
        }
        assert_eq!(texts("[1,[2]]", &["[1]"]), [(0, "[2]")]);
    }

    #[test]
    fn many_paths_use_the_heap_state() {
        let doc = r#"{"k20":20,"k3":3}"#;
        let paths: Vec<String> = (0..40).map(|i| format!("$.k{i}")).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        assert_eq!(texts(doc, &refs), [(20, "20"), (3, "3")]);
    }

    #[test]
    fn locate_into_reuses_and_clears_its_buffer() {
        let mut out = vec![Located {
            path: 9,
            span: 0..1,
        }];
        locate_into(br#"{"a":1}"#, &[p("a")], &mut out).expect("valid");
        assert_eq!(
            out,
            [Located {
                path: 0,
                span: 5..6
            }]
        );
    }

    // --- invalid documents -----------------------------------------------------

    #[test]
    fn invalid_documents_are_rejected_with_offsets() {
        use JsonErrorKind as K;
        let cases: &[(&[u8], usize, JsonErrorKind)] = &[
            (b"", 0, K::UnexpectedEnd),
            (b"   ", 3, K::UnexpectedEnd),
            (br#"{"a":"abc"#, 5, K::UnterminatedString),
            (br#"{"a":"a\qb"}"#, 7, K::InvalidEscape),
            (br#"{"a":"\u12G4"}"#, 6, K::InvalidEscape),
            (br#"{"a":"\ud800"}"#, 6, K::LoneSurrogate),
            (br#"{"a":"\udc00"}"#, 6, K::LoneSurrogate),
            (br#"{"a":"\ud800\u0041"}"#, 6, K::LoneSurrogate),
            (br#"{"a":1,}"#, 6, K::TrailingComma),
            (b"[1,2,]", 4, K::TrailingComma),
            (b"[1,,2]", 3, K::ExpectedValue),
            (br#"{"a":01}"#, 5, K::LeadingZero),
            (b"-01", 0, K::LeadingZero),
            (b"-", 1, K::InvalidNumber),
            (b"1.", 2, K::InvalidNumber),
            (b"1.e5", 2, K::InvalidNumber),
            (b"1e+", 3, K::InvalidNumber),
            (b".5", 0, K::ExpectedValue),
            (b"+1", 0, K::ExpectedValue),
            (b"\"a\tb\"", 2, K::ControlCharacter),
            (b"\"a\nb\"", 2, K::ControlCharacter),
            (b"\"a\x00b\"", 2, K::ControlCharacter),
            (b"\"ab\xff\"", 3, K::InvalidUtf8),
            (b"\"a\xc3\"", 2, K::InvalidUtf8),
            (b"\"\xed\xa0\x80\"", 1, K::InvalidUtf8),
            (b"{\"a\":1} x", 8, K::TrailingCharacters),
            (b"[1] [2]", 4, K::TrailingCharacters),
            (b"1 2", 2, K::TrailingCharacters),
            (b"\xef\xbb\xbf{}", 0, K::ExpectedValue),
            (b"{\"a\" 1}", 5, K::ExpectedColon),
            (b"{a:1}", 1, K::ExpectedKey),
            (b"{\"a\":1 \"b\":2}", 7, K::ExpectedCommaOrBrace),
            (b"[1 2]", 3, K::ExpectedCommaOrBracket),
            (b"[1}", 2, K::ExpectedCommaOrBracket),
            (b"{\"a\":1]", 6, K::ExpectedCommaOrBrace),
            (b"[tru]", 1, K::InvalidLiteral),
            (b"nul", 0, K::InvalidLiteral),
            (b"[1", 2, K::UnexpectedEnd),
            (b"{\"a\":", 5, K::UnexpectedEnd),
            (b"{\"a\"", 4, K::UnexpectedEnd),
            (b"{", 1, K::UnexpectedEnd),
            (b"{\"a\":1,", 7, K::UnexpectedEnd),
        ];
        for &(doc, offset, kind) in cases {
            let e = error(doc);
            assert_eq!(
                (e.offset, e.kind),
                (offset, kind),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        assert_eq!(
            error(br#"{"a":1,}"#).to_string(),
            "invalid JSON at byte 6: a trailing comma is not allowed"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        validate(ok.as_bytes()).expect("exactly at the limit");
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            error(deep.as_bytes()),
            jerr(MAX_DEPTH, JsonErrorKind::TooDeep)
        );
        // A hostile document far deeper than any stack would take.
        let hostile = "{\"a\":".repeat(1_000_000);
        assert_eq!(error(hostile.as_bytes()).kind, JsonErrorKind::TooDeep);
    }

    // --- splice and ciphertext strings -------------------------------------------

    #[test]
    fn splice_and_restore_is_byte_identical() {
        let doc = br#"{ "email" : "a@b.c", "card": {"n":"4111"} ,"x":[1, 2] }"#;
        let paths = [p("$.email"), p("$.card"), p("$.x[1]")];
        let located = locate(doc, &paths).expect("valid");
        let originals: Vec<Vec<u8>> = located
            .iter()
            .map(|l| doc[l.span.clone()].to_vec())
            .collect();
        let reps: Vec<_> = located
            .iter()
            .enumerate()
            .map(|(i, l)| (l.span.clone(), encode_ciphertext(&[i as u8; 5])))
            .collect();
        let sealed = splice(doc, &reps);
        assert_eq!(
            sealed,
            br#"{ "email" : "custos:v1:AAAAAAA", "card": "custos:v1:AQEBAQE" ,"x":[1, "custos:v1:AgICAgI"] }"#
        );
        let again = locate(&sealed, &paths).expect("still valid JSON");
        let restored: Vec<_> = again
            .iter()
            .map(|l| {
                let env = decode_ciphertext(&sealed[l.span.clone()]).expect("ciphertext");
                (l.span.clone(), originals[usize::from(env[0])].clone())
            })
            .collect();
        assert_eq!(splice(&sealed, &restored), doc);
        assert_eq!(splice::<&[u8]>(doc, &[]), doc);
    }

    #[test]
    fn a_plaintext_reader_walks_only_to_the_last_ciphertext() {
        let paths = [
            FieldPath::parse("$.a").expect("path"),
            FieldPath::parse("$.b[*].c").expect("path"),
        ];
        let ct = |s: &str| format!("\"custos:v1:{s}\"");
        // Ciphertext at both paths, a duplicate key, plain text at a path,
        // and the prefix where no path selects it (inside another string,
        // and as a key).
        let doc = format!(
            r#"{{"a":{},"b":[{{"c":{}}},{{"c":"plain"}}],"note":"x \"custos:v1:CC\"","a":{},"z":{{{}:1}},"tail":[1,2]}}"#,
            ct("AA"),
            ct("BB"),
            ct("DD"),
            ct("EE"),
        );
        let doc = doc.as_bytes();
        let all = locate(doc, &paths).expect("valid");
        assert_eq!(count_ciphertexts(doc), 5);
        let mut out = vec![Located {
            path: 9,
            span: 0..0,
        }];
        // Counted occurrences that are not selected values never stop the
        // walk early: it reads the whole document and finds what locate does.
        locate_ciphertexts_into(doc, &paths, &mut out, count_ciphertexts(doc)).expect("valid");
        assert_eq!(out, all);
        // Asked for the first two ciphertexts, it stops at the second.
        locate_ciphertexts_into(doc, &paths, &mut out, 2).expect("valid");
        assert_eq!(out, all[..2]);
        assert_eq!(&doc[out[1].span.clone()], ct("BB").as_bytes());
        // Nothing after the last ciphertext is read, so a broken tail does
        // not hide the fields before it; the full walk refuses the document.
        let broken = format!(
            r#"{{"a":{},"b":[{{"c":{}}}], "rest": nope"#,
            ct("AA"),
            ct("BB")
        );
        let broken = broken.as_bytes();
        assert!(locate(broken, &paths).is_err());
        locate_ciphertexts_into(broken, &paths, &mut out, count_ciphertexts(broken))
            .expect("the fields come first");
        assert_eq!(out.len(), 2);
        // No ciphertext: nothing is read, not even invalid bytes.
        locate_ciphertexts_into(b"not json", &paths, &mut out, 0).expect("nothing read");
        assert!(out.is_empty());
        assert_eq!(count_ciphertexts(b"not json"), 0);
        // A broken document before the last ciphertext is still an error.
        let early = format!(r#"{{"x":tru,"a":{}}}"#, ct("AA"));
        assert!(locate_ciphertexts_into(early.as_bytes(), &paths, &mut out, 1).is_err());
    }

    #[test]
    fn a_plaintext_reader_skims_ciphertexts_to_the_same_spans() {
        let paths = [
            FieldPath::parse("$.a").expect("path"),
            FieldPath::parse("$.b").expect("path"),
        ];
        // Long base64 bodies, an escaped quote inside a selected
        // ciphertext-like string (the skim must not stop at it), and an
        // unselected one holding a quote-like escape.
        for body in ["QUJD", &"x".repeat(300), r#"ab\"cd"#, r#"ab\\"#] {
            let doc = format!(
                r#"{{"a":"custos:v1:{body}","n":"custos:v1:\"","b":"custos:v1:{body}","c":[1]}}"#
            );
            let doc = doc.as_bytes();
            let all = locate(doc, &paths).expect("valid");
            let mut out = Vec::new();
            locate_ciphertexts_into(doc, &paths, &mut out, count_ciphertexts(doc)).expect("valid");
            assert_eq!(out, all, "{body}");
            assert_eq!(out.len(), 2);
        }
        // A control character inside a selected ciphertext is passed over
        // by the skim (the base64 decoder refuses it later); the strict walk
        // refuses the document.
        let doc = b"{\"a\":\"custos:v1:AB\x01CD\",\"b\":1}";
        assert!(locate(doc, &paths).is_err());
        let mut out = Vec::new();
        locate_ciphertexts_into(doc, &paths, &mut out, 1).expect("skimmed");
        assert_eq!(out[0].span, 5..22);
    }

    #[test]
    #[should_panic(expected = "sorted and disjoint")]
    fn splice_refuses_overlapping_ranges() {
        splice(b"abcdef", &[(1..4, b"x"), (3..5, b"y")]);
    }

    #[test]
    fn the_run_coders_give_what_the_plain_ones_give() {
        use crate::envelope::{seal, Algorithm, Binding};
        use crate::key_ref::KeyRef;
        use crate::kms::WrappedKey;
        // Header lengths of every residue mod 3 (KEK ids of 7, 8 and 9
        // bytes), a subject key, the same key again, and one more time
        // after another key came between.
        let wrapped = |id: &str, blob: u8| {
            KeyRef::Wrapped(WrappedKey {
                kek_id: id.into(),
                kek_version: 3,
                blob: vec![blob; 60],
            })
        };
        let keys = [
            wrapped("kek-abc", 1),
            wrapped("kek-abc", 1),
            wrapped("kek-abcd", 2),
            wrapped("kek-abcde", 3),
            KeyRef::Subject {
                token: [7; 32],
                version: 2,
            },
            wrapped("kek-abc", 1),
            wrapped("kek-abc", 4),
            wrapped("kek-abc", 1),
        ];
        let binding = Binding {
            topic: "t",
            field: "json:$.a",
        };
        let mut envelopes = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for plaintext in [&b""[..], b"x", b"xy", b"xyz", &[b'p'; 40][..i + 1]] {
                let mut env = Vec::new();
                seal(
                    Algorithm::Aes256Gcm,
                    &[5; 32],
                    k,
                    &binding,
                    plaintext,
                    &mut env,
                )
                .expect("seal");
                envelopes.push(env);
            }
        }
        // Not envelopes at all, between real ones.
        envelopes.insert(3, b"not an envelope".to_vec());
        envelopes.insert(9, Vec::new());
        let (mut enc, mut dec) = (CiphertextEncoder::default(), CiphertextDecoder::default());
        let mut hits = 0;
        for env in &envelopes {
            let plain = encode_ciphertext(env);
            let mut run = b"[".to_vec();
            enc.encode_into(env, &mut run);
            assert_eq!(&run[1..], &plain[..], "encoded {env:?}");
            hits += usize::from(
                !enc.opening.text.is_empty() && plain[11..].starts_with(&enc.opening.text),
            );
            let mut out = vec![9; 3];
            assert!(dec.decode_into(&plain, &mut out));
            assert_eq!(&out, env);
            // A literal whose shared opening is intact but whose rest is
            // corrupt, or which is not ciphertext, fails as the plain one does.
            let mut bad = plain.clone();
            let last = bad.len() - 2;
            bad[last] = b'=';
            assert_eq!(
                dec.decode_into(&bad, &mut out),
                decode_ciphertext(&bad).is_some()
            );
            assert!(!dec.decode_into(br#""hello""#, &mut out));
            // A changed opening is decoded afresh, not taken from memory.
            if plain.len() > 20 {
                let mut other = plain.clone();
                other[12] = if other[12] == b'A' { b'B' } else { b'A' };
                let want = decode_ciphertext(&other);
                assert_eq!(dec.decode_into(&other, &mut out), want.is_some());
                if let Some(w) = want {
                    assert_eq!(out, w);
                }
                assert!(dec.decode_into(&plain, &mut out));
                assert_eq!(&out, env);
            }
        }
        assert!(hits > envelopes.len() / 2, "{hits}");
    }

    #[test]
    fn ciphertext_strings_are_pinned() {
        assert_eq!(encode_ciphertext(b""), br#""custos:v1:""#);
        assert_eq!(encode_ciphertext(b"\x00\xff\xfe"), br#""custos:v1:AP/+""#);
        assert_eq!(encode_ciphertext(b"ab"), br#""custos:v1:YWI""#);
        for env in [&b""[..], b"a", b"ab", b"abc", &[0xffu8; 100]] {
            let s = encode_ciphertext(env);
            assert_eq!(json_string_value(&s).map(|c| c.len()), Some(s.len() - 2));
            assert_eq!(s.len(), ciphertext_json_len(env.len()));
            let mut appended = b"{\"a\":".to_vec();
            encode_ciphertext_into(env, &mut appended);
            assert_eq!(&appended[..5], b"{\"a\":");
            assert_eq!(&appended[5..], &s[..]);
            assert_eq!(decode_ciphertext(&s).as_deref(), Some(env));
        }
        for not in [
            &br#""custos:v1:YWI=""#[..],
            br#""custos:v2:YWI""#,
            br#""custos:v1:Y""#,
            br#""hello""#,
            br#"custos:v1:YWI"#,
            b"12",
            b"\"",
        ] {
            assert_eq!(
                decode_ciphertext(not),
                None,
                "{}",
                String::from_utf8_lossy(not)
            );
        }
    }

    #[test]
    fn json_strings_encode_and_decode() {
        assert_eq!(
            encode_json_string("a\"b\\c\n\u{1}é😀"),
            "\"a\\\"b\\\\c\\n\\u0001é😀\"".as_bytes()
        );
        assert_eq!(
            json_string_value(br#""a\"b\u0041\ud83d\ude00""#).as_deref(),
            Some("a\"bA😀")
        );
        assert!(matches!(
            json_string_value(br#""plain""#),
            Some(Cow::Borrowed("plain"))
        ));
        assert_eq!(json_string_value(br#""a" "#), None);
        assert_eq!(json_string_value(b"12"), None);
        assert_eq!(json_string_value(br#""\ud800""#), None);
    }

    // --- randomised ----------------------------------------------------------

    /// xorshift64*: deterministic, dependency-free randomness.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len())]
        }
    }

    /// The vectorised base64 judges and decodes every text as the base64
    /// crate's strict unpadded decoder does (wrong characters, padding,
    /// impossible lengths, non-canonical last characters), and both encode
    /// every length alike.
    #[test]
    fn base64_is_decoded_and_encoded_like_the_reference() {
        use base64::engine::general_purpose::STANDARD_NO_PAD;
        use base64::Engine as _;
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let odd = [b'=', b'-', b'_', b' ', b'"', b'\\', b'\n', 0x80, 0xff, 0];
        let mut r = Rng(0x5eed_ba5e);
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let len = r.below(48);
            let mut text: Vec<u8> = (0..len).map(|_| *r.pick(alphabet)).collect();
            match r.below(8) {
                0 if len > 0 => {
                    let i = r.below(len);
                    text[i] = *r.pick(&odd);
                }
                1 => text.push(b'='),
                2 => text.extend_from_slice(b"=="),
                _ => {}
            }
            let mut got = vec![7u8];
            let decoded = decode_base64_append(&text, &mut got);
            let want = STANDARD_NO_PAD.decode(&text);
            assert_eq!(
                decoded,
                want.is_ok(),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
            if let Ok(want) = want {
                assert_eq!(
                    (got[0], &got[1..]),
                    (7, &want[..]),
                    "appended after what was there"
                );
                ok += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            ok > 10_000 && refused > 10_000,
            "{ok} decoded, {refused} refused"
        );
        for len in 0..100 {
            let bytes: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
            let mut literal = Vec::new();
            write_literal(b"", &bytes, &mut literal);
            let text = &literal[1 + CIPHERTEXT_PREFIX.len()..literal.len() - 1];
            assert_eq!(text, STANDARD_NO_PAD.encode(&bytes).as_bytes(), "{len}");
        }
    }

    const KEYS: &[(&str, &str)] = &[
        ("a", "\"a\""),
        ("b", "\"b\""),
        ("email", "\"em\\u0061il\""),
        ("über", "\"über\""),
        ("x y", "\"x y\""),
        ("q\"", "\"q\\\"\""),
        ("😀", "\"\\ud83d\\ude00\""),
    ];
    const STRINGS: &[&str] = &[
        "\"\"",
        "\"plain\"",
        "\"tab\\there\"",
        "\"Zoë 日本\"",
        "\"\\u00e9\\/\\\\\"",
        "\"\\ud83d\\ude00!\"",
    ];
    const NUMBERS: &[&str] = &["0", "-0", "7", "-12.5e+3", "1E9", "3.25", "100", "-1e-2"];

    fn ws(r: &mut Rng, out: &mut String) {
        for _ in 0..r.below(3) {
            out.push(*r.pick(&[' ', '\n', '\t', '\r']));
        }
    }

    fn gen(r: &mut Rng, depth: usize, out: &mut String) {
        let kind = if depth >= 4 { r.below(3) } else { r.below(5) };
        match kind {
            0 => out.push_str(r.pick::<&str>(STRINGS)),
            1 => out.push_str(r.pick::<&str>(NUMBERS)),
            2 => out.push_str(r.pick::<&str>(&["true", "false", "null"])),
            3 => {
                out.push('{');
                let mut keys: Vec<usize> = (0..KEYS.len()).collect();
                let n = r.below(5);
                for i in 0..n {
                    let k = keys.swap_remove(r.below(keys.len()));
                    if i > 0 {
                        out.push(',');
                    }
                    ws(r, out);
                    out.push_str(KEYS[k].1);
                    ws(r, out);
                    out.push(':');
                    ws(r, out);
                    gen(r, depth + 1, out);
                    ws(r, out);
                }
                if n == 0 {
                    ws(r, out);
                }
                out.push('}');
            }
            _ => {
                out.push('[');
                let n = r.below(5);
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    ws(r, out);
                    gen(r, depth + 1, out);
                    ws(r, out);
                }
                out.push(']');
            }
        }
    }

    /// A random path that often exists in `v`.
    fn gen_path(r: &mut Rng, mut v: &serde_json::Value) -> Option<FieldPath> {
        let mut segments = Vec::new();
        loop {
            let stop = !segments.is_empty() && r.below(3) == 0;
            let next = match v {
                serde_json::Value::Object(m) if !m.is_empty() && !stop => {
                    let keys: Vec<&String> = m.keys().collect();
                    let k = *r.pick(&keys);
                    match r.below(6) {
                        0 => {
                            segments.push(Segment::Wildcard);
                            &m[k]
                        }
                        1 => {
                            segments.push(Segment::Key("missing".into()));
                            break;
                        }
                        _ => {
                            segments.push(Segment::Key(k.clone()));
                            &m[k]
                        }
                    }
                }
                serde_json::Value::Array(a) if !a.is_empty() && !stop => {
                    let i = r.below(a.len() + 1);
                    if i == a.len() || r.below(3) == 0 {
                        segments.push(if r.below(2) == 0 {
                            Segment::Wildcard
                        } else {
                            Segment::Index(i)
                        });
                    } else {
                        segments.push(Segment::Index(i));
                    }
                    match a.get(i) {
                        Some(e) => e,
                        None => break,
                    }
                }
                _ => break,
            };
            v = next;
        }
        (!segments.is_empty()).then_some(FieldPath { segments })
    }

    /// Independent evaluation over serde_json's tree: the selected values, with
    /// outer selections hiding inner ones.
    fn oracle(v: &serde_json::Value, paths: &[FieldPath]) -> Vec<String> {
        fn walk(
            v: &serde_json::Value,
            at: &mut Vec<String>,
            paths: &[FieldPath],
            out: &mut Vec<String>,
        ) {
            let selected = paths.iter().any(|p| {
                p.segments.len() == at.len()
                    && p.segments.iter().zip(at.iter()).all(|(s, a)| match s {
                        Segment::Wildcard => true,
                        Segment::Key(k) => a == &format!("k:{k}"),
                        Segment::Index(i) => a == &format!("i:{i}"),
                    })
            });
            if selected && !at.is_empty() {
                out.push(v.to_string());
                return;
            }
            match v {
                serde_json::Value::Object(m) => {
                    for (k, c) in m {
                        at.push(format!("k:{k}"));
                        walk(c, at, paths, out);
                        at.pop();
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, c) in a.iter().enumerate() {
                        at.push(format!("i:{i}"));
                        walk(c, at, paths, out);
                        at.pop();
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(v, &mut Vec::new(), paths, &mut out);
        out.sort();
        out
    }

    #[test]
    fn random_documents_locate_like_an_independent_parser_and_restore_exactly() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut total_located = 0;
        for round in 0..3000 {
            let mut doc = String::new();
            ws(&mut r, &mut doc);
            gen(&mut r, 0, &mut doc);
            ws(&mut r, &mut doc);
            let tree: serde_json::Value = serde_json::from_str(&doc).expect("generator makes JSON");
            let paths: Vec<FieldPath> = (0..1 + r.below(3))
                .filter_map(|_| gen_path(&mut r, &tree))
                .collect();

            let located = locate(doc.as_bytes(), &paths).expect("valid");
            total_located += located.len();
            // Document order, disjoint.
            for w in located.windows(2) {
                assert!(w[0].span.end <= w[1].span.start, "round {round}: {doc}");
            }
            // The same values as serde_json's tree walk.
            let mut found: Vec<String> = located
                .iter()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(&doc[l.span.clone()])
                        .expect("a span is one JSON value")
                        .to_string()
                })
                .collect();
            found.sort();
            assert_eq!(
                found,
                oracle(&tree, &paths),
                "round {round}: {doc} {paths:?}"
            );

            // Replace with markers, find them again by the same paths, restore.
            let marked = splice(
                doc.as_bytes(),
                &located
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.span.clone(), format!("\"#{i}\"").into_bytes()))
                    .collect::<Vec<_>>(),
            );
            let again = locate(&marked, &paths).expect("marked doc is JSON");
            assert_eq!(again.len(), located.len(), "round {round}");
            let restore: Vec<_> = again
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    assert_eq!(&marked[l.span.clone()], format!("\"#{i}\"").as_bytes());
                    assert_eq!(l.path, located[i].path);
                    (l.span.clone(), &doc.as_bytes()[located[i].span.clone()])
                })
                .collect();
            assert_eq!(splice(&marked, &restore), doc.as_bytes(), "round {round}");
        }
        assert!(
            total_located > 1000,
            "the generator must exercise selection: {total_located}"
        );
    }

    #[test]
    fn every_prefix_of_a_document_is_judged_like_serde_json() {
        // Near the end of a document the scanner reads a word padded with
        // quotes: a string cut anywhere must still be unterminated.
        let doc = "{\"a\":\"x\",\"bb\":\"\\u00e9t\u{e9}\\\"q\",\"c\":[\"\",\"0123456789abcdefghij\"],\"d\":\"\u{20ac}\"}";
        let doc = doc.as_bytes();
        assert!(validate(doc).is_ok());
        for len in 0..doc.len() {
            for top in [false, true] {
                // Also as a top-level string, so the cut string is the last thing.
                let cut: Vec<u8> = if top {
                    [b"\"".as_slice(), &doc[len..]].concat()
                } else {
                    doc[..len].to_vec()
                };
                let ours = validate(&cut);
                let theirs = serde_json::from_slice::<serde_json::Value>(&cut);
                assert_eq!(
                    ours.is_ok(),
                    theirs.is_ok(),
                    "{:?}: ours {ours:?}, serde_json {theirs:?}",
                    String::from_utf8_lossy(&cut)
                );
            }
        }
    }

    #[test]
    fn long_strings_are_judged_like_serde_json_wherever_the_odd_byte_sits() {
        // The string scanner skips eight plain bytes at a time: put each
        // byte that must stop it at every offset of a long string.
        let odd: [&[u8]; 12] = [
            b"\"",
            b"\\n",
            b"\\u00e9",
            b"\\x",
            b"\x01",
            b"\x1f",
            b"\x7f",
            b"\xc3\xa9",
            b"\xff",
            b"\xc3",
            b"\xe2\x82\xac",
            b"\xf0\x9f\x98\x80",
        ];
        for at in 0..40 {
            for o in odd {
                let mut doc = b"{\"k\":\"".to_vec();
                doc.extend(std::iter::repeat_n(b'a', at));
                doc.extend_from_slice(o);
                doc.extend(std::iter::repeat_n(b'b', 40 - at));
                doc.extend_from_slice(b"\"}");
                let ours = validate(&doc);
                let theirs = serde_json::from_slice::<serde_json::Value>(&doc);
                assert_eq!(
                    ours.is_ok(),
                    theirs.is_ok(),
                    "{:?}: ours {ours:?}, serde_json {theirs:?}",
                    String::from_utf8_lossy(&doc)
                );
                if let Ok(found) = locate(&doc, &[FieldPath::parse("$.k").expect("path")]) {
                    assert_eq!(found.len(), 1);
                    assert_eq!(found[0].span, 5..doc.len() - 1);
                }
            }
        }
    }

    #[test]
    fn random_corruptions_are_judged_like_serde_json() {
        let mut r = Rng(0x0123_4567_89ab_cdef);
        let bytes: &[u8] = b"\"\\,:{}[]x0-.eE+u \x01\xff\xc3a1";
        let mut rejected = 0;
        for _ in 0..20_000 {
            let mut doc = String::new();
            gen(&mut r, 0, &mut doc);
            let mut doc = doc.into_bytes();
            for _ in 0..1 + r.below(2) {
                let i = r.below(doc.len());
                match r.below(3) {
                    0 => doc[i] = *r.pick(bytes),
                    1 => doc.insert(i, *r.pick(bytes)),
                    _ => {
                        doc.remove(i);
                    }
                }
                if doc.is_empty() {
                    break;
                }
            }
            let ours = validate(&doc);
            let theirs = serde_json::from_slice::<serde_json::Value>(&doc);
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{:?}: ours {ours:?}, serde_json {theirs:?}",
                String::from_utf8_lossy(&doc)
            );
            rejected += usize::from(ours.is_err());
        }
        assert!(
            rejected > 5000,
            "corruptions must mostly be invalid: {rejected}"
        );
    }
}
