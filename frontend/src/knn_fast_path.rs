//! The direct path for the commonest vector statement:
//!
//! ```sql
//! SELECT id, embedding <-> $1 AS distance FROM items ORDER BY embedding <-> $1 LIMIT 10
//! ```
//!
//! Planning such a statement through DataFusion (SQL → logical plan,
//! optimiser, physical planner) costs more server time than searching two
//! 50,000-row DiskANN segments (docs/benchmarks.md). A statement of exactly
//! this shape — one table, an optional WHERE, projections that are columns, `*` or the
//! ordering distance itself, `ORDER BY column <op> 'vector' [ASC]`, a
//! constant `LIMIT` and no OFFSET — is recognised on its syntax tree and run
//! by the same search the planned operator uses (every part of the table at
//! the statement's snapshot, at most k candidates per part), then ranked by
//! the exact SQL distance. Anything else, and every statement inside a
//! transaction block, takes the general path, so results never depend on
//! which path ran.
//!
//! A prepared statement (`ORDER BY embedding <-> $1 LIMIT $2`) is recognised
//! with its bound parameter values as they are, so the query vector never
//! makes the round trip through SQL text that binding into the syntax tree
//! would cost (384 floats formatted and parsed again per execution).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::ExprSchemable;
use quiver_api::{
    DISTANCE_COLUMN, SearchFilter, TableInfo, VectorSearchRequest, with_distance_column,
};
use quiver_planner::SqlError;
use quiver_planner::vector::{
    list_scalar_vector, operator_distance, parse_vector_text, to_vectors,
};
use quiver_types::VectorMetric;
use sqlparser::ast::{
    BinaryOperator, Expr, ExprWithAlias as SqlExprWithAlias, GroupByExpr, Ident, LimitClause,
    ObjectName, OrderByKind, Query, SelectItem, SetExpr, Statement, TableFactor, Value,
    visit_expressions_mut,
};
use std::ops::ControlFlow;

use crate::column_names::{expr_name, folded_name};
use crate::engine::{Engine, Output};
use crate::error::from_datafusion;
use crate::session::Session;
use crate::settings::search_list;
use crate::vector_search::search_candidates;

/// A recognised k-NN statement.
#[derive(Debug)]
pub struct KnnStatement {
    table: TableInfo,
    column: usize,
    metric: VectorMetric,
    query: Vec<f32>,
    k: usize,
    outputs: Vec<OutputColumn>,
    /// The WHERE clause, bound to the columns it reads.
    filter: Option<SearchFilter>,
}

#[derive(Debug)]
struct OutputColumn {
    name: String,
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Column(usize),
    Distance,
}

fn metric_of(op: &BinaryOperator) -> Option<VectorMetric> {
    match op {
        BinaryOperator::LtDashGt => Some(VectorMetric::L2),
        BinaryOperator::Spaceship => Some(VectorMetric::Cosine),
        BinaryOperator::Custom(token) if token == "<#>" => Some(VectorMetric::InnerProduct),
        _ => None,
    }
}

/// The bound value of parameter marker `$n`.
fn parameter<'a>(expr: &Expr, params: &'a [ScalarValue]) -> Option<&'a ScalarValue> {
    let Expr::Value(v) = expr else {
        return None;
    };
    let Value::Placeholder(name) = &v.value else {
        return None;
    };
    params.get(quiver_planner::rewrite::parameter_position(name)?)
}

/// A bound parameter as a vector: a decoded `vector` value, or text in
/// pgvector's input form. NULL and anything else go to the general path.
fn vector_parameter(value: &ScalarValue) -> Option<Vec<f32>> {
    match value {
        ScalarValue::Utf8(Some(text))
        | ScalarValue::LargeUtf8(Some(text))
        | ScalarValue::Utf8View(Some(text)) => parse_vector_text(text).ok(),
        ScalarValue::FixedSizeList(_) | ScalarValue::List(_) | ScalarValue::LargeList(_) => {
            list_scalar_vector(value).ok()?
        }
        _ => None,
    }
}

