//! INSERT (with ON CONFLICT and RETURNING), UPDATE and DELETE.
//!
//! Row values are computed by DataFusion (VALUES, SELECT, SET expressions),
//! coerced to the table's stored types with PostgreSQL's rules, and handed to
//! the streaming nodes as one write: UPDATE is delete + insert at one commit
//! timestamp, upsert replaces the conflicting rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::MemTable;
use pgwire::api::Type;
use pgwire::api::results::Tag;
use quiver_api::{ConflictPolicy, TableInfo, WriteRequest};
use quiver_planner::coerce::build_rows;
use quiver_planner::{SqlError, sqlstate};
use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, Insert, OnConflictAction, OnInsert, SelectItem,
    SetExpr, Statement, TableFactor, TableObject, Update, Value,
};

use crate::ddl::table_name;
use crate::engine::{DATABASE, Engine, Output, ordered_param_types};
use crate::error::{from_api, from_datafusion};
use crate::session::Session;

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn rows_of(output: Output) -> Result<(SchemaRef, RecordBatch), SqlError> {
    match output {
        Output::Rows(schema, batches) => {
            let batch = concat_batches(&schema, &batches)
                .map_err(|e| SqlError::new("XX000", e.to_string()))?;
            Ok((schema, batch))
        }
        _ => Err(SqlError::new("XX000", "expected rows")),
    }
}

/// The (case-folded) column an object name such as `c` or `t.c` refers to.
fn column_name(name: &sqlparser::ast::ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

/// `SET c = expr, ...` as column name → SQL text of the expression.
fn assignment_map(
    info: &TableInfo,
    assignments: &[sqlparser::ast::Assignment],
) -> Result<std::collections::HashMap<String, String>, SqlError> {
    let mut set = std::collections::HashMap::new();
    for a in assignments {
        let AssignmentTarget::ColumnName(col) = &a.target else {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "tuple assignments",
            ));
        };
        let name = column_name(col);
        column_index(info, &name)?;
        set.insert(name, a.value.to_string());
    }
    Ok(set)
}

fn column_index(info: &TableInfo, name: &str) -> Result<usize, SqlError> {
    info.schema.column_index(name).ok_or_else(|| {
        SqlError::new(
            sqlstate::UNDEFINED_COLUMN,
            format!(
                "column \"{name}\" of relation \"{}\" does not exist",
                info.name
            ),
        )
    })
}

fn target_columns(
    info: &TableInfo,
    columns: &[sqlparser::ast::ObjectName],
) -> Result<Vec<usize>, SqlError> {
    if columns.is_empty() {
        return Ok((0..info.schema.columns.len()).collect());
    }
    columns
        .iter()
        .map(|c| column_index(info, &column_name(c)))
        .collect()
}

static TEMP_SCHEMA: AtomicU64 = AtomicU64::new(0);

/// Runs `sql` (which may name the batch `<tmp>.<table>`) with `batch`
/// visible as a temporary table, then drops it.
async fn with_temp_table(
    engine: &Engine,
    session: &Session,
    table: &str,
    batch: RecordBatch,
    sql: impl FnOnce(&str) -> String,
) -> Result<Output, SqlError> {
    let schema_name = format!("quiver_tmp_{}", TEMP_SCHEMA.fetch_add(1, Ordering::Relaxed));
    let catalog = session
        .ctx
        .catalog(DATABASE)
        .ok_or_else(|| SqlError::new("XX000", "catalog missing"))?;
    let provider = Arc::new(MemorySchemaProvider::new());
    let mem = MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(from_datafusion)?;
    use datafusion::catalog::SchemaProvider;
    provider
        .register_table(table.to_string(), Arc::new(mem))
        .map_err(from_datafusion)?;
    catalog
        .register_schema(&schema_name, provider)
        .map_err(from_datafusion)?;
    let result = async {
        let stmt = engine.parse_one(&sql(&schema_name))?;
        let ts = engine.read_snapshot(session).await?;
        engine.run_query_at(session, stmt, ts).await
    }
    .await;
    let _ = catalog.deregister_schema(&schema_name, true);
    result
}

/// Evaluates a RETURNING list over the affected rows.
async fn returning(
    engine: &Engine,
    session: &Session,
    info: &TableInfo,
    items: &[SelectItem],
    rows: RecordBatch,
) -> Result<Output, SqlError> {
    let list = items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let name = quote(&info.name);
    with_temp_table(engine, session, &info.name, rows, |tmp| {
        format!("SELECT {list} FROM {tmp}.{name} AS {name}")
    })
    .await
}

