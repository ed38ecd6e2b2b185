//! The topic catalog: tags, owner and classification of topics, from config.
//!
//! Policies see these as `resource.tags`, `resource.owner` and
//! `resource.classification` on `Topic` entities.
//!
//! **Matching rule: every entry is tried, in order.** The tags of all matching
//! entries are merged (union, first-seen order); `owner` and `classification`
//! come from the first matching entry that sets them. So a broad entry
//! (`prefix: "payments."`, tags `[pii]`) and a specific one (`exact:
//! payments.cards`, owner `cards-team`) combine; list specific entries first
//! when they should decide the owner. A topic no entry matches has no tags and
//! no owner or classification. Merging was chosen over first-match-wins
//! because a tag such as `pii` must not silently vanish from a topic just
//! because a more specific entry above it was added for another reason.
//!
//! In YAML:
//! ```yaml
//! - match: { prefix: "payments." }
//!   tags: [pii, pci]
//! - match: { exact: payments.cards }
//!   owner: cards-team
//!   classification: restricted
//! - match: { regex: "logs\\.[a-z]+" }   # must match the whole name
//!   tags: [ops]
//! ```

use regex::Regex;
use serde::{Deserialize, Serialize};

/// How a catalog entry selects topics; written `{exact: NAME}`,
/// `{prefix: P}` or `{regex: R}`, exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MatchSpec", into = "MatchSpec")]
pub enum TopicMatch {
    /// The topic with exactly this name.
    Exact(String),
    /// Every topic whose name starts with this.
    Prefix(String),
    /// Every topic whose whole name matches this regular expression (`regex` crate syntax).
    Regex(String),
}

/// The written form of [`TopicMatch`]: a map with exactly one key. (An
/// externally tagged enum would want YAML tags such as `!exact` instead.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<MatchSpec> for TopicMatch {
    type Error = &'static str;

    fn try_from(m: MatchSpec) -> Result<Self, Self::Error> {
        match (m.exact, m.prefix, m.regex) {
            (Some(n), None, None) => Ok(TopicMatch::Exact(n)),
            (None, Some(p), None) => Ok(TopicMatch::Prefix(p)),
            (None, None, Some(r)) => Ok(TopicMatch::Regex(r)),
            _ => Err("`match` needs exactly one of `exact`, `prefix` or `regex`"),
        }
    }
}

impl From<TopicMatch> for MatchSpec {
    fn from(m: TopicMatch) -> Self {
        match m {
            TopicMatch::Exact(n) => MatchSpec {
                exact: Some(n),
                ..MatchSpec::default()
            },
            TopicMatch::Prefix(p) => MatchSpec {
                prefix: Some(p),
                ..MatchSpec::default()
            },
            TopicMatch::Regex(r) => MatchSpec {
                regex: Some(r),
                ..MatchSpec::default()
            },
        }
    }
}

/// One catalog entry as written in configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Which topics the entry describes.
    #[serde(rename = "match")]
    pub matcher: TopicMatch,
    /// Tags such as `pii`, merged over all matching entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The owning team or person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A data classification such as `confidential`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
}

/// A catalog entry whose regular expression does not compile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatalogError {
    /// The regex of entry `index` (0-based) is invalid.
    #[error("topic catalog entry {index}: invalid regex {pattern:?}: {reason}")]
    InvalidRegex {
        /// Position of the entry in the catalog, from 0.
        index: usize,
        /// The pattern as written.
        pattern: String,
        /// Why the regex crate refused it.
        reason: String,
    },
}

/// What the catalog says about one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicInfo<'a> {
    /// Merged tags, without duplicates, in first-seen order.
    pub tags: Vec<&'a str>,
    /// Owner from the first matching entry that has one.
    pub owner: Option<&'a str>,
    /// Classification from the first matching entry that has one.
    pub classification: Option<&'a str>,
}

/// The topic catalog: entries plus their compiled regexes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<CatalogEntry>", into = "Vec<CatalogEntry>")]
pub struct TopicCatalog {
    entries: Vec<CatalogEntry>,
    // Parallel to `entries`; `Some` exactly for regex entries. Compiled once
    // here so a decision never compiles a regex.
    regexes: Vec<Option<Regex>>,
}