/// `'[..]'`, or `'[..]'::vector[(n)]` / `CAST(.. AS vector)`, which the
/// parser has rewritten into `to_vector('[..]'[, n])`, or a bound `$n`.
fn vector_constant(expr: &Expr, params: &[ScalarValue]) -> Option<Vec<f32>> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(text) => parse_vector_text(text).ok(),
            Value::Placeholder(_) => vector_parameter(parameter(expr, params)?),
            _ => None,
        },
        Expr::Nested(inner) => vector_constant(inner, params),
        // `'[..]'::vector(n)` as the parser rewrites it: `to_vector('[..]', n)`.
        Expr::Function(call) if call.name.to_string().eq_ignore_ascii_case("to_vector") => {
            let args = quiver_planner::rewrite::unnamed_args(call)?;
            let (text, dim) = match args.as_slice() {
                [text] => (*text, None),
                [text, dim] => (*text, Some(positive_integer(dim, &[])?)),
                _ => return None,
            };
            let vector = vector_constant(text, params)?;
            // A wrong dimension is the general path's error to report.
            dim.is_none_or(|d| d == vector.len()).then_some(vector)
        }
        _ => None,
    }
}

/// The referenced column's name, if `expr` names a column of the one table
/// (bare, or qualified by the table's name or alias).
fn column_name(expr: &Expr, qualifiers: &[String]) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(folded_name(ident)),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [qualifier, column] if qualifiers.contains(&folded_name(qualifier)) => {
                Some(folded_name(column))
            }
            _ => None,
        },
        Expr::Nested(inner) => column_name(inner, qualifiers),
        _ => None,
    }
}

fn table_name(name: &ObjectName) -> Option<String> {
    let parts: Vec<&Ident> = name.0.iter().map(|p| p.as_ident()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [table] => Some(folded_name(table)),
        [schema, table] if folded_name(schema) == "public" => Some(folded_name(table)),
        _ => None,
    }
}

fn positive_integer(expr: &Expr, params: &[ScalarValue]) -> Option<usize> {
    let k = match expr {
        Expr::Value(v) => match &v.value {
            // Beyond i64 PostgreSQL refuses the LIMIT: the general path reports it.
            Value::Number(n, _) => n.parse::<i64>().ok()?,
            Value::Placeholder(_) => match parameter(expr, params)? {
                ScalarValue::Int16(Some(k)) => i64::from(*k),
                ScalarValue::Int32(Some(k)) => i64::from(*k),
                ScalarValue::Int64(Some(k)) => *k,
                _ => return None,
            },
            _ => return None,
        },
        _ => return None,
    };
    (k > 0).then_some(k as usize)
}

/// Recognises the statement shape the direct path serves; `None` sends the
/// statement down the general path.
pub fn recognize(
    engine: &Engine,
    session: &Session,
    statement: &Statement,
) -> Option<KnnStatement> {
    recognize_with_parameters(engine, session, statement, &[])
}

