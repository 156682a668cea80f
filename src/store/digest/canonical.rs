//! The canonical encoding of one audit record, and the hashes built on it (docs/tamper-evidence.md
//! defines both byte for byte; a verifier in any language can rebuild them from stored rows).
//!
//! Derived from [`COLUMNS`], in contract order. Each non-NULL column is `name_len:u8 ‖ name ‖
//! body`; a NULL column is left out entirely, so NULL and an empty list differ (a present empty
//! list is `u32 0`), and a column added to the contract later does not change the hash of an
//! older row that has no value for it. Text is hashed as Postgres stores it (NUL → U+FFFD), so a
//! record read back from Parquet or from Postgres hashes the same.

use ring::digest::{Context, SHA256};

use crate::record::text::as_str;
use crate::record::{AuditRecord, Getter, COLUMNS};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// Prefix of every record encoding: keeps these hashes apart from any other SHA-256 use.
pub const RECORD_DOMAIN: &[u8] = b"meshaudit.record.v1\0";
/// Prefix of the hash over a sequence of record hashes.
pub const RECORDS_DOMAIN: &[u8] = b"meshaudit.records.v1\0";

/// The canonical NaN: every NaN hashes as this one (Postgres and Parquet keep the bits, but a
/// verifier's language may not).
const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

