//! Why a shaping file was refused: every variant names the file, and a bad value its key and
//! the line it is on, so the operator can go straight to it.

/// A shaping file that cannot be used. Start fails with it (`delivery.shaping_file`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShapingError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {size_bytes} bytes, over the limit of {max_bytes}")]
    FileTooLarge {
        file: String,
        size_bytes: u64,
        max_bytes: u64,
    },
    /// Not TOML, an unknown key, or a value of the wrong type; the source names the line.
    #[error("{file}: {source}")]
    Parse {
        file: String,
        source: Box<toml::de::Error>,
    },
    #[error("{file}: {count} {what}, over the limit of {max}")]
    TooMany {
        file: String,
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// A value out of its range or of the wrong form.
    #[error("{file}: line {line}: {key}: {reason}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("{file}: line {line}: {key}: bad regex: {source}")]
    BadRegex {
        file: String,
        line: usize,
        key: String,
        source: Box<regex::Error>,
    },
}
