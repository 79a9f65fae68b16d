//! Tests for [`crate::LocalWal`] and the frame format.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::format::{self, FrameScanner, Scanned};
use crate::{LocalWal, LocalWalOptions, Lsn, Wal, WalError};

fn opts(dir: &Path, channels: u32) -> LocalWalOptions {
    LocalWalOptions::new(dir, channels)
}

fn rec(channel: u32, i: u64) -> Bytes {
    Bytes::from(format!("channel {channel} record {i}"))
}

fn segment_files(dir: &Path, channel: u32) -> Vec<PathBuf> {
    let ch = format::channel_dir(dir, channel);
    format::list_segments(&ch)
        .unwrap()
        .into_iter()
        .map(|lsn| format::segment_path(&ch, lsn))
        .collect()
}

fn last_segment(dir: &Path, channel: u32) -> PathBuf {
    segment_files(dir, channel).pop().unwrap()
}

/// Appends `n` single-record appends `rec(channel, 0..n)` to `channel`.
async fn fill(wal: &LocalWal, channel: u32, n: u64) {
    for i in 0..n {
        let lsn = wal.append(channel, vec![rec(channel, i)]).await.unwrap();
        assert_eq!(lsn, i);
    }
}

async fn assert_contents(wal: &LocalWal, channel: u32, n: u64) {
    let got = wal.read_from(channel, 0).await.unwrap();
    let want: Vec<(Lsn, Bytes)> = (0..n).map(|i| (i, rec(channel, i))).collect();
    assert_eq!(got, want);
    assert_eq!(wal.next_lsn(channel).await.unwrap(), n);
}

#[test]
fn frame_round_trip_and_names() {
    let mut buf = Vec::new();
    format::encode_frame(&mut buf, b"hello");
    format::encode_frame(&mut buf, b"");
    assert_eq!(
        buf.len() as u64,
        format::frame_bytes(5) + format::frame_bytes(0)
    );
    let mut scanner = FrameScanner::new(&buf[..], buf.len() as u64);
    let mut payload = Vec::new();
    assert!(matches!(
        scanner.next_frame(&mut payload).unwrap(),
        Scanned::Frame
    ));
    assert_eq!(payload, b"hello");
    assert!(matches!(
        scanner.next_frame(&mut payload).unwrap(),
        Scanned::Frame
    ));
    assert!(payload.is_empty());
    assert!(matches!(
        scanner.next_frame(&mut payload).unwrap(),
        Scanned::End
    ));

    // Zeros never decode as a valid (empty) frame.
    let zeros = [0u8; 16];
    let mut scanner = FrameScanner::new(&zeros[..], 16);
    assert!(matches!(
        scanner.next_frame(&mut payload).unwrap(),
        Scanned::Defect(_)
    ));

    let p = format::segment_path(Path::new("/x"), 42);
    assert!(p.ends_with("00000000000000000042.wal"));
    assert_eq!(
        format::parse_segment_name("00000000000000000042.wal"),
        Some(42)
    );
    assert_eq!(format::parse_segment_name("42.wal"), None);
    assert_eq!(format::parse_segment_name("00000000000000000042.tmp"), None);
    assert_eq!(
        format::channel_dir(Path::new("/x"), 7),
        Path::new("/x/channel-0007")
    );
}

