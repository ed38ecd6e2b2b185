//! Errors from loading policies.

use std::fmt;
use std::path::PathBuf;

/// A position in a policy source: file (or source name), line and column, from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// File name, or `policy` for text given directly.
    pub source: String,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl SourceLocation {
    /// The location of byte `offset` in `text`.
    pub(crate) fn at(source: &str, text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        // A span from Cedar always starts on a char boundary; fall back to the
        // start of the text rather than panic if that ever changes.
        let before = text.get(..offset).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        SourceLocation {
            source: source.to_string(),
            line,
            column,
        }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.source, self.line, self.column)
    }
}

/// One problem found in policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The policy's id, when the problem belongs to one parsed policy.
    pub policy_id: Option<String>,
    /// Where the problem is, when Cedar points at it.
    pub location: Option<SourceLocation>,
    /// What is wrong, in Cedar's words (plus its hint, if any).
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.policy_id, &self.location) {
            (Some(id), Some(loc)) => write!(f, "policy `{id}` at {loc}: ")?,
            (Some(id), None) => write!(f, "policy `{id}`: ")?,
            (None, Some(loc)) => write!(f, "{loc}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// Problems, shown one per line.
fn list(problems: &[PolicyProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("\n  {p}"))
        .collect::<String>()
}

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Policy text is not valid Cedar syntax.
    #[error("cannot parse policies:{}", list(.0))]
    Parse(Vec<PolicyProblem>),
    /// Policies parse but fail strict validation against the Custos schema.
    #[error("policies do not validate against the Custos schema:{}", list(.0))]
    Validation(Vec<PolicyProblem>),
    /// Two policies have the same id (from `@id` or from file and position).
    #[error("policy id `{id}` is used by both {first} and {second}")]
    DuplicateId {
        /// The id used twice.
        id: String,
        /// Where the first policy with that id is (`file:index`).
        first: String,
        /// Where the second one is.
        second: String,
    },
    /// A policy template (with `?principal` or `?resource` slots) was given.
    #[error("{origin}: policy templates (?principal / ?resource slots) are not supported")]
    Template {
        /// Where the template is (`file:index`).
        origin: String,
    },
    /// A policy file or directory could not be read.
    #[error("cannot read policies from {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A directory given to `load_files` holds no `.cedar` file.
    #[error("{path} holds no .cedar files")]
    NoPolicyFiles {
        /// The directory.
        path: PathBuf,
    },
    /// The schema compiled into this crate does not load (a bug in Custos).
    #[error("the built-in Custos Cedar schema is invalid: {0}")]
    Schema(String),
}
