//! The crate's one public error enum, and its mapping to HTTP answers (in exactly one place:
//! [`ApiError`]'s `IntoResponse`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// Everything that can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A store call failed (database, missing row, corrupt row).
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A schema migration failed. Permanent until an operator acts.
    #[error("migration {version}: {source}")]
    Migration {
        version: i64,
        #[source]
        source: sqlx::Error,
    },
    /// Reading or writing a file under the data directory failed.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Binding a listener failed (address in use, permission).
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable (empty push token, bad URL...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// TLS material could not be generated or loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// The policy crate refused our snapshot or key request.
    #[error("policy: {0}")]
    Policy(#[from] petrel_policy::PolicyError),
    /// The key-encryption key could not be read (wrong file, one others may read), or a data
    /// key did not unwrap under it (issue 16). The control plane does not start without it.
    #[error("encryption at rest: {0}")]
    Seal(#[from] petrel_seal::SealError),
    /// A request-level failure surfaced outside HTTP (bootstrap, CLI).
    #[error("{}: {}", .0.code, .0.message)]
    Api(ApiError),
}

impl ControlError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ControlError::Store(StoreError::Database(_))
                | ControlError::Io { .. }
                | ControlError::Listen { .. }
        )
    }
}

impl From<sqlx::Error> for ControlError {
    fn from(e: sqlx::Error) -> ControlError {
        ControlError::Store(StoreError::Database(e))
    }
}

/// A JSON error answer: `{"error":{"code":..,"message":..}}` with a 4xx/5xx status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code (`unauthorized`, `forbidden`, `not_found`, ...).
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 answers.
    pub retry_after_secs: Option<u64>,
    /// More about the refusal, answered as `error.details` (a 410's deletion record).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            details: None,
        }
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
    pub fn too_many(retry_after_secs: u64) -> ApiError {
        ApiError {
            retry_after_secs: Some(retry_after_secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many failed authentications from this address",
            )
        }
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

/// The one place a store failure becomes an HTTP answer.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(message) => ApiError::conflict(message),
            e if e.is_unique_violation() => {
                ApiError::conflict("a resource with that name already exists")
            }
            other => {
                tracing::error!(error = %other, "control plane request failed");
                ApiError::internal("internal error")
            }
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::Api(a) => a,
            ControlError::Store(s) => ApiError::from(s),
            other => {
                tracing::error!(error = %other, "control plane request failed");
                ApiError::internal("internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let body = serde_json::json!({ "error": error });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
