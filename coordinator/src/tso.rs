use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use quiver_meta::MetaStore;
use quiver_types::Timestamp;
use tokio::sync::Mutex;

use crate::CoordinatorError;
use quiver_meta::keys;

/// How far ahead of the clock the persisted limit is moved each time.
const WINDOW_MS: u64 = 3_000;

/// The timestamp oracle.
///
/// Timestamps are `physical_ms << 18 | logical`. The largest physical time
/// that may be handed out is persisted in the meta store before use, so after
/// a restart (or a failover to another coordinator) allocation resumes above
/// it and time never goes backwards, even if the wall clock did.
pub struct Tso {
    meta: Arc<dyn MetaStore>,
    state: Mutex<TsoState>,
}

struct TsoState {
    last: Timestamp,
    limit_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Tso {
    pub async fn open(meta: Arc<dyn MetaStore>) -> Result<Self, CoordinatorError> {
        let limit_ms = quiver_meta::get_json::<u64>(meta.as_ref(), keys::TSO_LIMIT)
            .await?
            .unwrap_or(0);
        Ok(Tso {
            meta,
            state: Mutex::new(TsoState {
                last: Timestamp::compose(limit_ms, 0),
                limit_ms,
            }),
        })
    }

    pub async fn allocate(&self) -> Result<Timestamp, CoordinatorError> {
        let mut st = self.state.lock().await;
        let now = now_ms();
        let mut physical = st.last.physical_ms().max(now);
        let mut logical = if physical == st.last.physical_ms() {
            st.last.logical() + 1
        } else {
            0
        };
        if logical >= Timestamp::logical_capacity() {
            physical += 1;
            logical = 0;
        }
        if physical >= st.limit_ms {
            let limit = physical + WINDOW_MS;
            self.meta
                .put(
                    keys::TSO_LIMIT,
                    serde_json::to_vec(&limit).unwrap_or_default(),
                )
                .await?;
            st.limit_ms = limit;
        }
        let ts = Timestamp::compose(physical, logical);
        st.last = ts;
        Ok(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_meta::EmbeddedMeta;

    #[tokio::test]
    async fn monotonic_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(EmbeddedMeta::open(dir.path()).unwrap());
        let tso = Tso::open(meta.clone()).await.unwrap();
        let mut last = Timestamp::ZERO;
        for _ in 0..1000 {
            let t = tso.allocate().await.unwrap();
            assert!(t > last);
            last = t;
        }
        drop(tso);
        let tso = Tso::open(meta).await.unwrap();
        assert!(tso.allocate().await.unwrap() > last);
    }
}
