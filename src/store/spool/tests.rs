use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::record::AuditRecord;
use crate::store::metrics::{SinkId, StoreMetrics};

fn rec(id: u32) -> AuditRecord {
    AuditRecord {
        record_id: bytes::Bytes::from(format!("{id:032x}")),
        start_time: Some(1_772_446_504_000_000 + i64::from(id)),
        received_at: 1_772_446_504_000_000,
        entry_kind: "http".into(),
        path: Some(bytes::Bytes::from(format!("/orders/{id}"))),
        ..Default::default()
    }
}

fn cfg(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        segment_bytes: 64 << 10,
        fsync: FsyncMode::Always,
        queue_batches: 64,
        sinks: vec![SinkId::Parquet, SinkId::Postgres],
    }
}

fn open(cfg: SpoolConfig) -> (Spool, Appender, Arc<StoreMetrics>) {
    let m = Arc::new(StoreMetrics::default());
    let (s, a) = Spool::open(cfg, Arc::clone(&m), tokio::runtime::Handle::current()).expect("open");
    (s, a, m)
}

/// Everything a reader hands out until the log's current end, as record ids.
async fn read_all(r: &mut SinkReader) -> (Vec<bytes::Bytes>, u64) {
    let mut ids = vec![];
    let mut end = r.acked();
    loop {
        match r.next(1000, Duration::from_millis(50)).await {
            Next::Batch(b) => {
                end = b.end;
                ids.extend(
                    b.frames
                        .iter()
                        .flat_map(|f| f.records.iter().map(|r| r.record_id.clone())),
                );
            }
            Next::Idle | Next::Closed => return (ids, end),
        }
    }
}

fn ids(range: std::ops::Range<u32>) -> Vec<bytes::Bytes> {
    range.map(|i| rec(i).record_id).collect()
}

