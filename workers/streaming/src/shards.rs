//! Which shards this node serves: one slot per WAL channel, filled when the
//! node takes a shard over and emptied when it hands the shard on.

use std::sync::Arc;

use parking_lot::RwLock;
use quiver_api::ApiResult;

use crate::channel::{Channel, not_owned};

pub(crate) struct ShardSlots {
    slots: RwLock<Vec<Option<Arc<Channel>>>>,
}

impl ShardSlots {
    pub fn new(count: usize) -> Self {
        ShardSlots {
            slots: RwLock::new(vec![None; count]),
        }
    }

    /// Shards of the cluster (owned here or not).
    pub fn count(&self) -> usize {
        self.slots.read().len()
    }

    pub fn owns(&self, shard: u32) -> bool {
        self.get_opt(shard as usize).is_some()
    }

    pub fn get_opt(&self, shard: usize) -> Option<Arc<Channel>> {
        self.slots.read().get(shard).cloned().flatten()
    }

    /// The shard's channel, or [`not_owned`].
    pub fn get(&self, shard: usize) -> ApiResult<Arc<Channel>> {
        self.get_opt(shard).ok_or_else(|| not_owned(shard as u32))
    }

    /// The owned shards' channels, ascending.
    pub fn owned(&self) -> Vec<Arc<Channel>> {
        self.slots.read().iter().flatten().cloned().collect()
    }

    pub fn install(&self, channel: Channel) {
        let id = channel.id as usize;
        let mut slots = self.slots.write();
        if id >= slots.len() {
            slots.resize(id + 1, None);
        }
        slots[id] = Some(Arc::new(channel));
    }

    pub fn remove(&self, shard: usize) {
        if let Some(slot) = self.slots.write().get_mut(shard) {
            *slot = None;
        }
    }
}
