//! Quiver's indexes and the `vector` extension as the PostgreSQL catalog
//! shows them: rows appended to `pg_class` (relkind `i`), `pg_index`,
//! `pg_am` (`diskann`) and `pg_extension` (`vector`), each primary key's
//! row in `pg_constraint`, the `pg_indexes` view, and `pg_get_indexdef`. psql's `\di`, `\dx` and the "Indexes:" part
//! of `\d`, and ORM/JDBC index reflection read these.
//!
//! Every table has its primary key index `<table>_pkey` (btree, as in
//! PostgreSQL), plus one row per vector index. Their OIDs are derived from
//! Quiver's ids, so `pg_get_indexdef(oid)` needs no catalog scan.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::error::Result;
use datafusion::scalar::ScalarValue;
use quiver_api::{IndexInfo, TableInfo};

/// `pg_am` OID of the `diskann` access method (outside PostgreSQL's and the
/// emulation's ranges).
pub const DISKANN_AM_OID: i32 = 9000;
const BTREE_AM_OID: i32 = 403;
/// pgvector's extension row.
const VECTOR_EXTENSION_OID: i32 = 9001;
const VECTOR_EXTENSION_VERSION: &str = "0.8.0";
const PKEY_OID_BASE: i64 = 1_000_000_000;
const INDEX_OID_BASE: i64 = 1_500_000_000;
const CONSTRAINT_OID_BASE: i64 = 1_250_000_000;

fn pkey_oid(table: &TableInfo) -> i32 {
    (PKEY_OID_BASE + table.id.0 as i64).min(i32::MAX as i64) as i32
}

fn pkey_constraint_oid(table: &TableInfo) -> i32 {
    (CONSTRAINT_OID_BASE + table.id.0 as i64).min(i32::MAX as i64) as i32
}

fn index_oid(index: &IndexInfo) -> i32 {
    (INDEX_OID_BASE + index.id.0 as i64).min(i32::MAX as i64) as i32
}

/// The index an OID of [`index_oid`] stands for.
pub(crate) fn index_id_of_oid(oid: i64) -> Option<quiver_types::IndexId> {
    (oid >= INDEX_OID_BASE).then(|| quiver_types::IndexId((oid - INDEX_OID_BASE) as u64))
}

/// What the appended rows are computed from: the public schema's OID and
/// the catalog OID of each Quiver table.
pub struct CatalogView {
    pub public: i32,
    /// Namespaces on the search path: `public` and `pg_catalog`.
    pub search_path: Vec<i32>,
    /// Table name → `pg_class` OID (assigned by the emulation).
    pub table_oids: HashMap<String, i32>,
    pub tables: Vec<TableInfo>,
}

/// One appended row: column name → value (others get NULL or a default).
type Row = Vec<(&'static str, ScalarValue)>;

fn text(s: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(s.into()))
}

fn int(v: i32) -> ScalarValue {
    ScalarValue::Int32(Some(v))
}

fn boolean(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}

fn key_columns(table: &TableInfo) -> Vec<String> {
    table
        .schema
        .primary_key
        .iter()
        .map(|&k| table.schema.columns[k].name.clone())
        .collect()
}

/// `CREATE INDEX` text of an index, as `pg_get_indexdef` returns it.
fn pkey_def(table: &TableInfo) -> String {
    format!(
        "CREATE UNIQUE INDEX {}_pkey ON public.{} USING btree ({})",
        table.name,
        table.name,
        key_columns(table).join(", ")
    )
}

fn index_def(table: &TableInfo, index: &IndexInfo) -> String {
    format!(
        "CREATE INDEX {} ON public.{} USING {} ({} {})",
        index.def.name,
        table.name,
        index.def.method,
        index.def.column,
        index.def.metric.opclass()
    )
}

/// `pg_get_indexdef(oid)` for Quiver's index OIDs.
pub fn indexdef(tables: &[TableInfo], oid: i64) -> Option<String> {
    if oid >= INDEX_OID_BASE {
        let id = (oid - INDEX_OID_BASE) as u64;
        tables.iter().find_map(|t| {
            t.indexes
                .iter()
                .find(|i| i.id.0 == id)
                .map(|i| index_def(t, i))
        })
    } else if oid >= PKEY_OID_BASE {
        let id = (oid - PKEY_OID_BASE) as u64;
        tables.iter().find(|t| t.id.0 == id).map(pkey_def)
    } else {
        None
    }
}

/// The indexes of the tables the catalog knows: (oid, name, table, table
/// OID, is primary, access method, key column numbers, definition).
struct IndexRow {
    oid: i32,
    /// The primary key constraint's OID (primary key indexes only).
    constraint_oid: i32,
    name: String,
    table: String,
    table_oid: i32,
    primary: bool,
    am: i32,
    columns: Vec<usize>,
    def: String,
}

fn index_rows(view: &CatalogView) -> Vec<IndexRow> {
    let mut out = Vec::new();
    for table in &view.tables {
        let Some(&table_oid) = view.table_oids.get(&table.name) else {
            continue;
        };
        out.push(IndexRow {
            oid: pkey_oid(table),
            constraint_oid: pkey_constraint_oid(table),
            name: format!("{}_pkey", table.name),
            table: table.name.clone(),
            table_oid,
            primary: true,
            am: BTREE_AM_OID,
            columns: table.schema.primary_key.iter().map(|k| k + 1).collect(),
            def: pkey_def(table),
        });
        for index in &table.indexes {
            out.push(IndexRow {
                oid: index_oid(index),
                constraint_oid: 0,
                name: index.def.name.clone(),
                table: table.name.clone(),
                table_oid,
                primary: false,
                am: DISKANN_AM_OID,
                columns: table
                    .schema
                    .column_index(&index.def.column)
                    .map(|c| vec![c + 1])
                    .unwrap_or_default(),
                def: index_def(table, index),
            });
        }
    }
    out
}

