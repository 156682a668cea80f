//! Running expanded queries as Grafana's role, and what their results must look like.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    AssertSqlSafe, Column, Executor, PgConnection, Row, SqlSafeStr, Statement, TypeInfo, ValueRef,
};

use crate::model::*;

/// A result: columns (name, PostgreSQL type) and rows in PostgreSQL's text form.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub fn col(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }
    pub fn value(&self, row: usize, name: &str) -> Option<&str> {
        self.col(name)
            .and_then(|i| self.rows.get(row).and_then(|r| r[i].as_deref()))
    }
    pub fn number(&self, row: usize, name: &str) -> f64 {
        self.value(row, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number in column {name} row {row}: {self:?}"))
    }
}

pub fn is_numeric(ty: &str) -> bool {
    matches!(
        ty,
        "INT2" | "INT4" | "INT8" | "NUMERIC" | "FLOAT4" | "FLOAT8"
    )
}

pub async fn run(conn: &mut PgConnection, sql: &str) -> Result<Table, String> {
    // Column names and types from the prepared statement (they exist even without rows), values
    // through the simple protocol as text, which every type has.
    let stmt = conn
        .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
        .await
        .map_err(|e| e.to_string())?;
    let columns: Vec<(String, String)> = stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
        .collect();
    let rows = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    let rows = rows
        .iter()
        .map(|r| {
            (0..columns.len())
                .map(|i| {
                    let v = r.try_get_raw(i).expect("column index in range");
                    if v.is_null() {
                        None
                    } else {
                        Some(
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|e| format!("<{e}>")),
                        )
                    }
                })
                .collect()
        })
        .collect();
    Ok(Table { columns, rows })
}

pub async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub async fn must_run(conn: &mut PgConnection, q: &Query, sql: &str) -> Table {
    run(conn, sql)
        .await
        .unwrap_or_else(|e| panic!("{} failed: {e}\n{sql}", q.label()))
}

/// One node of a query plan.
pub struct PlanNode {
    pub node: String,
    pub relation: String,
}

fn plan_nodes(plan: &Value, out: &mut Vec<PlanNode>) {
    let s = |k: &str| plan[k].as_str().unwrap_or("").to_owned();
    out.push(PlanNode {
        node: s("Node Type"),
        relation: s("Relation Name"),
    });
    for p in plan["Plans"].as_array().into_iter().flatten() {
        plan_nodes(p, out);
    }
}

/// Every node of the plan PostgreSQL chooses for `sql`.
pub async fn explain(conn: &mut PgConnection, q: &Query, sql: &str) -> Vec<PlanNode> {
    let t = must_run(conn, q, &format!("EXPLAIN (FORMAT JSON) {sql}")).await;
    let text = t.rows[0][0].clone().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).expect("EXPLAIN JSON");
    let mut out = vec![];
    plan_nodes(&v[0]["Plan"], &mut out);
    out
}

pub fn is_day_partition(rel: &str) -> bool {
    rel.strip_prefix("audit_records_p")
        .is_some_and(|d| d.len() == 8 && d.chars().all(|c| c.is_ascii_digit()))
}

/// Names of the day partitions whose day overlaps [from, to].
pub fn partitions_between(from: DateTime<Utc>, to: DateTime<Utc>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut day = from.date_naive();
    while day <= to.date_naive() {
        out.insert(format!("audit_records_p{}", day.format("%Y%m%d")));
        day = day.succ_opt().expect("a next day");
    }
    out
}

/// Shape rules from how Grafana reads a frame: series need a `time` column, numeric values and
/// at most a `metric` text column, sorted by time; stat panels one row; variables a value
/// column (or `__value` and `__text`).
pub fn shape_problems(q: &Query, t: &Table, interval_secs: f64) -> Vec<String> {
    let mut bad = vec![];
    let names: Vec<&str> = t.columns.iter().map(|(n, _)| n.as_str()).collect();
    if names.iter().collect::<BTreeSet<_>>().len() != names.len() || names.contains(&"") {
        bad.push(format!("column names empty or repeated: {names:?}"));
    }
    if q.variable.is_some() {
        let pair = names.contains(&"__value") && names.contains(&"__text");
        if !(pair && names.len() == 2 || names.len() == 1) {
            bad.push(format!(
                "a variable query returns one column or __value/__text: {names:?}"
            ));
        }
        let vi = t.col("__value").unwrap_or(0);
        if t.rows.iter().any(|r| r[vi].is_none()) {
            bad.push("a variable option without a value".to_owned());
        }
    }
    if q.panel_type.as_deref() == Some("stat") && t.rows.len() != 1 {
        bad.push(format!("a stat query returns {} rows", t.rows.len()));
    }
    if q.format == Format::TimeSeries {
        let Some(ti) = t.col("time") else {
            return vec![format!("no time column: {names:?}")];
        };
        for (i, (n, ty)) in t.columns.iter().enumerate() {
            if i == ti {
                if !is_numeric(ty) && ty != "TIMESTAMPTZ" {
                    bad.push(format!("time column of type {ty}"));
                }
            } else if !is_numeric(ty) && n != "metric" {
                bad.push(format!(
                    "column {n} of type {ty} in a series (only metric may be text)"
                ));
            }
        }
        let times: Vec<f64> = t
            .rows
            .iter()
            .map(|r| {
                r[ti]
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            })
            .collect();
        // NaN-safe: a NaN time compares false either way and is reported as unsorted.
        if times
            .windows(2)
            .any(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_gt()))
        {
            bad.push("rows not sorted by time".to_owned());
        }
        if times.iter().any(|s| (s / interval_secs).fract() != 0.0) {
            bad.push(format!("time values not on {interval_secs} s buckets"));
        }
    }
    bad
}

/// Data in every column: some row, a value in each column, a non-zero in each numeric column.
pub fn data_problems(t: &Table) -> Vec<String> {
    if t.rows.is_empty() {
        return vec!["no rows on the seeded data".to_owned()];
    }
    let mut bad = vec![];
    for (i, (n, ty)) in t.columns.iter().enumerate() {
        let vals: Vec<&str> = t.rows.iter().filter_map(|r| r[i].as_deref()).collect();
        if vals.is_empty() {
            bad.push(format!("column {n} is NULL in every row"));
        } else if is_numeric(ty)
            && n != "time"
            && vals
                .iter()
                .all(|v| v.parse::<f64>().is_ok_and(|x| x == 0.0))
        {
            bad.push(format!("column {n} is 0 in every row"));
        }
    }
    bad
}

/// Nothing but NULLs and zeros.
pub fn empty_problems(t: &Table) -> Vec<String> {
    let found: Vec<String> = t
        .rows
        .iter()
        .flat_map(|r| r.iter().zip(&t.columns))
        .filter(|(v, (_, ty))| {
            !v.as_deref()
                .is_none_or(|v| is_numeric(ty) && v.parse::<f64>() == Ok(0.0))
        })
        .map(|(v, (n, _))| format!("{n} = {v:?}"))
        .collect();
    match found.first() {
        None => vec![],
        Some(first) => vec![format!(
            "{} values besides NULL and 0, e.g. {first}",
            found.len()
        )],
    }
}
