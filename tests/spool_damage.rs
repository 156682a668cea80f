//! Spool damage against the real binary (issue 15, item 2): a flipped bit loses only the frame it
//! is in. Messages are accepted, the collector is SIGKILLed (the records are only in the spool),
//! bits are flipped, and the restarted collector must deliver every other record to Parquet, log
//! one error per damaged range naming its LSN range and the records lost, and count it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const MAGIC_LEN: usize = 8;

/// (offset, length with header) of every frame of a segment, parsed here from the documented
/// format (`len:u32le crc:u32le payload`), independently of the collector's code.
fn frames(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut at = MAGIC_LEN;
    while at + 8 <= seg.len() {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert!(len > 0 && at + 8 + len <= seg.len(), "frame at {at}");
        out.push((at, 8 + len));
        at += 8 + len;
    }
    assert_eq!(at, seg.len(), "segment ends on a frame boundary");
    out
}

/// The LSN a segment starts at, from its name.
fn seg_start(seg: &Path) -> u64 {
    seg.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("seg-"))
        .and_then(|n| n.strip_suffix(".log"))
        .and_then(|n| n.parse().ok())
        .expect("segment name")
}

/// Where to flip a bit in the payload of the frame at `at`: inside a request's authority (a text
/// value, so the damaged records still decode and their count can be estimated) when the payload
/// shows it, else the middle. True when inside the text.
fn flip_spot(seg: &[u8], at: usize, len: usize, nth: usize) -> (usize, bool) {
    let needle = b"orders.shop.svc.cluster.local";
    let payload = &seg[at + 8..at + len];
    let hits: Vec<usize> = payload
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    match hits.get(nth % hits.len().max(1)) {
        Some(i) => (at + 8 + i + 3, true),
        None => (at + 8 + (len - 8) / 2, false),
    }
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(spool)
        .expect("spool dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .collect();
    v.sort();
    v
}

fn paths(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = read_rows(dir)
        .iter()
        .map(|r| r["path"].as_str().expect("path").to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_flipped_bit_in_a_middle_frame_loses_only_that_frames_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Files stay open (records unacknowledged, only in the spool) until the SIGKILL.
    let args = ["--parquet-max-file-age-secs", "3600"];
    let c = Collector::start(dir.path(), &args);
    send(&c, vec![http_stream(0, 10, 100)]);
    assert_eq!(
        c.metric("meshaudit_spool_records_appended_total"),
        1000,
        "all accepted"
    );
    c.kill9();
    assert!(
        parquet_files(dir.path()).is_empty(),
        "nothing reached Parquet"
    );

    let spool = dir.path().join("_spool");
    let segs = segments(&spool);
    assert_eq!(segs.len(), 1, "{segs:?}");
    let mut seg = fs::read(&segs[0]).expect("segment");
    let fr = frames(&seg);
    assert_eq!(fr.len(), 10, "one frame per accepted message");
    let (f2, f2_len) = fr[1];
    let (spot, in_text) = flip_spot(&seg, f2, f2_len, 40);
    seg[spot] ^= 0x20;
    fs::write(&segs[0], &seg).expect("flip one bit");
    let lsn_start = seg_start(&segs[0]) + (f2 - MAGIC_LEN) as u64;
    let lsn_end = lsn_start + f2_len as u64;

    let c = Collector::start(dir.path(), &args);
    wait_until(
        "the damage is counted",
        std::time::Duration::from_secs(30),
        || c.metric("meshaudit_spool_corrupt_frames_total") == 1,
    );
    assert_eq!(
        c.metric("meshaudit_spool_damaged_bytes_total"),
        f2_len as u64
    );
    assert_eq!(c.metric("meshaudit_spool_truncated_bytes_total"), 0);
    // The segment still holds valid frames after the damage: it was not cut.
    assert_eq!(
        fs::metadata(&segs[0]).expect("segment").len(),
        seg.len() as u64
    );
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");

    // Exactly the other 900 records, each once.
    let mut want: Vec<String> = (0..1000u32)
        .filter(|i| !(100..200).contains(i))
        .map(|i| format!("/orders/{i}"))
        .collect();
    want.sort();
    assert_eq!(paths(dir.path()), want);

    // One error, naming the range and the records lost; no false "never acknowledged".
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("damaged spool bytes below the durable end"))
        .collect();
    assert_eq!(errors.len(), 1, "{out}");
    let e = errors[0];
    assert!(e.contains("ERROR"), "{e}");
    assert!(e.contains(&format!("lsn_start={lsn_start}")), "{e}");
    assert!(e.contains(&format!("lsn_end={lsn_end}")), "{e}");
    if in_text {
        assert!(e.contains("records_lost=100 (estimated"), "{e}");
    } else {
        assert!(e.contains("records_lost="), "{e}");
    }
    assert!(!out.contains("never acknowledged as accepted"), "{out}");
    // The damaged bytes are kept aside for inspection.
    let copies: Vec<PathBuf> = fs::read_dir(spool.join("damaged"))
        .expect("damaged dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(
        fs::read(&copies[0]).expect("copy"),
        seg[f2..f2 + f2_len].to_vec()
    );
}

#[test]
fn flipped_bits_at_head_middle_and_tail_of_several_segments_lose_only_their_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--parquet-max-file-age-secs",
        "3600",
        "--spool-segment-bytes",
        "65536",
    ];
    let c = Collector::start(dir.path(), &args);
    send(&c, vec![http_stream(0, 12, 50)]);
    assert_eq!(c.metric("meshaudit_spool_records_appended_total"), 600);
    c.kill9();

    // (segment, frame offset, frame length), message k in frame k.
    let spool = dir.path().join("_spool");
    let segs = segments(&spool);
    let mut all = vec![];
    for (s, seg) in segs.iter().enumerate() {
        let bytes = fs::read(seg).expect("segment");
        all.extend(frames(&bytes).into_iter().map(|(at, len)| (s, at, len)));
    }
    assert_eq!(all.len(), 12, "one frame per message");
    let in_seg = |s: usize| -> Vec<usize> { (0..12).filter(|&k| all[k].0 == s).collect() };
    assert!(segs.len() >= 3, "{segs:?}");
    let (s0, s1, last) = (in_seg(0), in_seg(1), in_seg(segs.len() - 1));
    assert!(s1.len() >= 3 && last.len() >= 2, "{all:?}");
    let damaged = [
        *s0.last().expect("s0"), // the tail of a segment...
        s1[0],                   // ...and the head of the next: across the boundary
        s1[s1.len() / 2 + 1],    // the middle of a segment, not next to its head
        last[0],                 // the head of the last segment
        11,                      // the last frame of all: nothing valid after it, cut
    ];
    let mut estimable = vec![];
    for (i, &k) in damaged.iter().enumerate() {
        let (s, at, len) = all[k];
        let mut bytes = fs::read(&segs[s]).expect("segment");
        let (spot, in_text) = flip_spot(&bytes, at, len, 7 * i);
        bytes[spot] ^= 0x20;
        fs::write(&segs[s], bytes).expect("flip");
        estimable.push(in_text);
    }

    let c = Collector::start(dir.path(), &args);
    wait_until(
        "the damage is reported",
        std::time::Duration::from_secs(30),
        || c.metric("meshaudit_spool_corrupt_frames_total") == 5,
    );
    assert_eq!(
        c.metric("meshaudit_spool_truncated_bytes_total"),
        all[11].2 as u64
    );
    // Appends go on after the cut tail.
    send(&c, vec![http_stream(5000, 1, 10)]);
    let (status, out) = c.stop();
    assert!(status.success(), "exit {status}:\n{out}");

    let mut want: Vec<String> = (0..12u32)
        .filter(|m| !damaged.contains(&(*m as usize)))
        .flat_map(|m| (m * 50..m * 50 + 50).map(|i| format!("/orders/{i}")))
        .chain((5000..5010).map(|i| format!("/orders/{i}")))
        .collect();
    want.sort();
    assert_eq!(want.len(), 7 * 50 + 10);
    assert_eq!(paths(dir.path()), want);

    // One error per damaged range, each naming its LSN range and 50 records.
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("damaged"))
        .collect();
    assert_eq!(errors.len(), 5, "{out}");
    for (&k, &in_text) in damaged.iter().zip(&estimable) {
        let (s, at, len) = all[k];
        let start = seg_start(&segs[s]) + (at - MAGIC_LEN) as u64;
        let range = format!("lsn_start={start} lsn_end={}", start + len as u64);
        let line = errors
            .iter()
            .find(|l| l.contains(&range))
            .unwrap_or_else(|| panic!("no error names {range} (frame {k}):\n{out}"));
        if in_text {
            assert!(line.contains("records_lost=50 (estimated"), "{line}");
        }
    }
    assert_eq!(
        fs::read_dir(spool.join("damaged"))
            .expect("damaged dir")
            .count(),
        5
    );
}
