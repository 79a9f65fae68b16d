//! Quiver's corrections to `datafusion-pg-catalog`'s `pg_catalog` schema,
//! which it serves otherwise unchanged.
//!
//! - `pg_type`: the crate lists pgvector's `vector` type in the
//!   `pg_catalog` namespace; pgvector installs it in the schema of
//!   `CREATE EXTENSION` (`public`), and drivers look it up there
//!   (asyncpg's `register_vector` asks for `public.vector`). Namespace OIDs
//!   are assigned by the crate at run time, so the row is corrected at scan
//!   time from the current `pg_namespace`.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int32Array, RecordBatch};
use arrow::datatypes::{Int32Type, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, collect};

/// pgvector's `vector` type OID, as `arrow-pg` reports it on the wire.
const VECTOR_TYPE_OID: i32 = arrow_pg::datatypes::PG_VECTOR_TYPE_OID as i32;

/// The `pg_catalog` schema with Quiver's corrections.
#[derive(Debug)]
pub struct PgCatalog {
    pub inner: Arc<dyn SchemaProvider>,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        if name != "pg_type" {
            return Ok(Some(table));
        }
        let namespaces = self
            .inner
            .table("pg_namespace")
            .await?
            .ok_or_else(|| DataFusionError::Plan("pg_namespace missing".into()))?;
        Ok(Some(Arc::new(PgType {
            inner: table,
            namespaces,
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

#[derive(Debug)]
struct PgType {
    inner: Arc<dyn TableProvider>,
    namespaces: Arc<dyn TableProvider>,
}

async fn scan_all(table: &Arc<dyn TableProvider>, state: &dyn Session) -> Result<Vec<RecordBatch>> {
    let plan = table.scan(state, None, &[], None).await?;
    collect(plan, state.task_ctx()).await
}

/// The OID the crate assigned to the `public` namespace.
fn public_oid(namespaces: &[RecordBatch]) -> Option<i32> {
    for batch in namespaces {
        let names = batch.column_by_name("nspname")?.as_string_opt::<i32>()?;
        let oids = batch
            .column_by_name("oid")?
            .as_primitive_opt::<Int32Type>()?;
        for i in 0..batch.num_rows() {
            if names.is_valid(i) && names.value(i) == "public" {
                return Some(oids.value(i));
            }
        }
    }
    None
}

fn with_vector_in(batch: &RecordBatch, namespace: i32) -> Result<RecordBatch> {
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
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[async_trait]
impl TableProvider for PgType {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let namespaces = scan_all(&self.namespaces, state).await?;
        let mut batches = scan_all(&self.inner, state).await?;
        if let Some(public) = public_oid(&namespaces) {
            batches = batches
                .iter()
                .map(|b| with_vector_in(b, public))
                .collect::<Result<_>>()?;
        }
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.schema(),
            projection.cloned(),
        )?)
    }
}
