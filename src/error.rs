//! The one error type of the registry API and its mapping to OCI error codes and statuses.

use http::StatusCode;
use serde_json::json;

/// The OCI distribution-spec error codes that Portcullis answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// A blob is not known to the registry.
    BlobUnknown,
    /// The blob upload is invalid.
    BlobUploadInvalid,
    /// The blob upload session is unknown.
    BlobUploadUnknown,
    /// A digest did not match or is malformed.
    DigestInvalid,
    /// A blob referenced by a manifest is unknown.
    ManifestBlobUnknown,
    /// A manifest is malformed or too large.
    ManifestInvalid,
    /// A manifest is not known.
    ManifestUnknown,
    /// A repository name is invalid.
    NameInvalid,
    /// A repository or namespace is not known.
    NameUnknown,
    /// A content length or range is invalid.
    SizeInvalid,
    /// Authentication is required.
    Unauthorized,
    /// Access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// A range could not be satisfied (no OCI code of its own; reported as BLOB_UNKNOWN-like).
    RangeInvalid,
    /// The upstream registry failed or is unreachable.
    Upstream,
    /// An internal failure of the proxy.
    Internal,
}

impl Code {
    /// The code string that goes into the JSON error body.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Upstream => "UNAVAILABLE",
            Code::Internal => "UNKNOWN",
        }
    }
}

/// An error answered to a registry client: who caused it is in the code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RegistryError {
    /// The OCI error code.
    pub code: Code,
    /// The HTTP status to answer with.
    pub status: StatusCode,
    /// A message safe to show to the client.
    pub message: String,
    /// Seconds the client should wait before retrying (`Retry-After`), for rate limiting.
    pub retry_after: Option<u64>,
}

/// Shorthand for results whose error is answered to a client.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// An error with an explicit status.
    pub fn new(code: Code, status: StatusCode, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An error with the status the distribution spec gives its code.
    pub fn of(code: Code, message: impl Into<String>) -> Self {
        Self::new(code, default_status(code), message)
    }

    /// The same error, telling the client to retry after `seconds`.
    pub fn with_retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after = seconds;
        self
    }

    /// A failure caused by the upstream registry (502).
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(Code::Upstream, StatusCode::BAD_GATEWAY, message)
    }

    /// A timeout talking to the upstream registry (504).
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Self::new(Code::Upstream, StatusCode::GATEWAY_TIMEOUT, message)
    }

    /// An internal failure; the detail is logged, the client sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            Code::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
        )
    }

    /// The JSON body `{"errors":[{"code","message","detail"}]}`.
    pub fn body(&self) -> String {
        json!({"errors": [{"code": self.code.as_str(), "message": self.message, "detail": null}]})
            .to_string()
    }

    /// Whether the upstream caused this error (so a cached copy may be served instead).
    pub fn is_upstream_failure(&self) -> bool {
        self.code == Code::Upstream
            || self.code == Code::TooManyRequests
            || self.status == StatusCode::BAD_GATEWAY
    }
}

/// The status the distribution spec gives each code.
fn default_status(code: Code) -> StatusCode {
    match code {
        Code::BlobUnknown | Code::BlobUploadUnknown | Code::ManifestUnknown => {
            StatusCode::NOT_FOUND
        }
        Code::ManifestBlobUnknown | Code::NameUnknown => StatusCode::NOT_FOUND,
        Code::BlobUploadInvalid | Code::DigestInvalid | Code::ManifestInvalid => {
            StatusCode::BAD_REQUEST
        }
        Code::NameInvalid | Code::SizeInvalid => StatusCode::BAD_REQUEST,
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::Denied => StatusCode::FORBIDDEN,
        Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
        Code::Upstream => StatusCode::BAD_GATEWAY,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            tracing::error!(error = %e, "storage is full");
            return RegistryError::new(
                Code::Internal,
                StatusCode::INSUFFICIENT_STORAGE,
                "the proxy's storage is full",
            );
        }
        RegistryError::internal(format!("storage: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_oci_error_json() {
        let e = RegistryError::of(Code::NameInvalid, "bad name");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad name");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn statuses_follow_the_spec() {
        assert_eq!(RegistryError::of(Code::ManifestUnknown, "").status, 404);
        assert_eq!(RegistryError::of(Code::Unauthorized, "").status, 401);
        assert_eq!(RegistryError::of(Code::Denied, "").status, 403);
        assert_eq!(RegistryError::of(Code::Unsupported, "").status, 405);
        assert_eq!(RegistryError::of(Code::TooManyRequests, "").status, 429);
    }
}
