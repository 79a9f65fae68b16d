//! Quiver's corrections to `datafusion-pg-catalog`'s `pg_catalog` schema,
//! which it serves otherwise unchanged.
//!
//! - `pg_type`: the crate lists pgvector's `vector` type in the
//!   `pg_catalog` namespace; pgvector installs it in the schema of
//!   `CREATE EXTENSION` (`public`), and drivers look it up there
//!   (asyncpg's `register_vector` asks for `public.vector`). Namespace OIDs
//!   are assigned by the crate at run time, so the row is corrected at scan
//!   time from the current `pg_namespace`.
//! - `pg_attribute`: the crate reports columns it cannot map as `text`;
//!   vector columns get pgvector's type OID with their dimension as type
//!   modifier (so `format_type` and psql's `\d` say `vector(384)`), and
//!   columns with a DEFAULT (serial included) get `atthasdef`.
//! - `pg_attrdef`: one row per column DEFAULT (the crate has none), so
//!   psql's `\d` and ORM reflection show them.
//! - `format_type(oid, typmod)` knows `vector(n)`.
//! - `pg_table_is_visible(oid)` is false for relations outside the search
//!   path (Quiver's `quiver.segments` views), so clients that list "the
//!   tables of the default schema" by visibility (SQLAlchemy) do not list
//!   them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int16Array, Int32Array, RecordBatch};
use arrow::datatypes::{Int16Type, Int32Type, SchemaRef};
use quiver_types::{ColumnDef, ColumnDefault};

use crate::catalog_indexes::{CatalogView, Extension, pg_indexes_schema, rows_batch};
use crate::engine::Backends;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::scalar::ScalarValue;

/// pgvector's `vector` type OID, as `arrow-pg` reports it on the wire.
const VECTOR_TYPE_OID: i32 = arrow_pg::datatypes::PG_VECTOR_TYPE_OID as i32;

/// The `pg_catalog` schema with Quiver's corrections.
#[derive(Debug)]
pub struct PgCatalog {
    pub inner: Arc<dyn SchemaProvider>,
    pub backends: Arc<Backends>,
    /// Table OIDs the emulation assigned, as last seen by a `pg_attribute`
    /// scan (for `quiver_column_default`).
    pub table_oids: TableOids,
    pub hidden_relations: HiddenRelations,
}

/// `pg_class` OID → table name of Quiver's tables.
pub type TableOids = Arc<parking_lot::RwLock<HashMap<i32, String>>>;

