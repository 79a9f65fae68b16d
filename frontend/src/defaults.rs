//! Column defaults: what INSERT and COPY store in the columns they leave
//! out. Serial columns take values from their sequence (kept by the
//! coordinator); other defaults are SQL expressions evaluated once per row
//! by DataFusion, so `now()` and volatile functions behave as in PostgreSQL.

use arrow::array::{ArrayRef, Int64Array};
use arrow::compute::concat;
use quiver_api::TableInfo;
use quiver_planner::coerce::coerce_column;
use quiver_planner::{SqlError, sqlstate};
use quiver_types::{ColumnDef, ColumnDefault, ColumnType, Timestamp};
use sqlparser::ast::{Expr, SetExpr};
use std::sync::Arc;

use crate::engine::{Engine, Output};
use crate::error::from_api;
use crate::session::Session;

/// The default a `DEFAULT expr` clause declares, checked by evaluating it
/// once (a column reference or a type mismatch fails at CREATE TABLE, as
/// in PostgreSQL, not at the first INSERT).
pub async fn column_default(
    engine: &Engine,
    expr: &Expr,
    ty: ColumnType,
) -> Result<ColumnDefault, SqlError> {
    if let Expr::Function(f) = expr
        && f.name.to_string().eq_ignore_ascii_case("nextval")
    {
        if !matches!(
            ty,
            ColumnType::SmallInt | ColumnType::Integer | ColumnType::BigInt
        ) {
            return Err(SqlError::new(
                sqlstate::DATATYPE_MISMATCH,
                format!(
                    "nextval() defaults need an integer column, not {}",
                    ty.pg_name()
                ),
            ));
        }
        return Ok(ColumnDefault::Serial);
    }
    let default = ColumnDefault::Expr {
        sql: expr.to_string(),
    };
    let def = ColumnDef {
        name: "default".into(),
        ty,
        nullable: true,
        default: None,
    };
    let session = engine.new_session();
    let values = evaluate(engine, &session, &expr.to_string(), 1).await?;
    coerce_column(&values, &def, "default")?;
    Ok(default)
}

/// Adds the columns `targets` leaves out that have a default, with `rows`
/// default values each.
pub async fn fill(
    engine: &Engine,
    session: &Session,
    info: &TableInfo,
    targets: &mut Vec<usize>,
    columns: &mut Vec<ArrayRef>,
    rows: usize,
) -> Result<(), SqlError> {
    if rows == 0 {
        return Ok(());
    }
    for (idx, def) in info.schema.columns.iter().enumerate() {
        let Some(default) = &def.default else {
            continue;
        };
        if targets.contains(&idx) {
            continue;
        }
        let values = match default {
            ColumnDefault::Serial => serial_values(engine, info, &def.name, rows).await?,
            ColumnDefault::Expr { sql } => evaluate(engine, session, sql, rows).await?,
        };
        targets.push(idx);
        columns.push(coerce_column(&values, def, &info.name)?);
    }
    Ok(())
}

/// `rows` values of a default expression, evaluated per row.
async fn evaluate(
    engine: &Engine,
    session: &Session,
    sql: &str,
    rows: usize,
) -> Result<ArrayRef, SqlError> {
    let query = format!("SELECT ({sql}) FROM generate_series(1, {rows})");
    let statement = engine.parse_one(&query)?;
    // Defaults read no table, so any snapshot will do.
    let Output::Rows(_, batches) = engine
        .run_query_at(session, statement, Timestamp::ZERO)
        .await?
    else {
        return Err(SqlError::new("XX000", "default produced no rows"));
    };
    let arrays: Vec<&dyn arrow::array::Array> =
        batches.iter().map(|b| b.column(0).as_ref()).collect();
    concat(&arrays).map_err(|e| SqlError::new("XX000", e.to_string()))
}

