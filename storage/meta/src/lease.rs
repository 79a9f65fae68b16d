//! Leased entries on etcd: a key attached to a lease this process keeps
//! alive, so it vanishes by itself when the process dies. Registrations
//! (node addresses) and leadership (one key only one process can hold).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, KvClient, LeaseClient, PutOptions, Txn, TxnOp};

use crate::{Leadership, MetaError, Registration};

/// Maps an etcd failure to the meta store's error, saying what was done.
fn remote(context: &str) -> impl FnOnce(etcd_client::Error) -> MetaError {
    let context = context.to_string();
    move |source| MetaError::Remote { context, source }
}

/// etcd leases count whole seconds.
fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_millis().div_ceil(1000).max(1) as i64
}

/// How often a candidate looks whether the leader's key is gone.
const CAMPAIGN_POLL: Duration = Duration::from_millis(250);

/// Waits until this process holds `key`: created on a fresh lease only if
/// absent, so at most one holder exists. Leadership is lost when the lease
/// cannot be renewed; it is never taken over again by the same guard (the
/// holder must stop acting as leader, and campaign anew if it wants).
pub(crate) async fn campaign(
    kv: KvClient,
    lease: LeaseClient,
    key: Vec<u8>,
    value: Vec<u8>,
    ttl: Duration,
) -> Result<Leadership, MetaError> {
    let ttl_s = ttl_secs(ttl);
    loop {
        let held = kv
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(remote("reading the leader key"))?;
        if held.kvs().is_empty() {
            let id = lease
                .clone()
                .grant(ttl_s, None)
                .await
                .map_err(remote("granting a lease"))?
                .id();
            let taken = kv
                .clone()
                .txn(
                    Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.clone(),
                            value.clone(),
                            Some(PutOptions::new().with_lease(id)),
                        )]),
                )
                .await
                .map_err(remote("taking the leader key"))?;
            if taken.succeeded() {
                // etcd's revision of the write: grows with every new leader.
                let term = taken.header().map_or(0, |h| h.revision()).max(0) as u64;
                let (lost_tx, lost) = tokio::sync::watch::channel(false);
                let renew = {
                    let lease = lease.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        if let Err(e) = keep_alive(&lease, id, ttl_s).await {
                            tracing::error!(key = %String::from_utf8_lossy(&key), error = %e, "leadership lease lost");
                        }
                        let _ = lost_tx.send(true);
                    })
                };
                let mut lease = lease;
                let registration = Registration::new(move || renew.abort(), async move {
                    if let Err(e) = lease.revoke(id).await {
                        tracing::warn!(error = %e, "revoking the leadership lease failed; it expires by itself");
                    }
                });
                return Ok(Leadership::new(registration, lost, term));
            }
            // Another candidate was faster.
            let _ = lease.clone().revoke(id).await;
        }
        tokio::time::sleep(CAMPAIGN_POLL).await;
    }
}

/// Grants a lease, puts the key on it and keeps renewing it in the
/// background; when the lease is lost (etcd outage longer than the time to
/// live) the entry is put again on a fresh lease.
pub(crate) async fn register(
    kv: KvClient,
    lease: LeaseClient,
    key: Vec<u8>,
    value: Vec<u8>,
    ttl: Duration,
) -> Result<Registration, MetaError> {
    let ttl_s = ttl_secs(ttl);
    let id = put_leased(&kv, &lease, &key, &value, ttl_s).await?;
    let current = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(id));
    let renew = {
        let current = current.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            let mut id = id;
            loop {
                if let Err(e) = keep_alive(&lease, id, ttl_s).await {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e, "registration lease lost; registering again");
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match put_leased(&kv, &lease, &key, &value, ttl_s).await {
                        Ok(new_id) => {
                            id = new_id;
                            current.store(id, std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "registering again failed; retrying");
                        }
                    }
                }
            }
        })
    };
    let mut lease = lease;
    Ok(Registration::new(move || renew.abort(), async move {
        // The lease current when the removal runs (renewal may have
        // replaced it).
        let id = current.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = lease.revoke(id).await {
            tracing::warn!(error = %e, "revoking a registration failed; it expires with its lease");
        }
    }))
}

async fn put_leased(
    kv: &KvClient,
    lease: &LeaseClient,
    key: &[u8],
    value: &[u8],
    ttl_s: i64,
) -> Result<i64, MetaError> {
    let id = lease
        .clone()
        .grant(ttl_s, None)
        .await
        .map_err(remote("granting a lease"))?
        .id();
    kv.clone()
        .put(key, value, Some(PutOptions::new().with_lease(id)))
        .await
        .map_err(remote("putting a leased key"))?;
    Ok(id)
}

/// Renews the lease a third of its time to live apart; returns when it
/// can no longer be renewed. That is decided before etcd could expire it:
/// once two thirds of the time to live passed since the last confirmed
/// renewal, the lease counts as lost, so a leader stops before a standby
/// can take its place.
async fn keep_alive(lease: &LeaseClient, id: i64, ttl_s: i64) -> Result<(), etcd_client::Error> {
    let (mut keeper, mut responses) = lease.clone().keep_alive(id).await?;
    let ttl = Duration::from_secs(ttl_s as u64);
    let period = (ttl / 3).max(Duration::from_millis(200));
    let mut confirmed = tokio::time::Instant::now();
    loop {
        keeper.keep_alive().await?;
        let give_up = confirmed + ttl * 2 / 3;
        match tokio::time::timeout_at(give_up, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => confirmed = tokio::time::Instant::now(),
            Ok(Ok(_)) => {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "lease expired".into(),
                ));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "no keep-alive answer within two thirds of the lease's time to live".into(),
                ));
            }
        }
        tokio::time::sleep(period).await;
    }
}
