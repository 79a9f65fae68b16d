//! Which query node serves each sealed segment, and keeping that true while
//! nodes fail and restart.
//!
//! A segment is owned by one live node, chosen as the one owning the fewest
//! rows. A background monitor probes every node: a node that stays
//! unreachable for the failure timeout is declared dead and its segments
//! (with their indexes) are loaded onto the live nodes; a node that answers
//! with a new incarnation restarted and lost its state, so what it owns is
//! loaded into it again. Until then, searches sent to a failed node fail
//! with a retryable error: a query never returns partial results.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use quiver_api::{ApiError, ApiResult, DataApi, QueryApi, StatusCode};
use quiver_segment::{SegmentIndexMeta, SegmentMeta};
use quiver_types::SegmentId;

use crate::Coordinator;

pub(crate) struct Placement {
    /// Append-only: a node keeps its position (the owners map refers to
    /// it) and a node registering again under the same address reuses it.
    nodes: RwLock<Vec<Arc<NodeSlot>>>,
    owners: RwLock<HashMap<SegmentId, usize>>,
    /// Segments moved away from a live node, released there once
    /// statements that resolved the old owner have finished.
    pending_releases: Mutex<HashMap<(usize, SegmentId), Instant>>,
    /// Serialises changes of ownership (and the loads that go with them).
    changes: tokio::sync::Mutex<()>,
}

struct NodeSlot {
    /// Set for nodes found in the registry.
    address: Option<String>,
    api: Arc<dyn QueryApi>,
    state: Mutex<NodeState>,
}

/// Connects to a registered query node by its address.
pub type QueryNodeConnector = Arc<dyn Fn(&str) -> ApiResult<Arc<dyn QueryApi>> + Send + Sync>;

/// Connects to a registered data node by its address.
pub type DataNodeConnector = Arc<dyn Fn(&str) -> ApiResult<Arc<dyn DataApi>> + Send + Sync>;

#[derive(Debug, Default)]
struct NodeState {
    alive: bool,
    incarnation: Option<u64>,
    failing_since: Option<Instant>,
}

