//! The spool's files: segments, cursors, the lock; and recovery at start-up.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::damage::{self, Damage, Found, Piece};
use super::frame::{self, HEADER_LEN, MAGIC};
use super::{SpoolConfig, SpoolError};
use crate::store::metrics::{SinkId, StoreMetrics};

pub(super) fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("seg-{start:020}.log"))
}

pub(super) fn cursor_path(dir: &Path, sink: SinkId) -> PathBuf {
    dir.join(format!("cursor-{}", sink.name()))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// What start-up found.
pub(super) struct Recovered {
    pub segments: Vec<u64>,
    /// The last segment, open for appending at its valid end.
    pub active: File,
    pub end: u64,
    /// Per `cfg.sinks`, clamped into the log.
    pub cursors: Vec<u64>,
    pub lock: File,
}

pub(super) fn recover(cfg: &SpoolConfig, metrics: &StoreMetrics) -> Result<Recovered, SpoolError> {
    let dir = &cfg.dir;
    let dir_err = |source| SpoolError::Dir {
        path: dir.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(dir_err)?;
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(dir_err)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked { path: dir.clone() }),
        Err(fs::TryLockError::Error(e)) => return Err(SpoolError::io(lock_path)(e)),
    }

    let mut segments = Vec::new();
    for e in fs::read_dir(dir).map_err(dir_err)? {
        let e = e.map_err(dir_err)?;
        if let Some(start) = e.file_name().to_str().and_then(parse_segment_name) {
            segments.push(start);
        }
    }
    segments.sort_unstable();

    let mut saved = Vec::with_capacity(cfg.sinks.len());
    for sink in &cfg.sinks {
        saved.push(read_cursor(&cursor_path(dir, *sink))?);
    }
    for id in SinkId::ALL {
        if !cfg.sinks.contains(&id) && cursor_path(dir, id).exists() {
            warn!(
                sink = id.name(),
                "the spool has a cursor for a sink that is not configured now; spooled records it had not taken will not be kept for it"
            );
        }
    }

    let (active, end) = match segments.last().copied() {
        Some(last) => {
            let (file, valid) = repair_tail(dir, last, metrics)?;
            (file, last + valid)
        }
        None => {
            // A fresh spool starts where the cursors are, so LSNs never go backwards.
            let start = saved.iter().flatten().copied().max().unwrap_or(0);
            let file = create_segment(dir, start)?;
            segments.push(start);
            (file, start)
        }
    };
    let oldest = segments[0];
    let cursors = cfg
        .sinks
        .iter()
        .zip(saved)
        .map(|(sink, saved)| match saved {
            // A sink new to this spool gets everything still spooled.
            None => oldest,
            Some(at) if at > end => {
                // The log lost its unsynced tail (power loss) after the sink had taken it.
                // New records will be written from `end`; the sink must not skip them.
                warn!(
                    sink = sink.name(),
                    cursor = at,
                    end,
                    "spool cursor was past the recovered end; rewinding it"
                );
                end
            }
            Some(at) if at < oldest => {
                warn!(
                    sink = sink.name(),
                    cursor = at,
                    oldest,
                    "spooled records for this sink were deleted while it was not configured"
                );
                oldest
            }
            Some(at) => at,
        })
        .collect();
    Ok(Recovered {
        segments,
        active,
        end,
        cursors,
        lock,
    })
}

/// Creates a segment (header written and fsynced, directory entry fsynced).
pub(super) fn create_segment(dir: &Path, start: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, start);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(&path)
        .map_err(SpoolError::io(&path))?;
    f.write_all(MAGIC).map_err(SpoolError::io(&path))?;
    f.sync_all().map_err(SpoolError::io(&path))?;
    sync_dir(dir)?;
    Ok(f)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SpoolError::io(dir))
}