fn take(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch, SqlError> {
    take_record_batch(batch, &UInt32Array::from(rows.to_vec()))
        .map_err(|e| SqlError::new("XX000", e.to_string()))
}

pub async fn insert(
    engine: &Engine,
    session: &Session,
    insert: Insert,
) -> Result<Output, SqlError> {
    let TableObject::TableName(name) = &insert.table else {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "INSERT INTO a table function",
        ));
    };
    let info = engine.backends.lookup_table(&table_name(name)?).await?;
    let mut targets = target_columns(&info, &insert.columns)?;
    let Some(mut source) = insert.source.clone() else {
        // INSERT ... DEFAULT VALUES: one row of defaults.
        return write_insert(engine, session, &info, &insert, vec![], vec![], 1).await;
    };
    // Without a column list, a shorter row fills the leading columns and
    // the rest take their defaults, as in PostgreSQL.
    if insert.columns.is_empty()
        && let SetExpr::Values(values) = source.body.as_ref()
        && let Some(width) = values.rows.first().map(|r| r.len())
        && width < targets.len()
    {
        targets.truncate(width);
    }
    let markers = crate::defaults::strip_default_keywords(&mut source.body, &mut targets)?;
    let (width, mut columns, row_count) = match crate::literal_values::literal_columns(&source.body)
    {
        Some((columns, rows)) => (columns.len(), columns, rows),
        None => {
            let (schema, values) =
                rows_of(engine.run_query(session, Statement::Query(source)).await?)?;
            (
                schema.fields().len(),
                values.columns().to_vec(),
                values.num_rows(),
            )
        }
    };
    if width > targets.len() {
        return Err(SqlError::new(
            sqlstate::SYNTAX_ERROR,
            "INSERT has more expressions than target columns",
        ));
    }
    if width < targets.len() && insert.columns.is_empty() {
        targets.truncate(width);
    }
    if width < targets.len() {
        return Err(SqlError::new(
            sqlstate::SYNTAX_ERROR,
            "INSERT has more target columns than expressions",
        ));
    }
    crate::defaults::fill_marked(engine, session, &info, markers, &targets, &mut columns).await?;
    write_insert(engine, session, &info, &insert, targets, columns, row_count).await
}

/// Fills defaults, writes the rows and evaluates RETURNING.
async fn write_insert(
    engine: &Engine,
    session: &Session,
    info: &TableInfo,
    insert: &Insert,
    mut targets: Vec<usize>,
    mut columns: Vec<ArrayRef>,
    row_count: usize,
) -> Result<Output, SqlError> {
    let info = info.clone();
    crate::defaults::fill(
        engine,
        session,
        &info,
        &mut targets,
        &mut columns,
        row_count,
    )
    .await?;
    let mut rows = build_rows(&info.schema, &info.name, &targets, &columns, row_count)?;
    let policy = match &insert.on {
        None => ConflictPolicy::Error,
        Some(OnInsert::OnConflict(on_conflict)) => match &on_conflict.action {
            OnConflictAction::DoNothing => ConflictPolicy::Skip,
            OnConflictAction::DoUpdate(update) => {
                rows = merge_upsert(
                    engine,
                    session,
                    &info,
                    rows,
                    &update.assignments,
                    update.selection.as_ref(),
                )
                .await?;
                ConflictPolicy::Replace
            }
        },
        Some(_) => {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "ON DUPLICATE KEY UPDATE is MySQL syntax; use ON CONFLICT",
            ));
        }
    };
    let result = engine
        .write(
            session,
            WriteRequest {
                table: info.clone(),
                delete_keys: None,
                insert: Some(rows.clone()),
                on_conflict: policy,
            },
        )
        .await?;
    if let Some(items) = &insert.returning {
        let inserted = take(&rows, &result.inserted_rows)?;
        return returning(engine, session, &info, items, inserted).await;
    }
    Ok(Output::Command(
        Tag::new("INSERT")
            .with_oid(0)
            .with_rows(result.inserted_rows.len()),
    ))
}

