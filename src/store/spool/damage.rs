//! Damaged spool bytes: where valid frames resume after them, and the one report of what was
//! lost. Start-up recovery (`files.rs`), the sinks' disk reads (`reader.rs`) and
//! [`super::read_spooled`] all go through here, so they agree on what is damaged.
//!
//! Only the framing is used to find frames again (length + CRC-32C, `frame::peek`), never the
//! payload's encoding: after a damaged range, the scan moves one byte at a time until a length
//! that fits and a checksum that matches. A false match needs a 32-bit checksum to collide at an
//! offset whose length field also fits, which is what the checksum already relies on.
//!
//! A damaged range is reported once: its bytes are copied to `SPOOL_DIR/damaged/` under a name
//! made of its LSN range and a hash of its bytes (created exclusively); whoever creates that
//! copy logs the one error and counts it; anyone who finds it already there (another sink, the
//! next start) does not. A torn tail (damage with no valid frame after it, in the last segment)
//! is cut at start-up; damage followed by valid frames is never cut, only skipped.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use tracing::info;

use super::frame::{self, Peek, HEADER_LEN};
use crate::store::metrics::StoreMetrics;

/// Under the spool dir: copies of damaged ranges, for inspection. Never deleted by meshaudit.
pub const DAMAGED_DIR: &str = "damaged";

/// The first offset after `from` (exclusive) in `buf` where a whole, checksum-valid frame
/// starts; `None` when no valid frame follows (the damage runs to the end).
///
/// Each offset whose length field fits is a candidate whose checksum must be computed over up to
/// the rest of `buf`; done naively, random garbage of R bytes would cost about R³/2³³ bytes of
/// CRC (hours for a 64 MiB segment). [`Crcs`] computes a candidate's checksum in time
/// independent of its length, so a scan costs about one CRC pass plus 1 KiB per candidate.
/// A candidate is accepted only once `frame::peek` agrees.
pub(super) fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let last = buf.len().checked_sub(HEADER_LEN)?;
    let mut crcs = Crcs::new(buf);
    ((from + 1)..=last).find(|&at| {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len == 0 || len > frame::MAX_PAYLOAD || len > buf.len() - at - HEADER_LEN {
            return false;
        }
        let want = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        crcs.frame(at, len) == want && matches!(frame::peek(&buf[at..]), Peek::Frame { .. })
    })
}

/// CRC-32C of any frame of a buffer in about constant time: prefix checksums every [`CHUNK`]
/// bytes (built lazily, as far as a candidate reaches) joined by the CRC combination of zlib's
/// `crc32_combine`, which holds for a CRC whose init equals its final xor, as CRC-32C's do:
/// `crc(A‖B) = crc(A)·x^(8|B|) mod P ⊕ crc(B)`. The powers of x are tabled, so a candidate
/// costs two CRCs of under [`CHUNK`] bytes and three multiplications.
struct Crcs<'a> {
    buf: &'a [u8],
    /// `prefix[j]` = CRC of `buf[..j * CHUNK]`.
    prefix: Vec<u32>,
    running: crc::Digest<'static, u32, crc::Table<16>>,
    /// `x^(8n) mod P` for `n < CHUNK`.
    bytes_pow: Vec<u32>,
    /// `x^(8·CHUNK·m) mod P` for `m < LO`, and for `m = LO·k`, `k < HI`: chunk counts up to
    /// `LO·HI·CHUNK` bytes (512 MiB, above `frame::MAX_PAYLOAD`).
    chunks_lo: Vec<u32>,
    chunks_hi: Vec<u32>,
}

const CHUNK: usize = 512;
const LO: usize = 512;
const HI: usize = 2048;
// The tables reach past the longest frame.
const _: () = assert!(LO * HI * CHUNK > frame::MAX_PAYLOAD);
/// CRC-32C's polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;
/// `x^0`, bit-reflected.
const ONE: u32 = 1 << 31;

