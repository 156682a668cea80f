//! The HTML report: ONE self-contained file (inline CSS, inline SVG charts, no script, no
//! external reference of any kind), readable on screen and on paper (`@media print`).
//!
//! Every piece of text that comes from data or configuration goes through [`esc`], in element
//! content and attribute values alike: a user name or a path such as `<script>` is shown, never
//! run. The only markup is this file's own literals.

use std::fmt::Write as _;

use super::super::result::Key;
use super::super::{Report, SectionReport, ShownQuery, Source};
use super::csv::key_text;

/// Rows shown per section table; the CSV and JSON files always hold every row.
pub const MAX_HTML_ROWS: usize = 1000;
/// Bars per chart.
const CHART_BARS: usize = 10;

/// Escapes text for HTML element content and (double- or single-quoted) attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg-alt: #f6f8fa;
        --verified: #2e7d32; --mtls_workload: #1565c0; --peer_metadata_workload: #8e7cc3; --unverified: #c62828;
        --denied: #c62828; --not_denied: #8c959f; --requests: #57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
       color: var(--fg); margin: 0 auto; max-width: 1200px; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 32px 0 4px; padding-top: 12px; border-top: 2px solid var(--fg); }
h3 { font-size: 15px; margin: 16px 0 4px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0 16px; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; }
.criteria span { display: inline-block; border: 1px solid var(--fg); border-radius: 3px;
                 padding: 0 6px; margin-right: 4px; font-weight: 600; font-size: 12px; }
.muted { color: var(--muted); }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 6px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: var(--bg-alt); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tfoot td { font-weight: 600; background: var(--bg-alt); }
.null { color: var(--muted); font-style: italic; }
pre { background: var(--bg-alt); border: 1px solid var(--line); padding: 8px; font-size: 12px;
      white-space: pre-wrap; overflow-wrap: anywhere; }
