//! The JSON document: every section in one file, values exactly as stored (NULL as `null`,
//! lists as arrays, no formula guard). Built explicitly: this layout is a promise to whoever
//! parses it, so it does not follow internal types by accident.

use serde_json::{json, Map, Value};

use super::super::result::Key;
use super::super::{Report, SectionReport, ShownQuery, Source};

/// Format version of report.json; bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

fn key(k: &Key) -> Value {
    match k {
        Key::Null => Value::Null,
        Key::Text(s) => Value::from(s.as_str()),
        Key::List(v) => Value::from(v.clone()),
    }
}

fn query(q: &ShownQuery) -> Value {
    json!({
        "dialect": q.dialect,
        "role": q.role,
        "text": q.text,
        "parameters": q.params.iter().map(|(name, what, value)| json!({
            "placeholder": name, "meaning": what, "value": value,
        })).collect::<Vec<_>>(),
    })
}

fn section(r: &Report, s: &SectionReport) -> Value {
    let columns: Vec<Value> = s
        .spec
        .group_by
        .iter()
        .map(|g| json!({"name": g.name, "kind": "group"}))
        .chain(
            s.spec
                .measures
                .iter()
                .map(|m| json!({"name": m.name, "kind": "count"})),
        )
        .collect();
    let rows: Vec<Value> = s
        .table
        .rows
        .iter()
        .map(|row| {
            let mut o = Map::new();
            for (g, k) in s.spec.group_by.iter().zip(&row.keys) {
                o.insert(g.name.to_owned(), key(k));
            }
            for (m, n) in s.spec.measures.iter().zip(&row.measures) {
                o.insert(m.name.to_owned(), Value::from(*n));
            }
            Value::Object(o)
        })
        .collect();
    let totals: Map<String, Value> = s
        .spec
        .measures
        .iter()
        .zip(s.totals())
        .map(|(m, t)| (m.name.to_owned(), t.map_or(Value::Null, Value::from)))
        .collect();
    json!({
        "id": s.spec.id,
        "title": s.spec.title,
        "criteria": s.spec.criteria,
        "description": s.spec.description,
        "range": range(r),
        "row_count": s.table.rows.len(),
        "records": s.records(),
        "columns": columns,
        "rows": rows,
        "totals": totals,
        "queries": s.queries.iter().map(query).collect::<Vec<_>>(),
    })
}

fn range(r: &Report) -> Value {
    json!({
        "from": r.range.from.rfc3339(),
        "to": r.range.to.rfc3339(),
        "from_inclusive": true,
        "to_inclusive": false,
    })
}

fn source(r: &Report) -> Value {
    match &r.source {
        Source::Postgres { target } => json!({"kind": "postgres", "database": target}),
        Source::Parquet { data_dir, stats } => json!({
            "kind": "parquet",
            "data_dir": data_dir,
            "partitions_read": stats.partitions_read,
            "partitions_skipped": stats.partitions_skipped,
            "files_read": stats.files_read,
            "rows_in_range": stats.rows_in_range,
            "duplicate_rows_removed": stats.duplicate_rows,
            "skipped": stats.skipped,
        }),
    }
}

/// The whole report as one JSON document.
pub fn document(r: &Report) -> Value {
    json!({
        "format_version": FORMAT_VERSION,
        "generator": format!("meshaudit {}", env!("CARGO_PKG_VERSION")),
        "generated_at": r.generated_at,
        "range": range(r),
        "source": source(r),
        "directory": r.directory.as_ref().map(|d| json!({
            "path": d.path,
            "synced_at": d.synced_at,
            "users": d.users,
            "relabelled_rows": d.relabelled_rows,
            "note": "caller names come from this directory snapshot where it knows the caller's \
                     object or application id; the queries shown give the names the records carry",
        })),
        "privileged": {
            "roles": r.privileged.privileged_roles,
            "groups": r.privileged.privileged_groups,
        },
        "definitions": super::DEFINITIONS.iter().map(|(k, v)| json!({"term": k, "meaning": v})).collect::<Vec<_>>(),
        "csv_note": super::csv::note(r),
        "sections": r.sections.iter().map(|s| section(r, s)).collect::<Vec<_>>(),
    })
}