/// `a·b mod P`, bit-reflected (zlib's `multmodp`).
fn multmodp(a: u32, mut b: u32) -> u32 {
    if a == 0 {
        return 0;
    }
    let mut m = ONE;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `[1, step, step², …]`, `n` of them.
fn powers(step: u32, n: usize) -> Vec<u32> {
    let mut v = Vec::with_capacity(n);
    let mut p = ONE;
    for _ in 0..n {
        v.push(p);
        p = multmodp(step, p);
    }
    v
}

impl<'a> Crcs<'a> {
    fn new(buf: &'a [u8]) -> Self {
        let x8 = (0..3).fold(1u32 << 30, |x, _| multmodp(x, x)); // x^1 squared thrice: x^8
        let bytes_pow = powers(x8, CHUNK + 1);
        let chunks_lo = powers(bytes_pow[CHUNK], LO + 1);
        let chunks_hi = powers(chunks_lo[LO], HI);
        Crcs {
            buf,
            prefix: vec![0],
            running: frame::CRC.digest(),
            bytes_pow,
            chunks_lo,
            chunks_hi,
        }
    }

    /// `x^(8·CHUNK·m) mod P`.
    fn chunks_pow(&self, m: usize) -> u32 {
        multmodp(self.chunks_lo[m % LO], self.chunks_hi[m / LO])
    }

    /// The checksum a frame of payload length `len` at `at` must carry: over its length field
    /// and its payload.
    fn frame(&mut self, at: usize, len: usize) -> u32 {
        let (p, q) = (at + HEADER_LEN, at + HEADER_LEN + len);
        let mut d = frame::CRC.digest();
        d.update(&self.buf[at..at + 4]);
        if len <= 2 * CHUNK {
            d.update(&self.buf[p..q]);
            return d.finalize();
        }
        let (pc, qc) = (p.div_ceil(CHUNK), q / CHUNK);
        while self.prefix.len() <= qc {
            let j = self.prefix.len() - 1;
            self.running.update(&self.buf[j * CHUNK..(j + 1) * CHUNK]);
            self.prefix.push(self.running.clone().finalize());
        }
        // Length field and the bytes up to the first whole chunk, directly.
        d.update(&self.buf[p..pc * CHUNK]);
        let head = d.finalize();
        // Then the whole chunks, from the prefixes: crc(head‖mid) = (head ⊕ prefix[pc])·x^|mid|
        // ⊕ prefix[qc].
        let mid = multmodp(self.chunks_pow(qc - pc), head ^ self.prefix[pc]) ^ self.prefix[qc];
        // Then the rest, directly.
        let tail = &self.buf[qc * CHUNK..q];
        multmodp(self.bytes_pow[tail.len()], mid) ^ frame::CRC.checksum(tail)
    }
}

/// What lies at each place of a segment's body (the bytes after its header).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece<'a> {
    /// A checksum-valid frame at `at`, `len` bytes with its header.
    Frame {
        at: usize,
        len: usize,
        payload: &'a [u8],
    },
    /// Bytes `at..end` hold no valid frame. `resumes`: a valid frame starts at `end`.
    Damage {
        at: usize,
        end: usize,
        resumes: bool,
    },
}

/// Walks a segment body: frames, and damaged ranges between or after them.
pub(super) fn pieces(body: &[u8]) -> impl Iterator<Item = Piece<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let piece = match frame::peek(&body[at..]) {
            Peek::End => return None,
            Peek::Frame { payload, len } => Piece::Frame { at, len, payload },
            Peek::Torn => match resync(body, at) {
                Some(end) => Piece::Damage {
                    at,
                    end,
                    resumes: true,
                },
                None => Piece::Damage {
                    at,
                    end: body.len(),
                    resumes: false,
                },
            },
        };
        at = match &piece {
            Piece::Frame { at, len, .. } => at + len,
            Piece::Damage { end, .. } => *end,
        };
        Some(piece)
    })
}

