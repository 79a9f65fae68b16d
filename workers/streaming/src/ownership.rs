//! How a cluster's streaming nodes share the shards.
//!
//! Every streaming node registers itself (a leased key under
//! `/nodes/streaming/`). Shard `s` belongs to the `s mod n`-th of the `n`
//! registered nodes in address order, so every node computes the same
//! assignment from the same registrations, and it changes only when a node
//! joins or dies. A node serves a shard only while it holds the shard's
//! owner key (`/shards/NNNN/owner`, leased, created only while absent): a
//! node that should give a shard up flushes it and deletes the key, and
//! the next owner takes the key and replays the shard's WAL from its
//! checkpoint. A dead node's keys expire with its lease, so its shards
//! move to the survivors about `ttl` after it died; a node that cannot
//! renew a key must stop at once (another may own the shard by then).
//!
//! The assignment is a pure function of the registrations rather than a
//! decision the coordinator publishes: shards move even while no
//! coordinator leads, and the owner keys alone guarantee one writer per
//! shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quiver_meta::{Leadership, MetaStore, keys};
use tokio::sync::{mpsc, oneshot};

use crate::{StreamingError, StreamingNode};

/// How often a node looks at the registrations.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long one attempt to take a shard's owner key waits while another
/// node still holds it.
const CLAIM_TRY: Duration = Duration::from_millis(400);

/// The shards the node at `me` should own among `live` (any order).
pub fn assigned_shards(live: &[String], me: &str, shard_count: u32) -> Vec<u32> {
    let mut live: Vec<&String> = live.iter().collect();
    live.sort();
    live.dedup();
    let Some(position) = live.iter().position(|a| a.as_str() == me) else {
        return Vec::new();
    };
    (0..shard_count)
        .filter(|s| *s as usize % live.len() == position)
        .collect()
}

/// A held owner key, kept alive by a task of its own.
struct Claim {
    release: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Claim {
    fn hold(
        node: Arc<StreamingNode>,
        shard: u32,
        mut leadership: Leadership,
        lost: mpsc::UnboundedSender<u32>,
    ) -> Claim {
        let (release, released) = oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = leadership.lost() => {
                    // At once, not when the sharing loop gets to it: the
                    // loop may be busy recovering or handing over a shard
                    // while another node takes this one.
                    node.abandon(shard);
                    let _ = lost.send(shard);
                }
                _ = released => leadership.resign().await,
            }
        });
        Claim { release, task }
    }

    async fn give_up(self) {
        let _ = self.release.send(());
        let _ = self.task.await;
    }
}

/// Registers the node and keeps its share of the shards until `stop`
/// fires (then hands every shard over) or an owner key is lost (then
/// returns the error at once: the process must stop serving).
pub async fn share_shards(
    node: Arc<StreamingNode>,
    meta: Arc<dyn MetaStore>,
    address: String,
    ttl: Duration,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), StreamingError> {
    let value = serde_json::to_vec(&address).unwrap_or_default();
    let registration = meta
        .register(&keys::streaming_node(&address), value.clone(), ttl)
        .await?;
    tracing::info!(%address, "streaming node registered");
    let shard_count = node.shard_count() as u32;
    let (lost_tx, mut lost) = mpsc::unbounded_channel();
    let mut claims: HashMap<u32, Claim> = HashMap::new();
    loop {
        tokio::select! {
            Some(shard) = lost.recv() => {
                return Err(StreamingError::OwnershipLost(shard));
            }
            _ = &mut stop => {
                // Unregistered first, so the others count this node out and
                // take the shards as soon as it lets them go.
                registration.release().await;
                for (shard, claim) in claims.drain() {
                    if let Err(e) = node.release(shard).await {
                        tracing::warn!(shard, error = %e.message, "handing a shard over failed");
                    }
                    claim.give_up().await;
                }
                return Ok(());
            }
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        let live: Vec<String> = match meta.scan_prefix(keys::STREAMING_NODES).await {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(key, _)| key.strip_prefix(keys::STREAMING_NODES).map(str::to_string))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the streaming-node registrations failed");
                continue;
            }
        };
        if !live.contains(&address) {
            continue;
        }
        let wanted = assigned_shards(&live, &address, shard_count);
        for shard in node.owned_shard_ids() {
            if !wanted.contains(&shard) {
                if let Err(e) = node.release(shard).await {
                    tracing::warn!(shard, error = %e.message, "handing a shard over failed");
                }
                if let Some(claim) = claims.remove(&shard) {
                    claim.give_up().await;
                }
            }
        }
        for shard in wanted {
            if claims.contains_key(&shard) {
                continue;
            }
            let key = keys::shard_owner(shard);
            let leadership = match tokio::time::timeout(
                CLAIM_TRY,
                meta.campaign(&key, value.clone(), ttl),
            )
            .await
            {
                Ok(Ok(leadership)) => leadership,
                Ok(Err(e)) => {
                    tracing::warn!(shard, error = %e, "taking a shard's owner key failed");
                    continue;
                }
                // Its previous owner still holds it.
                Err(_) => continue,
            };
            match node.acquire(&[shard]).await {
                Ok(()) => {
                    tracing::info!(shard, %address, "shard taken over");
                    let claim = Claim::hold(node.clone(), shard, leadership, lost_tx.clone());
                    claims.insert(shard, claim);
                }
                Err(e) => {
                    tracing::error!(shard, error = %format!("{e:#}"), "recovering a shard failed");
                    leadership.resign().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_dealt_round_robin_in_address_order() {
        let live = vec!["b:1".to_string(), "a:1".to_string()];
        assert_eq!(assigned_shards(&live, "a:1", 4), vec![0, 2]);
        assert_eq!(assigned_shards(&live, "b:1", 4), vec![1, 3]);
        assert_eq!(assigned_shards(&live, "c:1", 4), Vec::<u32>::new());
        assert_eq!(assigned_shards(&live[..1], "b:1", 2), vec![0, 1]);
    }
}
