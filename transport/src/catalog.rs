//! The catalog a coordinator publishes to proxies and streaming nodes:
//! tables, roles, sealed segments, where each segment is served and index
//! build progress, versioned so that remote holders follow it by long poll.
//!
//! Why a published copy instead of one call per lookup: the frontend looks
//! tables up several times per statement (planning, pg_catalog), and those
//! lookups are synchronous in the role trait. A copy a few milliseconds
//! behind, refreshed on a miss and right after the holder's own DDL, costs
//! no round trip on the hot path.

use std::sync::{Arc, Weak};
use std::time::Duration;

use quiver_api::{CoordinatorApi, IndexBuildStatus, RoleInfo, TableInfo};
use quiver_segment::SegmentMeta;
use quiver_types::SegmentId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

/// One version of the coordinator's catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogState {
    pub version: CatalogVersion,
    pub tables: Vec<TableInfo>,
    pub roles: Vec<RoleInfo>,
    pub sealed_segments: Vec<SegmentMeta>,
    /// Segment → label (address) of the query node serving it.
    pub placement: Vec<(SegmentId, String)>,
    pub index_builds: Vec<IndexBuildStatus>,
}

/// `epoch` is the publishing coordinator's leadership term, `seq` grows
/// with every change it publishes: a holder takes states of a later term
/// (another coordinator took over), never of an earlier one (a late answer
/// from a deposed leader), and only newer states within its term.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogVersion {
    pub epoch: u64,
    pub seq: u64,
}

impl CatalogVersion {
    pub fn supersedes(self, held: CatalogVersion) -> bool {
        self.epoch > held.epoch || (self.epoch == held.epoch && self.seq > held.seq)
    }
}

/// Long-poll request: answer once the catalog moved past `since` (or after
/// the server's poll window, with the same version); `None` asks for the
/// current catalog at once.
#[derive(Debug, Serialize, Deserialize)]
pub struct CatalogPoll {
    pub since: Option<CatalogVersion>,
}

/// How long a long poll waits for a change before answering anyway: well
/// below any proxy or load-balancer idle timeout.
pub const POLL_WINDOW: Duration = Duration::from_secs(5);
/// How often the publisher looks for changes made outside calls it sees
/// (placement moves, index builds finishing).
const SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// Serving side: computes the catalog from the coordinator, numbers its
/// changes and wakes long polls.
pub struct CatalogPublisher {
    coordinator: Arc<dyn CoordinatorApi>,
    epoch: u64,
    /// Serialises computations so that a later `seq` never holds an older
    /// catalog; keeps the last content to tell changes.
    last: Mutex<Vec<u8>>,
    current: watch::Sender<Arc<CatalogState>>,
}

impl CatalogPublisher {
    /// `epoch`: the coordinator's leadership term.
    pub fn start(coordinator: Arc<dyn CoordinatorApi>, epoch: u64) -> Arc<Self> {
        let (current, _) = watch::channel(Arc::new(CatalogState::default()));
        let publisher = Arc::new(CatalogPublisher {
            coordinator,
            epoch,
            last: Mutex::new(Vec::new()),
            current,
        });
        let weak: Weak<CatalogPublisher> = Arc::downgrade(&publisher);
        tokio::spawn(async move {
            loop {
                let Some(publisher) = weak.upgrade() else {
                    return;
                };
                // Only while somebody follows: the scan serialises the
                // whole catalog.
                if publisher.current.receiver_count() > 0 {
                    publisher.publish().await;
                }
                drop(publisher);
                tokio::time::sleep(SCAN_INTERVAL).await;
            }
        });
        publisher
    }

    /// Computes the catalog now; publishes it if it changed. Returns the
    /// current state.
    pub async fn publish(&self) -> Arc<CatalogState> {
        let mut last = self.last.lock().await;
        let mut state = self.snapshot();
        let content = match serde_json::to_vec(&state) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the catalog");
                return self.current.borrow().clone();
            }
        };
        if *last == content {
            return self.current.borrow().clone();
        }
        *last = content;
        state.version = CatalogVersion {
            epoch: self.epoch,
            seq: self.current.borrow().version.seq + 1,
        };
        let state = Arc::new(state);
        self.current.send_replace(state.clone());
        state
    }

    fn snapshot(&self) -> CatalogState {
        let c = &self.coordinator;
        let mut tables = c.tables();
        tables.sort_by_key(|t| t.id);
        let mut roles = c.roles();
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sealed_segments = c.sealed_segments();
        sealed_segments.sort_by_key(|s| s.id);
        let placement = sealed_segments
            .iter()
            .filter_map(|s| c.segment_node(s.id).map(|n| (s.id, n.label())))
            .collect();
        let mut index_builds = c.index_builds();
        index_builds.sort_by_key(|b| (b.segment, b.index.id));
        CatalogState {
            version: CatalogVersion::default(),
            tables,
            roles,
            sealed_segments,
            placement,
            index_builds,
        }
    }

    /// Answers a long poll.
    pub async fn poll(&self, since: Option<CatalogVersion>) -> Arc<CatalogState> {
        let Some(since) = since else {
            return self.publish().await;
        };
        let mut changes = self.current.subscribe();
        let deadline = tokio::time::sleep(POLL_WINDOW);
        tokio::pin!(deadline);
        loop {
            let state = changes.borrow_and_update().clone();
            if state.version.seq > 0 && state.version.supersedes(since) {
                return state;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return state;
                    }
                }
                _ = &mut deadline => return state,
            }
        }
    }
}
