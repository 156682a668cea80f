//! The single spool writer: group commit on a dedicated thread (file I/O never runs on the async
//! runtime). Each round takes every batch queued so far, writes them with one `write`, fsyncs
//! once (per [`FsyncMode`]), then publishes and acknowledges them all.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

use super::frame::HEADER_LEN;
use super::{
    files, lock, AppendError, Frame, FsyncMode, Published, Request, Shared, TAIL_CACHE_BYTES,
};

/// Most bytes one group commit takes.
const MAX_GROUP_BYTES: usize = 8 << 20;
/// Cursor persistence and segment deletion run at least this often.
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);
/// While the spool is full, it says so this often.
const FULL_LOG_EVERY: Duration = Duration::from_secs(10);

struct Writer {
    shared: Arc<Shared>,
    file: File,
    seg_start: u64,
    end: u64,
    /// Bytes written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    /// After a failed fsync the state of the page cache is unknown (the kernel may have dropped
    /// the dirty pages): refuse everything until a restart recovers from what is on disk.
    failed: bool,
    rx: mpsc::Receiver<Request>,
    close: Arc<Notify>,
    rt: Handle,
    /// Bytes of the last group an append failed for: what the probe tries to write.
    probe_bytes: usize,
    full_since: Option<Instant>,
    last_full_log: Instant,
    last_maintain: Instant,
}

pub(super) fn start(
    shared: Arc<Shared>,
    file: File,
    end: u64,
    rx: mpsc::Receiver<Request>,
    close: Arc<Notify>,
    rt: Handle,
) -> std::io::Result<JoinHandle<()>> {
    let seg_start = lock(&shared.segments).last().copied().unwrap_or(end);
    let mut w = Writer {
        shared,
        file,
        seg_start,
        end,
        dirty: false,
        last_sync: Instant::now(),
        failed: false,
        rx,
        close,
        rt,
        probe_bytes: 0,
        full_since: None,
        last_full_log: Instant::now(),
        last_maintain: Instant::now(),
    };
    std::thread::Builder::new()
        .name("meshaudit-spool".into())
        .spawn(move || w.run())
}

enum Got {
    Request(Request),
    Timeout,
    Closed,
}

impl Writer {
    fn run(&mut self) {
        loop {
            if self.last_maintain.elapsed() >= MAINTAIN_EVERY {
                self.shared.maintain();
                self.last_maintain = Instant::now();
            }
            if self.wait_while_full() {
                break;
            }
            let wait = self.idle_wait();
            match self.recv(wait) {
                Got::Request(first) => self.commit_group(first),
                Got::Timeout => {
                    self.sync_if_due();
                    self.probe_if_failing();
                }
                Got::Closed => break,
            }
        }
        // Closing: take whatever was queued before the close, then make it all durable.
        self.rx.close();
        while let Ok(first) = self.rx.try_recv() {
            self.commit_group(first);
        }
        if self.dirty && !self.failed {
            self.sync();
        }
        let end = self.end;
        self.shared
            .published
            .send_replace(Published { end, closed: true });
        self.shared.maintain();
        info!(end, "spool closed for appends");
    }

    fn idle_wait(&self) -> Duration {
        match self.shared.cfg.fsync {
            FsyncMode::Interval(every) if self.dirty => every
                .saturating_sub(self.last_sync.elapsed())
                .max(Duration::from_millis(1)),
            _ => MAINTAIN_EVERY,
        }
    }

    fn recv(&mut self, wait: Duration) -> Got {
        let close = Arc::clone(&self.close);
        let rx = &mut self.rx;
        self.rt.block_on(async {
            tokio::select! {
                biased;
                () = close.notified() => Got::Closed,
                r = tokio::time::timeout(wait, rx.recv()) => match r {
                    Ok(Some(req)) => Got::Request(req),
                    Ok(None) => Got::Closed,
                    Err(_) => Got::Timeout,
                },
            }
        })
    }