/// Builds one record's canonical encoding in a reusable buffer and hashes it. Call
/// [`Encoder::begin`], then the column methods in [`COLUMNS`] order, then [`Encoder::finish`];
/// or [`Encoder::record`] for an in-memory record.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder {
            buf: Vec::with_capacity(2048),
        }
    }

    pub fn begin(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(RECORD_DOMAIN);
    }

    /// The bytes encoded since [`Encoder::begin`] (for tests and cross-checks).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn finish(&self) -> Hash {
        sha256(&self.buf)
    }

    fn name(&mut self, name: &str) {
        // Column names are short snake_case (checked by a test); u8 is enough.
        self.buf.push(name.len() as u8);
        self.buf.extend_from_slice(name.as_bytes());
    }

    /// Text's bytes, NUL → U+FFFD. An in-memory record's text is hashed as bytes, unchecked:
    /// it is UTF-8 by `record::text`'s invariant, and a stored copy that is not would not read
    /// back as the same text anyway.
    fn text_body(&mut self, s: &[u8]) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        push_stored_text(&mut self.buf, s);
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn text(&mut self, name: &str, v: Option<&str>) {
        self.text_bytes(name, v.map(str::as_bytes));
    }

    /// [`Encoder::text`] for text held as bytes (an in-memory record's).
    pub fn text_bytes(&mut self, name: &str, v: Option<&[u8]>) {
        if let Some(s) = v {
            self.name(name);
            self.text_body(s);
        }
    }

    pub fn int(&mut self, name: &str, v: Option<i32>) {
        if let Some(v) = v {
            self.name(name);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub fn bigint(&mut self, name: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.name(name);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub fn float8(&mut self, name: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.name(name);
            let bits = if v.is_nan() {
                CANONICAL_NAN
            } else {
                v.to_bits()
            };
            self.buf.extend_from_slice(&bits.to_be_bytes());
        }
    }

    pub fn bool(&mut self, name: &str, v: Option<bool>) {
        if let Some(v) = v {
            self.name(name);
            self.buf.push(u8::from(v));
        }
    }

    /// Microseconds since the Unix epoch, UTC.
    pub fn timestamp(&mut self, name: &str, v: Option<i64>) {
        self.bigint(name, v);
    }

    /// A text[] value; `None` is NULL, `Some` of no items is the empty list.
    pub fn text_list<'a, I>(&mut self, name: &str, v: Option<I>)
    where
        I: ExactSizeIterator<Item = Option<&'a str>>,
    {
        let Some(items) = v else {
            return;
        };
        self.name(name);
        self.buf
            .extend_from_slice(&(items.len() as u32).to_be_bytes());
        for item in items {
            match item {
                None => self.buf.push(0),
                Some(s) => {
                    self.buf.push(1);
                    self.text_body(s.as_bytes());
                }
            }
        }
    }

    /// The hash of an in-memory record, as it will read back from either sink.
    pub fn record(&mut self, r: &AuditRecord) -> Hash {
        self.begin();
        for c in COLUMNS {
            match c.get {
                Getter::Text(get) => self.text_bytes(c.name, get(r)),
                Getter::Int(get) => self.int(c.name, get(r)),
                Getter::BigInt(get) => self.bigint(c.name, get(r)),
                Getter::Float8(get) => self.float8(c.name, get(r)),
                Getter::Bool(get) => self.bool(c.name, get(r)),
                Getter::Timestamptz(get) => self.timestamp(c.name, get(r)),
                Getter::TextArray(get) => {
                    self.text_list(c.name, get(r).map(|v| v.iter().map(|s| Some(as_str(s)))))
                }
                Getter::NullableTextArray(get) => self.text_list(
                    c.name,
                    get(r).map(|v| v.iter().map(|s| s.value.as_deref().map(as_str))),
                ),
            }
        }
        self.finish()
    }
}

pub fn sha256(bytes: &[u8]) -> Hash {
    let d = ring::digest::digest(&SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `records_sha256`: SHA-256 over `RECORDS_DOMAIN ‖ hash_1 ‖ … ‖ hash_n ‖ u64 n`, streamed.
#[derive(Clone)]
pub struct RecordsHasher {
    ctx: Context,
    n: u64,
}

impl Default for RecordsHasher {
    fn default() -> Self {
        let mut ctx = Context::new(&SHA256);
        ctx.update(RECORDS_DOMAIN);
        RecordsHasher { ctx, n: 0 }
    }
}

impl RecordsHasher {
    pub fn add(&mut self, h: &Hash) {
        self.ctx.update(h);
        self.n += 1;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn finish(mut self) -> Hash {
        self.ctx.update(&self.n.to_be_bytes());
        let d = self.ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// `records_sha256` of a list of record hashes.
pub fn records_sha256<'a>(hashes: impl IntoIterator<Item = &'a Hash>) -> Hash {
    let mut h = RecordsHasher::default();
    hashes.into_iter().for_each(|x| h.add(x));
    h.finish()
}

/// Text as stored by Postgres (NUL → U+FFFD); borrowed when there is nothing to replace.
pub fn stored_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.as_bytes().contains(&0) {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Appends text as Postgres stores it (NUL → U+FFFD) without allocating: the binary COPY
/// writes these bytes and the canonical encoding hashes them, so the two cannot differ.
pub fn push_stored_text(buf: &mut Vec<u8>, s: &[u8]) {
    if !s.contains(&0) {
        buf.extend_from_slice(s);
        return;
    }
    for (i, part) in s.split(|b| *b == 0).enumerate() {
        if i > 0 {
            buf.extend_from_slice("\u{FFFD}".as_bytes());
        }
        buf.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{string_list, values, NullableString, NullableStringList};

    fn base() -> AuditRecord {
        AuditRecord {
            record_id: "0123456789abcdef0123456789abcdef".into(),
            received_at: 1_772_446_504_000_000,
            entry_kind: values::ENTRY_HTTP.into(),
            identity_kind: values::KIND_ANONYMOUS.into(),
            identity_source: values::SOURCE_NONE.into(),
            token_status: values::TOKEN_ABSENT.into(),
            decision: values::DECISION_UNEVALUATED.into(),
            decision_engine: values::ENGINE_NONE.into(),
            ..Default::default()
        }
    }

    fn hash(r: &AuditRecord) -> Hash {
        Encoder::new().record(r)
    }

    /// The exact bytes of a small record: the layout docs/tamper-evidence.md promises.
    #[test]
    fn encoding_is_byte_exact_in_contract_order() {
        let mut r = base();
        r.start_time = Some(1);
        r.status_code = Some(-2);
        r.duration_ms = Some(1.5);
        r.groups_overage = Some(true);
        r.groups = Some(string_list(["g"]));
        r.group_names = Some(NullableStringList {
            values: vec![NullableString { value: None }],
        });
        let mut e = Encoder::new();
        e.record(&r);
        let mut want: Vec<u8> = RECORD_DOMAIN.to_vec();
        let mut col = |name: &str, body: &[u8]| {
            want.push(name.len() as u8);
            want.extend_from_slice(name.as_bytes());
            want.extend_from_slice(body);
        };
        let text = |s: &str| {
            let mut b = (s.len() as u32).to_be_bytes().to_vec();
            b.extend_from_slice(s.as_bytes());
            b
        };
        col("record_id", &text("0123456789abcdef0123456789abcdef"));
        col("start_time", &1i64.to_be_bytes());
        col("received_at", &1_772_446_504_000_000i64.to_be_bytes());
        col("duration_ms", &1.5f64.to_bits().to_be_bytes());
        col("entry_kind", &text("http"));
        col("status_code", &(-2i32).to_be_bytes());
        // NOT NULL list left unset: the empty list, never NULL.
        col("response_flags", &0u32.to_be_bytes());
        col("identity_kind", &text("anonymous"));
        col("identity_source", &text("none"));
        col("token_status", &text("absent"));
        let mut g = 1u32.to_be_bytes().to_vec();
        g.push(1);
        g.extend_from_slice(&text("g"));
        col("groups", &g);
        let mut gn = 1u32.to_be_bytes().to_vec();
        gn.push(0);
        col("group_names", &gn);
        col("groups_overage", &[1]);
        col("decision", &text("unevaluated"));
        col("decision_engine", &text("none"));
        assert_eq!(e.bytes(), want.as_slice());
    }

    #[test]
    fn null_and_empty_list_differ_and_null_elements_count() {
        let none = base();
        let mut empty = base();
        empty.groups = Some(string_list(Vec::<String>::new()));
        assert_ne!(hash(&none), hash(&empty));
        let mut one_null = base();
        one_null.group_names = Some(NullableStringList {
            values: vec![NullableString { value: None }],
        });
        let mut one_empty = base();
        one_empty.group_names = Some(NullableStringList {
            values: vec![NullableString {
                value: Some(bytes::Bytes::new()),
            }],
        });
        let mut no_names = base();
        no_names.group_names = Some(NullableStringList { values: vec![] });
        let hs = [hash(&one_null), hash(&one_empty), hash(&no_names)];
        assert!(hs[0] != hs[1] && hs[1] != hs[2] && hs[0] != hs[2]);
    }

    #[test]
    fn null_text_differs_from_empty_text_and_values_do_not_shift() {
        let mut a = base();
        a.method = Some(bytes::Bytes::new());
        assert_ne!(hash(&base()), hash(&a));
        // Length prefixes: ("ab","c") and ("a","bc") in neighbouring columns differ.
        let mut x = base();
        x.method = Some("ab".into());
        x.scheme = Some("c".into());
        let mut y = base();
        y.method = Some("a".into());
        y.scheme = Some("bc".into());
        assert_ne!(hash(&x), hash(&y));
        // The same value under another column name is another record.
        let mut m = base();
        m.method = Some("GET".into());
        let mut s = base();
        s.scheme = Some("GET".into());
        assert_ne!(hash(&m), hash(&s));
    }

    #[test]
    fn not_null_list_unset_equals_empty_as_both_sinks_store_it() {
        let mut set = base();
        set.response_flags = Some(string_list(Vec::<String>::new()));
        assert_eq!(hash(&base()), hash(&set));
    }

    #[test]
    fn nul_hashes_as_postgres_stores_it_and_nan_is_canonical() {
        let mut a = base();
        a.path = Some("/a\0b".into());
        let mut b = base();
        b.path = Some("/a\u{FFFD}b".into());
        assert_eq!(hash(&a), hash(&b));
        let mut n1 = base();
        n1.duration_ms = Some(f64::NAN);
        let mut n2 = base();
        n2.duration_ms = Some(f64::from_bits(0x7ff8_0000_0000_0001));
        assert_eq!(hash(&n1), hash(&n2));
        let mut z = base();
        z.duration_ms = Some(0.0);
        let mut nz = base();
        nz.duration_ms = Some(-0.0);
        assert_ne!(hash(&z), hash(&nz), "-0.0 is kept by both sinks");
    }

    #[test]
    fn every_column_changes_the_hash() {
        // Setting any one column of a bare record to a value changes the hash: no column is
        // left out of the encoding.
        let bare = hash(&base());
        let mut e = Encoder::new();
        for c in COLUMNS {
            assert!(c.name.len() < 256, "{}", c.name);
            e.begin();
            // The bare record's encoding with this one column added (or replaced).
            let r = base();
            for d in COLUMNS {
                let same = d.name == c.name;
                match d.get {
                    Getter::Text(g) => {
                        e.text(d.name, if same { Some("x") } else { g(&r).map(as_str) })
                    }
                    Getter::Int(g) => e.int(d.name, if same { Some(7) } else { g(&r) }),
                    Getter::BigInt(g) => e.bigint(d.name, if same { Some(7) } else { g(&r) }),
                    Getter::Float8(g) => e.float8(d.name, if same { Some(7.0) } else { g(&r) }),
                    Getter::Bool(g) => e.bool(d.name, if same { Some(true) } else { g(&r) }),
                    Getter::Timestamptz(g) => {
                        e.timestamp(d.name, if same { Some(7) } else { g(&r) })
                    }
                    Getter::TextArray(g) => {
                        if same {
                            e.text_list(d.name, Some([Some("x")].into_iter()))
                        } else {
                            e.text_list(d.name, g(&r).map(|v| v.iter().map(|s| Some(as_str(s)))))
                        }
                    }
                    Getter::NullableTextArray(g) => {
                        if same {
                            e.text_list(d.name, Some([Some("x")].into_iter()))
                        } else {
                            e.text_list(
                                d.name,
                                g(&r).map(|v| v.iter().map(|s| s.value.as_deref().map(as_str))),
                            )
                        }
                    }
                }
            }
            assert_ne!(e.finish(), bare, "column {} is not in the encoding", c.name);
        }
    }

    #[test]
    fn records_hash_covers_order_and_count() {
        let a = sha256(b"a");
        let b = sha256(b"b");
        assert_ne!(records_sha256([&a, &b]), records_sha256([&b, &a]));
        assert_ne!(records_sha256([&a]), records_sha256([&a, &a]));
        assert_eq!(records_sha256([]), {
            let mut h = RECORDS_DOMAIN.to_vec();
            h.extend_from_slice(&0u64.to_be_bytes());
            sha256(&h)
        });
    }
}