/// Computes `ON CONFLICT DO UPDATE` rows: for keys that exist, the existing
/// row with the assignments applied (`EXCLUDED.c` is the proposed row).
async fn merge_upsert(
    engine: &Engine,
    session: &Session,
    info: &TableInfo,
    proposed: RecordBatch,
    assignments: &[sqlparser::ast::Assignment],
    selection: Option<&Expr>,
) -> Result<RecordBatch, SqlError> {
    let table = quote(&info.name);
    let set = assignment_map(info, assignments)?;
    let key0 = quote(&info.schema.columns[info.schema.primary_key[0]].name);
    let join = info
        .schema
        .primary_key
        .iter()
        .map(|&k| {
            let c = quote(&info.schema.columns[k].name);
            format!("excluded.{c} = {table}.{c}")
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let guard = selection
        .map(|s| format!(" WHEN NOT ({s}) THEN {table}."))
        .unwrap_or_default();
    let projection = info
        .schema
        .columns
        .iter()
        .map(|c| {
            let q = quote(&c.name);
            let updated = match set.get(&c.name) {
                // A literal's type (bigint for `6`) must not leak into the
                // column's: DataFusion would build the CASE with mixed types.
                Some(expr) if c.ty.is_numeric() => format!("CAST(({expr}) AS {})", c.ty.pg_name()),
                Some(expr) => expr.clone(),
                None => format!("{table}.{q}"),
            };
            let keep = if guard.is_empty() {
                String::new()
            } else {
                format!("{guard}{q}")
            };
            format!(
                "CASE WHEN {table}.{key0} IS NULL THEN excluded.{q}{keep} ELSE {updated} END AS {q}"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let out = with_temp_table(engine, session, "excluded", proposed, |tmp| {
        format!("SELECT {projection} FROM {tmp}.excluded AS excluded LEFT JOIN {table} ON {join}")
    })
    .await?;
    let (_, merged) = rows_of(out)?;
    let targets: Vec<usize> = (0..info.schema.columns.len()).collect();
    build_rows(
        &info.schema,
        &info.name,
        &targets,
        merged.columns(),
        merged.num_rows(),
    )
}

fn single_table(table: &sqlparser::ast::TableWithJoins) -> Result<String, SqlError> {
    if !table.joins.is_empty() {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "joins in UPDATE/DELETE targets",
        ));
    }
    match &table.relation {
        TableFactor::Table { name, .. } => table_name(name),
        _ => Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "UPDATE/DELETE of a derived table",
        )),
    }
}

/// The SELECT an UPDATE runs to compute its new rows (then the old keys).
fn update_query(info: &TableInfo, update: &Update) -> Result<String, SqlError> {
    if update.from.is_some() {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "UPDATE ... FROM is not supported yet",
        ));
    }
    let set = assignment_map(info, &update.assignments)?;
    let mut items: Vec<String> = info
        .schema
        .columns
        .iter()
        .map(|c| {
            let q = quote(&c.name);
            match set.get(&c.name) {
                Some(expr) => format!("{expr} AS {q}"),
                None => q,
            }
        })
        .collect();
    for (i, &k) in info.schema.primary_key.iter().enumerate() {
        items.push(format!(
            "{} AS __quiver_old_key_{i}",
            quote(&info.schema.columns[k].name)
        ));
    }
    let filter = update
        .selection
        .as_ref()
        .map(|s| format!(" WHERE {s}"))
        .unwrap_or_default();
    Ok(format!(
        "SELECT {} FROM {}{filter}",
        items.join(", "),
        update.table
    ))
}

pub async fn update(
    engine: &Engine,
    session: &Session,
    update: Update,
) -> Result<Output, SqlError> {
    let info = engine
        .backends
        .lookup_table(&single_table(&update.table)?)
        .await?;
    let sql = update_query(&info, &update)?;
    let ts = strong_snapshot(engine).await?;
    let (_, batch) = rows_of(
        engine
            .run_query_at(session, engine.parse_one(&sql)?, ts)
            .await?,
    )?;
    let n = info.schema.columns.len();
    let targets: Vec<usize> = (0..n).collect();
    let new_rows = build_rows(
        &info.schema,
        &info.name,
        &targets,
        &batch.columns()[..n],
        batch.num_rows(),
    )?;
    let old_keys = RecordBatch::try_new(info.schema.key_schema(), batch.columns()[n..].to_vec())
        .map_err(|e| SqlError::new("XX000", e.to_string()))?;
    let matched = batch.num_rows();
    if matched > 0 {
        engine
            .write(
                session,
                WriteRequest {
                    table: info.clone(),
                    delete_keys: Some(old_keys),
                    insert: Some(new_rows.clone()),
                    on_conflict: ConflictPolicy::Error,
                },
            )
            .await?;
    }
    if let Some(items) = &update.returning {
        return returning(engine, session, &info, items, new_rows).await;
    }
    Ok(Output::Command(Tag::new("UPDATE").with_rows(matched)))
}

fn delete_target(delete: &Delete) -> Result<(String, String), SqlError> {
    let tables = match &delete.from {
        FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
    };
    if tables.len() != 1 || delete.using.is_some() {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "DELETE ... USING is not supported yet",
        ));
    }
    Ok((single_table(&tables[0])?, tables[0].to_string()))
}