#[tokio::test]
async fn append_read_round_trip_across_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = LocalWal::open(opts(tmp.path(), 3)).await.unwrap();
    assert_eq!(wal.channel_count(), 3);
    for ch in 0..3 {
        assert_eq!(wal.next_lsn(ch).await.unwrap(), 0);
        assert!(wal.read_from(ch, 0).await.unwrap().is_empty());
    }
    // Interleave channels; each has its own dense LSN sequence.
    for i in 0..10 {
        for ch in 0..3 {
            assert_eq!(wal.append(ch, vec![rec(ch, i)]).await.unwrap(), i);
        }
    }
    // Multi-record append gets consecutive LSNs.
    let first = wal
        .append(1, vec![rec(1, 10), rec(1, 11), rec(1, 12)])
        .await
        .unwrap();
    assert_eq!(first, 10);
    assert_contents(&wal, 0, 10).await;
    assert_contents(&wal, 1, 13).await;
    assert_contents(&wal, 2, 10).await;

    let tail = wal.read_from(1, 11).await.unwrap();
    assert_eq!(tail, vec![(11, rec(1, 11)), (12, rec(1, 12))]);
    assert!(wal.read_from(1, 13).await.unwrap().is_empty());
    assert!(wal.read_from(1, 1000).await.unwrap().is_empty());

    // Empty append is a barrier returning the next LSN.
    assert_eq!(wal.append(2, Vec::new()).await.unwrap(), 10);
    // Empty payloads are fine.
    assert_eq!(wal.append(2, vec![Bytes::new()]).await.unwrap(), 10);
    assert_eq!(
        wal.read_from(2, 10).await.unwrap(),
        vec![(10, Bytes::new())]
    );

    assert!(matches!(
        wal.append(3, vec![rec(3, 0)]).await,
        Err(WalError::UnknownChannel(3))
    ));
    assert!(matches!(
        wal.read_from(9, 0).await,
        Err(WalError::UnknownChannel(9))
    ));
    assert!(matches!(
        wal.truncate(9, 0).await,
        Err(WalError::UnknownChannel(9))
    ));
    assert!(matches!(
        wal.next_lsn(9).await,
        Err(WalError::UnknownChannel(9))
    ));
}

#[tokio::test]
async fn invalid_options_and_exclusive_open() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        LocalWal::open(opts(tmp.path(), 0)).await,
        Err(WalError::InvalidOptions(_))
    ));
    let mut o = opts(tmp.path(), 1);
    o.segment_bytes = 0;
    assert!(matches!(
        LocalWal::open(o).await,
        Err(WalError::InvalidOptions(_))
    ));

    let wal = LocalWal::open(opts(tmp.path(), 1)).await.unwrap();
    assert!(matches!(
        LocalWal::open(opts(tmp.path(), 1)).await,
        Err(WalError::AlreadyOpen { .. })
    ));
    drop(wal);
    LocalWal::open(opts(tmp.path(), 1)).await.unwrap();
}

#[tokio::test]
async fn reopen_restores_next_lsn_and_contents() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let wal = LocalWal::open(opts(tmp.path(), 2)).await.unwrap();
        fill(&wal, 0, 25).await;
        fill(&wal, 1, 3).await;
    }
    let wal = LocalWal::open(opts(tmp.path(), 2)).await.unwrap();
    assert_contents(&wal, 0, 25).await;
    assert_contents(&wal, 1, 3).await;
    assert_eq!(wal.append(0, vec![rec(0, 25)]).await.unwrap(), 25);
    drop(wal);

    // Reopening with more channels keeps the old ones and adds empty new ones.
    let wal = LocalWal::open(opts(tmp.path(), 3)).await.unwrap();
    assert_contents(&wal, 0, 26).await;
    assert_contents(&wal, 2, 0).await;
}