async fn close(s: Spool) {
    tokio::task::spawn_blocking(move || s.shutdown())
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sink_gets_again_what_it_had_not_acknowledged_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, a, _) = open(cfg(dir.path()));
    for i in 0..10 {
        a.send(vec![rec(2 * i), rec(2 * i + 1)])
            .await
            .expect("accepted");
    }
    let mut pq = s.reader(SinkId::Parquet).expect("parquet reader");
    let (got, end) = read_all(&mut pq).await;
    assert_eq!(got, ids(0..20));
    pq.ack(end);
    drop((a, pq));
    close(s).await;

    let (s, a, _) = open(cfg(dir.path()));
    a.send(vec![rec(20)]).await.expect("accepted");
    let mut pq = s.reader(SinkId::Parquet).expect("parquet reader");
    assert_eq!(
        read_all(&mut pq).await.0,
        ids(20..21),
        "parquet acked 0..20"
    );
    let mut pg = s.reader(SinkId::Postgres).expect("postgres reader");
    assert_eq!(
        read_all(&mut pg).await.0,
        ids(0..21),
        "postgres acked nothing"
    );
    drop(a);
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_never_misread_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, a, _) = open(cfg(dir.path()));
    for i in 0..3 {
        a.send(vec![rec(i)]).await.expect("accepted");
    }
    drop(a);
    close(s).await;
    // A crash in the middle of a write: half a frame at the end of the segment.
    let seg = files::segment_path(dir.path(), 0);
    let half = frame::encode(&[rec(99)]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .and_then(|mut f| f.write_all(&half[..half.len() / 2]))
        .expect("append garbage");

    let (s, a, m) = open(cfg(dir.path()));
    assert_eq!(
        m.spool_truncated_bytes.load(Relaxed),
        (half.len() / 2) as u64
    );
    a.send(vec![rec(3)]).await.expect("accepted after repair");
    let mut pq = s.reader(SinkId::Parquet).expect("reader");
    assert_eq!(read_all(&mut pq).await.0, ids(0..4));
    drop(a);
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_go_only_once_every_sink_has_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, a, _) = open(cfg(dir.path()));
    let big = |i: u32| AuditRecord {
        user_agent: Some("x".repeat(4000).into()),
        ..rec(i)
    };
    for i in 0..100 {
        a.send(vec![big(i)]).await.expect("accepted");
    }
    let segments = || {
        std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .count()
    };
    assert!(segments() > 3, "400 KB in 64 KiB segments: {}", segments());
    let mut pq = s.reader(SinkId::Parquet).expect("reader");
    let (got, end) = read_all(&mut pq).await;
    assert_eq!(got.len(), 100);
    pq.ack(end);
    s.shared.maintain();
    assert!(
        segments() > 3,
        "postgres has not acknowledged: nothing may go"
    );
    let mut pg = s.reader(SinkId::Postgres).expect("reader");
    let (_, end) = read_all(&mut pg).await;
    pg.ack(end);
    s.shared.maintain();
    assert_eq!(segments(), 1, "only the active segment is left");
    drop(a);
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_holds_ingest_back_until_the_slow_sink_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = SpoolConfig {
        max_bytes: 128 << 10,
        ..cfg(dir.path())
    };
    let (s, a, m) = open(c);
    let big = |i: u32| AuditRecord {
        user_agent: Some("x".repeat(8000).into()),
        ..rec(i)
    };
    // Parquet keeps up; Postgres (down) acknowledges nothing.
    let mut pq = s.reader(SinkId::Parquet).expect("reader");
    let sender = tokio::spawn(async move {
        for i in 0..40 {
            a.send(vec![big(i)]).await.expect("accepted");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.spool_full.load(Relaxed) == 0 {
        if let Next::Batch(b) = pq.next(1000, Duration::from_millis(20)).await {
            pq.ack(b.end);
        }
        assert!(Instant::now() < deadline, "spool never reported full");
    }
    assert!(
        !sender.is_finished(),
        "ingest must wait while the spool is full"
    );
    assert_eq!(m.spool_full_waits.load(Relaxed), 1);
    // Postgres comes back and takes everything as it arrives.
    let mut pg = s.reader(SinkId::Postgres).expect("reader");
    let mut taken = 0;
    while !sender.is_finished() || taken < 40 {
        for r in [&mut pq, &mut pg] {
            if let Next::Batch(b) = r.next(1000, Duration::from_millis(20)).await {
                if r.sink() == SinkId::Postgres {
                    taken += b.records();
                }
                r.ack(b.end);
            }
        }
        assert!(Instant::now() < deadline, "ingest never resumed");
    }
    assert_eq!(taken, 40);
    sender.await.expect("sender");
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, a, m) = open(cfg(dir.path()));
    let mut tasks = vec![];
    for i in 0..200 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move { a.send(vec![rec(i)]).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("accepted");
    }
    let fsyncs = m.spool_fsyncs.load(Relaxed);
    assert_eq!(m.spool_records_appended.load(Relaxed), 200);
    assert!(
        fsyncs < 200,
        "200 appends took {fsyncs} fsyncs: no group commit"
    );
    let mut pq = s.reader(SinkId::Parquet).expect("reader");
    let (mut got, _) = read_all(&mut pq).await;
    got.sort();
    assert_eq!(got, ids(0..200));
    drop(a);
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_the_same_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, a, _) = open(cfg(dir.path()));
    let m = Arc::new(StoreMetrics::default());
    let err = Spool::open(cfg(dir.path()), m, tokio::runtime::Handle::current())
        .err()
        .expect("locked");
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    drop(a);
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_with_everything_taken_leaves_an_empty_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, a, _) = open(cfg(dir.path()));
    for i in 0..5 {
        a.send(vec![rec(i)]).await.expect("accepted");
    }
    for sink in [SinkId::Parquet, SinkId::Postgres] {
        let mut r = s.reader(sink).expect("reader");
        let (_, end) = read_all(&mut r).await;
        r.ack(end);
    }
    drop(a);
    close(s).await;
    let segs: Vec<u64> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("seg-")?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert!(segs[0] > 0, "the new segment starts where the log ended");
    let (s, a, _) = open(cfg(dir.path()));
    a.send(vec![rec(5)]).await.expect("accepted");
    let mut r = s.reader(SinkId::Postgres).expect("reader");
    assert_eq!(
        read_all(&mut r).await.0,
        ids(5..6),
        "nothing replayed, nothing skipped"
    );
    drop(a);
    close(s).await;
}