/// Which catalog table gets rows appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    PgClass,
    PgIndex,
    PgAm,
    PgExtension,
    PgConstraint,
    /// `pg_indexes`, a view in PostgreSQL, built whole here.
    PgIndexes,
}

impl Extension {
    pub fn for_table(name: &str) -> Option<Self> {
        Some(match name {
            "pg_class" => Extension::PgClass,
            "pg_index" => Extension::PgIndex,
            "pg_am" => Extension::PgAm,
            "pg_extension" => Extension::PgExtension,
            "pg_constraint" => Extension::PgConstraint,
            "pg_indexes" => Extension::PgIndexes,
            _ => return None,
        })
    }

    pub fn rows(self, view: &CatalogView) -> Vec<Row> {
        match self {
            Extension::PgClass => index_rows(view)
                .into_iter()
                .map(|i| {
                    vec![
                        ("oid", int(i.oid)),
                        ("relname", text(i.name)),
                        ("relnamespace", int(view.public)),
                        ("relowner", int(10)),
                        ("relam", int(i.am)),
                        ("relkind", text("i")),
                        ("relpersistence", text("p")),
                        ("relnatts", ScalarValue::Int16(Some(i.columns.len() as i16))),
                        ("relispopulated", boolean(true)),
                        ("relreplident", text("n")),
                    ]
                })
                .collect(),
            Extension::PgIndex => index_rows(view)
                .into_iter()
                .map(|i| {
                    let keys = i
                        .columns
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(" ");
                    let zeros = vec!["0"; i.columns.len()].join(" ");
                    vec![
                        ("indexrelid", int(i.oid)),
                        ("indrelid", int(i.table_oid)),
                        ("indnatts", ScalarValue::Int16(Some(i.columns.len() as i16))),
                        (
                            "indnkeyatts",
                            ScalarValue::Int16(Some(i.columns.len() as i16)),
                        ),
                        ("indisunique", boolean(i.primary)),
                        ("indisprimary", boolean(i.primary)),
                        ("indisvalid", boolean(true)),
                        ("indisready", boolean(true)),
                        ("indislive", boolean(true)),
                        ("indimmediate", boolean(true)),
                        ("indkey", text(keys)),
                        // int2vector/oidvector as PostgreSQL prints them: no
                        // operator class, collation or sort option of note.
                        ("indclass", text(zeros.clone())),
                        ("indcollation", text(zeros.clone())),
                        ("indoption", text(zeros)),
                    ]
                })
                .collect(),
            Extension::PgAm => vec![vec![
                ("oid", int(DISKANN_AM_OID)),
                ("amname", text("diskann")),
                ("amtype", text("i")),
            ]],
            Extension::PgExtension => vec![vec![
                ("oid", int(VECTOR_EXTENSION_OID)),
                ("extname", text("vector")),
                ("extowner", int(10)),
                ("extnamespace", int(view.public)),
                ("extrelocatable", boolean(true)),
                ("extversion", text(VECTOR_EXTENSION_VERSION)),
            ]],
            Extension::PgConstraint => index_rows(view)
                .into_iter()
                .filter(|i| i.primary)
                .map(|i| {
                    let keys: Vec<String> = i.columns.iter().map(|c| c.to_string()).collect();
                    vec![
                        ("oid", int(i.constraint_oid)),
                        ("conname", text(i.name)),
                        ("connamespace", int(view.public)),
                        ("contype", text("p")),
                        ("condeferrable", boolean(false)),
                        ("condeferred", boolean(false)),
                        ("convalidated", boolean(true)),
                        ("conrelid", int(i.table_oid)),
                        ("contypid", int(0)),
                        ("conindid", int(i.oid)),
                        ("conparentid", int(0)),
                        ("confrelid", int(0)),
                        ("conislocal", boolean(true)),
                        ("coninhcount", ScalarValue::Int16(Some(0))),
                        ("connoinherit", boolean(true)),
                        ("conkey", text(format!("{{{}}}", keys.join(",")))),
                    ]
                })
                .collect(),
            Extension::PgIndexes => index_rows(view)
                .into_iter()
                .map(|i| {
                    vec![
                        ("schemaname", text("public")),
                        ("tablename", text(i.table)),
                        ("indexname", text(i.name)),
                        ("indexdef", text(i.def)),
                    ]
                })
                .collect(),
        }
    }
}

/// `pg_indexes`' columns.
pub fn pg_indexes_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    Arc::new(Schema::new(vec![
        Field::new("schemaname", DataType::Utf8, true),
        Field::new("tablename", DataType::Utf8, true),
        Field::new("indexname", DataType::Utf8, true),
        Field::new("tablespace", DataType::Utf8, true),
        Field::new("indexdef", DataType::Utf8, true),
    ]))
}

/// A batch of `rows` in `schema`: given values cast to the column's type,
/// NULL (or the type's zero for NOT NULL columns) elsewhere.
pub fn rows_batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let values = rows
            .iter()
            .map(
                |row| match row.iter().find(|(name, _)| *name == field.name().as_str()) {
                    Some((_, v)) => v.cast_to(field.data_type()),
                    None if field.is_nullable() => ScalarValue::try_from(field.data_type()),
                    None => ScalarValue::new_default(field.data_type()),
                },
            )
            .collect::<Result<Vec<_>>>()?;
        columns.push(if values.is_empty() {
            arrow::array::new_empty_array(field.data_type())
        } else {
            ScalarValue::iter_to_array(values)?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