/// Finds the valid end of the last segment. Damaged bytes followed by valid frames are left in
/// place (the sinks' readers skip and report them, `damage.rs`); only damage with nothing valid
/// after it (a torn tail) is cut, after being copied aside and reported. Returns the file
/// positioned at its end and the valid length in LSN bytes (header excluded).
fn repair_tail(dir: &Path, start: u64, metrics: &StoreMetrics) -> Result<(File, u64), SpoolError> {
    let path = segment_path(dir, start);
    let io = || SpoolError::io(&path);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io())?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io())?;
    if buf.len() < HEADER_LEN {
        // Created but its header never reached the disk: an empty segment.
        f.set_len(0).map_err(io())?;
        f.seek(SeekFrom::Start(0)).map_err(io())?;
        f.write_all(MAGIC).map_err(io())?;
        f.sync_all().map_err(io())?;
        return Ok((f, 0));
    }
    if &buf[..HEADER_LEN] != MAGIC {
        return Err(SpoolError::Foreign { path });
    }
    let body = &buf[HEADER_LEN..];
    let mut valid = 0;
    for piece in damage::pieces(body) {
        match piece {
            Piece::Frame { at, len, .. } => valid = at + len,
            Piece::Damage {
                at,
                end,
                resumes: true,
            } => {
                info!(
                    path = %path.display(),
                    lsn_start = start + at as u64,
                    lsn_end = start + end as u64,
                    "damaged spool bytes followed by valid frames: kept; a sink that still has to read them skips them and reports what it lost"
                );
            }
            Piece::Damage {
                at,
                end,
                resumes: false,
            } => {
                damage::report(
                    dir,
                    &Damage {
                        segment_path: &path,
                        start: start + at as u64,
                        end: start + end as u64,
                        bytes: &body[at..end],
                        found: Found::TailCut {
                            torn: damage::looks_torn(&body[at..end]),
                        },
                    },
                    metrics,
                );
                f.set_len((HEADER_LEN + at) as u64).map_err(io())?;
                f.sync_all().map_err(io())?;
                valid = at;
            }
        }
    }
    f.seek(SeekFrom::Start((HEADER_LEN + valid) as u64))
        .map_err(io())?;
    Ok((f, valid as u64))
}

fn read_cursor(path: &Path) -> Result<Option<u64>, SpoolError> {
    match fs::read_to_string(path) {
        Ok(s) => match s.trim().parse() {
            Ok(v) => Ok(Some(v)),
            Err(_) => {
                // Written by rename, so never half-written; a bad one was edited by hand.
                warn!(path = %path.display(), "unreadable spool cursor; replaying the whole spool to this sink");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::io(path)(e)),
    }
}

/// Atomically replaces the cursor file: write a temporary file, fsync, rename, fsync the dir.
pub(super) fn write_cursor(path: &Path, at: u64) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(SpoolError::io(&tmp))?;
    f.write_all(format!("{at}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(SpoolError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(SpoolError::io(path))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Every record in the spool's segment files, oldest first, skipping damaged ranges (and any
/// valid frame whose payload does not decode). Read-only and lock-free: for tests and for
/// inspecting a stopped collector's spool.
pub fn read_spooled(dir: &Path) -> Result<Vec<crate::record::AuditRecord>, SpoolError> {
    let mut starts = Vec::new();
    for e in fs::read_dir(dir).map_err(SpoolError::io(dir))? {
        let e = e.map_err(SpoolError::io(dir))?;
        if let Some(start) = e.file_name().to_str().and_then(parse_segment_name) {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    let mut out = Vec::new();
    for start in starts {
        let path = segment_path(dir, start);
        let buf = fs::read(&path).map_err(SpoolError::io(&path))?;
        if buf.len() < HEADER_LEN || &buf[..HEADER_LEN] != MAGIC {
            continue;
        }
        for piece in damage::pieces(&buf[HEADER_LEN..]) {
            if let Piece::Frame { payload, .. } = piece {
                if let Ok(recs) = frame::decode(bytes::Bytes::copy_from_slice(payload)) {
                    out.extend(recs);
                }
            }
        }
    }
    Ok(out)
}
