//! What a section evaluates to, whichever store it came from.

/// A group-by value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Null,
    Text(String),
    List(Vec<String>),
}

impl Key {
    pub fn from_text(v: Option<&str>) -> Key {
        v.map_or(Key::Null, |s| Key::Text(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub keys: Vec<Key>,
    /// One count per measure, in the section's order.
    pub measures: Vec<u64>,
}

/// A section's rows, in report order: most `requests` first, then by the group values (byte
/// order), so that both stores give byte-identical output for the same records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(mut rows: Vec<Row>) -> Table {
        rows.sort_by(|a, b| {
            b.measures
                .first()
                .cmp(&a.measures.first())
                .then_with(|| a.keys.cmp(&b.keys))
        });
        Table { rows }
    }

    /// Sum of each measure over all rows (the `requests` total is the number of records the
    /// section matched, since its groups partition them).
    pub fn totals(&self, measures: usize) -> Vec<u64> {
        let mut t = vec![0u64; measures];
        for r in &self.rows {
            for (acc, m) in t.iter_mut().zip(&r.measures) {
                *acc += m;
            }
        }
        t
    }
}
