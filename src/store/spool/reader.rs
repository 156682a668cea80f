//! A sink's view of the spool: read from its position, acknowledge what is durable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::error;

use super::damage::{self, Damage, Found};
use super::frame::{self, Peek, HEADER_LEN};
use super::{files, lock, Frame, Published, Shared};
use crate::record::AuditRecord;
use crate::store::metrics::SinkId;

/// Most encoded bytes one disk read returns.
const MAX_READ_BYTES: u64 = 16 << 20;

/// Consecutive frames for a sink, ending at `end`.
#[derive(Debug)]
pub struct Batch {
    pub frames: Vec<Arc<Frame>>,
    /// LSN just past the last frame (and past any damaged bytes skipped).
    pub end: u64,
}

impl Batch {
    pub fn records(&self) -> usize {
        self.frames.iter().map(|f| f.records.len()).sum()
    }
}

/// What [`SinkReader::next`] found.
#[derive(Debug)]
pub enum Next {
    Batch(Batch),
    /// Nothing new within the wait.
    Idle,
    /// The spool is closed and this reader has seen everything.
    Closed,
}

pub struct SinkReader {
    shared: Arc<Shared>,
    idx: usize,
    pos: u64,
    published: watch::Receiver<Published>,
}

impl SinkReader {
    pub(super) fn new(shared: Arc<Shared>, idx: usize) -> Self {
        let pos = shared.cursors[idx].acked.load(Relaxed);
        let published = shared.published.subscribe();
        SinkReader {
            shared,
            idx,
            pos,
            published,
        }
    }

    pub fn sink(&self) -> SinkId {
        self.shared.cursors[self.idx].sink
    }

    /// What the sink has acknowledged.
    pub fn acked(&self) -> u64 {
        self.shared.cursors[self.idx].acked.load(Relaxed)
    }

    /// The durable end of the log.
    pub fn end(&self) -> u64 {
        self.shared.end()
    }

    /// The spool's bound on disk bytes.
    pub fn max_bytes(&self) -> u64 {
        self.shared.cfg.max_bytes
    }

    /// Everything below `lsn` is durable in the sink.
    pub fn ack(&self, lsn: u64) {
        let prev = self.shared.cursors[self.idx].acked.fetch_max(lsn, Relaxed);
        if lsn > prev {
            self.shared
                .metrics
                .sink(self.sink())
                .lag_bytes
                .store(self.shared.end().saturating_sub(lsn), Relaxed);
        }
    }

    /// Reads again from the acknowledged cursor: after a failure, whatever the sink had taken
    /// but not made durable is handed to it again.
    pub fn rewind(&mut self) {
        self.pos = self.acked();
    }

    /// Frames from the current position, at least one and about `max_records` records; waits
    /// up to `idle` for new ones.
    pub async fn next(&mut self, max_records: usize, idle: Duration) -> Next {
        loop {
            let p = *self.published.borrow_and_update();
            if self.pos < p.end {
                let batch = self.read(p.end, max_records.max(1)).await;
                if batch.frames.is_empty() && batch.end == self.pos {
                    // A read that failed (and logged why): try again after a pause.
                    tokio::time::sleep(idle.min(Duration::from_millis(200))).await;
                    return Next::Idle;
                }
                self.pos = batch.end;
                return Next::Batch(batch);
            }
            if p.closed {
                return Next::Closed;
            }
            match tokio::time::timeout(idle, self.published.changed()).await {
                Ok(Ok(())) => continue,
                // The sender lives in `Shared`, which this reader holds: it cannot be gone.
                Ok(Err(_)) => return Next::Closed,
                Err(_) => return Next::Idle,
            }
        }
    }

    async fn read(&self, end: u64, max_records: usize) -> Batch {
        if let Some(b) = self.cached(end, max_records) {
            return b;
        }
        let shared = Arc::clone(&self.shared);
        let pos = self.pos;
        let sink = self.sink();
        match tokio::task::spawn_blocking(move || read_disk(&shared, sink, pos, end, max_records))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "spool read task failed; retrying");
                Batch {
                    frames: Vec::new(),
                    end: pos,
                }
            }
        }
    }

    fn cached(&self, end: u64, max_records: usize) -> Option<Batch> {
        let cache = lock(&self.shared.cache);
        let first = cache.frames.front()?;
        if first.start > self.pos {
            return None;
        }
        let at = cache.frames.partition_point(|f| f.start < self.pos);
        if cache.frames.get(at)?.start != self.pos {
            return None;
        }
        let mut frames = Vec::new();
        let mut records = 0;
        let mut last = self.pos;
        for f in cache.frames.range(at..) {
            if f.end > end || records >= max_records {
                break;
            }
            records += f.records.len();
            last = f.end;
            frames.push(Arc::clone(f));
        }
        (!frames.is_empty()).then_some(Batch { frames, end: last })
    }
}