/// OIDs of the relations outside the search path, as last seen by a
/// `pg_class` scan (for `pg_table_is_visible`).
pub type HiddenRelations = Arc<parking_lot::RwLock<std::collections::HashSet<i32>>>;

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.push("pg_indexes".to_string());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let inner = self.inner.table(name).await?;
        let correction = match name {
            "pg_type" => Correction::VectorType,
            "pg_attribute" => Correction::Columns,
            "pg_attrdef" => Correction::Defaults,
            other => match Extension::for_table(other) {
                Some(extension) => Correction::Rows(extension),
                None => return Ok(inner),
            },
        };
        if inner.is_none() && correction != Correction::Rows(Extension::PgIndexes) {
            return Ok(None);
        }
        Ok(Some(Arc::new(Corrected {
            inner,
            correction,
            catalog: self.inner.clone(),
            backends: self.backends.clone(),
            table_oids: self.table_oids.clone(),
            hidden_relations: self.hidden_relations.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "pg_indexes" || self.inner.table_exist(name)
    }
}

async fn scan_all(table: &Arc<dyn TableProvider>, state: &dyn Session) -> Result<Vec<RecordBatch>> {
    let plan = table.scan(state, None, &[], None).await?;
    collect(plan, state.task_ctx()).await
}

/// The OID the crate assigned to the `public` namespace.
fn public_oid(namespaces: &[RecordBatch]) -> Option<i32> {
    namespace_oid(namespaces, "public")
}

fn namespace_oid(namespaces: &[RecordBatch], name: &str) -> Option<i32> {
    for batch in namespaces {
        let names = batch.column_by_name("nspname")?.as_string_opt::<i32>()?;
        let oids = batch
            .column_by_name("oid")?
            .as_primitive_opt::<Int32Type>()?;
        for i in 0..batch.num_rows() {
            if names.is_valid(i) && names.value(i) == name {
                return Some(oids.value(i));
            }
        }
    }
    None
}

fn with_vector_row_fixed(batch: &RecordBatch, namespace: i32) -> Result<RecordBatch> {
    let schema = batch.schema();
    let (Ok(oid_idx), Ok(ns_idx)) = (schema.index_of("oid"), schema.index_of("typnamespace"))
    else {
        return Ok(batch.clone());
    };
    let (Some(oids), Some(namespaces)) = (
        batch.column(oid_idx).as_primitive_opt::<Int32Type>(),
        batch.column(ns_idx).as_primitive_opt::<Int32Type>(),
    ) else {
        return Ok(batch.clone());
    };
    if !oids.iter().any(|o| o == Some(VECTOR_TYPE_OID)) {
        return Ok(batch.clone());
    }
    let fixed: Int32Array = oids
        .iter()
        .zip(namespaces.iter())
        .map(|(oid, ns)| {
            if oid == Some(VECTOR_TYPE_OID) {
                Some(namespace)
            } else {
                ns
            }
        })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[ns_idx] = Arc::new(fixed);
    // pgvector's I/O functions (drivers compare `typinput` with regprocs,
    // and an empty name is not one).
    for (column, function) in [
        ("typinput", "vector_in"),
        ("typoutput", "vector_out"),
        ("typreceive", "vector_recv"),
        ("typsend", "vector_send"),
    ] {
        let Ok(idx) = schema.index_of(column) else {
            continue;
        };
        let Some(names) = batch.column(idx).as_string_opt::<i32>() else {
            continue;
        };
        let named: arrow::array::StringArray = (0..batch.num_rows())
            .map(|i| {
                if oids.value(i) == VECTOR_TYPE_OID {
                    Some(function)
                } else {
                    names.is_valid(i).then(|| names.value(i))
                }
            })
            .collect();
        columns[idx] = Arc::new(named);
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `pg_class` OID → name of the relations in `public`.
fn public_relations(classes: &[RecordBatch], public: i32) -> HashMap<i32, String> {
    let mut out = HashMap::new();
    for_each_relation(classes, |oid, name, namespace| {
        if namespace == public {
            out.insert(oid, name.to_string());
        }
    });
    out
}

/// Calls `f(oid, relname, relnamespace)` for every `pg_class` row.
fn for_each_relation(classes: &[RecordBatch], mut f: impl FnMut(i32, &str, i32)) {
    for batch in classes {
        let (Some(oids), Some(names), Some(namespaces)) = (
            batch
                .column_by_name("oid")
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
            batch
                .column_by_name("relname")
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name("relnamespace")
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            f(oids.value(i), names.value(i), namespaces.value(i));
        }
    }
}

/// Rewrites one Int32 column row by row.
fn map_i32(
    batch: &RecordBatch,
    name: &str,
    f: impl Fn(usize, i32) -> i32,
) -> Result<Option<(usize, ArrayRef)>> {
    let Ok(idx) = batch.schema().index_of(name) else {
        return Ok(None);
    };
    let Some(values) = batch.column(idx).as_primitive_opt::<Int32Type>() else {
        return Ok(None);
    };
    let out: Int32Array = (0..batch.num_rows())
        .map(|i| f(i, values.value(i)))
        .collect();
    Ok(Some((idx, Arc::new(out))))
}

/// `pg_attribute` rows of vector columns get pgvector's type and their
/// dimension; columns with a DEFAULT get `atthasdef`.
fn with_column_types(
    batch: &RecordBatch,
    relations: &HashMap<i32, String>,
    tables: &HashMap<String, quiver_api::TableInfo>,
) -> Result<RecordBatch> {
    let (Some(relids), Some(names)) = (
        batch
            .column_by_name("attrelid")
            .and_then(|c| c.as_primitive_opt::<Int32Type>()),
        batch
            .column_by_name("attname")
            .and_then(|c| c.as_string_opt::<i32>()),
    ) else {
        return Ok(batch.clone());
    };
    let column_of = |row: usize| {
        let table = tables.get(relations.get(&relids.value(row))?)?;
        let idx = table.schema.column_index(names.value(row))?;
        Some(table.schema.columns[idx].clone())
    };
    let columns: Vec<Option<ColumnDef>> = (0..batch.num_rows()).map(column_of).collect();
    let dim = |row: usize| columns[row].as_ref().and_then(|c| c.ty.vector_dim());
    let mut out = batch.columns().to_vec();
    for (name, f) in [
        (
            "atttypid",
            Box::new(|row, v| dim(row).map_or(v, |_| VECTOR_TYPE_OID))
                as Box<dyn Fn(usize, i32) -> i32>,
        ),
        (
            "atttypmod",
            Box::new(|row, v| dim(row).map_or(v, |d| d as i32)),
        ),
    ] {
        if let Some((idx, column)) = map_i32(batch, name, f)? {
            out[idx] = column;
        }
    }
    if let Ok(idx) = batch.schema().index_of("attlen")
        && let Some(lens) = batch.column(idx).as_primitive_opt::<Int16Type>()
    {
        let fixed: Int16Array = (0..batch.num_rows())
            .map(|i| if dim(i).is_some() { -1 } else { lens.value(i) })
            .collect();
        out[idx] = Arc::new(fixed);
    }
    if let Ok(idx) = batch.schema().index_of("atthasdef")
        && let Some(flags) = batch.column(idx).as_boolean_opt()
    {
        let fixed: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                Some(columns[i].as_ref().is_some_and(|c| c.default.is_some()) || flags.value(i))
            })
            .collect();
        out[idx] = Arc::new(fixed);
    }
    Ok(RecordBatch::try_new(batch.schema(), out)?)
}

/// A default as PostgreSQL prints it (`pg_get_expr(adbin, ...)`).
fn default_text(table: &str, column: &ColumnDef) -> Option<String> {
    Some(match column.default.as_ref()? {
        ColumnDefault::Serial => format!("nextval('{table}_{}_seq'::regclass)", column.name),
        ColumnDefault::Expr { sql } => sql.clone(),
    })
}

/// `pg_get_serial_sequence(table, column)`: the sequence a serial column
/// draws from (named as PostgreSQL would), NULL for other columns; ORMs
/// call it while reflecting tables.
pub fn pg_get_serial_sequence_udf(backends: Arc<Backends>) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    create_udf(
        "pg_get_serial_sequence",
        vec![
            arrow::datatypes::DataType::Utf8,
            arrow::datatypes::DataType::Utf8,
        ],
        arrow::datatypes::DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let (tables, columns) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
            let out: arrow::array::StringArray = (0..tables.len())
                .map(|i| {
                    if tables.is_null(i) || columns.is_null(i) {
                        return None;
                    }
                    let name = tables.value(i).trim_matches('"');
                    let name = name.strip_prefix("public.").unwrap_or(name);
                    let column = columns.value(i);
                    let info = backends.coordinator.table(name)?;
                    let idx = info.schema.column_index(column)?;
                    matches!(
                        info.schema.columns[idx].default,
                        Some(ColumnDefault::Serial)
                    )
                    .then(|| format!("public.{name}_{column}_seq"))
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// What Quiver corrects in a catalog table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Correction {
    /// `pg_type`: pgvector's type in `public`, with its I/O functions.
    VectorType,
    /// `pg_attribute`: vector columns and defaults.
    Columns,
    /// `pg_attrdef`: one row per column DEFAULT.
    Defaults,
    /// Rows appended (indexes, the extension; see `catalog_indexes`).
    Rows(Extension),
}

/// A catalog table of the emulation with Quiver's correction applied at
/// scan time (namespace and table OIDs are assigned by the emulation as it
/// goes, so corrections read them from the same scan).
#[derive(Debug)]
struct Corrected {
    /// The emulation's table; `None` for tables it lacks (`pg_indexes`).
    inner: Option<Arc<dyn TableProvider>>,
    correction: Correction,
    catalog: Arc<dyn SchemaProvider>,
    backends: Arc<Backends>,
    table_oids: TableOids,
    hidden_relations: HiddenRelations,
}

fn reloptions_type() -> arrow::datatypes::DataType {
    arrow::datatypes::DataType::List(Arc::new(arrow::datatypes::Field::new(
        "item",
        arrow::datatypes::DataType::Utf8,
        true,
    )))
}

/// `pg_class` with `reloptions` (psql's `\d+` reads it; always NULL here).
fn with_reloptions(schema: SchemaRef) -> SchemaRef {
    if schema.index_of("reloptions").is_ok() {
        return schema;
    }
    let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        "reloptions",
        reloptions_type(),
        true,
    )));
    Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// Reads what the corrections are derived from; `with_tables: false` reads
/// only the namespaces (all `pg_type` needs, and drivers read it often).
async fn catalog_view(
    catalog: &Arc<dyn SchemaProvider>,
    backends: &Backends,
    state: &dyn Session,
    with_tables: bool,
) -> Result<Option<CatalogView>> {
    let table = |name: &'static str| async move {
        catalog
            .table(name)
            .await?
            .ok_or_else(|| DataFusionError::Plan(format!("pg_catalog.{name} missing")))
    };
    let namespaces = scan_all(&table("pg_namespace").await?, state).await?;
    let Some(public) = public_oid(&namespaces) else {
        return Ok(None);
    };
    let search_path = [Some(public), namespace_oid(&namespaces, "pg_catalog")]
        .into_iter()
        .flatten()
        .collect();
    if !with_tables {
        return Ok(Some(CatalogView {
            public,
            search_path,
            table_oids: HashMap::new(),
            tables: Vec::new(),
        }));
    }
    let classes = scan_all(&table("pg_class").await?, state).await?;
    let table_oids = public_relations(&classes, public)
        .into_iter()
        .map(|(oid, name)| (name, oid))
        .collect();
    Ok(Some(CatalogView {
        public,
        search_path,
        table_oids,
        tables: backends.coordinator.tables(),
    }))
}

/// `pg_class.relhasindex` is true for Quiver tables (every one has its
/// primary key index): psql's `\d` lists indexes only then.
fn with_indexes_flagged(batch: &RecordBatch, view: &CatalogView) -> Result<RecordBatch> {
    let schema = batch.schema();
    let (Ok(idx), Some(oids)) = (
        schema.index_of("relhasindex"),
        batch
            .column_by_name("oid")
            .and_then(|c| c.as_primitive_opt::<Int32Type>()),
    ) else {
        return Ok(batch.clone());
    };
    let Some(flags) = batch.column(idx).as_boolean_opt() else {
        return Ok(batch.clone());
    };
    let table_oids: std::collections::HashSet<i32> = view.table_oids.values().copied().collect();
    let fixed: BooleanArray = (0..batch.num_rows())
        .map(|i| Some(flags.value(i) || table_oids.contains(&oids.value(i))))
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[idx] = Arc::new(fixed);
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `pg_attrdef` rows: one per column with a DEFAULT.
fn default_rows(view: &CatalogView) -> Vec<Vec<(&'static str, ScalarValue)>> {
    let mut rows = Vec::new();
    for table in &view.tables {
        let Some(&relid) = view.table_oids.get(&table.name) else {
            continue;
        };
        for (i, column) in table.schema.columns.iter().enumerate() {
            if let Some(text) = default_text(&table.name, column) {
                rows.push(vec![
                    // Any OID unique among defaults will do; none refer to it.
                    (
                        "oid",
                        ScalarValue::Int32(Some(
                            relid.saturating_mul(1000).saturating_add(i as i32),
                        )),
                    ),
                    ("adrelid", ScalarValue::Int32(Some(relid))),
                    ("adnum", ScalarValue::Int32(Some(i as i32 + 1))),
                    ("adbin", ScalarValue::Utf8(Some(text))),
                ]);
            }
        }
    }
    rows
}

#[async_trait]
impl TableProvider for Corrected {
    fn schema(&self) -> SchemaRef {
        match &self.inner {
            Some(t) if self.correction == Correction::Rows(Extension::PgClass) => {
                with_reloptions(t.schema())
            }
            Some(t) => t.schema(),
            None => pg_indexes_schema(),
        }
    }

    fn table_type(&self) -> TableType {
        match &self.inner {
            Some(t) => t.table_type(),
            None => TableType::View,
        }
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let mut batches = match &self.inner {
            Some(t) => scan_all(t, state).await?,
            None => Vec::new(),
        };
        if self.correction == Correction::Rows(Extension::PgClass) {
            batches = batches
                .iter()
                .map(|b| with_null_reloptions(b, &schema))
                .collect::<Result<_>>()?;
        }
        if let Some(view) = catalog_view(
            &self.catalog,
            &self.backends,
            state,
            self.correction != Correction::VectorType,
        )
        .await?
        {
            batches = match self.correction {
                Correction::VectorType => batches
                    .iter()
                    .map(|b| with_vector_row_fixed(b, view.public))
                    .collect::<Result<_>>()?,
                Correction::Columns => {
                    let relations: HashMap<i32, String> = view
                        .table_oids
                        .iter()
                        .map(|(name, oid)| (*oid, name.clone()))
                        .collect();
                    let tables: HashMap<String, quiver_api::TableInfo> = view
                        .tables
                        .iter()
                        .map(|t| (t.name.clone(), t.clone()))
                        .collect();
                    let corrected = batches
                        .iter()
                        .map(|b| with_column_types(b, &relations, &tables))
                        .collect::<Result<_>>()?;
                    *self.table_oids.write() = relations;
                    corrected
                }
                Correction::Defaults => vec![rows_batch(&schema, &default_rows(&view))?],
                Correction::Rows(extension) => {
                    if extension == Extension::PgClass {
                        *self.hidden_relations.write() = relations_outside(&batches, &view);
                        // `'t'::regclass` is a pg_class lookup: the size
                        // functions map its OID back through this.
                        *self.table_oids.write() = view
                            .table_oids
                            .iter()
                            .map(|(name, oid)| (*oid, name.clone()))
                            .collect();
                        batches = batches
                            .iter()
                            .map(|b| with_indexes_flagged(b, &view))
                            .collect::<Result<_>>()?;
                    }
                    batches.push(rows_batch(&schema, &extension.rows(&view))?);
                    batches
                }
            };
        }
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            schema,
            projection.cloned(),
        )?)
    }
}