/// `rows` fresh values of a serial column.
async fn serial_values(
    engine: &Engine,
    info: &TableInfo,
    column: &str,
    rows: usize,
) -> Result<ArrayRef, SqlError> {
    let first = engine
        .backends
        .coordinator
        .next_serial_values(info.id, column, rows as u64)
        .await
        .map_err(from_api)?;
    Ok(Arc::new(Int64Array::from_iter_values(
        (0..rows as i64).map(|i| first + i),
    )))
}

/// Rows of a `VALUES` list that say `DEFAULT` in a column.
pub struct DefaultMarkers {
    /// (table column, rows that say DEFAULT there) for columns where only
    /// some rows do.
    partial: Vec<(usize, Vec<usize>)>,
}

fn is_default_keyword(expr: &Expr) -> bool {
    matches!(expr, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// Takes the `DEFAULT` keywords out of `VALUES` rows: a column that is
/// DEFAULT in every row leaves the target list (it is then filled like an
/// omitted column); elsewhere the keyword becomes NULL and is remembered,
/// to be replaced by [`fill_marked`].
pub fn strip_default_keywords(
    body: &mut SetExpr,
    targets: &mut Vec<usize>,
) -> Result<DefaultMarkers, SqlError> {
    let mut markers = DefaultMarkers {
        partial: Vec::new(),
    };
    let SetExpr::Values(values) = body else {
        return Ok(markers);
    };
    let width = targets.len();
    for row in &values.rows {
        if row.len() != width {
            let more = if row.len() > width {
                "expressions than target columns"
            } else {
                "target columns than expressions"
            };
            return Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                format!("INSERT has more {more}"),
            ));
        }
    }
    let mut keep = Vec::with_capacity(width);
    for pos in 0..width {
        let marked: Vec<usize> = values
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| is_default_keyword(&r[pos]))
            .map(|(i, _)| i)
            .collect();
        if !values.rows.is_empty() && marked.len() == values.rows.len() {
            continue;
        }
        keep.push(pos);
        if !marked.is_empty() {
            for &row in &marked {
                values.rows[row][pos] = Expr::value(sqlparser::ast::Value::Null);
            }
            markers.partial.push((targets[pos], marked));
        }
    }
    if keep.len() < width {
        for row in &mut values.rows {
            row.content = keep.iter().map(|&p| row.content[p].clone()).collect();
        }
        *targets = keep.iter().map(|&p| targets[p]).collect();
    }
    Ok(markers)
}

/// Puts the defaults into the rows that said `DEFAULT` in a column that
/// other rows gave values for (`columns` aligned with `targets`).
pub async fn fill_marked(
    engine: &Engine,
    session: &Session,
    info: &TableInfo,
    markers: DefaultMarkers,
    targets: &[usize],
    columns: &mut [ArrayRef],
) -> Result<(), SqlError> {
    for (column, rows) in markers.partial {
        let Some(pos) = targets.iter().position(|&t| t == column) else {
            continue;
        };
        let def = &info.schema.columns[column];
        let given = coerce_column(
            &columns[pos],
            &ColumnDef {
                nullable: true,
                ..def.clone()
            },
            &info.name,
        )?;
        let defaults = match &def.default {
            None => arrow::array::new_null_array(given.data_type(), rows.len()),
            Some(ColumnDefault::Serial) => {
                serial_values(engine, info, &def.name, rows.len()).await?
            }
            Some(ColumnDefault::Expr { sql }) => evaluate(engine, session, sql, rows.len()).await?,
        };
        let defaults = coerce_column(
            &defaults,
            &ColumnDef {
                nullable: true,
                ..def.clone()
            },
            &info.name,
        )?;
        let mut next_default = 0;
        let indices: Vec<(usize, usize)> = (0..given.len())
            .map(|row| {
                if rows.binary_search(&row).is_ok() {
                    next_default += 1;
                    (1, next_default - 1)
                } else {
                    (0, row)
                }
            })
            .collect();
        columns[pos] = arrow::compute::interleave(&[given.as_ref(), defaults.as_ref()], &indices)
            .map_err(|e| SqlError::new("XX000", e.to_string()))?;
    }
    Ok(())
}
