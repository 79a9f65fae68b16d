//! Sequences of serial columns (`serial`, `bigserial`, `DEFAULT nextval`).
//!
//! Values are handed out from windows reserved in the meta store, like
//! segment ids: a restart skips the unused rest of a window (PostgreSQL's
//! sequences leave gaps after a crash too), but never hands a value out twice.

use std::collections::HashMap;
use std::sync::Arc;

use quiver_meta::{MetaOp, MetaStore, keys};
use quiver_types::TableId;

use crate::CoordinatorError;

/// Values reserved beyond a request, so single-row inserts rarely write
/// to the meta store.
const SEQUENCE_WINDOW: i64 = 256;

#[derive(Debug, Clone, Copy)]
struct Window {
    next: i64,
    limit: i64,
}

pub(crate) struct Sequences {
    meta: Arc<dyn MetaStore>,
    // An async mutex: a reservation awaits the meta store while holding it,
    // so two callers never reserve overlapping windows.
    windows: tokio::sync::Mutex<HashMap<(TableId, String), Window>>,
}

impl Sequences {
    pub(crate) fn new(meta: Arc<dyn MetaStore>) -> Self {
        Sequences {
            meta,
            windows: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `count` consecutive values; returns the first.
    pub(crate) async fn next_values(
        &self,
        table: TableId,
        column: &str,
        count: u64,
    ) -> Result<i64, CoordinatorError> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        let mut windows = self.windows.lock().await;
        let id = (table, column.to_string());
        let window = match windows.get(&id) {
            Some(w) => *w,
            None => {
                let limit = quiver_meta::get_json::<i64>(
                    self.meta.as_ref(),
                    &keys::sequence(table, column),
                )
                .await?
                .unwrap_or(1);
                Window { next: limit, limit }
            }
        };
        let mut window = window;
        let end = window
            .next
            .checked_add(count)
            .ok_or(CoordinatorError::SequenceExhausted(column.to_string()))?;
        if end > window.limit {
            let limit = end.saturating_add(SEQUENCE_WINDOW);
            self.meta
                .batch(vec![quiver_meta::put_json_op(
                    keys::sequence(table, column),
                    &limit,
                )])
                .await?;
            window.limit = limit;
        }
        let first = window.next;
        window.next = end;
        windows.insert(id, window);
        Ok(first)
    }

    /// Forgets a dropped table's sequences.
    pub(crate) async fn drop_table(&self, table: TableId) -> Result<(), CoordinatorError> {
        let mut windows = self.windows.lock().await;
        windows.retain(|(t, _), _| *t != table);
        self.meta
            .batch(vec![MetaOp::DeletePrefix {
                prefix: keys::table_sequences(table),
            }])
            .await?;
        Ok(())
    }
}