    /// Blocks while the segments on disk are at the bound. Returns true when asked to close.
    fn wait_while_full(&mut self) -> bool {
        let max = self.shared.cfg.max_bytes;
        let metrics = Arc::clone(&self.shared.metrics);
        loop {
            let bytes = self.shared.disk_bytes();
            if bytes < max {
                if let Some(since) = self.full_since.take() {
                    metrics.spool_full.store(0, Relaxed);
                    warn!(
                        waited_ms = since.elapsed().as_millis() as u64,
                        spool_bytes = bytes,
                        "spool has room again; ingest resumes at full speed"
                    );
                }
                return false;
            }
            if self.full_since.is_none() {
                self.full_since = Some(Instant::now());
                self.last_full_log = Instant::now() - FULL_LOG_EVERY;
                metrics.spool_full.store(1, Relaxed);
                metrics.spool_full_waits.fetch_add(1, Relaxed);
            }
            if self.last_full_log.elapsed() >= FULL_LOG_EVERY {
                self.last_full_log = Instant::now();
                let end = self.end;
                let lagging: Vec<String> = self
                    .shared
                    .cursors
                    .iter()
                    .map(|c| format!("{}={}", c.sink.name(), end - c.acked.load(Relaxed)))
                    .collect();
                error!(
                    spool_bytes = bytes,
                    max_bytes = max,
                    sink_lag_bytes = %lagging.join(","),
                    "SPOOL FULL: a sink is not keeping up (is Postgres down?); ingest is slowed until it catches up. Raise --spool-max-bytes or fix the sink"
                );
            }
            if self.dirty {
                self.sync_if_due();
            }
            let space = &self.shared.space;
            let close = Arc::clone(&self.close);
            let closed = self.rt.block_on(async {
                tokio::select! {
                    () = close.notified() => true,
                    _ = tokio::time::timeout(MAINTAIN_EVERY, space.notified()) => false,
                }
            });
            if closed {
                return true;
            }
            self.shared.maintain();
            self.last_maintain = Instant::now();
        }
    }