/// [`recognize`] for a statement whose `$n` parameter markers take
/// `params` (in order) as they are, rather than substituted into the
/// syntax tree.
pub fn recognize_with_parameters(
    engine: &Engine,
    session: &Session,
    statement: &Statement,
    params: &[ScalarValue],
) -> Option<KnnStatement> {
    if session.in_transaction_block() {
        return None;
    }
    let Statement::Query(query) = statement else {
        return None;
    };
    let Query {
        with: None,
        body,
        order_by: Some(order_by),
        limit_clause:
            Some(LimitClause::LimitOffset {
                limit: Some(limit),
                offset: None,
                limit_by,
            }),
        fetch: None,
        locks,
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators,
    } = query.as_ref()
    else {
        return None;
    };
    if !limit_by.is_empty() || !locks.is_empty() || !pipe_operators.is_empty() {
        return None;
    }
    let k = positive_integer(limit, params)?;
    let SetExpr::Select(select) = body.as_ref() else {
        return None;
    };
    let plain_select = select.distinct.is_none()
        && select.top.is_none()
        && select.exclude.is_none()
        && select.into.is_none()
        && select.lateral_views.is_empty()
        && select.prewhere.is_none()
        && select.connect_by.is_empty()
        && matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        && select.cluster_by.is_empty()
        && select.distribute_by.is_empty()
        && select.sort_by.is_empty()
        && select.having.is_none()
        && select.named_window.is_empty()
        && select.qualify.is_none()
        && select.value_table_mode.is_none();
    if !plain_select {
        return None;
    }
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table {
        name,
        alias,
        args: None,
        with_hints,
        version: None,
        with_ordinality: false,
        partitions,
        json_path: None,
        sample: None,
        index_hints,
    } = &from.relation
    else {
        return None;
    };
    if !with_hints.is_empty() || !partitions.is_empty() || !index_hints.is_empty() {
        return None;
    }
    let table_name = table_name(name)?;
    let mut qualifiers = vec![table_name.clone()];
    if let Some(alias) = alias {
        if !alias.columns.is_empty() {
            return None;
        }
        qualifiers = vec![folded_name(&alias.name)];
    }
    let table = engine.backends.coordinator.table(&table_name)?;

    // DataFusion resolves an ORDER BY name to a select alias first; a
    // statement whose alias shadows a column stays on the general path so
    // both paths answer alike.
    let shadows_column = select.projection.iter().any(|item| match item {
        SelectItem::ExprWithAlias { expr, alias } => {
            let alias = folded_name(alias);
            table.schema.columns.iter().any(|c| c.name == alias)
                && column_name(expr, &qualifiers).as_deref() != Some(alias.as_str())
        }
        _ => false,
    });
    if shadows_column {
        return None;
    }
    let OrderByKind::Expressions(order) = &order_by.kind else {
        return None;
    };
    let [order] = order.as_slice() else {
        return None;
    };
    if order.options.asc == Some(false)
        || order.options.nulls_first.is_some()
        || order.with_fill.is_some()
    {
        return None;
    }
    let Expr::BinaryOp { left, op, right } = &order.expr else {
        return None;
    };
    let metric = metric_of(op)?;
    let ordered_column = column_name(left, &qualifiers)?;
    let query_vector = vector_constant(right, params)?;
    let columns = &table.schema.columns;
    let column = columns.iter().position(|c| c.name == ordered_column)?;
    let schema = table.schema.arrow_schema();
    match schema.field(column).data_type() {
        DataType::FixedSizeList(item, dim)
            if item.data_type() == &DataType::Float32 && *dim as usize == query_vector.len() => {}
        _ => return None,
    }

    let mut outputs = Vec::new();
    for item in &select.projection {
        let (expr, alias) = match item {
            SelectItem::Wildcard(options)
                if options.opt_exclude.is_none()
                    && options.opt_except.is_none()
                    && options.opt_replace.is_none()
                    && options.opt_rename.is_none()
                    && options.opt_ilike.is_none() =>
            {
                outputs.extend(columns.iter().enumerate().map(|(i, c)| OutputColumn {
                    name: c.name.clone(),
                    source: Source::Column(i),
                }));
                continue;
            }
            SelectItem::UnnamedExpr(expr) => (expr, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(folded_name(alias))),
            _ => return None,
        };
        let source = if *expr == order.expr {
            Source::Distance
        } else {
            let name = column_name(expr, &qualifiers)?;
            Source::Column(columns.iter().position(|c| c.name == name)?)
        };
        let name = match (alias, source) {
            (Some(alias), _) => alias,
            (None, Source::Column(i)) => columns[i].name.clone(),
            // PostgreSQL's name for the expression, as the general path reports it.
            (None, Source::Distance) => expr_name(expr),
        };
        outputs.push(OutputColumn { name, source });
    }
    let filter = match &select.selection {
        None => None,
        Some(selection) => Some(bind_filter(
            session,
            &table,
            selection,
            &qualifiers,
            params,
        )?),
    };
    // `SELECT FROM t ...` (no columns) is the general path's.
    if outputs.is_empty() {
        return None;
    }
    tracing::debug!(table = %table.name, k, filtered = filter.is_some(), "direct k-NN path");
    Some(KnnStatement {
        table,
        column,
        metric,
        query: query_vector,
        k,
        outputs,
        filter,
    })
}