/// Longest a placement call to a query node may take (loads only record
/// metadata: files are fetched on first use).
pub(crate) const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Segments one probe moves to balance rows (bounded so that a node joining
/// a large cluster fills up over several probes, not in one long pause).
const MAX_MOVES_PER_PROBE: usize = 4;

/// How long a moved segment stays on its old node.
const RELEASE_DELAY: Duration = Duration::from_secs(5);

/// How the coordinator watches query nodes.
#[derive(Debug, Clone, Copy)]
pub struct NodeMonitorOptions {
    pub probe_interval: Duration,
    /// Unreachable this long: the node is dead and its segments move.
    pub failure_timeout: Duration,
}

impl Placement {
    pub(crate) fn new(nodes: Vec<Arc<dyn QueryApi>>) -> Self {
        Placement {
            nodes: RwLock::new(
                nodes
                    .into_iter()
                    .map(|api| {
                        Arc::new(NodeSlot {
                            address: None,
                            api,
                            state: Mutex::new(NodeState::default()),
                        })
                    })
                    .collect(),
            ),
            owners: RwLock::new(HashMap::new()),
            pending_releases: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn owner(&self, segment: SegmentId) -> Option<usize> {
        self.owners.read().get(&segment).copied()
    }

    pub(crate) fn node(&self, index: usize) -> Arc<dyn QueryApi> {
        self.nodes.read()[index].api.clone()
    }

    fn slot(&self, index: usize) -> Arc<NodeSlot> {
        self.nodes.read()[index].clone()
    }

    pub(crate) fn nodes(&self) -> Vec<Arc<dyn QueryApi>> {
        self.nodes.read().iter().map(|n| n.api.clone()).collect()
    }

    /// Serialises a change of ownership with placements in progress.
    pub(crate) async fn lock_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.lock().await
    }

    pub(crate) fn forget(&self, segments: &[SegmentId]) {
        let mut owners = self.owners.write();
        for s in segments {
            owners.remove(s);
        }
    }

    /// Probes every node once; returns the ones that answered.
    async fn probe_all(&self, timeout: Duration) -> Vec<(usize, ApiResult<u64>)> {
        let nodes = self.nodes.read().clone();
        futures::future::join_all(nodes.into_iter().enumerate().map(|(i, n)| async move {
            let result = match tokio::time::timeout(timeout, n.api.incarnation()).await {
                Ok(r) => r,
                Err(_) => Err(ApiError::new(
                    StatusCode::Unavailable,
                    format!("no answer within {} ms", timeout.as_millis()),
                )),
            };
            (i, result)
        }))
        .await
    }

    /// Live nodes whose last probe answered: the ones worth moving
    /// segments onto.
    fn healthy_nodes(&self) -> Vec<usize> {
        let nodes = self.nodes.read();
        (0..nodes.len())
            .filter(|i| {
                let state = nodes[*i].state.lock();
                state.alive && state.failing_since.is_none() && state.incarnation.is_some()
            })
            .collect()
    }

    fn live_nodes(&self) -> Vec<usize> {
        let nodes = self.nodes.read();
        (0..nodes.len())
            .filter(|i| nodes[*i].state.lock().alive)
            .collect()
    }

    /// Adds registered nodes not known yet; returns the positions of known
    /// registered nodes whose registration is gone.
    fn sync_registry(&self, registered: &[String], connect: &QueryNodeConnector) -> Vec<usize> {
        let mut nodes = self.nodes.write();
        for address in registered {
            if nodes.iter().any(|n| n.address.as_deref() == Some(address)) {
                continue;
            }
            match connect(address) {
                Ok(api) => {
                    tracing::info!(node = nodes.len(), %address, "query node registered");
                    nodes.push(Arc::new(NodeSlot {
                        address: Some(address.clone()),
                        api,
                        state: Mutex::new(NodeState::default()),
                    }));
                }
                Err(e) => {
                    tracing::warn!(%address, error = %e.message, "cannot connect to a registered query node")
                }
            }
        }
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.address.as_ref().is_some_and(|a| !registered.contains(a)))
            .map(|(i, _)| i)
            .collect()
    }

    fn owned_by(&self, node: usize) -> Vec<SegmentId> {
        self.owners
            .read()
            .iter()
            .filter(|(_, n)| **n == node)
            .map(|(s, _)| *s)
            .collect()
    }
}

impl Coordinator {
    /// Marks the nodes that answer as alive (at start-up, before assigning).
    pub(crate) async fn probe_query_nodes(&self) {
        for (i, result) in self.placement.probe_all(Duration::from_secs(2)).await {
            let slot = self.placement.slot(i);
            let mut state = slot.state.lock();
            match result {
                Ok(incarnation) => {
                    state.alive = true;
                    state.incarnation = Some(incarnation);
                }
                Err(e) => {
                    tracing::warn!(node = i, error = %e.message, "query node unreachable at start-up");
                    state.alive = false;
                }
            }
        }
    }

    /// Gives each segment without a live owner to the least loaded live
    /// node and loads it (and its built indexes) there. Segments stay
    /// unplaced when no node is alive; the monitor places them later.
    pub(crate) async fn place(&self, segments: Vec<SegmentMeta>) -> ApiResult<()> {
        let _changes = self.placement.changes.lock().await;
        self.place_locked(segments).await
    }

    async fn place_locked(&self, mut segments: Vec<SegmentMeta>) -> ApiResult<()> {
        // The monitor may have placed some while this call waited.
        segments.retain(|s| {
            self.placement
                .owner(s.id)
                .is_none_or(|n| !self.placement.slot(n).state.lock().alive)
        });
        let mut last_error = None;
        let mut failure = None;
        // Nodes that failed a load in this call (the monitor decides whether
        // they are dead).
        let mut failed = Vec::new();
        while !segments.is_empty() {
            let mut live = self.placement.live_nodes();
            live.retain(|n| !failed.contains(n));
            if live.is_empty() {
                tracing::warn!(
                    segments = segments.len(),
                    "no live query node: segments wait to be placed"
                );
                return Err(last_error.unwrap_or_else(|| {
                    ApiError::new(StatusCode::Unavailable, "no query node is alive")
                }));
            }
            // Balance rows (what a search costs), largest segments first,
            // each to the node with the fewest rows so far.
            let mut rows: Vec<u64> = live.iter().map(|n| self.rows_owned_by(*n)).collect();
            let mut plan: Vec<Vec<SegmentMeta>> = vec![Vec::new(); live.len()];
            segments.sort_by_key(|s| std::cmp::Reverse(s.rows));
            for segment in segments.drain(..) {
                let i = (0..live.len()).min_by_key(|i| rows[*i]).unwrap_or(0);
                rows[i] += segment.rows;
                plan[i].push(segment);
            }
            for (target, batch) in live.into_iter().zip(plan) {
                if batch.is_empty() {
                    continue;
                }
                match self.load_onto(target, &batch).await {
                    Ok(()) => {
                        // Not the ones dropped meanwhile (TRUNCATE, compaction).
                        let known = self.segments.read();
                        let mut owners = self.placement.owners.write();
                        for s in batch.iter().filter(|s| known.contains_key(&s.id)) {
                            owners.insert(s.id, target);
                        }
                    }
                    Err(e) if e.code.is_unavailable() => {
                        tracing::warn!(node = target, error = %e.message, "query node failed while loading segments; trying another");
                        failed.push(target);
                        segments.extend(batch);
                        last_error = Some(e);
                    }
                    // Not a node failure: the rest can still be placed.
                    Err(e) => {
                        tracing::warn!(node = target, error = %e.message, "loading segments failed");
                        failure = Some(e);
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Loads segments and their built indexes onto one node, within
    /// [`NODE_CALL_TIMEOUT`] (ownership changes wait for it).
    async fn load_onto(&self, node: usize, segments: &[SegmentMeta]) -> ApiResult<()> {
        if segments.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(NODE_CALL_TIMEOUT, self.load_onto_inner(node, segments)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                StatusCode::Unavailable,
                format!(
                    "query node {node} did not load segments within {} s",
                    NODE_CALL_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    async fn load_onto_inner(&self, node: usize, segments: &[SegmentMeta]) -> ApiResult<()> {
        let api = self.placement.node(node);
        api.load_segments(segments.to_vec()).await?;
        let manifests: Vec<SegmentIndexMeta> = {
            let indexes = self.segment_indexes.read();
            indexes
                .values()
                .filter(|m| segments.iter().any(|s| s.id == m.segment))
                .cloned()
                .collect()
        };
        for m in manifests {
            api.load_index(m).await?;
        }
        Ok(())
    }

    /// Also serve segments from the query nodes registered in the meta
    /// store (`quiver query-node` on etcd), connecting with `connect`;
    /// call before [`Coordinator::start_node_monitor`].
    pub fn discover_query_nodes(&self, connect: QueryNodeConnector) {
        let _ = self.node_connector.set(connect);
    }

    /// Also build and compact on the data nodes registered in the meta
    /// store (`quiver data-node` on etcd); call before
    /// [`Coordinator::start_node_monitor`], which follows the registry.
    pub fn discover_data_nodes(&self, connect: DataNodeConnector) {
        let _ = self.data_node_connector.set(connect);
    }

    /// Follows the data-node registry: registered nodes are used, lapsed
    /// ones dropped (a build on a dead node fails and is retried).
    async fn sync_data_nodes(&self) {
        let Some(connect) = self.data_node_connector.get() else {
            return;
        };
        let Some(registered) = self.registered_nodes(quiver_meta::keys::DATA_NODES).await else {
            return;
        };
        let mut nodes = self.data_nodes.write();
        nodes.retain(|(address, _)| address.as_ref().is_none_or(|a| registered.contains(a)));
        for address in registered {
            if nodes
                .iter()
                .any(|(a, _)| a.as_deref() == Some(address.as_str()))
            {
                continue;
            }
            match connect(&address) {
                Ok(api) => {
                    tracing::info!(%address, "data node registered");
                    nodes.push((Some(address), api));
                }
                Err(e) => {
                    tracing::warn!(%address, error = %e.message, "cannot connect to a registered data node")
                }
            }
        }
    }

    /// Addresses registered under `prefix`; `None` (logged) when the meta
    /// store cannot be read, so nothing is taken for deregistered.
    async fn registered_nodes(&self, prefix: &str) -> Option<Vec<String>> {
        match quiver_meta::scan_json::<String>(self.meta.as_ref(), prefix).await {
            Ok(entries) => Some(entries.into_iter().map(|(_, a)| a).collect()),
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "reading the node registry failed");
                None
            }
        }
    }

    /// Starts the background probe of query nodes.
    pub fn start_node_monitor(self: &Arc<Self>, options: NodeMonitorOptions) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(options.probe_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(coordinator) = weak.upgrade() else {
                    return;
                };
                coordinator.check_nodes(options).await;
            }
        });
    }

    async fn check_nodes(&self, options: NodeMonitorOptions) {
        self.sync_data_nodes().await;
        // Registered nodes (etcd): new ones join; a lapsed registration
        // (the node stopped renewing its lease) is a dead node.
        let mut deregistered = Vec::new();
        if let Some(connect) = self.node_connector.get()
            && let Some(registered) = self.registered_nodes(quiver_meta::keys::QUERY_NODES).await
        {
            deregistered = self.placement.sync_registry(&registered, connect);
        }
        let timeout = options.probe_interval.max(Duration::from_secs(1));
        let probes = self.placement.probe_all(timeout).await;
        let _changes = self.placement.changes.lock().await;
        for (i, mut result) in probes {
            let slot = self.placement.slot(i);
            if deregistered.contains(&i) {
                result = Err(ApiError::new(
                    StatusCode::Unavailable,
                    "its registration expired",
                ));
                let mut state = slot.state.lock();
                // Its time is up already: no need to wait out the timeout.
                if let Some(long_ago) = Instant::now().checked_sub(options.failure_timeout) {
                    state.failing_since =
                        Some(state.failing_since.map_or(long_ago, |f| f.min(long_ago)));
                }
            }
            let event = {
                let mut state = slot.state.lock();
                match result {
                    Ok(incarnation) => {
                        state.failing_since = None;
                        let event = if !state.alive {
                            Some(NodeEvent::Joined)
                        } else if state.incarnation != Some(incarnation) {
                            Some(NodeEvent::Restarted)
                        } else {
                            None
                        };
                        state.alive = true;
                        state.incarnation = Some(incarnation);
                        event
                    }
                    Err(e) => {
                        let since = *state.failing_since.get_or_insert_with(Instant::now);
                        if state.alive && since.elapsed() >= options.failure_timeout {
                            tracing::warn!(node = i, error = %e.message, "query node is dead");
                            state.alive = false;
                            Some(NodeEvent::Died)
                        } else {
                            None
                        }
                    }
                }
            };
            let result = match event {
                None => Ok(()),
                // A node that answers again may have lost what it had
                // loaded: load what it owns (loads are idempotent).
                Some(NodeEvent::Joined | NodeEvent::Restarted) => {
                    let owned = self.segment_metas(&self.placement.owned_by(i));
                    tracing::info!(
                        node = i,
                        segments = owned.len(),
                        "query node is alive: loading its segments"
                    );
                    self.release_foreign(i).await;
                    self.load_onto(i, &owned).await
                }
                Some(NodeEvent::Died) => {
                    let owned = self.placement.owned_by(i);
                    self.placement.forget(&owned);
                    let metas = self.segment_metas(&owned);
                    tracing::info!(
                        node = i,
                        segments = metas.len(),
                        "moving a dead query node's segments"
                    );
                    self.place_locked(metas).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(node = i, error = %e.message, "query node change not completed; retried at the next probe");
                // Forget the incarnation so the next probe loads again.
                slot.state.lock().incarnation = None;
            }
        }
        // Segments left unplaced while no node was alive.
        let unplaced: Vec<SegmentMeta> = self
            .segments
            .read()
            .values()
            .filter(|s| self.placement.owner(s.id).is_none())
            .cloned()
            .collect();
        if !unplaced.is_empty()
            && !self.placement.live_nodes().is_empty()
            && let Err(e) = self.place_locked(unplaced).await
        {
            tracing::warn!(error = %e.message, "placing segments failed; retried at the next probe");
        }
        self.rebalance_locked().await;
        self.release_moved().await;
    }

    /// Moves segments from the live node serving the most rows to the one
    /// serving the fewest while that narrows the gap, so a node added to
    /// the cluster takes its share of the existing segments. A segment is
    /// loaded on its new node before ownership switches and released from
    /// the old one [`RELEASE_DELAY`] later, so no statement misses it.
    async fn rebalance_locked(&self) {
        for _ in 0..MAX_MOVES_PER_PROBE {
            let live = self.placement.live_nodes();
            let healthy = self.placement.healthy_nodes();
            let rows: Vec<(usize, u64)> =
                live.iter().map(|n| (*n, self.rows_owned_by(*n))).collect();
            // Away from any live node, onto one that answered its last probe.
            let (Some(&(from, most)), Some(&(to, fewest))) = (
                rows.iter().max_by_key(|r| r.1),
                rows.iter()
                    .filter(|r| healthy.contains(&r.0))
                    .min_by_key(|r| r.1),
            ) else {
                return;
            };
            if most <= fewest {
                return;
            }
            // Moving a segment of s rows leaves a gap of |gap - 2s|, smaller
            // than the gap exactly when s < gap: the largest such one.
            let gap = most - fewest;
            let candidate = {
                let known = self.segments.read();
                self.placement
                    .owned_by(from)
                    .iter()
                    .filter_map(|id| known.get(id))
                    .filter(|s| s.rows > 0 && s.rows < gap)
                    .max_by_key(|s| s.rows)
                    .cloned()
            };
            let Some(segment) = candidate else {
                return;
            };
            if let Err(e) = self.load_onto(to, std::slice::from_ref(&segment)).await {
                tracing::warn!(node = to, error = %e.message, "moving a segment failed; retried at the next probe");
                return;
            }
            if !self.segments.read().contains_key(&segment.id) {
                continue;
            }
            self.placement.owners.write().insert(segment.id, to);
            {
                // A later move restarts the old owner's grace period; the
                // new owner must not release it.
                let mut pending = self.placement.pending_releases.lock();
                pending.insert((from, segment.id), Instant::now() + RELEASE_DELAY);
                pending.remove(&(to, segment.id));
            }
            tracing::info!(segment = %segment.id, rows = segment.rows, from, to, "segment moved to balance rows");
        }
    }

    /// Releases moved segments from their old nodes once their delay is
    /// over (unless they moved back meanwhile): one call per node, all at
    /// once. Nodes not alive are skipped (they drop what they do not own
    /// when they rejoin).
    async fn release_moved(&self) {
        let due: Vec<(usize, SegmentId)> = {
            let mut pending = self.placement.pending_releases.lock();
            let now = Instant::now();
            let due: Vec<(usize, SegmentId)> = pending
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(key, _)| *key)
                .collect();
            for key in &due {
                pending.remove(key);
            }
            due
        };
        let live = self.placement.live_nodes();
        let mut per_node: HashMap<usize, Vec<SegmentId>> = HashMap::new();
        for (node, segment) in due {
            if live.contains(&node) && self.placement.owner(segment) != Some(node) {
                per_node.entry(node).or_default().push(segment);
            }
        }
        futures::future::join_all(
            per_node
                .into_iter()
                .map(|(node, segments)| self.release_on(node, segments)),
        )
        .await;
    }

    /// Best effort, within [`NODE_CALL_TIMEOUT`]: a segment left behind only
    /// costs the node memory (and it drops it when it rejoins).
    async fn release_on(&self, node: usize, segments: Vec<SegmentId>) {
        let api = self.placement.node(node);
        match tokio::time::timeout(NODE_CALL_TIMEOUT, api.release_segments(segments)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(node, error = %e.message, "releasing moved segments failed")
            }
            Err(_) => tracing::warn!(node, "releasing moved segments timed out"),
        }
    }

    /// Tells a node to drop the segments it may still hold but no longer
    /// owns (they moved while it was unreachable, or it served before this
    /// coordinator started). Best effort: they only cost the node memory.
    pub(crate) async fn release_foreign(&self, node: usize) {
        let foreign: Vec<SegmentId> = self
            .segments
            .read()
            .keys()
            .filter(|s| self.placement.owner(**s) != Some(node))
            .copied()
            .collect();
        if !foreign.is_empty() {
            self.release_on(node, foreign).await;
        }
    }

    /// After start-up placement: every live node drops what others own.
    pub(crate) async fn release_foreign_everywhere(&self) {
        for node in self.placement.live_nodes() {
            self.release_foreign(node).await;
        }
    }

    fn rows_owned_by(&self, node: usize) -> u64 {
        let known = self.segments.read();
        self.placement
            .owned_by(node)
            .iter()
            .filter_map(|id| known.get(id))
            .map(|s| s.rows)
            .sum()
    }

    fn segment_metas(&self, ids: &[SegmentId]) -> Vec<SegmentMeta> {
        let known = self.segments.read();
        ids.iter().filter_map(|id| known.get(id).cloned()).collect()
    }
}

enum NodeEvent {
    Joined,
    Restarted,
    Died,
}