/// The `pg_class` OIDs whose namespace is not on the search path.
fn relations_outside(
    classes: &[RecordBatch],
    view: &CatalogView,
) -> std::collections::HashSet<i32> {
    let mut out = std::collections::HashSet::new();
    for_each_relation(classes, |oid, _, namespace| {
        if !view.search_path.contains(&namespace) {
            out.insert(oid);
        }
    });
    out
}

/// `pg_table_is_visible(oid)`: false for relations outside the search
/// path, as the last `pg_class` scan saw them (true for OIDs it did not
/// see). Volatile, so it is evaluated after the scans of its statement.
pub fn table_is_visible_udf(hidden: HiddenRelations) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    create_udf(
        "pg_table_is_visible",
        vec![arrow::datatypes::DataType::Int64],
        arrow::datatypes::DataType::Boolean,
        Volatility::Volatile,
        Arc::new(move |args: &[ColumnarValue]| {
            let oids = ColumnarValue::values_to_arrays(args)?;
            let oids = oids[0].as_primitive::<arrow::datatypes::Int64Type>();
            let hidden = hidden.read();
            let out: BooleanArray = oids
                .iter()
                .map(|oid| oid.map(|o| !hidden.contains(&(o as i32))))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// A `pg_class` batch of the emulation with the NULL `reloptions` column.
fn with_null_reloptions(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().index_of("reloptions").is_ok() {
        return Ok(batch.clone());
    }
    let mut columns = batch.columns().to_vec();
    columns.push(arrow::array::new_null_array(
        &reloptions_type(),
        batch.num_rows(),
    ));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `pg_get_indexdef(oid [, column, pretty])` for Quiver's indexes (NULL
/// for other OIDs).
#[derive(Debug)]
pub struct PgGetIndexdef {
    backends: Arc<Backends>,
    signature: datafusion::logical_expr::Signature,
}

impl PartialEq for PgGetIndexdef {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for PgGetIndexdef {}

impl std::hash::Hash for PgGetIndexdef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "pg_get_indexdef".hash(state);
    }
}

impl PgGetIndexdef {
    pub fn udf(backends: Arc<Backends>) -> datafusion::logical_expr::ScalarUDF {
        datafusion::logical_expr::ScalarUDF::new_from_impl(PgGetIndexdef {
            backends,
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Stable,
            ),
        })
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for PgGetIndexdef {
    fn name(&self) -> &str {
        "pg_get_indexdef"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _args: &[arrow::datatypes::DataType],
    ) -> Result<arrow::datatypes::DataType> {
        Ok(arrow::datatypes::DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        let oids = args.args[0].to_array(args.number_rows)?;
        let oids = arrow::compute::cast(&oids, &arrow::datatypes::DataType::Int64)?;
        let oids = oids.as_primitive::<arrow::datatypes::Int64Type>();
        let tables = self.backends.coordinator.tables();
        let out: arrow::array::StringArray = (0..oids.len())
            .map(|i| {
                oids.is_valid(i)
                    .then(|| crate::catalog_indexes::indexdef(&tables, oids.value(i)))
                    .flatten()
            })
            .collect();
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            out,
        )))
    }
}

/// `quiver_column_default(table_oid, attnum)`: a column's DEFAULT as
/// `pg_get_expr` would print it. psql's `\d` asks for defaults with a
/// correlated subquery on `pg_attrdef` that the pg_catalog emulation drops
/// before planning; `Engine::parse` puts this call in its place.
pub fn column_default_udf(
    backends: Arc<Backends>,
    table_oids: TableOids,
) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    create_udf(
        "quiver_column_default",
        vec![
            arrow::datatypes::DataType::Int64,
            arrow::datatypes::DataType::Int64,
        ],
        arrow::datatypes::DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let relids = arrays[0].as_primitive::<arrow::datatypes::Int64Type>();
            let attnums = arrays[1].as_primitive::<arrow::datatypes::Int64Type>();
            let oids = table_oids.read();
            let out: arrow::array::StringArray = (0..relids.len())
                .map(|i| {
                    if relids.is_null(i) || attnums.is_null(i) {
                        return None;
                    }
                    let name = oids.get(&(relids.value(i) as i32))?;
                    let table = backends.coordinator.table(name)?;
                    let column = table
                        .schema
                        .columns
                        .get(usize::try_from(attnums.value(i)).ok()?.checked_sub(1)?)?;
                    default_text(name, column)
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}
