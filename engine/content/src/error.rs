//! The crate's one error type: configuration mistakes. Checking a message never fails (a
//! malformed message is scored on what could be read).

/// A checker configuration that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentError {
    #[error("brand list line {line}: {reason}")]
    BrandList { line: usize, reason: &'static str },
    #[error("content.phishing_threshold must be 1 or more (0 would refuse every message)")]
    ZeroThreshold,
    #[error("content.redirect_domains: {domain:?} is not a registrable domain (like click.example.com's example.com)")]
    RedirectDomain { domain: String },
}