svg { max-width: 100%; height: auto; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: var(--fg); }
.note { border-left: 4px solid var(--muted); padding: 4px 12px; background: var(--bg-alt); }
nav ol { padding-left: 20px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  section.report-section { break-before: page; }
  table { font-size: 10px; }
  tr, svg, pre { break-inside: avoid; }
  thead { display: table-header-group; }
  nav { break-after: page; }
  th, tfoot td { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  svg rect { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

fn cell(k: &Key) -> String {
    match k {
        Key::Null => "<td class=\"null\">NULL</td>".to_owned(),
        Key::List(v) if v.is_empty() => "<td class=\"null\">(none)</td>".to_owned(),
        Key::List(v) => format!("<td>{}</td>", esc(&v.join(", "))),
        Key::Text(s) => format!("<td>{}</td>", esc(s)),
    }
}

fn label(keys: &[Key]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(|k| match k {
            Key::Null => "NULL".to_owned(),
            k => key_text(k),
        })
        .collect();
    parts.join(" · ")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A horizontal stacked bar chart of the section's largest rows, as inline SVG.
fn chart(s: &SectionReport) -> String {
    let rows: Vec<_> = s.table.rows.iter().take(CHART_BARS).collect();
    if rows.is_empty() {
        return String::new();
    }
    let parts: Vec<(usize, &str)> = s
        .spec
        .chart
        .iter()
        .filter_map(|name| {
            s.spec
                .measures
                .iter()
                .position(|m| m.name == *name)
                .map(|i| (i, *name))
        })
        .collect();
    let parts = if parts.is_empty() {
        vec![(0, "requests")]
    } else {
        parts
    };
    let max = rows
        .iter()
        .map(|r| r.measures.first().copied().unwrap_or(0))
        .max()
        .unwrap_or(0)
        .max(1);
    let (label_w, bar_w, row_h, top) = (330.0, 470.0, 20.0, 24.0);
    let height = top + row_h * rows.len() as f64 + 4.0;
    let width = label_w + bar_w + 70.0;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"{}\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">",
        esc(&format!("{}: largest rows by requests", s.spec.title))
    );
    // Legend.
    let mut x = label_w;
    for (_, name) in &parts {
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"4\" width=\"10\" height=\"10\" style=\"fill: var(--{name})\"/><text x=\"{}\" y=\"13\">{}</text>",
            x + 14.0,
            esc(name)
        );
        x += 14.0 + 8.0 * name.len() as f64 + 16.0;
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let full = label(&r.keys);
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\"><title>{}</title>{}</text>",
            label_w - 6.0,
            y + 13.0,
            esc(&full),
            esc(&truncate(&full, 52))
        );
        let mut bx = label_w;
        for (idx, name) in &parts {
            let v = r.measures.get(*idx).copied().unwrap_or(0);
            if v == 0 {
                continue;
            }
            let w = bar_w * v as f64 / max as f64;
            let _ = write!(
                svg,
                "<rect x=\"{bx:.1}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" style=\"fill: var(--{name})\"><title>{}: {v}</title></rect>",
                y + 2.0,
                row_h - 6.0,
                esc(name)
            );
            bx += w;
        }
        let total = r.measures.first().copied().unwrap_or(0);
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\">{total}</text>",
            bx + 4.0,
            y + 13.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn query_block(q: &ShownQuery) -> String {
    let mut out = format!(
        "<h3>Query ({}, {})</h3><pre>{}</pre>",
        esc(q.dialect),
        esc(q.role),
        esc(&q.text)
    );
    if !q.params.is_empty() {
        out.push_str("<table class=\"params\"><thead><tr><th>parameter</th><th>meaning</th><th>value</th></tr></thead><tbody>");
        for (name, what, value) in &q.params {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                esc(what),
                esc(&value.to_string())
            );
        }
        out.push_str("</tbody></table>");
    }
    out
}

fn section(r: &Report, s: &SectionReport) -> String {
    let mut out = format!(
        "<section class=\"report-section\" id=\"{}\"><h2>{}</h2>",
        esc(s.spec.id),
        esc(s.spec.title)
    );
    out.push_str("<p class=\"criteria\">Supports SOC 2: ");
    for c in s.spec.criteria {
        let _ = write!(out, "<span>{}</span>", esc(c));
    }
    out.push_str("</p>");
    let _ = write!(
        out,
        "<p>{}</p><p class=\"muted\">Range {} (inclusive) to {} (exclusive) · {} rows · {} records</p>",
        esc(s.spec.description),
        esc(&r.range.from.rfc3339()),
        esc(&r.range.to.rfc3339()),
        s.table.rows.len(),
        s.records()
    );
    if s.spec.id == "privileged_access"
        && r.privileged.privileged_roles.is_empty()
        && r.privileged.privileged_groups.is_empty()
    {
        out.push_str("<p class=\"note\">No privileged roles or groups were configured for this report (--privileged-role, --privileged-group, --privileged-config), so this section is empty by configuration, not by evidence.</p>");
    }
    if s.table.rows.is_empty() {
        out.push_str("<p class=\"note\">No records matched in this range.</p>");
    } else {
        out.push_str(&chart(s));
        out.push_str("<table><thead><tr>");
        for g in &s.spec.group_by {
            let _ = write!(out, "<th>{}</th>", esc(g.name));
        }
        for m in &s.spec.measures {
            let _ = write!(out, "<th class=\"n\">{}</th>", esc(m.name));
        }
        out.push_str("</tr></thead><tbody>");
        for row in s.table.rows.iter().take(MAX_HTML_ROWS) {
            out.push_str("<tr>");
            for k in &row.keys {
                out.push_str(&cell(k));
            }
            for n in &row.measures {
                let _ = write!(out, "<td class=\"n\">{n}</td>");
            }
            out.push_str("</tr>");
        }
        let _ = write!(
            out,
            "</tbody><tfoot><tr><td colspan=\"{}\">Total (all {} rows)</td>",
            s.spec.group_by.len(),
            s.table.rows.len()
        );
        for t in s.totals() {
            match t {
                Some(t) => {
                    let _ = write!(out, "<td class=\"n\">{t}</td>");
                }
                None => out.push_str("<td class=\"n\">—</td>"),
            }
        }
        out.push_str("</tr></tfoot></table>");
        if s.table.rows.len() > MAX_HTML_ROWS {
            let _ = write!(
                out,
                "<p class=\"note\">Showing the first {MAX_HTML_ROWS} of {} rows; {}.csv and report.json hold them all.</p>",
                s.table.rows.len(),
                esc(s.spec.id)
            );
        }
    }
    for q in &s.queries {
        out.push_str(&query_block(q));
    }
    out.push_str("</section>");
    out
}

/// The whole report as one HTML document.
pub fn document(r: &Report) -> String {
    let range = format!("{} to {}", r.range.from.rfc3339(), r.range.to.rfc3339());
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Mesh access report {}</title><style>{CSS}</style></head><body>",
        esc(&range)
    );
    let _ = write!(
        out,
        "<header><h1>Mesh access report</h1><dl class=\"meta\">\
         <dt>Range</dt><dd>{} (inclusive) to {} (exclusive), by request start time, UTC</dd>\
         <dt>Generated</dt><dd>{} by meshaudit {}</dd>",
        esc(&r.range.from.rfc3339()),
        esc(&r.range.to.rfc3339()),
        esc(&r.generated_at),
        esc(env!("CARGO_PKG_VERSION"))
    );
    match &r.source {
        Source::Postgres { target } => {
            let _ = write!(
                out,
                "<dt>Source</dt><dd>PostgreSQL {} (table audit_records, one read-only repeatable-read transaction)</dd>",
                esc(target)
            );
        }
        Source::Parquet { data_dir, stats } => {
            let _ = write!(
                out,
                "<dt>Source</dt><dd>Parquet files under {}</dd><dt>Evidence read</dt><dd>{} files in {} hour partitions ({} partitions outside the range skipped); {} rows in range, {} duplicate rows (same record_id, at-least-once delivery) counted once</dd>",
                esc(data_dir),
                stats.files_read,
                stats.partitions_read,
                stats.partitions_skipped,
                stats.rows_in_range,
                stats.duplicate_rows
            );
            if !stats.skipped.is_empty() {
                let _ = write!(
                    out,
                    "<dt>Not read</dt><dd><strong>{} entries under the data directory are not part of the store and were not read</strong> (run <code>meshaudit verify</code>): {}</dd>",
                    stats.skipped.len(),
                    esc(&stats.skipped.join("; "))
                );
            }
        }
    }
    if let Some(d) = &r.directory {
        let _ = write!(
            out,
            "<dt>Directory</dt><dd>caller names from the snapshot {} (synced {}; {} users): \
             {} rows named by it where it knows the caller's object or application id; the \
             queries below give the names the records carry</dd>",
            esc(&d.path),
            esc(d.synced_at.as_deref().unwrap_or("at an unknown time")),
            d.users,
            d.relabelled_rows
        );
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "<span class=\"null\">none configured</span>".to_owned()
        } else {
            esc(&v.join(", "))
        }
    };
    let _ = write!(
        out,
        "<dt>Privileged roles</dt><dd>{}</dd><dt>Privileged groups</dt><dd>{}</dd></dl></header>",
        list(&r.privileged.privileged_roles),
        list(&r.privileged.privileged_groups)
    );
    out.push_str("<section><h2>How to read this report</h2><dl class=\"meta\">");
    for (term, meaning) in super::DEFINITIONS {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(term), esc(meaning));
    }
    let _ = write!(
        out,
        "</dl><p class=\"note\">{}</p></section>",
        esc(super::csv::note(r))
    );
    out.push_str("<nav><h2>Sections</h2><table><thead><tr><th>section</th><th>SOC 2 criteria</th><th class=\"n\">rows</th><th class=\"n\">records</th></tr></thead><tbody>");
    for s in &r.sections {
        let _ = write!(
            out,
            "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(s.spec.id),
            esc(s.spec.title),
            esc(&s.spec.criteria.join(", ")),
            s.table.rows.len(),
            s.records()
        );
    }
    out.push_str("</tbody></table></nav>");
    for s in &r.sections {
        out.push_str(&section(r, s));
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_content_and_attributes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(cell(&Key::Text("<b>".into())), "<td>&lt;b&gt;</td>");
        assert_eq!(
            cell(&Key::List(vec!["<i>".into(), "x".into()])),
            "<td>&lt;i&gt;, x</td>"
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
