//! Every failure a client sees, as a PostgreSQL error with a SQLSTATE.

use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};
use quiver_api::{ApiError, StatusCode};
use quiver_planner::{SqlError, find_cause, sqlstate};

/// Carries a role-boundary error through DataFusion (scans, plan nodes);
/// [`from_datafusion`] recovers it with its SQLSTATE.
pub fn api_err(e: ApiError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Maps a role-boundary error onto a SQLSTATE.
pub fn from_api(e: ApiError) -> SqlError {
    let code = match e.code {
        StatusCode::UniqueViolation => "23505",
        StatusCode::NotNullViolation => sqlstate::NOT_NULL_VIOLATION,
        StatusCode::InvalidData => sqlstate::DATA_EXCEPTION,
        StatusCode::UndefinedTable => sqlstate::UNDEFINED_TABLE,
        StatusCode::DuplicateTable | StatusCode::DuplicateObject => "42P07",
        StatusCode::UndefinedObject => "42704",
        StatusCode::InvalidRequest => "42809",
        // Retryable: the client may try again (connection_failure class).
        StatusCode::Unavailable | StatusCode::Unreachable | StatusCode::NotOwner => "08006",
        StatusCode::OutcomeUnknown => "08007",
        StatusCode::StorageFailure => "58030",
        StatusCode::Internal => "XX000",
    };
    if matches!(e.code, StatusCode::StorageFailure | StatusCode::Internal) {
        tracing::error!(error = %e.message, "statement failed in a worker");
    }
    SqlError::new(code, e.message)
}

fn quoted_name(msg: &str) -> String {
    msg.split('\'')
        .nth(1)
        .map(|s| s.rsplit('.').next().unwrap_or(s).to_string())
        .unwrap_or_default()
}

/// Maps a DataFusion error onto PostgreSQL's code and wording.
pub fn from_datafusion(e: DataFusionError) -> SqlError {
    if let Some(sql) = find_cause::<SqlError>(&e) {
        return sql;
    }
    if let Some(api) = find_cause::<ApiError>(&e) {
        return from_api(api);
    }
    let root = e.find_root();
    match root {
        DataFusionError::SQL(parser, _) => {
            SqlError::new(sqlstate::SYNTAX_ERROR, parser.to_string())
        }
        DataFusionError::SchemaError(schema_err, _) => {
            let text = schema_err.to_string();
            if let datafusion::common::SchemaError::FieldNotFound { field, .. } =
                schema_err.as_ref()
            {
                SqlError::new(
                    sqlstate::UNDEFINED_COLUMN,
                    format!("column \"{}\" does not exist", field.name),
                )
            } else {
                SqlError::new(sqlstate::SYNTAX_ERROR, text)
            }
        }
        DataFusionError::Plan(msg) if msg.contains("table '") && msg.contains("not found") => {
            SqlError::new(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{}\" does not exist", quoted_name(msg)),
            )
        }
        DataFusionError::Plan(msg) | DataFusionError::NotImplemented(msg)
            if msg.contains("Correlated scalar subquery")
                || msg.contains("logical expression ScalarSubquery") =>
        {
            SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "this correlated subquery is not supported: Quiver plans a correlated \
                 scalar subquery when it is correlated by equalities (inner = outer) only",
            )
        }
        DataFusionError::Plan(msg) if msg.contains("No field named") => {
            SqlError::new(sqlstate::UNDEFINED_COLUMN, msg.clone())
        }
        DataFusionError::Plan(msg)
            if msg.contains("Invalid function") || msg.contains("not found") =>
        {
            SqlError::new("42883", msg.clone())
        }
        DataFusionError::Plan(msg) if msg.contains("type") || msg.contains("coerc") => {
            SqlError::new(sqlstate::DATATYPE_MISMATCH, msg.clone())
        }
        DataFusionError::Plan(msg) => SqlError::new(sqlstate::SYNTAX_ERROR, msg.clone()),
        DataFusionError::NotImplemented(msg) => {
            SqlError::new(sqlstate::FEATURE_NOT_SUPPORTED, msg.clone())
        }
        DataFusionError::ArrowError(arrow_err, _) => match arrow_err.as_ref() {
            arrow::error::ArrowError::CastError(m) | arrow::error::ArrowError::ParseError(m) => {
                SqlError::new(sqlstate::INVALID_TEXT_REPRESENTATION, m.clone())
            }
            arrow::error::ArrowError::DivideByZero => SqlError::new("22012", "division by zero"),
            other => SqlError::new("XX000", other.to_string()),
        },
        other => SqlError::new("XX000", other.to_string()),
    }
}

pub fn to_pgwire(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(to_error_info(e)))
}

pub fn to_error_info(e: SqlError) -> ErrorInfo {
    ErrorInfo::new("ERROR".to_string(), e.sqlstate.to_string(), e.message)
}
