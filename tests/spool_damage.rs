//! Spool damage against the real binary (issue 15, item 2): one flipped bit in a middle frame
//! loses that frame's records only. 10 messages of 100 records are accepted, the collector is
//! SIGKILLed (the records are only in the spool), one bit of frame 2's payload is flipped, and
//! the restarted collector must deliver the other 900 records to Parquet, log one error naming
//! the lost LSN range and count it.

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
    seg[f2 + 8 + f2_len / 2] ^= 0x01;
    fs::write(&segs[0], &seg).expect("flip one bit");
    let seg_start: u64 = segs[0]
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("seg-"))
        .and_then(|n| n.strip_suffix(".log"))
        .and_then(|n| n.parse().ok())
        .expect("segment name");
    let lsn_start = seg_start + (f2 - MAGIC_LEN) as u64;
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
    assert!(e.contains("records_lost=100 (estimated"), "{e}");
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