/// Reads and decodes frames from segment files, from `pos` up to `end`, within one segment.
fn read_disk(shared: &Shared, sink: SinkId, mut pos: u64, end: u64, max_records: usize) -> Batch {
    let (seg, seg_end) = {
        let segs = lock(&shared.segments);
        let i = segs.partition_point(|s| *s <= pos);
        if i == 0 {
            // Below the oldest segment: cannot happen while cursors gate deletion.
            let oldest = segs.first().copied().unwrap_or(end);
            error!(
                sink = sink.name(),
                pos, oldest, "spool position is below the oldest segment; skipping ahead"
            );
            return Batch {
                frames: Vec::new(),
                end: oldest,
            };
        }
        (segs[i - 1], segs.get(i).copied().unwrap_or(end).min(end))
    };
    let path = files::segment_path(&shared.cfg.dir, seg);
    let mut frames = Vec::new();
    let mut records = 0;
    let mut bytes = 0;
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            error!(sink = sink.name(), path = %path.display(), error = %e, "cannot open spool segment; will retry");
            return Batch { frames, end: pos };
        }
    };
    while pos < seg_end && records < max_records && bytes < MAX_READ_BYTES {
        match read_frame(&file, seg, pos, seg_end) {
            Some((recs, flen)) => {
                let start = pos;
                pos += flen;
                records += recs.len();
                bytes += flen;
                frames.push(Arc::new(Frame::new(start, pos, recs)));
            }
            None => {
                // Damaged: skip to where valid frames resume (or the segment's end), never
                // further, and report the range once.
                pos = skip_damage(shared, sink, &file, &path, seg, pos, seg_end);
                break;
            }
        }
    }
    Batch { frames, end: pos }
}

/// The records of the frame at `pos` and its length, if it is whole, checksum-valid and decodes.
fn read_frame(file: &File, seg: u64, pos: u64, seg_end: u64) -> Option<(Vec<AuditRecord>, u64)> {
    let offset = HEADER_LEN as u64 + (pos - seg);
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, offset).ok()?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > frame::MAX_PAYLOAD || pos + (HEADER_LEN + len) as u64 > seg_end {
        return None;
    }
    let mut buf = vec![0u8; HEADER_LEN + len];
    file.read_exact_at(&mut buf, offset).ok()?;
    let Peek::Frame { payload, len: flen } = frame::peek(&buf) else {
        return None;
    };
    let payload_len = payload.len();
    // The records' text is sliced from this frame's own buffer.
    let payload = Bytes::from(buf).slice(HEADER_LEN..HEADER_LEN + payload_len);
    let recs = frame::decode(payload).ok()?;
    Some((recs, flen as u64))
}

/// Finds where valid frames resume after damage at `pos` (below `seg_end`), reports the
/// damaged range (`damage.rs`: once, copied aside, counted) and returns the resume position.
fn skip_damage(
    shared: &Shared,
    sink: SinkId,
    file: &File,
    path: &Path,
    seg: u64,
    pos: u64,
    seg_end: u64,
) -> u64 {
    let offset = HEADER_LEN as u64 + (pos - seg);
    let mut rest = vec![0u8; (seg_end - pos) as usize];
    let mut got = 0;
    while got < rest.len() {
        match file.read_at(&mut rest[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                error!(sink = sink.name(), path = %path.display(), lsn = pos + got as u64, error = %e, "cannot read spool segment past damaged bytes");
                break;
            }
        }
    }
    rest.truncate(got);
    if matches!(frame::peek(&rest), Peek::Frame { payload, .. } if frame::decode(Bytes::copy_from_slice(payload)).is_ok())
    {
        // The frame reads whole now: the failure was transient. The caller retries from `pos`.
        return pos;
    }
    // A frame whose checksum holds but which does not decode is skipped too: start the scan
    // past its first byte.
    let end = damage::resync(&rest, 0).map_or(seg_end, |at| pos + at as u64);
    damage::report(
        &shared.cfg.dir,
        &Damage {
            segment_path: path,
            start: pos,
            end,
            bytes: &rest[..(end - pos).min(got as u64) as usize],
            found: Found::Skipped { sink: sink.name() },
        },
        &shared.metrics,
    );
    end
}
