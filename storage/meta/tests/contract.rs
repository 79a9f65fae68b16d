//! One behavioural contract, checked against both meta stores: the embedded
//! one and a real etcd server (the `etcd` binary from Debian's etcd-server,
//! which scripts/ci-deps.sh installs), started here on free loopback ports.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_meta::{EmbeddedMeta, EtcdConfig, EtcdMeta, MetaError, MetaOp, MetaStore};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An etcd member on a data directory; killed (SIGKILL) on drop.
struct Etcd {
    child: Child,
    client_url: String,
}

impl Etcd {
    fn start(dir: &Path, client_port: u16, peer_port: u16) -> Etcd {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "n1", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}")])
            .args(["--max-txn-ops", "1024"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd binary (apt-get install etcd-server; scripts/ci-deps.sh does)");
        Etcd { child, client_url }
    }

    fn config(&self, root: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.client_url.clone()],
            root: root.into(),
            username: None,
            password: None,
            timeout_ms: 2_000,
            max_txn_ops: 1024,
        }
    }

    async fn connect(&self, root: &str) -> EtcdMeta {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match EtcdMeta::connect(&self.config(root)).await {
                Ok(meta) => return meta,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("etcd did not come up: {e:?}"),
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn put(key: &str, value: &str) -> MetaOp {
    MetaOp::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

async fn keys(meta: &dyn MetaStore, prefix: &str) -> Vec<String> {
    meta.scan_prefix(prefix)
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// What every meta store must do; the stores are interchangeable behind the trait.
async fn check_contract(meta: &dyn MetaStore) {
    assert_eq!(meta.get("/missing").await.expect("get"), None);
    meta.put("/a", b"1".to_vec()).await.expect("put");
    assert_eq!(meta.get("/a").await.expect("get"), Some(b"1".to_vec()));

    // Scans are in key order and cover more than one etcd page.
    let many: Vec<MetaOp> = (0..700)
        .map(|i| put(&format!("/many/{i:05}"), "v"))
        .collect();
    meta.batch(many).await.expect("batch of 700");
    let scanned = keys(meta, "/many/").await;
    assert_eq!(scanned.len(), 700);
    assert!(scanned.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(scanned[0], "/many/00000");

    // A batch is applied as a whole and in order: the prefix delete removes
    // the earlier put and the old keys, not the later puts.
    meta.batch(vec![put("/s/old1", "x"), put("/s/old2", "x")])
        .await
        .expect("batch");
    meta.batch(vec![
        put("/s/zz", "dropped with the prefix"),
        MetaOp::DeletePrefix {
            prefix: "/s/".into(),
        },
        put("/s/new", "n"),
        MetaOp::Delete { key: "/a".into() },
        put("/a", "2"),
        MetaOp::Delete {
            key: "/many/00001".into(),
        },
    ])
    .await
    .expect("mixed batch");
    assert_eq!(keys(meta, "/s/").await, vec!["/s/new".to_string()]);
    assert_eq!(meta.get("/a").await.expect("get"), Some(b"2".to_vec()));
    assert_eq!(keys(meta, "/many/").await.len(), 699);
    // A prefix is not a key prefix of its sibling ranges.
    meta.put("/s0", b"sibling".to_vec()).await.expect("put");
    meta.batch(vec![MetaOp::DeletePrefix {
        prefix: "/s/".into(),
    }])
    .await
    .expect("delete prefix");
    assert_eq!(
        meta.get("/s0").await.expect("get"),
        Some(b"sibling".to_vec())
    );

    // compare_and_put: absent → create; wrong expectation → Conflict.
    meta.compare_and_put("/cas", None, b"1".to_vec())
        .await
        .expect("create");
    let err = meta
        .compare_and_put("/cas", None, b"2".to_vec())
        .await
        .expect_err("exists");
    assert!(matches!(err, MetaError::Conflict { .. }), "{err:?}");
    let err = meta
        .compare_and_put("/cas", Some(b"0".to_vec()), b"2".to_vec())
        .await
        .expect_err("stale");
    assert!(matches!(err, MetaError::Conflict { .. }), "{err:?}");
    meta.compare_and_put("/cas", Some(b"1".to_vec()), b"2".to_vec())
        .await
        .expect("swap");
    assert_eq!(meta.get("/cas").await.expect("get"), Some(b"2".to_vec()));
    meta.batch(vec![MetaOp::Delete { key: "/cas".into() }])
        .await
        .expect("delete");
    meta.compare_and_put("/cas", None, b"3".to_vec())
        .await
        .expect("re-create after delete");
}

#[tokio::test]
async fn embedded_meta_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = EmbeddedMeta::open(dir.path()).expect("open");
    check_contract(&meta).await;
}

#[tokio::test]
async fn etcd_meta_keeps_the_contract_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client_port, peer_port) = (free_port(), free_port());
    let etcd = Etcd::start(dir.path(), client_port, peer_port);
    let meta = etcd.connect("/quiver-test").await;
    check_contract(&meta).await;

    // Roots isolate clusters sharing one etcd.
    let other = etcd.connect("/other").await;
    assert!(keys(&other, "/").await.is_empty());
    other.put("/a", b"other".to_vec()).await.expect("put");
    assert_eq!(meta.get("/a").await.expect("get"), Some(b"2".to_vec()));

    // A batch larger than max_txn_ops is refused before it is sent.
    let mut small = etcd.config("/quiver-test");
    small.max_txn_ops = 4;
    let limited = EtcdMeta::connect(&small).await.expect("connect");
    let err = limited
        .batch((0..5).map(|i| put(&format!("/big/{i}"), "v")).collect())
        .await
        .expect_err("too many ops");
    assert!(err.to_string().contains("max-txn-ops"), "{err}");
    assert!(keys(&limited, "/big/").await.is_empty());

    // SIGKILL etcd: requests fail with a clear error, then everything
    // acknowledged is back once it restarts on the same data directory.
    drop(etcd);
    let err = meta.get("/a").await.expect_err("etcd is down");
    assert!(matches!(err, MetaError::Remote { .. }), "{err:?}");
    let etcd = Etcd::start(dir.path(), client_port, peer_port);
    let meta = etcd.connect("/quiver-test").await;
    assert_eq!(meta.get("/a").await.expect("get"), Some(b"2".to_vec()));
    assert_eq!(keys(&meta, "/many/").await.len(), 699);
    assert_eq!(meta.get("/cas").await.expect("get"), Some(b"3".to_vec()));
}

#[tokio::test]
async fn registrations_live_as_long_as_their_guard_or_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = EmbeddedMeta::open(dir.path()).expect("open");
    let err = embedded
        .register("/nodes/query/x", b"x".to_vec(), Duration::from_secs(2))
        .await
        .expect_err("the embedded store is private to one process");
    assert!(err.to_string().contains("etcd"), "{err}");

    let etcd = Etcd::start(dir.path(), free_port(), free_port());
    let meta = etcd.connect("/quiver-test").await;
    let guard = meta
        .register("/nodes/query/a", b"a".to_vec(), Duration::from_secs(2))
        .await
        .expect("register");
    // Renewed: still there well after its time to live.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(keys(&meta, "/nodes/query/").await, ["/nodes/query/a"]);
    // Dropping the guard revokes the lease: the key goes at once.
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(1);
    while !keys(&meta, "/nodes/query/").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the key outlived its registration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (A registration no longer renewed lapses with its lease:
    // tests/python/test_role_nodes.py kills a registered node with -9.)
}

/// Leader election: one holder at a time; a candidate waits until the
/// holder resigns; the embedded store refuses.
#[tokio::test]
async fn campaigns_elect_one_leader_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = EmbeddedMeta::open(dir.path()).expect("open");
    let err = embedded
        .campaign("/election/x", b"x".to_vec(), Duration::from_secs(2))
        .await
        .expect_err("the embedded store is private to one process");
    assert!(err.to_string().contains("etcd"), "{err}");

    let etcd = Etcd::start(dir.path(), free_port(), free_port());
    let meta = etcd.connect("/quiver-test").await;
    let first = meta
        .campaign(
            "/election/coordinator",
            b"a".to_vec(),
            Duration::from_secs(2),
        )
        .await
        .expect("the first candidate leads");
    let second = {
        let meta = etcd.connect("/quiver-test").await;
        tokio::spawn(async move {
            meta.campaign(
                "/election/coordinator",
                b"b".to_vec(),
                Duration::from_secs(2),
            )
            .await
        })
    };
    // Renewed past its time to live: the second candidate still waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!second.is_finished(), "two leaders at once");
    assert_eq!(
        meta.get("/election/coordinator").await.expect("get"),
        Some(b"a".to_vec())
    );
    first.resign().await;
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second candidate leads once the first resigned")
        .expect("task")
        .expect("campaign");
    assert_eq!(
        meta.get("/election/coordinator").await.expect("get"),
        Some(b"b".to_vec())
    );
    drop(second);
}