/// Damage in real segment files, read back through the spool: at the head, middle and tail of
/// segments, across a segment boundary, and at the end of the log (spool/damage.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_anywhere_loses_only_the_damaged_frames_for_every_sink() {
    use super::damage::{pieces, Piece, DAMAGED_DIR};
    use super::frame::HEADER_LEN;
    use std::fs;
    use std::path::PathBuf;

    /// One frame on disk: its segment file, byte offset in it, length, and record ids.
    struct OnDisk {
        file: PathBuf,
        offset: usize,
        len: usize,
        ids: Vec<bytes::Bytes>,
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // About six frames of four records per segment.
    let small = || SpoolConfig {
        segment_bytes: 2 << 10,
        ..cfg(dir.path())
    };
    let (s, a, _) = open(small());
    for i in 0..40 {
        a.send((4 * i..4 * i + 4).map(rec).collect())
            .await
            .expect("accepted");
    }
    drop(a);
    close(s).await;

    let mut segments: Vec<PathBuf> = fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .collect();
    segments.sort();
    let mut frames = Vec::new();
    for file in &segments {
        let buf = fs::read(file).expect("segment");
        for p in pieces(&buf[HEADER_LEN..]) {
            let Piece::Frame { at, len, payload } = p else {
                panic!("an undamaged spool has {p:?}");
            };
            frames.push(OnDisk {
                file: file.clone(),
                offset: HEADER_LEN + at,
                len,
                ids: frame::decode(bytes::Bytes::copy_from_slice(payload))
                    .expect("decodes")
                    .into_iter()
                    .map(|r| r.record_id)
                    .collect(),
            });
        }
    }
    assert_eq!(frames.len(), 40);
    assert!(segments.len() >= 5, "{} segments", segments.len());
    let in_seg = |k: usize| -> Vec<usize> {
        (0..frames.len())
            .filter(|&i| frames[i].file == segments[k])
            .collect()
    };
    let (s1, s2, s3) = (in_seg(1), in_seg(2), in_seg(3));
    assert!(s1.len() >= 5 && s2.len() >= 3, "{s1:?} {s2:?}");
    let last = frames.len() - 1;
    // (frame, byte to flip in it)
    let damaged = [
        (s1[0], 40),                                          // head of a segment, payload
        (s1[3], 1),                                           // middle, length field
        (s2[s2.len() - 1], frames[s2[s2.len() - 1]].len - 1), // tail of a segment...
        (s3[0], 9),                                           // ...and head of the next
        (last, 20),                                           // end of the log: cut at start-up
    ];
    for &(k, at) in &damaged {
        let f = &frames[k];
        let mut buf = fs::read(&f.file).expect("read");
        buf[f.offset + at] ^= 0x04;
        fs::write(&f.file, buf).expect("write");
    }
    let is_damaged = |i: usize| damaged.iter().any(|&(k, _)| k == i);
    let mut want: Vec<bytes::Bytes> = (0..frames.len())
        .filter(|&i| !is_damaged(i))
        .flat_map(|i| frames[i].ids.clone())
        .collect();
    assert_eq!(want.len(), 4 * 35);

    let (s, a, m) = open(small());
    // The last frame had nothing valid after it: cut and reported at start-up.
    let end = &frames[last];
    assert_eq!(
        fs::metadata(&end.file).expect("meta").len(),
        end.offset as u64
    );
    assert_eq!(m.spool_truncated_bytes.load(Relaxed), end.len as u64);
    a.send(vec![rec(9999)]).await.expect("appends go on");
    want.push(rec(9999).record_id);
    for sink in [SinkId::Parquet, SinkId::Postgres] {
        let mut r = s.reader(sink).expect("reader");
        assert_eq!(read_all(&mut r).await.0, want, "{sink:?}");
    }
    // Five ranges, each reported once although two sinks read past them.
    assert_eq!(m.spool_corrupt_frames.load(Relaxed), 5);
    let damaged_bytes: u64 = damaged.iter().map(|&(k, _)| frames[k].len as u64).sum();
    assert_eq!(m.spool_damaged_bytes.load(Relaxed), damaged_bytes);
    let copies = fs::read_dir(dir.path().join(DAMAGED_DIR))
        .expect("damaged dir")
        .count();
    assert_eq!(copies, 5);
    // No segment that still held valid frames was cut.
    for f in &frames[..last] {
        assert!(fs::metadata(&f.file).expect("meta").len() >= (f.offset + f.len) as u64);
    }
    drop(a);
    close(s).await;

    // After a restart nothing is reported again (the copies are there), and read_spooled
    // agrees.
    let (s, a, m) = open(small());
    let mut r = s.reader(SinkId::Parquet).expect("reader");
    assert_eq!(read_all(&mut r).await.0, want);
    assert_eq!(m.spool_corrupt_frames.load(Relaxed), 0);
    drop(a);
    close(s).await;
    let spooled: Vec<bytes::Bytes> = read_spooled(dir.path())
        .expect("read_spooled")
        .into_iter()
        .map(|r| r.record_id)
        .collect();
    assert_eq!(spooled, want);
}