/// Plans a WHERE clause as a physical expression over just the columns it
/// reads, as the planned path binds it. `None` (a subquery, a type or name
/// error, not a boolean) leaves the statement to the general path, which
/// reports errors with their proper SQLSTATE.
fn bind_filter(
    session: &Session,
    table: &TableInfo,
    selection: &Expr,
    qualifiers: &[String],
    params: &[ScalarValue],
) -> Option<SearchFilter> {
    let mut expr = selection.clone();
    if !params.is_empty() {
        quiver_planner::rewrite::bind_parameters(&mut expr, params).ok()?;
    }
    let mut needs_general_path = false;
    let _ = visit_expressions_mut(&mut expr, |e: &mut Expr| {
        match e {
            // Functions may need the optimiser's rewrites (coalesce, now(),
            // arrow_cast) or a statement start time: general path.
            Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::InSubquery { .. }
            | Expr::Function(_) => {
                needs_general_path = true;
            }
            // The table is the only relation: drop its qualifier.
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                if qualifiers.contains(&folded_name(&parts[0])) {
                    *e = Expr::Identifier(parts[1].clone());
                } else {
                    needs_general_path = true;
                }
            }
            Expr::CompoundIdentifier(_) => needs_general_path = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    if needs_general_path {
        return None;
    }
    let schema = table.schema.arrow_schema();
    let state = session.ctx.state_ref();
    let state = state.read();
    let full = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    let logical = state
        .create_logical_expr_from_sql_expr(SqlExprWithAlias { expr, alias: None }, &full)
        .ok()?;
    if logical.get_type(&full).ok()? != DataType::Boolean {
        return None;
    }
    let mut columns: Vec<usize> = logical
        .column_refs()
        .iter()
        .map(|c| schema.index_of(&c.name).ok())
        .collect::<Option<_>>()?;
    columns.sort_unstable();
    columns.dedup();
    let filter_schema = Arc::new(schema.project(&columns).ok()?);
    let projected = DFSchema::try_from(filter_schema.as_ref().clone()).ok()?;
    let predicate = state.create_physical_expr(logical, &projected).ok()?;
    Some(SearchFilter {
        predicate,
        columns,
        schema: filter_schema,
    })
}

/// Runs a recognised statement at the session's snapshot.
pub async fn run(
    engine: &Engine,
    session: &Session,
    knn: KnnStatement,
) -> Result<Output, SqlError> {
    let ts = engine.read_snapshot(session).await?;
    let index = knn
        .table
        .index_for(&knn.table.schema.columns[knn.column].name, knn.metric)
        .map(|i| i.id);
    // Unless the statement shows the distance (computed exactly from the
    // vectors, as the general path does), candidates come with the search's
    // own distances and without their vectors, which are then neither read
    // from disk nor sent from a query node.
    let shows_distance = knn
        .outputs
        .iter()
        .any(|o| matches!(o.source, Source::Distance));
    // Cosine keeps whole rows: a zero vector, whose cosine distance is NaN
    // (ranked last), sits in a cosine index as a zero vector at squared
    // distance 1 from any unit query, which would rank it at 0.5; and f32
    // cosine loses the float8 ranking's precision for near-duplicates.
    let use_search_distances = !shows_distance && knn.metric != VectorMetric::Cosine;
    let projection = use_search_distances.then(|| {
        let mut columns: Vec<usize> = knn
            .outputs
            .iter()
            .filter_map(|o| match o.source {
                Source::Column(i) => Some(i),
                Source::Distance => None,
            })
            .collect();
        columns.sort_unstable();
        columns.dedup();
        columns
    });
    let request = VectorSearchRequest {
        column: knn.column,
        metric: knn.metric,
        query: Arc::new(knn.query.clone()),
        k: knn.k,
        search_list: search_list(session),
        index,
        filter: knn.filter.clone(),
        projection_with_distance: projection.clone(),
    };
    let table_schema = knn.table.schema.arrow_schema();
    let parts = search_candidates(engine.backends.clone(), knn.table.clone(), ts, request)
        .await
        .map_err(from_datafusion)?;
    let arrow_err = |e: arrow::error::ArrowError| from_datafusion(e.into());
    // Candidates are shaped like the table (or its projection plus the
    // distance), whichever part they come from.
    let candidate_schema = match &projection {
        Some(columns) => with_distance_column(
            RecordBatch::new_empty(Arc::new(table_schema.project(columns).map_err(arrow_err)?)),
            Vec::new(),
        )
        .map_err(arrow_err)?
        .schema(),
        None => table_schema.clone(),
    };
    // A query node of an older version ignores the projection and returns
    // whole rows: refuse them rather than rank by the wrong column.
    if projection.is_some()
        && let Some(part) = parts.iter().find(|p| {
            p.num_columns() != candidate_schema.fields().len()
                || p.schema().field(p.num_columns() - 1).name() != DISTANCE_COLUMN
        })
    {
        return Err(SqlError::new(
            "XX000",
            format!(
                "a search returned {} columns without distances where {} were expected; \
                 are all query nodes running the same Quiver version?",
                part.num_columns(),
                candidate_schema.fields().len()
            ),
        ));
    }
    let candidates =
        arrow::compute::concat_batches(&candidate_schema, &parts).map_err(arrow_err)?;

    // Rank by distance: NULL vectors last, NaN after numbers (PostgreSQL's
    // float order), ties in candidate order.
    let distances: Vec<Option<f64>> = match &projection {
        Some(_) => {
            let column = candidates.column(candidates.num_columns() - 1);
            let column = column
                .as_any()
                .downcast_ref::<arrow::array::Float32Array>()
                .ok_or_else(|| SqlError::new("XX000", "search distances are not float4"))?;
            column
                .values()
                .iter()
                .map(|d| Some(f64::from(*d)))
                .collect()
        }
        None => {
            let vectors = to_vectors(candidates.column(knn.column)).map_err(from_datafusion)?;
            (0..candidates.num_rows())
                .map(|row| {
                    vectors
                        .row(row)
                        .map(|v| operator_distance(knn.metric, v, &knn.query))
                })
                .collect()
        }
    };
    let mut order: Vec<u32> = (0..candidates.num_rows() as u32).collect();
    order.sort_by(
        |&a, &b| match (distances[a as usize], distances[b as usize]) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        },
    );
    order.truncate(knn.k);
    let take = UInt32Array::from(order);
    let position = |column: usize| match &projection {
        Some(columns) => columns.binary_search(&column).unwrap_or(0),
        None => column,
    };
    let fields = output_fields(&knn, &table_schema);
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(knn.outputs.len());
    for output in &knn.outputs {
        arrays.push(match output.source {
            Source::Column(i) => {
                arrow::compute::take(candidates.column(position(i)).as_ref(), &take, None)
                    .map_err(arrow_err)?
            }
            Source::Distance => Arc::new(Float64Array::from(
                take.values()
                    .iter()
                    .map(|&i| distances[i as usize])
                    .collect::<Vec<_>>(),
            )),
        });
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(arrow_err)?;
    let batches = if batch.num_rows() == 0 {
        Vec::new()
    } else {
        vec![batch]
    };
    Ok(Output::Rows(schema, batches))
}

/// The result's columns: each output named as PostgreSQL names it, typed as
/// the table column it shows (or `float8` for the distance).
fn output_fields(knn: &KnnStatement, table_schema: &Schema) -> Vec<Field> {
    knn.outputs
        .iter()
        .map(|output| match output.source {
            Source::Column(i) => {
                let field = table_schema.field(i);
                Field::new(&output.name, field.data_type().clone(), true)
                    .with_metadata(field.metadata().clone())
            }
            Source::Distance => Field::new(&output.name, DataType::Float64, true),
        })
        .collect()
}