/// Records in a damaged range, if its length fields still frame it exactly and every payload
/// still decodes: an estimate, since the checksums fail.
pub(super) fn records_in(mut bytes: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !bytes.is_empty() {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len == 0 || len > bytes.len() - HEADER_LEN {
            return None;
        }
        n += frame::decode(bytes::Bytes::copy_from_slice(
            &bytes[HEADER_LEN..HEADER_LEN + len],
        ))
        .ok()?
        .len();
        bytes = &bytes[HEADER_LEN + len..];
    }
    Some(n)
}

/// How many records a damaged range held, as honestly as can be said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost(pub Option<usize>);

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(
                f,
                "{n} (estimated: read from the damaged bytes, whose checksum fails)"
            ),
            None => f.write_str("unknown (the damaged bytes no longer frame or decode)"),
        }
    }
}

/// Where a damaged range was found and what becomes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// By a sink's reader below the durable end: skipped; valid frames after it are read.
    Skipped { sink: &'static str },
    /// At start-up, at the end of the last segment with nothing valid after it: cut off.
    /// `torn`: the last frame is cut short (a crash while appending), rather than whole with a
    /// failing checksum.
    TailCut { torn: bool },
}

/// A damaged range `[start, end)` of LSNs in the segment starting at `segment`.
pub(super) struct Damage<'a> {
    pub segment_path: &'a Path,
    pub start: u64,
    pub end: u64,
    /// The bytes, as far as they could be read.
    pub bytes: &'a [u8],
    pub found: Found,
}

/// Copies the damaged bytes aside and reports them, once per range: returns false (and logs
/// nothing above info) when this range was already reported, by another sink or an earlier run.
pub(super) fn report(spool_dir: &Path, d: &Damage<'_>, metrics: &StoreMetrics) -> bool {
    let dir = spool_dir.join(DAMAGED_DIR);
    let hash = blake3::hash(d.bytes);
    let name = format!(
        "lsn-{:020}-{:020}-{}.bin",
        d.start,
        d.end,
        &hash.to_hex()[..16]
    );
    let copy = dir.join(name);
    let saved: Result<PathBuf, std::io::Error> = fs::create_dir_all(&dir)
        .and_then(|()| OpenOptions::new().write(true).create_new(true).open(&copy))
        .and_then(|mut f| f.write_all(d.bytes).and_then(|()| f.sync_all()))
        .map(|()| copy.clone());
    let saved = match saved {
        Ok(p) => p.display().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            info!(
                path = %d.segment_path.display(),
                lsn_start = d.start,
                lsn_end = d.end,
                copy = %copy.display(),
                "skipping damaged spool bytes already reported"
            );
            return false;
        }
        Err(e) => format!("not saved ({e}); the bytes are still in the segment unless cut"),
    };
    let bytes = d.end - d.start;
    let lost = Lost(records_in(d.bytes));
    metrics.spool_corrupt_frames.fetch_add(1, Relaxed);
    metrics.spool_damaged_bytes.fetch_add(bytes, Relaxed);
    let found_by = match d.found {
        Found::Skipped { sink } => sink,
        Found::TailCut { .. } => "start-up",
    };
    // One event per range, its fields the same whatever the level.
    macro_rules! event {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                found_by,
                path = %d.segment_path.display(),
                lsn_start = d.start,
                lsn_end = d.end,
                bytes,
                records_lost = %lost,
                copy = %saved,
                $message
            )
        };
    }
    match d.found {
        Found::Skipped { .. } => event!(
            error,
            "damaged spool bytes below the durable end (disk corruption?): the records in this LSN range are lost; valid frames after it are still delivered"
        ),
        Found::TailCut { torn: true } => event!(
            warn,
            "the spool ends in a torn write (a crash while appending): cutting it off. With --spool-fsync always such a frame was never acknowledged; with interval it may have been accepted within the last fsync interval (a power loss)"
        ),
        Found::TailCut { torn: false } => event!(
            error,
            "the spool's last frames are damaged (disk corruption?) with nothing valid after them: cutting them off; the records in this LSN range are lost"
        ),
    }
    if let Found::TailCut { .. } = d.found {
        metrics.spool_truncated_bytes.fetch_add(bytes, Relaxed);
    }
    true
}

