//! `CREATE INDEX ... USING diskann | hnsw | ivfflat` and `DROP INDEX`.
//!
//! Every vector index is a DiskANN index per sealed segment. pgvector's
//! methods are accepted so pgvector DDL runs unchanged; their settings map
//! onto DiskANN's (a NOTICE says so). `CREATE INDEX` returns once builds are
//! scheduled; `quiver.index_builds` shows their progress.

use pgwire::api::results::Tag;
use quiver_api::{IndexDef, IndexParams};
use quiver_planner::{SqlError, sqlstate};
use quiver_types::{ColumnType, VectorMetric};
use sqlparser::ast::{CreateIndex, Expr, IndexType, ObjectName, Value};

use crate::ddl::table_name;
use crate::engine::{Engine, Output};
use crate::error::from_api;
use crate::session::Session;

fn ident_name(i: &sqlparser::ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn object_last(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .unwrap_or_default()
}

/// `WITH (name = value, ...)` as (lower-case name, integer value).
fn with_options(with: &[Expr]) -> Result<Vec<(String, i64)>, SqlError> {
    let bad = |e: &Expr| {
        SqlError::new(
            sqlstate::SYNTAX_ERROR,
            format!("invalid index option \"{e}\""),
        )
    };
    with.iter()
        .map(|e| match e {
            Expr::BinaryOp { left, right, .. } => {
                let name = match left.as_ref() {
                    Expr::Identifier(i) => i.value.to_ascii_lowercase(),
                    _ => return Err(bad(e)),
                };
                let value = match right.as_ref() {
                    Expr::Value(v) => match &v.value {
                        Value::Number(n, _) => n.parse::<i64>().ok(),
                        Value::SingleQuotedString(s) => s.parse::<i64>().ok(),
                        _ => None,
                    },
                    _ => None,
                }
                .ok_or_else(|| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("invalid value for index option \"{name}\": {right}"),
                    )
                })?;
                Ok((name, value))
            }
            _ => Err(bad(e)),
        })
        .collect()
}

fn in_range(name: &str, v: i64, lo: i64, hi: i64) -> Result<usize, SqlError> {
    if (lo..=hi).contains(&v) {
        Ok(v as usize)
    } else {
        Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "value {v} out of bounds for option \"{name}\" (must be between {lo} and {hi})"
            ),
        ))
    }
}

/// DiskANN settings from the method's `WITH` options, and a notice for
/// pgvector methods.
fn params_for(
    method: &str,
    options: &[(String, i64)],
) -> Result<(IndexParams, Option<String>), SqlError> {
    let mut p = IndexParams::default();
    let unknown = |name: &str| {
        SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("unrecognized parameter \"{name}\" for access method \"{method}\""),
        )
    };
    match method {
        "diskann" => {
            for (name, v) in options {
                match name.as_str() {
                    "max_degree" | "num_neighbors" => p.max_degree = in_range(name, *v, 4, 256)?,
                    "build_search_list" | "search_list_size" => {
                        p.build_search_list = in_range(name, *v, 10, 1000)?
                    }
                    "pq_bytes" => p.pq_bytes = in_range(name, *v, 1, 1024)?,
                    _ => return Err(unknown(name)),
                }
            }
            Ok((p, None))
        }
        "hnsw" => {
            let (mut m, mut ef) = (16i64, 64i64);
            for (name, v) in options {
                match name.as_str() {
                    "m" => m = in_range(name, *v, 2, 100)? as i64,
                    "ef_construction" => ef = in_range(name, *v, 4, 1000)? as i64,
                    _ => return Err(unknown(name)),
                }
            }
            // HNSW's base layer keeps 2*m neighbours; DiskANN's single
            // layer wants a comparable out-degree and at least as wide a
            // build list.
            p.max_degree = (2 * m as usize).clamp(32, 128);
            p.build_search_list = (ef as usize).max(p.max_degree * 2);
            Ok((
                p,
                Some(format!(
                    "Quiver builds hnsw indexes as DiskANN (max_degree = {}, build_search_list = {}); hnsw.ef_search maps to diskann.search_list",
                    p.max_degree, p.build_search_list
                )),
            ))
        }
        "ivfflat" => {
            for (name, v) in options {
                match name.as_str() {
                    "lists" => {
                        in_range(name, *v, 1, 32768)?;
                    }
                    _ => return Err(unknown(name)),
                }
            }
            Ok((
                p,
                Some(
                    "Quiver builds ivfflat indexes as DiskANN with default settings; ivfflat.probes maps to diskann.search_list"
                        .to_string(),
                ),
            ))
        }
        other => Err(SqlError::new(
            sqlstate::UNDEFINED_OBJECT,
            format!("access method \"{other}\" does not exist"),
        )),
    }
}

pub async fn create_index(
    engine: &Engine,
    session: &Session,
    create: CreateIndex,
) -> Result<Output, SqlError> {
    let table = table_name(&create.table_name)?;
    let info = engine.backends.lookup_table(&table).await?;
    let method = match &create.using {
        Some(IndexType::Custom(i)) => i.value.to_ascii_lowercase(),
        Some(other) => other.to_string().to_ascii_lowercase(),
        None => "btree".to_string(),
    };
    let [column] = create.columns.as_slice() else {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "vector indexes cover exactly one column",
        ));
    };
    let column_name = match &column.column.expr {
        Expr::Identifier(i) => ident_name(i),
        other => {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("indexes on expressions are not supported: {other}"),
            ));
        }
    };
    let col = info
        .schema
        .columns
        .iter()
        .find(|c| c.name == column_name)
        .ok_or_else(|| {
            SqlError::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("column \"{column_name}\" does not exist"),
            )
        })?;
    if !matches!(col.ty, ColumnType::Vector(_)) {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "only vector columns can be indexed (column \"{column_name}\" is not a vector; Quiver has no B-tree indexes yet)"
            ),
        ));
    }
    if create.predicate.is_some() || create.unique {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "partial and unique vector indexes are not supported",
        ));
    }
    let metric = match &column.operator_class {
        None => VectorMetric::L2,
        Some(opclass) => {
            let name = object_last(opclass);
            VectorMetric::from_opclass(&name).ok_or_else(|| {
                SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!(
                        "operator class \"{name}\" does not exist for access method \"{method}\""
                    ),
                )
            })?
        }
    };
    let (params, notice) = params_for(&method, &with_options(&create.with)?)?;
    let name = match &create.name {
        Some(n) => object_last(n),
        None => format!("{table}_{column_name}_idx"),
    };
    let created = engine
        .backends
        .coordinator
        .create_index(
            &table,
            IndexDef {
                name: name.clone(),
                column: column_name,
                metric,
                method,
                params,
            },
            create.if_not_exists,
        )
        .await
        .map_err(from_api)?;
    match (created, notice) {
        (None, _) => session.notice(format!("relation \"{name}\" already exists, skipping")),
        (Some(_), Some(n)) => session.notice(n),
        (Some(_), None) => {}
    }
    Ok(Output::Command(Tag::new("CREATE INDEX")))
}

pub async fn drop_index(
    engine: &Engine,
    session: &Session,
    if_exists: bool,
    names: &[ObjectName],
) -> Result<Output, SqlError> {
    for name in names {
        let index = object_last(name);
        let dropped = engine
            .backends
            .coordinator
            .drop_index(&index, if_exists)
            .await
            .map_err(from_api)?;
        if dropped.is_none() {
            session.notice(format!("index \"{index}\" does not exist, skipping"));
        }
    }
    Ok(Output::Command(Tag::new("DROP INDEX")))
}
