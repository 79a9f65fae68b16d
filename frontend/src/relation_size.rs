//! Disk sizes of tables and indexes: `pg_relation_size`, `pg_table_size`,
//! `pg_indexes_size` and `pg_total_relation_size` of a relation named by a
//! string (`pg_relation_size('items_embedding_idx')`, as pgvector's docs
//! write it), and `pg_size_pretty`.
//!
//! A table's size is the bytes of its sealed segments in the object store
//! (rows still growing are in the WAL and in memory, not yet in a
//! segment); an index's is the bytes of its built DiskANN files. The sizes
//! live in the coordinator's catalog, which DataFusion functions cannot
//! reach, so a call with a literal name is replaced by its value before
//! planning, as `current_setting` is. Calls with an OID (psql's `\d+`,
//! `'x'::regclass`, which the catalog emulation turns into a `pg_class`
//! lookup) go through functions that map the OID back to the relation.

use std::ops::ControlFlow;

use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use quiver_api::{BuildState, CoordinatorApi};
use quiver_planner::{SqlError, sqlstate};
use sqlparser::ast::{
    CastKind, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Statement, Value,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeFunction {
    Relation,
    Table,
    Indexes,
    Total,
}

impl SizeFunction {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "pg_relation_size" => SizeFunction::Relation,
            "pg_table_size" => SizeFunction::Table,
            "pg_indexes_size" => SizeFunction::Indexes,
            "pg_total_relation_size" => SizeFunction::Total,
            _ => return None,
        })
    }
}

/// A relation name as `regclass` input reads it: unquoted parts folded to
/// lower case, an optional `public.` schema.
fn relation_name(text: &str) -> String {
    let text = text.trim();
    let text = text.strip_prefix("public.").unwrap_or(text);
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => text.to_ascii_lowercase(),
    }
}

/// What sizes are computed from, read from the coordinator once per
/// statement or function call (not once per relation asked about).
struct Sizes {
    tables: Vec<quiver_api::TableInfo>,
    segments: Vec<quiver_segment::SegmentMeta>,
    builds: Vec<quiver_api::IndexBuildStatus>,
}

impl Sizes {
    fn read(coordinator: &dyn CoordinatorApi) -> Self {
        Sizes {
            tables: coordinator.tables(),
            segments: coordinator.sealed_segments(),
            builds: coordinator.index_builds(),
        }
    }

    fn index_bytes(&self, index: quiver_types::IndexId) -> u64 {
        self.builds
            .iter()
            .filter(|b| b.index.id == index && b.state == BuildState::Done)
            .filter_map(|b| b.bytes)
            .sum()
    }

    /// The size `function` reports for the relation `name`, in bytes.
    fn size_of(&self, function: SizeFunction, name: &str) -> Result<i64, SqlError> {
        if let Some(table) = self.tables.iter().find(|t| t.name == name) {
            let data: u64 = self
                .segments
                .iter()
                .filter(|s| s.table == table.id)
                .map(|s| s.bytes)
                .sum();
            let indexes: u64 = table.indexes.iter().map(|i| self.index_bytes(i.id)).sum();
            let bytes = match function {
                SizeFunction::Relation | SizeFunction::Table => data,
                SizeFunction::Indexes => indexes,
                SizeFunction::Total => data + indexes,
            };
            return Ok(bytes as i64);
        }
        let index = self
            .tables
            .iter()
            .flat_map(|t| t.indexes.iter())
            .find(|i| i.def.name == name);
        match index {
            Some(index) => Ok(match function {
                SizeFunction::Indexes => 0,
                _ => self.index_bytes(index.id) as i64,
            }),
            None => Err(SqlError::new(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{name}\" does not exist"),
            )),
        }
    }

    /// The relation an OID stands for: a Quiver index, or a table as the
    /// last `pg_class` or `pg_attribute` scan numbered it (a `'t'::regclass`
    /// lookup is such a scan, run before the function).
    fn relation_of_oid(
        &self,
        table_oids: &crate::pg_catalog::TableOids,
        oid: i64,
    ) -> Option<String> {
        if let Some(id) = crate::catalog_indexes::index_id_of_oid(oid) {
            return self
                .tables
                .iter()
                .flat_map(|t| t.indexes.iter())
                .find(|i| i.id == id)
                .map(|i| i.def.name.clone());
        }
        table_oids.read().get(&i32::try_from(oid).ok()?).cloned()
    }
}

/// Replaces size calls whose argument is a literal name (`'items'` or
/// `'items'::regclass`) by their value.
pub(crate) fn bind_relation_sizes(
    statement: &mut Statement,
    coordinator: &dyn CoordinatorApi,
) -> Result<(), SqlError> {
    let mut failure = None;
    let mut sizes: Option<Sizes> = None;
    let _ = sqlparser::ast::visit_expressions_mut(statement, |e| {
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let Some(function) = SizeFunction::from_name(&f.name.to_string().to_ascii_lowercase())
        else {
            return ControlFlow::Continue(());
        };
        let FunctionArguments::List(list) = &f.args else {
            return ControlFlow::Continue(());
        };
        let [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] = list.args.as_slice() else {
            return ControlFlow::Continue(());
        };
        let literal = match arg {
            Expr::Value(v) => Some(&v.value),
            Expr::Cast {
                kind: CastKind::DoubleColon | CastKind::Cast,
                expr,
                data_type,
                ..
            } if data_type.to_string().eq_ignore_ascii_case("regclass") => match expr.as_ref() {
                Expr::Value(v) => Some(&v.value),
                _ => None,
            },
            _ => None,
        };
        let Some(Value::SingleQuotedString(text)) = literal else {
            return ControlFlow::Continue(());
        };
        let sizes = sizes.get_or_insert_with(|| Sizes::read(coordinator));
        match sizes.size_of(function, &relation_name(text)) {
            Ok(bytes) => {
                *e = Expr::value(Value::Number(bytes.to_string(), false));
                ControlFlow::Continue(())
            }
            Err(err) => {
                failure = Some(err);
                ControlFlow::Break(())
            }
        }
    });
    failure.map_or(Ok(()), Err)
}

/// The size functions over an OID; NULL for an OID that names no relation,
/// as in PostgreSQL. They replace the catalog emulation's, which answer 0.
pub(crate) fn size_udfs(
    coordinator: Arc<dyn CoordinatorApi>,
    table_oids: crate::pg_catalog::TableOids,
) -> Vec<ScalarUDF> {
    [
        ("pg_relation_size", SizeFunction::Relation),
        ("pg_table_size", SizeFunction::Table),
        ("pg_indexes_size", SizeFunction::Indexes),
        ("pg_total_relation_size", SizeFunction::Total),
    ]
    .into_iter()
    .map(|(name, function)| {
        let (coordinator, table_oids) = (coordinator.clone(), table_oids.clone());
        create_udf(
            name,
            vec![DataType::Int64],
            DataType::Int64,
            Volatility::Stable,
            Arc::new(move |args: &[ColumnarValue]| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let oids = arrow::compute::cast(&arrays[0], &DataType::Int64)?;
                let sizes = Sizes::read(coordinator.as_ref());
                let out: arrow::array::Int64Array = oids
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|oid| {
                        let name = sizes.relation_of_oid(&table_oids, oid?)?;
                        sizes.size_of(function, &name).ok()
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }),
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_like_regclass_input() {
        assert_eq!(relation_name("Items"), "items");
        assert_eq!(relation_name("public.items_idx"), "items_idx");
        assert_eq!(relation_name("\"Items\""), "Items");
    }
}
