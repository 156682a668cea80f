//! One CSV file per section (RFC 4180: comma-separated, CRLF line ends, fields with a comma,
//! quote, CR or LF quoted, quotes doubled). Hand-written because it is this short and must wrap
//! every cell in the formula guard anyway.
//!
//! Formula injection: a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and,
//! in some, a tab or carriage return) as a formula, and a user name or a policy name is chosen
//! by whoever sent the request. Such text cells get a leading `'`, the spreadsheet convention
//! for "this is text"; the report says so. Counts are never guarded (they are digits).

use super::super::result::Key;
use super::super::Report;
use super::super::SectionReport;

/// Characters that make a spreadsheet read a cell as a formula.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// The text of a group value in CSV and HTML: NULL is empty, a list is a JSON array.
pub fn key_text(k: &Key) -> String {
    match k {
        Key::Null => String::new(),
        Key::Text(s) => s.clone(),
        Key::List(v) => serde_json::Value::from(v.clone()).to_string(),
    }
}

/// Prefixes a cell that a spreadsheet would run as a formula.
pub fn guard(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(FORMULA_START) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

fn field(out: &mut String, cell: &str) {
    if cell.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(cell);
    }
}

fn line(out: &mut String, cells: impl IntoIterator<Item = String>) {
    for (i, c) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(out, &c);
    }
    out.push_str("\r\n");
}

/// The CSV text of one section: a header, then one line per row.
pub fn section(s: &SectionReport) -> String {
    let mut out = String::new();
    line(
        &mut out,
        s.spec
            .group_by
            .iter()
            .map(|g| g.name.to_owned())
            .chain(s.spec.measures.iter().map(|m| m.name.to_owned())),
    );
    for r in &s.table.rows {
        line(
            &mut out,
            r.keys
                .iter()
                .map(|k| guard(&key_text(k)).into_owned())
                .chain(r.measures.iter().map(u64::to_string)),
        );
    }
    out
}

/// File name of a section's CSV.
pub fn file_name(s: &SectionReport) -> String {
    format!("{}.csv", s.spec.id)
}

/// What the report says about the CSV files.
pub fn note(_: &Report) -> &'static str {
    "CSV files: one per section, RFC 4180 (comma-separated, CRLF line ends). An empty cell is \
     NULL (unknown); a list is written as a JSON array. To prevent formula injection in \
     spreadsheets, a text cell that begins with =, +, -, @, a tab or a carriage return is \
     written with a leading single quote ('), which is not part of the value; the JSON file has \
     every value unchanged."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_formula_guard() {
        let cases = [
            ("plain", "plain"),
            ("a,b", "\"a,b\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
            ("two\nlines", "\"two\nlines\""),
            ("=1+2", "'=1+2"),
            ("+cmd", "'+cmd"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            (
                "=HYPERLINK(\"x\",\"y\")",
                "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\"",
            ),
            ("a=b", "a=b"),
            ("", ""),
        ];
        for (cell, want) in cases {
            let mut out = String::new();
            field(&mut out, &guard(cell));
            assert_eq!(out, want, "{cell:?}");
        }
        assert_eq!(
            key_text(&Key::List(vec!["a\"".into(), "b".into()])),
            "[\"a\\\"\",\"b\"]"
        );
        assert_eq!(key_text(&Key::Null), "");
    }
}