    fn commit_group(&mut self, first: Request) {
        let mut group = vec![first];
        let mut bytes = group[0].frame.len();
        while bytes < MAX_GROUP_BYTES {
            match self.rx.try_recv() {
                Ok(r) => {
                    bytes += r.frame.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        if self.failed {
            return reply(group, Err(AppendError::Failed));
        }
        if self.end - self.seg_start >= self.shared.cfg.segment_bytes {
            if let Err(e) = self.rotate() {
                error!(error = %e, "cannot start a new spool segment");
                self.shared.metrics.spool_write_errors.fetch_add(1, Relaxed);
                if self.failed {
                    return reply(group, Err(AppendError::Failed));
                }
                self.probe_bytes = bytes;
                return self.refuse(group, &std::io::Error::other(e.to_string()));
            }
        }
        let mut buf = Vec::with_capacity(bytes);
        for r in &group {
            buf.extend_from_slice(&r.frame);
        }
        if let Err(e) = self.file.write_all(&buf) {
            self.shared.metrics.spool_write_errors.fetch_add(1, Relaxed);
            self.roll_back();
            self.probe_bytes = buf.len();
            return self.refuse(group, &e);
        }
        self.dirty = true;
        let always = self.shared.cfg.fsync == FsyncMode::Always;
        if always || self.sync_due() {
            self.sync();
            if self.failed && always {
                return reply(group, Err(AppendError::Failed));
            }
        }
        self.publish(group);
    }

    /// Refuses `group` because an append failed with `e`. `/readyz` reports the error until an
    /// append or [`Self::probe_if_failing`] works again; logged once per failing period.
    fn refuse(&mut self, group: Vec<Request>, e: &std::io::Error) {
        if self.shared.metrics.append_failed(e) {
            error!(error = %e, spool_dir = %self.shared.cfg.dir.display(), "spool append failed; batches are refused and /readyz is not ready until the disk takes writes again (free space on the spool's volume)");
        }
        reply(group, Err(AppendError::Disk(e.to_string())));
    }

    /// While appends fail, writes as many bytes as the failed group had at the segment's end
    /// and cuts them off again: when that works, there is room, and the collector becomes
    /// ready without waiting for a batch (a load balancer sends none to an unready replica).
    fn probe_if_failing(&mut self) {
        if self.failed || self.shared.metrics.spool_append_failing.load(Relaxed) == 0 {
            return;
        }
        let zeros = vec![0u8; self.probe_bytes.max(4096)];
        let wrote = self.file.write_all(&zeros);
        self.roll_back();
        match wrote {
            Ok(()) if !self.failed => {
                if self.shared.metrics.append_ok() {
                    info!("spool appends work again (probe); batches are accepted and /readyz is ready");
                }
            }
            Ok(()) => {}
            Err(e) => {
                self.shared.metrics.append_failed(&e);
            }
        }
    }

    /// Cuts a partly written group off the segment so the next append starts on a frame
    /// boundary.
    fn roll_back(&mut self) {
        let len = (HEADER_LEN as u64) + (self.end - self.seg_start);
        let ok = self
            .file
            .set_len(len)
            .and_then(|()| self.file.seek(SeekFrom::Start(len)).map(|_| ()));
        if let Err(e) = ok {
            error!(error = %e, "cannot cut a failed append off the spool segment; refusing all batches until restart");
            self.failed = true;
        }
    }

    fn sync_due(&self) -> bool {
        match self.shared.cfg.fsync {
            FsyncMode::Always => true,
            FsyncMode::Interval(every) => self.last_sync.elapsed() >= every,
        }
    }

    fn sync_if_due(&mut self) {
        if self.dirty && !self.failed && self.sync_due() {
            self.sync();
        }
    }

    fn sync(&mut self) {
        match self.file.sync_data() {
            Ok(()) => {
                self.shared.metrics.spool_fsyncs.fetch_add(1, Relaxed);
                self.dirty = false;
                self.last_sync = Instant::now();
            }
            Err(e) => {
                self.shared.metrics.spool_write_errors.fetch_add(1, Relaxed);
                error!(error = %e, "spool fsync failed; refusing all batches until the collector is restarted (it then replays what reached the disk)");
                self.failed = true;
                self.shared.metrics.spool_failed.store(1, Relaxed);
            }
        }
    }

    fn rotate(&mut self) -> Result<(), super::SpoolError> {
        if self.dirty {
            self.sync();
            if self.failed {
                return Err(super::SpoolError::Io {
                    path: files::segment_path(&self.shared.cfg.dir, self.seg_start),
                    source: std::io::Error::other("fsync failed"),
                });
            }
        }
        let file = files::create_segment(&self.shared.cfg.dir, self.end)?;
        self.file = file;
        self.seg_start = self.end;
        lock(&self.shared.segments).push(self.end);
        Ok(())
    }

    fn publish(&mut self, group: Vec<Request>) {
        let mut frames = Vec::with_capacity(group.len());
        let mut acks = Vec::with_capacity(group.len());
        let mut records = 0u64;
        for r in group {
            let start = self.end;
            self.end += r.frame.len() as u64;
            records += r.records.len() as u64;
            frames.push(Arc::new(Frame::new(start, self.end, r.records)));
            acks.push(r.done);
        }
        let mut evicted = Vec::new();
        {
            let mut cache = lock(&self.shared.cache);
            for f in frames {
                cache.bytes += f.end - f.start;
                cache.frames.push_back(f);
            }
            while cache.bytes > TAIL_CACHE_BYTES {
                match cache.frames.pop_front() {
                    Some(f) => {
                        cache.bytes -= f.end - f.start;
                        evicted.push(f);
                    }
                    None => break,
                }
            }
        }
        if self.shared.metrics.append_ok() {
            info!("spool appends work again; batches are accepted and /readyz is ready");
        }
        let end = self.end;
        self.shared
            .published
            .send_replace(Published { end, closed: false });
        self.shared
            .metrics
            .spool_records_appended
            .fetch_add(records, Relaxed);
        self.shared.update_gauges();
        for done in acks {
            // The stream may have gone away meanwhile; its batch is durable all the same.
            let _ = done.send(Ok(()));
        }
        // Freeing evicted frames' records (~40 strings each) is a large part of this thread's
        // work: done last, outside the cache lock and after the acknowledgements, so neither
        // sink readers nor waiting ingest streams are held up by it.
        drop(evicted);
    }
}

fn reply(group: Vec<Request>, result: Result<(), AppendError>) {
    for r in group {
        let _ = r.done.send(result.clone());
    }
}
