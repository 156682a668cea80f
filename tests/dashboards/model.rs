//! The dashboards as data: files, panels, variables and their queries, and the filter
//! convention every query follows.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::grafana::{self, Ctx, Selection, VarDef};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const DS_TYPE: &str = "grafana-postgresql-datasource";
/// Every filter variable and the column it filters.
pub const FILTERS: [(&str, &str); 4] = [
    ("dst_ns", "destination_namespace"),
    ("src_ns", "source_namespace"),
    ("identity", "object_id"),
    ("app", "app_id"),
];
/// The namespace filters: the identity and application lists depend on them.
pub const NS_FILTERS: [&str; 2] = ["dst_ns", "src_ns"];
/// The custom all value: inserted as is by Grafana, folded to TRUE by PostgreSQL.
pub const ALL_VALUE: &str = "'__all'";
pub const PANEL_TYPES: [&str; 5] = ["stat", "timeseries", "table", "piechart", "row"];

pub fn ds_ref() -> Value {
    json!({"type": DS_TYPE, "uid": "${datasource}"})
}

/// `('__all' IN (${v:sqlstring}) OR col IN (${v:sqlstring}))`: the one way a filter variable
/// may appear in SQL (dashboards/README.md).
pub fn canonical(var: &str, col: &str) -> String {
    format!("('__all' IN (${{{var}:sqlstring}}) OR {col} IN (${{{var}:sqlstring}}))")
}

/// The query with the given filters replaced by TRUE.
pub fn without_filters(sql: &str, vars: &[&str]) -> String {
    let mut out = sql.to_owned();
    for (var, col) in FILTERS {
        if vars.contains(&var) {
            out = out.replace(&canonical(var, col), "TRUE");
        }
    }
    out
}

/// The column a filter variable filters.
pub fn column_of(var: &str) -> &'static str {
    FILTERS
        .iter()
        .find(|(v, _)| *v == var)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("{var} is not a filter variable"))
}

pub fn all_filter_names() -> Vec<&'static str> {
    FILTERS.iter().map(|(v, _)| *v).collect()
}

pub struct Dash {
    pub file: String,
    pub json: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TimeSeries,
    Table,
}

#[derive(Debug, Clone)]
pub struct Query {
    pub dash: String,
    /// `panel 3 "Users"` or `variable identity`.
    pub what: String,
    /// The panel type, or None for a variable query.
    pub panel_type: Option<String>,
    pub variable: Option<String>,
    pub format: Format,
    pub sql: String,
}

impl Query {
    pub fn label(&self) -> String {
        format!("{}: {}", self.dash, self.what)
    }
    pub fn expand(&self, ctx: &Ctx) -> String {
        let r = match self.variable {
            Some(_) => grafana::expand_variable_sql(&self.sql, ctx),
            None => grafana::expand_panel_sql(&self.sql, ctx),
        };
        r.unwrap_or_else(|e| panic!("{}: Grafana would refuse this query: {e}", self.label()))
    }
    /// Expands other SQL (the query with filters removed) in this query's role.
    pub fn expand_with_sql(&self, ctx: &Ctx, sql: &str) -> String {
        Query {
            sql: sql.to_owned(),
            ..self.clone()
        }
        .expand(ctx)
    }
    /// The filter variables whose clauses this query contains.
    pub fn filters(&self) -> Vec<&'static str> {
        FILTERS
            .iter()
            .filter(|(v, c)| self.sql.contains(&canonical(v, c)))
            .map(|(v, _)| *v)
            .collect()
    }
}

pub fn dashboards() -> Vec<Dash> {
    let dir = Path::new(ROOT).join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let file = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{file}: {e}"));
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            Dash { file, json }
        })
        .collect()
}

/// Panels, with the panels of collapsed rows.
pub fn panels(d: &Dash) -> Vec<&Value> {
    let mut out = vec![];
    for p in d.json["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

pub fn variables(d: &Dash) -> Vec<&Value> {
    d.json["templating"]["list"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

pub fn var_defs(d: &Dash) -> Vec<VarDef> {
    variables(d)
        .into_iter()
        .filter(|v| v["type"] == "query")
        .map(|v| VarDef {
            name: v["name"].as_str().unwrap_or("").to_owned(),
            multi: v["multi"] == json!(true),
            include_all: v["includeAll"] == json!(true),
            all_value: v["allValue"].as_str().map(str::to_owned),
        })
        .collect()
}

pub fn queries(d: &Dash) -> Vec<Query> {
    let mut out = vec![];
    for v in variables(d).into_iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("").to_owned();
        out.push(Query {
            dash: d.file.clone(),
            what: format!("variable {name}"),
            panel_type: None,
            variable: Some(name),
            format: Format::Table,
            sql: v["query"].as_str().unwrap_or("").to_owned(),
        });
    }
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                dash: d.file.clone(),
                what: format!("panel {} {}", p["id"], p["title"]),
                panel_type: p["type"].as_str().map(str::to_owned),
                variable: None,
                format: if t["format"] == "time_series" {
                    Format::TimeSeries
                } else {
                    Format::Table
                },
                sql: t["rawSql"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    out
}

/// A context over [from, to] with every filter variable of `d` on All, then `selections`.
pub fn ctx_for(
    d: &Dash,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval: &str,
    selections: &[(&str, Vec<String>)],
) -> Ctx {
    let mut ctx = Ctx::new(from, to, interval);
    for def in var_defs(d) {
        ctx.bind(def, Selection::All, vec![]);
    }
    for (var, values) in selections {
        ctx.select(var, Selection::Values(values.clone()));
    }
    ctx
}
