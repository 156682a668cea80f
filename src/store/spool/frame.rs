//! The on-disk frame: one accepted batch of records.
//!
//! ```text
//! segment := MAGIC frame*
//! frame   := len:u32le crc:u32le payload[len]
//! payload := (varint-length-prefixed meshaudit.v1.AuditRecord)*
//! ```
//!
//! `crc` is CRC-32C over the four length bytes and the payload, so a torn or zeroed length is
//! caught as surely as a torn payload. Records are the project's own protobuf, which is kept
//! backward compatible (proto/meshaudit/v1/audit_record.proto), so a spool written by an older
//! binary replays into a newer one.

use bytes::Bytes;
use prost::Message;

use crate::record::{text, AuditRecord};

/// First bytes of every segment file; the last byte is the format version.
pub const MAGIC: &[u8; 8] = b"MASPOOL\x01";
pub const HEADER_LEN: usize = 8;

/// No frame is larger than this: a length field above it is a torn or foreign write, not a
/// frame to allocate for. One frame holds one ALS message's records, far below this.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Slice-by-16 tables: the same CRC-32C as the byte-at-a-time default, several times faster
/// (the checksum was most of this module's cost in a profile of the collector under load).
pub(super) const CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// Encodes `records` as one complete frame (header included). Runs in the ingest task that
/// accepted the batch, so the spool writer only copies bytes.
pub fn encode(records: &[AuditRecord]) -> Vec<u8> {
    // Each record's length is computed once (encode_length_delimited would compute it again).
    let lens: Vec<usize> = records.iter().map(Message::encoded_len).collect();
    let payload_len: usize = lens
        .iter()
        .map(|n| n + prost::length_delimiter_len(*n))
        .sum();
    let mut buf = Vec::with_capacity(HEADER_LEN + payload_len);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    for (r, n) in records.iter().zip(lens) {
        prost::encoding::encode_varint(n as u64, &mut buf);
        r.encode_raw(&mut buf);
    }
    let len = (buf.len() - HEADER_LEN) as u32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&buf[..4], &buf[HEADER_LEN..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn checksum(len: &[u8], payload: &[u8]) -> u32 {
    let mut d = CRC.digest();
    d.update(len);
    d.update(payload);
    d.finalize()
}

/// What is at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek<'a> {
    /// A whole, checksum-valid frame; `len` counts its header too.
    Frame { payload: &'a [u8], len: usize },
    /// Nothing at all: a clean end.
    End,
    /// A frame that is cut short, or whose checksum fails: a torn write after a crash.
    Torn,
}

pub fn peek(buf: &[u8]) -> Peek<'_> {
    if buf.is_empty() {
        return Peek::End;
    }
    if buf.len() < HEADER_LEN {
        return Peek::Torn;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len == 0 || len > MAX_PAYLOAD || buf.len() - HEADER_LEN < len {
        return Peek::Torn;
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    if checksum(&buf[..4], payload) != crc {
        return Peek::Torn;
    }
    Peek::Frame {
        payload,
        len: HEADER_LEN + len,
    }
}

/// Why a checksum-valid payload is not records.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("spool frame does not decode: {0}")]
    Proto(#[from] prost::DecodeError),
    #[error("spool frame holds record text that is not UTF-8")]
    Text,
}

/// Decodes a checksum-valid payload into its records. Their text is sliced from `payload`, not
/// copied (so the records keep the frame's buffer alive, and nothing else), and checked to be
/// UTF-8 (`record::text`'s invariant): a frame that is not is refused like one that does not
/// decode.
pub fn decode(mut payload: Bytes) -> Result<Vec<AuditRecord>, DecodeError> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        let rec = AuditRecord::decode_length_delimited(&mut payload)?;
        if !text::is_utf8(&rec) {
            return Err(DecodeError::Text);
        }
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::string_list;

    fn rec(id: &str) -> AuditRecord {
        AuditRecord {
            record_id: crate::record::text::copy(id),
            start_time: Some(1),
            received_at: 2,
            response_flags: Some(string_list(["UH"])),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips() {
        let recs = vec![rec("a"), rec("b")];
        let f = encode(&recs);
        match peek(&f) {
            Peek::Frame { payload, len } => {
                assert_eq!(len, f.len());
                assert_eq!(
                    decode(bytes::Bytes::copy_from_slice(payload)).expect("decodes"),
                    recs
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Records decoded from disk slice the frame's buffer, and text that is not UTF-8 (which
    /// only a forged frame with a valid checksum could hold) is refused, not read.
    #[test]
    fn decoded_text_is_sliced_from_the_frame_and_must_be_utf8() {
        let f = encode(&[rec("a")]);
        let Peek::Frame { payload, .. } = peek(&f) else {
            panic!("a frame");
        };
        let payload = Bytes::copy_from_slice(payload);
        let recs = decode(payload.clone()).expect("decodes");
        let id = &recs[0].record_id;
        let within = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        assert!(
            within.contains(&(id.as_ptr() as usize)),
            "copied, not sliced"
        );

        let bad = AuditRecord {
            path: Some(Bytes::from_static(b"/caf\xe9")),
            ..rec("b")
        };
        let f = encode(&[bad]);
        let Peek::Frame { payload, .. } = peek(&f) else {
            panic!("a frame");
        };
        assert!(matches!(
            decode(Bytes::copy_from_slice(payload)),
            Err(DecodeError::Text)
        ));
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_torn_never_misread() {
        let f = encode(&[rec("a"), rec("b")]);
        assert_eq!(peek(&[]), Peek::End);
        for cut in 1..f.len() {
            assert_eq!(peek(&f[..cut]), Peek::Torn, "cut at {cut}");
        }
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x40;
            assert_eq!(peek(&g), Peek::Torn, "flip at {i}");
        }
        // Zeroed tail, as a file system may leave after a crash.
        assert_eq!(peek(&[0u8; 64]), Peek::Torn);
    }
}

#[cfg(test)]
mod crc_tests {
    /// The CRC-32C check value: the table layout must not change what is written to disk.
    #[test]
    fn slice_by_16_is_the_standard_crc32c() {
        assert_eq!(super::CRC.checksum(b"123456789"), 0xE306_9283);
        let bytewise = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(super::CRC.checksum(&data), bytewise.checksum(&data));
    }
}
