//! The spool's disk as an operator sees it: a start-up warning when `--spool-max-bytes` is more
//! than the spool's volume has free (the bound would never be reached: appends fail with ENOSPC
//! first, see docs/storage.md "A full disk"), and, at shutdown, how many records are still in
//! the spool for the next start.

use std::path::Path;
use std::time::Duration;

use tracing::warn;

use super::metrics::SinkId;
use super::spool::{Next, Spool};

/// Bytes free for an unprivileged writer on the volume holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Warns when the spool bound exceeds the free space of the spool's volume. Returns the free
/// bytes when it warned.
pub fn warn_if_bound_exceeds_free_space(dir: &Path, max_bytes: u64) -> Option<u64> {
    let free = match free_bytes(dir) {
        Ok(f) => f,
        Err(e) => {
            warn!(spool_dir = %dir.display(), error = %e, "cannot read the free space of the spool's volume");
            return None;
        }
    };
    // Segments already on disk count against the bound but not against the free space.
    let used = spooled_bytes(dir);
    if max_bytes > free.saturating_add(used) {
        warn!(
            spool_dir = %dir.display(),
            spool_max_bytes = max_bytes,
            free_bytes = free,
            spooled_bytes = used,
            "--spool-max-bytes (MESHAUDIT_SPOOL_MAX_BYTES, spool_max_bytes) is more than the spool's volume has free: during a long sink outage the disk fills before the bound, and the collector then refuses batches (not ready) instead of slowing ingest. Fix: lower --spool-max-bytes below the free space or give the spool a larger volume"
        );
        return Some(free);
    }
    None
}

fn spooled_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Records the slowest configured sink has not acknowledged, read from the spool (closed for
/// appends). Reading stops after `budget`; the second value is false when it did.
pub async fn records_behind(spool: &Spool, budget: Duration) -> (u64, bool) {
    let deadline = tokio::time::Instant::now() + budget;
    let mut most = 0u64;
    for sink in SinkId::ALL {
        let Some(mut reader) = spool.reader(sink) else {
            continue;
        };
        let mut n = 0u64;
        let mut idle = 0;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return (most.max(n), false);
            }
            match reader.next(100_000, Duration::from_millis(10)).await {
                Next::Batch(b) => n += b.records() as u64,
                Next::Closed => break,
                Next::Idle => {
                    idle += 1;
                    if idle > 3 {
                        return (most.max(n), false);
                    }
                }
            }
        }
        most = most.max(n);
    }
    (most, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_beyond_the_free_space_is_reported_and_one_within_it_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = free_bytes(dir.path()).expect("statvfs");
        assert!(free > 0);
        // Free space moves (other processes write), but not by a factor of four.
        let warned = warn_if_bound_exceeds_free_space(dir.path(), free.saturating_mul(4));
        assert!(warned.is_some_and(|f| f > 0), "{warned:?}");
        assert_eq!(warn_if_bound_exceeds_free_space(dir.path(), 1024), None);
    }
}
