//! SQL in, plans out, no I/O.
//!
//! This crate owns Quiver's SQL dialect on top of sqlparser and DataFusion:
//! pgvector's `vector` type, operators (`<->`, `<#>`, `<=>`, `<+>`) and
//! functions as DataFusion UDFs with pgvector's error wording and SQLSTATEs
//! ([`vector`]); the statement preprocessing that makes PostgreSQL syntax
//! DataFusion does not know plannable ([`rewrite`]); and the mapping of SQL
//! column types and values onto a table's stored Arrow schema with
//! PostgreSQL's validation rules ([`coerce`]).

pub mod catalog_functions;
pub mod coerce;
pub mod int_vectors;
pub mod like;
pub mod rewrite;
pub mod subqueries;
pub mod table_functions;
pub mod vector;
pub mod vector_agg;
pub mod vector_arith;
pub mod vector_search;

use std::fmt;

/// An error that already knows its PostgreSQL SQLSTATE. Carried through
/// DataFusion as `DataFusionError::External` so the frontend can recover it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl SqlError {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        SqlError {
            sqlstate,
            message: message.into(),
        }
    }

    pub fn into_datafusion(self) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::External(Box::new(self))
    }

    /// The `SqlError` carried somewhere in a DataFusion error's chain, or an
    /// internal error (XX000) with the whole message.
    pub fn from_datafusion(e: datafusion::error::DataFusionError) -> Self {
        find_cause::<SqlError>(&e).unwrap_or_else(|| SqlError::new("XX000", e.to_string()))
    }
}

/// The first error of type `T` in `err`'s source chain (including `err`).
pub fn find_cause<T: std::error::Error + Clone + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> Option<T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found.clone());
        }
        current = e.source();
    }
    None
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqlError {}

/// SQLSTATEs used across the planner.
pub mod sqlstate {
    pub const DATA_EXCEPTION: &str = "22000";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const UNIQUE_VIOLATION: &str = "23505";
    /// A statement inside a transaction block that already failed.
    pub const IN_FAILED_TRANSACTION: &str = "25P02";
    /// A statement that cannot run inside a transaction block (VACUUM).
    pub const CARDINALITY_VIOLATION: &str = "21000";
    pub const INVALID_ESCAPE_CHARACTER: &str = "22019";
    pub const INVALID_ESCAPE_SEQUENCE: &str = "22025";
    pub const ACTIVE_TRANSACTION: &str = "25001";
}
