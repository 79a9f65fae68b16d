//! Role errors across the wire: the gRPC status carries the message, and a
//! metadata entry carries the [`StatusCode`] so the caller re-raises the
//! very error the role raised. A status without that entry did not come
//! from a role: a connection failure (refused, reset, timeout) means the
//! node is unreachable, which callers may retry; anything else (an unknown
//! call from a mismatched version, a message over the size limit) will not
//! get better by retrying.

use quiver_api::{ApiError, StatusCode};
use tonic::metadata::MetadataValue;

const CODE_KEY: &str = "quiver-status";

pub fn to_status(mut e: ApiError) -> tonic::Status {
    // "Never delivered" holds only for the hop that failed to connect: this
    // request did reach this process, which may have acted on it.
    if e.code == StatusCode::Unreachable {
        e.code = StatusCode::Unavailable;
    }
    let grpc = match e.code {
        StatusCode::UniqueViolation | StatusCode::DuplicateTable | StatusCode::DuplicateObject => {
            tonic::Code::AlreadyExists
        }
        StatusCode::NotNullViolation | StatusCode::InvalidData | StatusCode::InvalidRequest => {
            tonic::Code::InvalidArgument
        }
        StatusCode::UndefinedTable | StatusCode::UndefinedObject => tonic::Code::NotFound,
        StatusCode::Unavailable
        | StatusCode::Unreachable
        | StatusCode::NotOwner
        | StatusCode::OutcomeUnknown => tonic::Code::Unavailable,
        StatusCode::StorageFailure | StatusCode::Internal => tonic::Code::Internal,
    };
    let mut status = tonic::Status::new(grpc, e.message);
    if let Ok(value) = MetadataValue::try_from(format!("{:?}", e.code)) {
        status.metadata_mut().insert(CODE_KEY, value);
    }
    status
}

pub fn from_status(endpoint: &str, status: tonic::Status) -> ApiError {
    let code = status
        .metadata()
        .get(CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str::<StatusCode>(&format!("\"{v}\"")).ok());
    match code {
        Some(code) => ApiError::new(code, status.message()),
        None if !matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
        ) =>
        {
            ApiError::new(
                StatusCode::Internal,
                format!(
                    "node {endpoint} refused the call ({:?}): {}",
                    status.code(),
                    status.message()
                ),
            )
        }
        None => {
            let mut message = format!("node {endpoint} is unreachable: {}", status.message());
            let mut source = std::error::Error::source(&status);
            // tonic repeats causes in its messages: add only what is new.
            while let Some(s) = source {
                let cause = s.to_string();
                if !message.contains(&cause) {
                    message.push_str(": ");
                    message.push_str(&cause);
                }
                source = s.source();
            }
            ApiError::new(
                if never_connected(&status) {
                    StatusCode::Unreachable
                } else {
                    StatusCode::Unavailable
                },
                message,
            )
        }
    }
}

/// Whether the call failed while connecting, so the request never left:
/// a refused connection (nothing listens: a standby, a dead process) or a
/// connect that timed out.
fn never_connected(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::HostUnreachable
            )
        {
            return true;
        }
        if s.to_string().starts_with("tcp connect error") {
            return true;
        }
        source = s.source();
    }
    false
}

pub fn bad_request(message: impl std::fmt::Display) -> tonic::Status {
    to_status(ApiError::new(
        StatusCode::InvalidRequest,
        format!("malformed request: {message}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_errors_keep_their_code() {
        for code in [
            StatusCode::UniqueViolation,
            StatusCode::UndefinedObject,
            StatusCode::Unavailable,
            StatusCode::StorageFailure,
        ] {
            let back = from_status("n", to_status(ApiError::new(code, "boom")));
            assert_eq!(back.code, code);
            assert_eq!(back.message, "boom");
        }
    }

    #[test]
    fn protocol_failures_are_not_retryable() {
        let e = from_status("http://x", tonic::Status::unimplemented("unknown action"));
        assert_eq!(e.code, StatusCode::Internal);
        let e = from_status("http://x", tonic::Status::out_of_range("message too large"));
        assert_eq!(e.code, StatusCode::Internal);
    }

    #[test]
    fn unreachable_is_only_true_for_one_hop() {
        let back = from_status("n", to_status(ApiError::new(StatusCode::Unreachable, "x")));
        assert_eq!(back.code, StatusCode::Unavailable);
    }

    #[test]
    fn transport_failures_are_unavailable() {
        let e = from_status("http://x", tonic::Status::unavailable("connection refused"));
        assert_eq!(e.code, StatusCode::Unavailable);
        assert!(e.message.contains("http://x"), "{}", e.message);
        assert!(e.message.contains("connection refused"), "{}", e.message);
    }
}
