//! Data-subject requests.
//!
//! A compliance officer asks Custos to find, export or erase one person's data.
//! This crate owns the request model and its validation; execution (subject
//! index look-up, crypto-shredding, receipts) arrives with the DSR issue.

/// The kind of a data-subject request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsrKind {
    /// Where does this subject's data live?
    Find,
    /// Hand over a copy of this subject's data.
    Export,
    /// Make this subject's protected data unreadable everywhere.
    Erase,
}

/// A validated data-subject request. Its `Debug` leaves out the subject id.
#[derive(Clone, PartialEq, Eq)]
pub struct DsrRequest {
    /// What is asked.
    pub kind: DsrKind,
    /// The subject id as the business knows it (never logged).
    subject_id: String,
    /// Who asked, for the receipt.
    pub requested_by: String,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DsrError {
    /// Empty or whitespace-only subject id.
    #[error("subject id is empty")]
    EmptySubject,
    /// Subject id longer than allowed.
    #[error("subject id is {0} bytes; at most 256 are allowed")]
    SubjectTooLong(usize),
    /// No requester named.
    #[error("requested_by is empty: every DSR action must name who asked")]
    NoRequester,
}

impl DsrRequest {
    /// Validates and builds a request.
    pub fn new(kind: DsrKind, subject_id: &str, requested_by: &str) -> Result<Self, DsrError> {
        if subject_id.trim().is_empty() {
            return Err(DsrError::EmptySubject);
        }
        if subject_id.len() > 256 {
            return Err(DsrError::SubjectTooLong(subject_id.len()));
        }
        if requested_by.trim().is_empty() {
            return Err(DsrError::NoRequester);
        }
        Ok(Self {
            kind,
            subject_id: subject_id.to_string(),
            requested_by: requested_by.to_string(),
        })
    }

    /// The subject id, for tokenization only.
    pub fn subject_id(&self) -> &str {
        &self.subject_id
    }
}

impl std::fmt::Debug for DsrRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A subject id is personal data: keep it out of logs and panics.
        f.debug_struct("DsrRequest")
            .field("kind", &self.kind)
            .field("subject_id", &"<redacted>")
            .field("requested_by", &self.requested_by)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_inputs() {
        assert_eq!(
            DsrRequest::new(DsrKind::Erase, "  ", "officer"),
            Err(DsrError::EmptySubject)
        );
        assert_eq!(
            DsrRequest::new(DsrKind::Find, &"x".repeat(300), "officer"),
            Err(DsrError::SubjectTooLong(300))
        );
        assert_eq!(
            DsrRequest::new(DsrKind::Export, "alice", ""),
            Err(DsrError::NoRequester)
        );
        let r = DsrRequest::new(DsrKind::Erase, "alice", "officer").expect("valid");
        assert_eq!(r.subject_id(), "alice");
        assert!(!format!("{r:?}").contains("alice"));
    }
}
