//! PostgreSQL's binary COPY format, written from [`COLUMNS`]: the one place that maps column
//! types to wire values, so a column added to the contract is copied with no change here.
//!
//! Format (PostgreSQL docs, "COPY ... Binary Format"): a signature and two zero words, then per
//! row an i16 field count and per field an i32 length (-1 for NULL) and the value in the type's
//! binary send format; an i16 -1 ends the data. Values: text = UTF-8 bytes; int4/int8/float8 =
//! big-endian; bool = one byte; timestamptz = i64 microseconds since 2000-01-01 UTC; text[] =
//! ndim, has-null flag, element type oid, per dimension (length, lower bound 1), then elements
//! as length-prefixed values.

use std::sync::OnceLock;

use crate::record::{AuditRecord, Getter, COLUMNS};
use crate::store::digest::canonical::push_stored_text;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const TEXT_OID: u32 = 25;

/// `rec_id, start_time, ...`: the contract's column list, in COLUMNS order.
pub fn column_list() -> &'static str {
    static LIST: OnceLock<String> = OnceLock::new();
    LIST.get_or_init(|| {
        COLUMNS
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Starts a COPY stream.
pub fn header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(SIGNATURE);
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
}

/// Ends a COPY stream.
pub fn trailer(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(-1i16).to_be_bytes());
}

/// Appends one record as one row.
pub fn row(buf: &mut Vec<u8>, r: &AuditRecord) {
    buf.extend_from_slice(&(COLUMNS.len() as i16).to_be_bytes());
    for c in COLUMNS {
        match c.get {
            Getter::Text(get) => text_field(buf, get(r)),
            Getter::Int(get) => fixed(buf, get(r).map(i32::to_be_bytes)),
            Getter::BigInt(get) => fixed(buf, get(r).map(i64::to_be_bytes)),
            Getter::Float8(get) => fixed(buf, get(r).map(|v| v.to_bits().to_be_bytes())),
            Getter::Bool(get) => fixed(buf, get(r).map(|v| [u8::from(v)])),
            Getter::Timestamptz(get) => fixed(
                buf,
                get(r).map(|us| us.saturating_sub(PG_EPOCH_MICROS).to_be_bytes()),
            ),
            Getter::TextArray(get) => match get(r) {
                None => null(buf),
                Some(vals) => text_array(buf, vals.iter().map(|s| Some(&s[..])), false),
            },
            Getter::NullableTextArray(get) => match get(r) {
                None => null(buf),
                Some(vals) => {
                    let has_null = vals.iter().any(|v| v.value.is_none());
                    text_array(buf, vals.iter().map(|v| v.value.as_deref()), has_null)
                }
            },
        }
    }
}

fn null(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(-1i32).to_be_bytes());
}

fn fixed<const N: usize>(buf: &mut Vec<u8>, v: Option<[u8; N]>) {
    match v {
        None => null(buf),
        Some(bytes) => {
            buf.extend_from_slice(&(N as i32).to_be_bytes());
            buf.extend_from_slice(&bytes);
        }
    }
}

/// Text goes as its bytes: UTF-8 by `record::text`'s invariant, and Postgres checks it again
/// (a value it refused would be a poison row, not a lost batch).
fn text_field(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => null(buf),
        Some(s) => {
            let at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            // PostgreSQL text cannot hold NUL; a NUL would fail the whole batch, so it becomes
            // U+FFFD (Parquet keeps it as sent).
            push_stored_text(buf, s);
            patch_len(buf, at);
        }
    }
}

fn patch_len(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at - 4) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn text_array<'a>(
    buf: &mut Vec<u8>,
    vals: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    has_null: bool,
) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let n = vals.len();
    // An empty array has no dimensions.
    buf.extend_from_slice(&i32::from(n > 0).to_be_bytes());
    buf.extend_from_slice(&i32::from(has_null).to_be_bytes());
    buf.extend_from_slice(&TEXT_OID.to_be_bytes());
    if n > 0 {
        buf.extend_from_slice(&(n as i32).to_be_bytes());
        buf.extend_from_slice(&1i32.to_be_bytes());
    }
    for v in vals {
        text_field(buf, v);
    }
    patch_len(buf, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{string_list, NullableString, NullableStringList};

    #[test]
    fn empty_stream_is_header_and_trailer() {
        let mut b = Vec::new();
        header(&mut b);
        trailer(&mut b);
        assert_eq!(b, b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\xff\xff");
    }

    #[test]
    fn values_use_the_binary_send_formats() {
        let mut b = Vec::new();
        text_field(&mut b, Some(b"ab"));
        assert_eq!(b, [0, 0, 0, 2, b'a', b'b']);
        b.clear();
        text_field(&mut b, Some(b"a\0\0a"));
        assert_eq!(
            b,
            [0, 0, 0, 8, b'a', 0xef, 0xbf, 0xbd, 0xef, 0xbf, 0xbd, b'a']
        );
        b.clear();
        text_field(&mut b, None);
        assert_eq!(b, [0xff; 4]);
        b.clear();
        // 2000-01-01T00:00:00.000001Z is 1 µs after PostgreSQL's epoch.
        fixed(
            &mut b,
            Some((PG_EPOCH_MICROS + 1 - PG_EPOCH_MICROS).to_be_bytes()),
        );
        assert_eq!(b, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        b.clear();
        text_array(&mut b, [Some(&b"x"[..]), None].into_iter(), true);
        #[rustfmt::skip]
        let want = [
            0, 0, 0, 29, // field length
            0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 25, // ndim, has null, text oid
            0, 0, 0, 2, 0, 0, 0, 1, // 2 elements from index 1
            0, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(b, want);
        b.clear();
        text_array(&mut b, std::iter::empty(), false);
        assert_eq!(b, [0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25]);
    }

    #[test]
    fn a_row_has_every_column() {
        let r = AuditRecord {
            record_id: "id".into(),
            groups: Some(string_list(["g"])),
            group_names: Some(NullableStringList {
                values: vec![NullableString { value: None }],
            }),
            ..Default::default()
        };
        let mut b = Vec::new();
        row(&mut b, &r);
        assert_eq!(i16::from_be_bytes([b[0], b[1]]) as usize, COLUMNS.len());
        assert_eq!(column_list().split(", ").count(), COLUMNS.len());
    }
}