pub async fn delete(
    engine: &Engine,
    session: &Session,
    delete: Delete,
) -> Result<Output, SqlError> {
    let (table, relation) = delete_target(&delete)?;
    let info = engine.backends.lookup_table(&table).await?;
    let filter = delete
        .selection
        .as_ref()
        .map(|s| format!(" WHERE {s}"))
        .unwrap_or_default();
    let sql = format!("SELECT * FROM {relation}{filter}");
    let ts = strong_snapshot(engine).await?;
    let (_, rows) = rows_of(
        engine
            .run_query_at(session, engine.parse_one(&sql)?, ts)
            .await?,
    )?;
    let keys = rows
        .project(&info.schema.primary_key)
        .map_err(|e| SqlError::new("XX000", e.to_string()))?;
    let keys = RecordBatch::try_new(info.schema.key_schema(), keys.columns().to_vec())
        .map_err(|e| SqlError::new("XX000", e.to_string()))?;
    let mut deleted = 0;
    if rows.num_rows() > 0 {
        let result = engine
            .write(
                session,
                WriteRequest {
                    table: info.clone(),
                    delete_keys: Some(keys),
                    insert: None,
                    on_conflict: ConflictPolicy::Error,
                },
            )
            .await?;
        deleted = result.deleted as usize;
    }
    if let Some(items) = &delete.returning {
        return returning(engine, session, &info, items, rows).await;
    }
    Ok(Output::Command(Tag::new("DELETE").with_rows(deleted)))
}

/// UPDATE and DELETE decide which rows they touch at the latest snapshot.
async fn strong_snapshot(engine: &Engine) -> Result<quiver_types::Timestamp, SqlError> {
    let now = engine
        .backends
        .coordinator
        .allocate_timestamp()
        .await
        .map_err(from_api)?;
    engine
        .backends
        .streaming
        .wait_applied(now)
        .await
        .map_err(from_api)
}

fn pg_type_of(info: &TableInfo, column: usize) -> Type {
    let field = Arc::new(info.schema.columns[column].arrow_field());
    arrow_pg::datatypes::field_into_pg_type(&field).unwrap_or(Type::UNKNOWN)
}

/// Parameter types and RETURNING columns of a DML statement.
pub async fn describe(
    engine: &Engine,
    session: &Session,
    statement: &Statement,
) -> Result<(Vec<Type>, Option<SchemaRef>), SqlError> {
    let count = crate::engine::count_parameters(statement);
    let mut params = vec![Type::UNKNOWN; count];
    let (info, returning_items) = match statement {
        Statement::Insert(insert) => {
            let TableObject::TableName(name) = &insert.table else {
                return Ok((params, None));
            };
            let info = engine.backends.lookup_table(&table_name(name)?).await?;
            let targets = target_columns(&info, &insert.columns)?;
            if let Some(source) = &insert.source
                && let SetExpr::Values(values) = source.body.as_ref()
            {
                for row in &values.rows {
                    for (pos, expr) in row.content.iter().enumerate() {
                        if let Expr::Value(v) = expr
                            && let Value::Placeholder(p) = &v.value
                            && let Ok(n) = p.trim_start_matches('$').parse::<usize>()
                            && n >= 1
                            && n <= count
                            && let Some(&col) = targets.get(pos)
                        {
                            params[n - 1] = pg_type_of(&info, col);
                        }
                    }
                }
            }
            (info, insert.returning.clone())
        }
        Statement::Update(update) => {
            let info = engine
                .backends
                .lookup_table(&single_table(&update.table)?)
                .await?;
            for a in &update.assignments {
                if let (AssignmentTarget::ColumnName(col), Expr::Value(v)) = (&a.target, &a.value)
                    && let Value::Placeholder(p) = &v.value
                    && let Ok(n) = p.trim_start_matches('$').parse::<usize>()
                    && n >= 1
                    && n <= count
                {
                    let name = column_name(col);
                    params[n - 1] = pg_type_of(&info, column_index(&info, &name)?);
                }
            }
            if let Ok(plan) = engine
                .plan(session, engine.parse_one(&update_query(&info, update)?)?)
                .await
            {
                merge_types(&mut params, ordered_param_types(&plan)?);
            }
            (info, update.returning.clone())
        }
        Statement::Delete(delete) => {
            let (table, relation) = delete_target(delete)?;
            let info = engine.backends.lookup_table(&table).await?;
            let filter = delete
                .selection
                .as_ref()
                .map(|s| format!(" WHERE {s}"))
                .unwrap_or_default();
            let plan = engine
                .plan(
                    session,
                    engine.parse_one(&format!("SELECT * FROM {relation}{filter}"))?,
                )
                .await?;
            merge_types(&mut params, ordered_param_types(&plan)?);
            (info, delete.returning.clone())
        }
        _ => return Ok((params, None)),
    };
    let schema = match returning_items {
        Some(items) => {
            let empty = RecordBatch::new_empty(info.schema.arrow_schema());
            match returning(engine, session, &info, &items, empty).await? {
                Output::Rows(schema, _) => Some(schema),
                _ => None,
            }
        }
        None => None,
    };
    Ok((params, schema))
}

fn merge_types(params: &mut [Type], inferred: Vec<Type>) {
    for (slot, t) in params.iter_mut().zip(inferred) {
        if *slot == Type::UNKNOWN {
            *slot = t;
        }
    }
}
