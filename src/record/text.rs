//! A record's text: UTF-8 held in [`Bytes`], packed into shared chunks.
//!
//! Every text column of [`AuditRecord`] is `Bytes`, not `String` (the proto declares them
//! `bytes`: the same wire encoding, so spools written before read unchanged). Two reasons,
//! both measured in issue 11's profile of the collector under load:
//! - **Allocation.** A `String` per column was ~40 `malloc`s per record on the stream's task and
//!   ~40 `free`s on the sink's thread (glibc's slowest case: the chunk goes back to another
//!   thread's arena). [`copy`] appends the text to this thread's current chunk instead, and a
//!   record's columns are slices of it: one allocation per chunk, a reference count per column.
//!   Values that are the same for every record (the closed value sets of [`super::values`], a
//!   stream's node id) are `Bytes::from_static` or clones: no copy at all.
//! - **Locality.** The sinks read records long after the join wrote them, on another core. The
//!   columns of consecutive records now sit side by side in memory instead of across the heap.
//!
//! Invariant: every text value is valid UTF-8. The join only ever stores `&str` (through
//! [`copy`] or static values), and spool frames read back from disk are checked with
//! [`is_utf8`] when decoded (a frame that fails is damage). Readers use [`as_str`], which still
//! checks (cheap on short ASCII) and reads anything that is not UTF-8 as U+FFFD rather than
//! trusting the invariant with `unsafe`.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use super::{AuditRecord, Getter, COLUMNS};

/// Bytes per chunk: about a dozen records' text. A chunk is freed once the last record sharing
/// it is dropped, so a bigger one pins more memory behind one slow record; smaller ones allocate
/// more often.
const CHUNK: usize = 32 << 10;

thread_local! {
    static CHUNK_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Copies `s` into this thread's current chunk and returns its slice.
pub fn copy(s: &str) -> Bytes {
    concat(&[s])
}

/// The concatenation of `parts`, copied into this thread's current chunk as one value.
pub fn concat(parts: &[&str]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len == 0 {
        return Bytes::new();
    }
    CHUNK_BUF.with_borrow_mut(|buf| {
        if buf.capacity() - buf.len() < len {
            // Start a fresh chunk; the old one lives on in the slices already handed out.
            *buf = BytesMut::with_capacity(CHUNK.max(len));
        }
        parts
            .iter()
            .for_each(|p| buf.extend_from_slice(p.as_bytes()));
        buf.split().freeze()
    })
}

/// `s` in an allocation of its own, for values kept long after the records that use them (a
/// token cache's columns): a slice of a shared chunk would pin the whole chunk that long.
pub fn owned(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// [`copy`] for an optional value.
pub fn copy_opt(s: Option<&str>) -> Option<Bytes> {
    s.map(copy)
}

/// A static value (the closed value sets, fixed strings): no copy.
pub fn fixed(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// A text value as `&str`. Text that is not UTF-8 (impossible by the invariant above) reads as
/// U+FFFD, never as something else.
pub fn as_str(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("\u{FFFD}")
}

/// `&str` views of text fields.
pub trait TextExt {
    /// The value as `&str` (see [`as_str`]).
    fn text(&self) -> Option<&str>;
}

impl TextExt for Option<Bytes> {
    fn text(&self) -> Option<&str> {
        self.as_deref().map(as_str)
    }
}

/// The `&str` view of a present text value.
pub trait AsText {
    /// The value as `&str` (see [`as_str`]).
    fn as_text(&self) -> &str;
}

impl AsText for Bytes {
    fn as_text(&self) -> &str {
        as_str(self)
    }
}

/// True when every text value of `r` is UTF-8 (checked on records decoded from disk).
pub fn is_utf8(r: &AuditRecord) -> bool {
    let ok = |b: &[u8]| std::str::from_utf8(b).is_ok();
    COLUMNS.iter().all(|c| match c.get {
        Getter::Text(get) => get(r).is_none_or(ok),
        Getter::TextArray(get) => get(r).is_none_or(|v| v.iter().all(|s| ok(s))),
        Getter::NullableTextArray(get) => {
            get(r).is_none_or(|v| v.iter().all(|s| s.value.as_deref().is_none_or(ok)))
        }
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_one_chunk_and_outlive_it() {
        let a = copy("GET");
        let b = copy("/api/v1/items");
        assert_eq!(&a[..], b"GET");
        assert_eq!(&b[..], b"/api/v1/items");
        // Side by side in one allocation.
        assert_eq!(a.as_ptr() as usize + a.len(), b.as_ptr() as usize);
        // A value bigger than a chunk gets its own, and the earlier slices stay intact.
        let big = "x".repeat(CHUNK + 1);
        let c = copy(&big);
        assert_eq!(c.len(), CHUNK + 1);
        assert_eq!(&a[..], b"GET");
        assert_eq!(copy(""), Bytes::new());
    }

    #[test]
    fn reads_utf8_and_marks_anything_else() {
        assert_eq!(as_str("naïve".as_bytes()), "naïve");
        assert_eq!(as_str(&[0xff, 0xfe]), "\u{FFFD}");
        let mut r = AuditRecord {
            method: Some(copy("GET")),
            ..Default::default()
        };
        assert!(is_utf8(&r));
        r.path = Some(Bytes::from_static(&[b'/', 0xc3]));
        assert!(!is_utf8(&r));
        r.path = None;
        r.groups = Some(super::super::StringList {
            values: vec![Bytes::from_static(&[0x80])],
        });
        assert!(!is_utf8(&r));
    }
}