/// Writes 5 records, damages the tail of the last segment with `damage`,
/// reopens and checks that exactly `survivors` records remain and the log
/// keeps working across another reopen.
async fn check_torn_tail(damage: impl FnOnce(&Path), survivors: u64) {
    let tmp = tempfile::tempdir().unwrap();
    {
        let wal = LocalWal::open(opts(tmp.path(), 1)).await.unwrap();
        fill(&wal, 0, 5).await;
    }
    damage(&last_segment(tmp.path(), 0));
    {
        let wal = LocalWal::open(opts(tmp.path(), 1)).await.unwrap();
        assert_contents(&wal, 0, survivors).await;
        let lsn = wal.append(0, vec![rec(0, survivors)]).await.unwrap();
        assert_eq!(lsn, survivors);
    }
    let wal = LocalWal::open(opts(tmp.path(), 1)).await.unwrap();
    assert_contents(&wal, 0, survivors + 1).await;
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn torn_tail_garbage_is_truncated() {
    check_torn_tail(|p| append_bytes(p, b"\x07garbage that is no frame"), 5).await;
}

#[tokio::test]
async fn torn_tail_short_header_is_truncated() {
    check_torn_tail(|p| append_bytes(p, &[1, 2, 3]), 5).await;
}

#[tokio::test]
async fn torn_tail_zero_fill_is_truncated() {
    check_torn_tail(|p| append_bytes(p, &[0u8; 4096]), 5).await;
}

#[tokio::test]
async fn torn_tail_mid_frame_is_truncated() {
    check_torn_tail(
        |p| {
            let f = OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(file_len(p) - 3).unwrap();
        },
        4,
    )
    .await;
}

#[tokio::test]
async fn torn_tail_crc_mismatch_is_truncated() {
    check_torn_tail(
        |p| {
            let mut bytes = std::fs::read(p).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(p, bytes).unwrap();
        },
        4,
    )
    .await;
}

#[tokio::test]
async fn corruption_in_sealed_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), 1);
    o.segment_bytes = 64;
    {
        let wal = LocalWal::open(o.clone()).await.unwrap();
        fill(&wal, 0, 20).await;
    }
    let files = segment_files(tmp.path(), 0);
    assert!(files.len() > 2);
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&files[0], bytes).unwrap();
    match LocalWal::open(o.clone()).await {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, files[0]);
            assert_eq!(offset, 0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A missing middle segment is a gap, also corruption.
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), 1);
    o.segment_bytes = 64;
    {
        let wal = LocalWal::open(o.clone()).await.unwrap();
        fill(&wal, 0, 20).await;
    }
    std::fs::remove_file(&segment_files(tmp.path(), 0)[1]).unwrap();
    assert!(matches!(
        LocalWal::open(o).await,
        Err(WalError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn rotation_and_truncate() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), 1);
    // Each frame is 8 + ~18 bytes, so a segment holds about 4 records.
    o.segment_bytes = 100;
    let wal = LocalWal::open(o.clone()).await.unwrap();
    fill(&wal, 0, 40).await;
    let files = segment_files(tmp.path(), 0);
    assert!(files.len() >= 8, "expected rotation, got {files:?}");
    for f in &files[..files.len() - 1] {
        let len = file_len(f);
        assert!((100..100 + 40).contains(&len), "{f:?} has {len} bytes");
    }
    assert_contents(&wal, 0, 40).await;
    // Reading from the middle only returns lsn >= from.
    let got = wal.read_from(0, 17).await.unwrap();
    assert_eq!(got.first().map(|r| r.0), Some(17));
    assert_eq!(got.len(), 23);

    // Truncate below 17: every segment whose records are all < 17 goes.
    wal.truncate(0, 17).await.unwrap();
    let remaining = segment_files(tmp.path(), 0);
    let firsts: Vec<Lsn> = remaining
        .iter()
        .map(|p| format::parse_segment_name(p.file_name().unwrap().to_str().unwrap()).unwrap())
        .collect();
    assert!(
        firsts[0] <= 17,
        "segment holding 17 must survive: {firsts:?}"
    );
    assert!(firsts.len() >= 2 && firsts[1] > 17, "{firsts:?}");
    assert!(remaining.len() < files.len());
    // Records >= 17 are intact; read_from(0) starts at the first surviving segment.
    assert_eq!(wal.read_from(0, 17).await.unwrap(), got);
    let all = wal.read_from(0, 0).await.unwrap();
    assert_eq!(all.first().map(|r| r.0), Some(firsts[0]));
    assert_eq!(all.last().map(|r| r.0), Some(39));

    // Truncating past the end never deletes the active segment.
    wal.truncate(0, 1_000).await.unwrap();
    let remaining = segment_files(tmp.path(), 0);
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0], files[files.len() - 1]);
    assert_eq!(wal.append(0, vec![rec(0, 40)]).await.unwrap(), 40);
    drop(wal);

    // Reopen works with a log that no longer starts at lsn 0.
    let wal = LocalWal::open(o).await.unwrap();
    assert_eq!(wal.next_lsn(0).await.unwrap(), 41);
    let all = wal.read_from(0, 0).await.unwrap();
    assert_eq!(all.last(), Some(&(40, rec(0, 40))));
    let lsns: Vec<Lsn> = all.iter().map(|r| r.0).collect();
    let start = lsns[0];
    assert_eq!(lsns, (start..41).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_dense_unique_lsns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), 2);
    o.segment_bytes = 4096;
    let wal = Arc::new(LocalWal::open(o.clone()).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16u64 {
        let wal = Arc::clone(&wal);
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25u64 {
                let n = (i % 3 + 1) as usize;
                let records: Vec<Bytes> = (0..n)
                    .map(|k| Bytes::from(format!("task {t} append {i} part {k}")))
                    .collect();
                let first = wal.append(1, records.clone()).await.unwrap();
                for (k, r) in records.into_iter().enumerate() {
                    mine.push((first + k as u64, r));
                }
            }
            mine
        });
    }
    let mut expected = Vec::new();
    while let Some(res) = tasks.join_next().await {
        expected.extend(res.unwrap());
    }
    expected.sort();
    let total = expected.len() as u64;
    assert_eq!(total, 16 * (25 / 3 * 6 + 1));
    let lsns: Vec<Lsn> = expected.iter().map(|r| r.0).collect();
    assert_eq!(
        lsns,
        (0..total).collect::<Vec<_>>(),
        "lsns must be dense and unique"
    );
    assert_eq!(wal.read_from(1, 0).await.unwrap(), expected);
    assert_eq!(wal.next_lsn(1).await.unwrap(), total);
    assert_eq!(wal.next_lsn(0).await.unwrap(), 0);
    let stats = wal.stats();
    assert_eq!(stats.appends, 16 * 25);
    assert_eq!(stats.records, total);
    drop(wal);

    let wal = LocalWal::open(o).await.unwrap();
    assert_eq!(wal.read_from(1, 0).await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_batches_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Arc::new(LocalWal::open(opts(tmp.path(), 1)).await.unwrap());
    let before = wal.stats();

    // Hold the writer, queue 16 appends, release: one commit, one fsync.
    wal.set_paused(0, true);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16u64 {
        let wal = Arc::clone(&wal);
        tasks.spawn(async move { wal.append(0, vec![rec(0, t)]).await.unwrap() });
    }
    while wal.queued(0) < 16 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(wal.stats().commits, before.commits);
    wal.set_paused(0, false);
    let mut lsns = Vec::new();
    while let Some(res) = tasks.join_next().await {
        lsns.push(res.unwrap());
    }
    lsns.sort_unstable();
    assert_eq!(lsns, (0..16).collect::<Vec<_>>());
    let after = wal.stats();
    assert_eq!(after.appends - before.appends, 16);
    assert_eq!(after.commits - before.commits, 1);
    assert_eq!(after.fsyncs - before.fsyncs, 1);
    assert_eq!(wal.read_from(0, 0).await.unwrap().len(), 16);

    // Unpaused, concurrent appenders still share fsyncs (never more than one per append).
    let before = wal.stats();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let wal = Arc::clone(&wal);
        tasks.spawn(async move {
            for i in 0..20 {
                wal.append(0, vec![rec(0, i)]).await.unwrap();
            }
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap();
    }
    let after = wal.stats();
    assert_eq!(after.appends - before.appends, 320);
    assert!(after.commits - before.commits <= 320);
    assert_eq!(after.fsyncs - before.fsyncs, after.commits - before.commits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_during_appends_see_a_durable_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(tmp.path(), 1);
    o.segment_bytes = 512;
    let wal = Arc::new(LocalWal::open(o).await.unwrap());
    let writer = {
        let wal = Arc::clone(&wal);
        tokio::spawn(async move {
            for i in 0..200 {
                wal.append(0, vec![rec(0, i)]).await.unwrap();
            }
        })
    };
    let mut seen = 0usize;
    while !writer.is_finished() || seen < 200 {
        let durable_before = wal.stats().records as usize;
        let got = wal.read_from(0, 0).await.unwrap();
        assert!(got.len() >= seen, "reads must never go backwards");
        assert!(got.len() >= durable_before.min(200));
        for (i, (lsn, bytes)) in got.iter().enumerate() {
            assert_eq!(*lsn, i as u64);
            assert_eq!(*bytes, rec(0, i as u64));
        }
        seen = got.len();
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert_eq!(seen, 200);
}

#[tokio::test]
async fn works_as_dyn_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let wal: Arc<dyn Wal> = Arc::new(LocalWal::open(opts(tmp.path(), 1)).await.unwrap());
    assert_eq!(wal.append(0, vec![rec(0, 0)]).await.unwrap(), 0);
    assert_eq!(wal.read_from(0, 0).await.unwrap(), vec![(0, rec(0, 0))]);
    assert!(format!("{wal:?}").contains("LocalWal"));
}
