use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use quiver_api::TableInfo;
use quiver_meta::{MetaOp, MetaStore, put_json_op};
use quiver_types::{TableId, TableSchema};
use tokio::sync::Mutex;

use crate::CoordinatorError;
use quiver_meta::keys;

/// Tables by name, cached in memory and persisted in the meta store.
pub struct Catalog {
    meta: Arc<dyn MetaStore>,
    shards: u32,
    tables: RwLock<HashMap<String, TableInfo>>,
    /// Serialises DDL so check-then-write is atomic.
    ddl: Mutex<u64>,
}

impl Catalog {
    pub async fn open(meta: Arc<dyn MetaStore>, shards: u32) -> Result<Self, CoordinatorError> {
        let tables: HashMap<String, TableInfo> =
            quiver_meta::scan_json::<TableInfo>(meta.as_ref(), keys::TABLES)
                .await?
                .into_iter()
                .map(|(_, t)| (t.name.clone(), t))
                .collect();
        let next_id = quiver_meta::get_json::<u64>(meta.as_ref(), keys::NEXT_TABLE_ID)
            .await?
            .unwrap_or(1);
        Ok(Catalog {
            meta,
            shards: shards.max(1),
            tables: RwLock::new(tables),
            ddl: Mutex::new(next_id),
        })
    }

    pub fn get(&self, name: &str) -> Option<TableInfo> {
        self.tables.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<TableInfo> {
        let mut v: Vec<TableInfo> = self.tables.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub async fn create(
        &self,
        name: &str,
        schema: TableSchema,
        if_not_exists: bool,
    ) -> Result<TableInfo, CoordinatorError> {
        let mut next_id = self.ddl.lock().await;
        if let Some(existing) = self.get(name) {
            return if if_not_exists {
                Ok(existing)
            } else {
                Err(CoordinatorError::DuplicateTable(name.to_string()))
            };
        }
        let info = TableInfo {
            id: TableId(*next_id),
            name: name.to_string(),
            schema,
            shards: self.shards,
        };
        self.meta
            .batch(vec![
                put_json_op(keys::table(name), &info),
                put_json_op(keys::NEXT_TABLE_ID, &(*next_id + 1)),
            ])
            .await?;
        *next_id += 1;
        self.tables.write().insert(name.to_string(), info.clone());
        Ok(info)
    }

    pub async fn drop(
        &self,
        name: &str,
        if_exists: bool,
    ) -> Result<Option<TableInfo>, CoordinatorError> {
        let _guard = self.ddl.lock().await;
        let Some(info) = self.get(name) else {
            return if if_exists {
                Ok(None)
            } else {
                Err(CoordinatorError::UndefinedTable(name.to_string()))
            };
        };
        self.meta
            .batch(vec![
                MetaOp::Delete {
                    key: keys::table(name),
                },
                MetaOp::DeletePrefix {
                    prefix: keys::table_segments(info.id),
                },
            ])
            .await?;
        self.tables.write().remove(name);
        Ok(Some(info))
    }
}
