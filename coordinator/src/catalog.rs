use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use quiver_api::{IndexDef, IndexInfo, TableInfo};
use quiver_meta::{MetaOp, MetaStore, put_json_op};
use quiver_types::{IndexId, TableId, TableSchema};
use tokio::sync::Mutex;

use crate::CoordinatorError;
use quiver_meta::keys;

/// Tables by name, cached in memory and persisted in the meta store.
pub struct Catalog {
    meta: Arc<dyn MetaStore>,
    shards: u32,
    tables: RwLock<HashMap<String, TableInfo>>,
    /// Serialises DDL so check-then-write is atomic; holds the id counters.
    ddl: Mutex<NextIds>,
}

struct NextIds {
    table: u64,
    index: u64,
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
        let next_index = quiver_meta::get_json::<u64>(meta.as_ref(), keys::NEXT_INDEX_ID)
            .await?
            .unwrap_or(1);
        Ok(Catalog {
            meta,
            shards: shards.max(1),
            tables: RwLock::new(tables),
            ddl: Mutex::new(NextIds {
                table: next_id,
                index: next_index,
            }),
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
        let mut ids = self.ddl.lock().await;
        if let Some(existing) = self.get(name) {
            return if if_not_exists {
                Ok(existing)
            } else {
                Err(CoordinatorError::DuplicateTable(name.to_string()))
            };
        }
        let info = TableInfo {
            id: TableId(ids.table),
            name: name.to_string(),
            schema,
            shards: self.shards,
            indexes: Vec::new(),
        };
        self.meta
            .batch(vec![
                put_json_op(keys::table(name), &info),
                put_json_op(keys::NEXT_TABLE_ID, &(ids.table + 1)),
            ])
            .await?;
        ids.table += 1;
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
                MetaOp::DeletePrefix {
                    prefix: keys::table_segment_indexes(info.id),
                },
            ])
            .await?;
        self.tables.write().remove(name);
        Ok(Some(info))
    }
}

impl Catalog {
    /// The table owning the index called `name`.
    pub fn index(&self, name: &str) -> Option<(TableInfo, IndexInfo)> {
        self.tables.read().values().find_map(|t| {
            t.indexes
                .iter()
                .find(|i| i.def.name == name)
                .map(|i| (t.clone(), i.clone()))
        })
    }

    /// Adds an index to a table. Index names share one namespace (as in
    /// PostgreSQL's schema). `None` when it exists and `if_not_exists`.
    pub async fn create_index(
        &self,
        table: &str,
        def: IndexDef,
        if_not_exists: bool,
    ) -> Result<Option<(TableInfo, IndexInfo)>, CoordinatorError> {
        let mut ids = self.ddl.lock().await;
        if self.index(&def.name).is_some() || self.get(&def.name).is_some() {
            return if if_not_exists {
                Ok(None)
            } else {
                Err(CoordinatorError::DuplicateTable(def.name))
            };
        }
        let mut info = self
            .get(table)
            .ok_or_else(|| CoordinatorError::UndefinedTable(table.to_string()))?;
        let index = IndexInfo {
            id: IndexId(ids.index),
            table: info.id,
            def,
        };
        info.indexes.push(index.clone());
        self.meta
            .batch(vec![
                put_json_op(keys::table(table), &info),
                put_json_op(keys::NEXT_INDEX_ID, &(ids.index + 1)),
            ])
            .await?;
        ids.index += 1;
        self.tables.write().insert(table.to_string(), info.clone());
        Ok(Some((info, index)))
    }

    pub async fn drop_index(
        &self,
        name: &str,
        if_exists: bool,
    ) -> Result<Option<IndexInfo>, CoordinatorError> {
        let _guard = self.ddl.lock().await;
        let Some((mut table, index)) = self.index(name) else {
            return if if_exists {
                Ok(None)
            } else {
                Err(CoordinatorError::UndefinedIndex(name.to_string()))
            };
        };
        table.indexes.retain(|i| i.id != index.id);
        self.meta
            .put(
                &keys::table(&table.name),
                serde_json::to_vec(&table).unwrap_or_default(),
            )
            .await?;
        self.tables.write().insert(table.name.clone(), table);
        Ok(Some(index))
    }
}