impl TopicCatalog {
    /// A catalog from entries; fails on an invalid regex.
    pub fn new(entries: Vec<CatalogEntry>) -> Result<Self, CatalogError> {
        let regexes = entries
            .iter()
            .enumerate()
            .map(|(index, e)| match &e.matcher {
                TopicMatch::Regex(p) => {
                    Regex::new(&format!("^(?:{p})$")).map(Some).map_err(|err| {
                        CatalogError::InvalidRegex {
                            index,
                            pattern: p.clone(),
                            reason: err.to_string(),
                        }
                    })
                }
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(TopicCatalog { entries, regexes })
    }

    /// A catalog with no entries: no topic has tags.
    pub fn empty() -> Self {
        TopicCatalog::default()
    }

    /// The entries, in configuration order.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// What the catalog says about `topic` (see the module doc for merging).
    pub fn lookup(&self, topic: &str) -> TopicInfo<'_> {
        let mut info = TopicInfo::default();
        for (entry, regex) in self.entries.iter().zip(&self.regexes) {
            let hit = match (&entry.matcher, regex) {
                (TopicMatch::Exact(n), _) => n == topic,
                (TopicMatch::Prefix(p), _) => topic.starts_with(p.as_str()),
                (TopicMatch::Regex(_), Some(r)) => r.is_match(topic),
                (TopicMatch::Regex(_), None) => false,
            };
            if !hit {
                continue;
            }
            for t in &entry.tags {
                if !info.tags.contains(&t.as_str()) {
                    info.tags.push(t);
                }
            }
            info.owner = info.owner.or(entry.owner.as_deref());
            info.classification = info.classification.or(entry.classification.as_deref());
        }
        info
    }
}

impl TryFrom<Vec<CatalogEntry>> for TopicCatalog {
    type Error = CatalogError;

    fn try_from(entries: Vec<CatalogEntry>) -> Result<Self, Self::Error> {
        TopicCatalog::new(entries)
    }
}

impl From<TopicCatalog> for Vec<CatalogEntry> {
    fn from(c: TopicCatalog) -> Self {
        c.entries
    }
}

impl PartialEq for TopicCatalog {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
- match: { prefix: "payments." }
  tags: [pii, pci]
- match: { exact: payments.cards }
  tags: [pci, cards]
  owner: cards-team
  classification: restricted
- match: { prefix: "payments." }
  owner: payments-team
- match: { regex: "logs\\.[a-z]+" }
  tags: [ops]
"#;

    #[test]
    fn merges_tags_of_all_matches_and_takes_first_owner() {
        let c: TopicCatalog = serde_yaml_ng::from_str(YAML).unwrap();
        let cards = c.lookup("payments.cards");
        assert_eq!(cards.tags, vec!["pii", "pci", "cards"]);
        assert_eq!(cards.owner, Some("cards-team"));
        assert_eq!(cards.classification, Some("restricted"));
        let refunds = c.lookup("payments.refunds");
        assert_eq!(refunds.tags, vec!["pii", "pci"]);
        assert_eq!(refunds.owner, Some("payments-team"));
        assert_eq!(refunds.classification, None);
        assert_eq!(c.lookup("orders"), TopicInfo::default());
    }

    #[test]
    fn regex_must_match_whole_name() {
        let c: TopicCatalog = serde_yaml_ng::from_str(YAML).unwrap();
        assert_eq!(c.lookup("logs.app").tags, vec!["ops"]);
        assert!(c.lookup("logs.app2").tags.is_empty());
        assert!(c.lookup("xlogs.app").tags.is_empty());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_regex() {
        let unknown = "- match: { exact: a }\n  colour: red\n";
        assert!(serde_yaml_ng::from_str::<TopicCatalog>(unknown).is_err());
        let unknown_matcher = "- match: { glob: a }\n";
        assert!(serde_yaml_ng::from_str::<TopicCatalog>(unknown_matcher).is_err());
        let two = "- match: { exact: a, prefix: b }\n";
        let err = serde_yaml_ng::from_str::<TopicCatalog>(two)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one of"), "{err}");
        let err = serde_yaml_ng::from_str::<TopicCatalog>("- match: { regex: \"(\" }\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 0: invalid regex"), "{err}");
    }

    #[test]
    fn round_trips_through_serde() {
        let c: TopicCatalog = serde_yaml_ng::from_str(YAML).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: TopicCatalog = serde_json::from_str(&json).unwrap();
        assert_eq!(c, back);
    }
}