/// True when the damage at the end of a segment body looks like a write cut short by a crash:
/// its length runs past the end, or it is zeros (what a file system may leave).
pub(super) fn looks_torn(tail: &[u8]) -> bool {
    if tail.len() < HEADER_LEN || tail.iter().all(|b| *b == 0) {
        return true;
    }
    let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    len > tail.len() - HEADER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::AuditRecord;

    fn frame_of(n: usize, tag: &str) -> Vec<u8> {
        let recs: Vec<AuditRecord> = (0..n)
            .map(|i| AuditRecord {
                record_id: bytes::Bytes::from(format!("{tag}-{i}")),
                received_at: i as i64,
                ..Default::default()
            })
            .collect();
        frame::encode(&recs)
    }

    /// Frame offsets and damaged ranges of a body.
    fn walk(body: &[u8]) -> Vec<(usize, usize, bool)> {
        pieces(body)
            .map(|p| match p {
                Piece::Frame { at, len, .. } => (at, at + len, true),
                Piece::Damage { at, end, .. } => (at, end, false),
            })
            .collect()
    }

    #[test]
    fn a_flipped_bit_loses_only_its_frame_wherever_it_is() {
        let frames: Vec<Vec<u8>> = (0..5).map(|i| frame_of(10, &format!("f{i}"))).collect();
        let body: Vec<u8> = frames.concat();
        let bounds: Vec<(usize, usize)> = frames
            .iter()
            .scan(0, |at, f| {
                let b = (*at, *at + f.len());
                *at += f.len();
                Some(b)
            })
            .collect();
        for victim in 0..5 {
            for spot in [0, 3, 5, 8, 20, frames[victim].len() - 1] {
                let mut b = body.clone();
                b[bounds[victim].0 + spot] ^= 0x10;
                let got = walk(&b);
                let want: Vec<(usize, usize, bool)> = bounds
                    .iter()
                    .enumerate()
                    .map(|(i, &(s, e))| (s, e, i != victim))
                    .collect();
                assert_eq!(got, want, "frame {victim}, byte {spot}");
                // The damaged frame's records are still counted (its length field is intact
                // unless the flip hit it).
                let (s, e) = bounds[victim];
                if (4..HEADER_LEN).contains(&spot) {
                    assert_eq!(
                        records_in(&b[s..e]),
                        Some(10),
                        "frame {victim}, byte {spot}"
                    );
                }
            }
        }
    }

    #[test]
    fn damage_over_several_frames_resumes_at_the_next_whole_one() {
        let frames: Vec<Vec<u8>> = (0..4).map(|i| frame_of(3, &format!("g{i}"))).collect();
        let mut body: Vec<u8> = frames.concat();
        let (a, b) = (frames[0].len(), frames[0].len() + frames[1].len());
        // Zero a range from inside frame 1 to inside frame 2.
        for x in &mut body[a + 10..b + 10] {
            *x = 0;
        }
        let got = walk(&body);
        assert_eq!(got[0], (0, a, true));
        assert_eq!(got[1], (a, b + frames[2].len(), false));
        assert_eq!(got[2], (b + frames[2].len(), body.len(), true));
        assert_eq!(got.len(), 3);
        assert_eq!(records_in(&body[a..b + frames[2].len()]), None);
        assert_eq!(
            Lost(None).to_string(),
            "unknown (the damaged bytes no longer frame or decode)"
        );
    }

    #[test]
    fn a_tail_with_nothing_valid_after_it_is_torn_or_damaged() {
        let f0 = frame_of(2, "t0");
        let f1 = frame_of(2, "t1");
        // Cut short: torn.
        let mut body = [f0.clone(), f1[..f1.len() - 3].to_vec()].concat();
        assert_eq!(
            walk(&body),
            [(0, f0.len(), true), (f0.len(), body.len(), false)]
        );
        assert!(looks_torn(&body[f0.len()..]));
        // Zeros after a crash: torn.
        body = [f0.clone(), vec![0; 100]].concat();
        assert!(looks_torn(&body[f0.len()..]));
        // Whole, with a bad checksum: damaged, not torn.
        let mut bad = f1.clone();
        bad[12] ^= 1;
        body = [f0.clone(), bad].concat();
        assert_eq!(
            walk(&body),
            [(0, f0.len(), true), (f0.len(), body.len(), false)]
        );
        assert!(!looks_torn(&body[f0.len()..]));
        assert!(matches!(
            pieces(&body).last(),
            Some(Piece::Damage { resumes: false, .. })
        ));
    }

    #[test]
    fn the_combined_crc_of_any_frame_is_the_crc_of_its_bytes() {
        // A deterministic pseudo-random buffer (xorshift).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let buf: Vec<u8> = (0..(600 << 10))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let direct = |at: usize, len: usize| {
            let mut d = frame::CRC.digest();
            d.update(&buf[at..at + 4]);
            d.update(&buf[at + HEADER_LEN..at + HEADER_LEN + len]);
            d.finalize()
        };
        let mut c = Crcs::new(&buf);
        for (at, len) in [
            (0, 1),
            (3, 1024),
            (0, 1025),
            (504, 1024 + 512),
            (505, 4096),
            (100, 100_000),
            (7, buf.len() - 7 - HEADER_LEN),
            (20_000, 3 * CHUNK + 5),
            (0, (LO + 3) * CHUNK + 17),
            (1, 2 * LO * CHUNK + 1),
        ] {
            assert_eq!(c.frame(at, len), direct(at, len), "{at}+{len}");
        }
        let f = frame_of(500, "big");
        assert!(f.len() > 4 * CHUNK);
        let mut c = Crcs::new(&f);
        assert_eq!(
            c.frame(0, f.len() - HEADER_LEN),
            u32::from_le_bytes([f[4], f[5], f[6], f[7]])
        );
    }

    #[test]
    fn megabytes_of_random_garbage_are_crossed_to_the_next_frame() {
        let good = frame_of(50, "after");
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut body: Vec<u8> = (0..(8 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let garbage = body.len();
        body.extend_from_slice(&good);
        assert_eq!(resync(&body, 0), Some(garbage));
        assert_eq!(
            walk(&body),
            [(0, garbage, false), (garbage, body.len(), true)]
        );
    }

    #[test]
    fn a_range_is_reported_once_and_kept_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StoreMetrics::default();
        let mut bytes = frame_of(4, "r");
        bytes[9] ^= 1;
        let d = Damage {
            segment_path: Path::new("seg"),
            start: 100,
            end: 100 + bytes.len() as u64,
            bytes: &bytes,
            found: Found::Skipped { sink: "parquet" },
        };
        assert!(report(dir.path(), &d, &metrics));
        assert!(!report(dir.path(), &d, &metrics), "a second sink");
        assert_eq!(metrics.spool_corrupt_frames.load(Relaxed), 1);
        assert_eq!(
            metrics.spool_damaged_bytes.load(Relaxed),
            bytes.len() as u64
        );
        let copies: Vec<_> = fs::read_dir(dir.path().join(DAMAGED_DIR))
            .expect("damaged dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(fs::read(&copies[0]).expect("copy"), bytes);
        let name = copies[0]
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            name.starts_with(&format!("lsn-{:020}-{:020}-", 100, 100 + bytes.len())),
            "{name}"
        );
    }
}
