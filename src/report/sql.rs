//! Compiles a [`Section`] to SQL text: what Postgres runs, and what the report shows an auditor.
//!
//! Two dialects from one compiler: PostgreSQL over `audit_records`, and DuckDB over the Parquet
//! files (`read_parquet('DIR/**/*.parquet', hive_partitioning = true)`, or the list of files the
//! report read when the data dir holds anything a glob would read differently), so evidence from
//! either store can be re-run with a stock tool. Both count `DISTINCT record_id`, which over Parquet
//! removes the duplicates that at-least-once delivery may leave and over Postgres (one row per
//! record_id) changes nothing.
//!
//! Only compiled-in constants (the contract's value sets) are written into the text, quoted;
//! user input (time range, privileged roles and groups) is always a `$n` placeholder bound at
//! execution. For DuckDB, the data directory is a quoted literal (it is the auditor's own path,
//! and that text is shown, never run by meshaudit).

use std::fmt::Write as _;

use super::spec::{GroupExpr, MeasureKind, Param, Pred, Section};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    /// DuckDB over the Parquet files under this data directory.
    DuckDb {
        data_dir: String,
        /// The files to read, when a glob would not read exactly the report's files: a glob
        /// reads a linked file and chokes on a `.parquet` file outside the layout, which the
        /// report never reads (store::layout). `None`: every data file, by a glob.
        files: Option<Vec<String>>,
    },
}

/// A section's SQL and, in `$n` order, the parameters it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub text: String,
    pub params: Vec<Param>,
}

/// A SQL string literal for a compiled-in constant (never for user input).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

struct Compiler<'a> {
    dialect: &'a Dialect,
    params: Vec<Param>,
}

impl Compiler<'_> {
    fn placeholder(&mut self, p: Param) -> String {
        let n = match self.params.iter().position(|q| *q == p) {
            Some(i) => i + 1,
            None => {
                self.params.push(p);
                self.params.len()
            }
        };
        match (self.dialect, p) {
            (Dialect::Postgres, Param::From | Param::To) => format!("${n}::timestamptz"),
            (Dialect::Postgres, _) => format!("${n}::text[]"),
            (Dialect::DuckDb { .. }, Param::From | Param::To) => format!("${n}::TIMESTAMPTZ"),
            (Dialect::DuckDb { .. }, _) => format!("${n}::VARCHAR[]"),
        }
    }

    fn source(&self) -> String {
        match self.dialect {
            Dialect::Postgres => "audit_records".to_owned(),
            Dialect::DuckDb {
                files: Some(files), ..
            } => {
                let list: Vec<String> = files.iter().map(|f| literal(f)).collect();
                format!(
                    "read_parquet([{}], hive_partitioning = true)",
                    list.join(", ")
                )
            }
            Dialect::DuckDb {
                data_dir,
                files: None,
            } => {
                let glob = format!("{}/**/*.parquet", data_dir.trim_end_matches('/'));
                format!("read_parquet({}, hive_partitioning = true)", literal(&glob))
            }
        }
    }

    fn pred(&mut self, p: &Pred) -> String {
        match p {
            Pred::Eq(c, v) => format!("{c} = {}", literal(v)),
            Pred::In(c, vs) => {
                let list: Vec<String> = vs.iter().map(|v| literal(v)).collect();
                format!("{c} IN ({})", list.join(", "))
            }
            Pred::NotNull(c) => format!("{c} IS NOT NULL"),
            Pred::Overlaps(c, param) => {
                let ph = self.placeholder(*param);
                match self.dialect {
                    Dialect::Postgres => format!("{c} && {ph}"),
                    Dialect::DuckDb { .. } => format!("list_has_any({c}, {ph})"),
                }
            }
            Pred::And(ps) => self.join(ps, " AND "),
            Pred::Or(ps) => self.join(ps, " OR "),
            Pred::Not(p) => format!("NOT {}", self.pred(p)),
        }
    }

    fn join(&mut self, ps: &[Pred], sep: &str) -> String {
        let parts: Vec<String> = ps.iter().map(|p| self.pred(p)).collect();
        format!("({})", parts.join(sep))
    }

    fn group_expr(&mut self, e: &GroupExpr) -> String {
        match e {
            GroupExpr::Col(c) => c.to_string(),
            GroupExpr::Coalesce(cs) => format!("coalesce({})", cs.join(", ")),
            GroupExpr::Case(arms) => {
                let mut out = "CASE".to_owned();
                for (p, cs) in arms {
                    let value = match cs.as_slice() {
                        [one] => one.to_string(),
                        _ => format!("coalesce({})", cs.join(", ")),
                    };
                    let _ = write!(out, " WHEN {} THEN {value}", self.pred(p));
                }
                out.push_str(" END");
                out
            }
            // Never compiled as a per-record value: see `compile`.
            GroupExpr::Latest { .. } => "NULL".to_owned(),
            GroupExpr::Values(e) => self.group_expr(e),
            GroupExpr::Intersect(c, param) => {
                let ph = self.placeholder(*param);
                match self.dialect {
                    // COLLATE "C": byte order, whatever the database's collation, so that the
                    // same set of roles is always the same array (and the same group).
                    Dialect::Postgres => format!(
                        "ARRAY(SELECT x FROM (SELECT DISTINCT unnest(r.{c}) AS x) AS u \
                         WHERE x = ANY({ph}) ORDER BY x COLLATE \"C\")"
                    ),
                    Dialect::DuckDb { .. } => format!(
                        "list_sort(list_distinct(list_intersect(coalesce(r.{c}, []::VARCHAR[]), {ph})))"
                    ),
                }
            }
        }
    }

    fn time_range(&mut self) -> String {
        let from = self.placeholder(Param::From);
        let to = self.placeholder(Param::To);
        format!("start_time >= {from} AND start_time < {to}")
    }
}

/// The SQL of one section.
pub fn compile(section: &Section, dialect: &Dialect) -> Query {
    let mut c = Compiler {
        dialect,
        params: Vec::new(),
    };
    // $1 and $2 are always the time range, whatever else the section binds.
    c.placeholder(Param::From);
    c.placeholder(Param::To);
    let source = c.source();
    let mut ctes: Vec<String> = Vec::new();

    if let Some(b) = &section.baseline {
        let keys = b.keys.join(", ");
        let time = c.time_range();
        let pred = c.pred(&b.pred);
        ctes.push(format!(
            "baseline AS (\n  SELECT {keys}\n  FROM {source}\n  WHERE {time}\n  GROUP BY {keys}\n  \
             HAVING 100 * count(DISTINCT record_id) FILTER (WHERE {pred})\n       > {} * count(DISTINCT record_id)\n)",
            b.min_percent
        ));
    }

    // Latest labels: one row per key over every record of the range (the section's filter does
    // not apply), joined to the records by key.
    let mut joins = Vec::new();
    let mut inner_cols = vec!["r.*".to_owned()];
    for g in &section.group_by {
        let GroupExpr::Latest { key, label } = &g.expr else {
            continue;
        };
        let Some(key_expr) = section.group(key).map(|k| c.group_expr(&k.expr)) else {
            continue;
        };
        let label = c.group_expr(label);
        let time = c.time_range();
        let order = match dialect {
            Dialect::Postgres => "start_time DESC, l COLLATE \"C\" DESC",
            Dialect::DuckDb { .. } => "start_time DESC, l DESC",
        };
        let n = g.name;
        ctes.push(format!(
            "latest_{n} AS (\n  SELECT k, (array_agg(l ORDER BY {order}) FILTER (WHERE l IS NOT NULL))[1] AS label\n  \
             FROM (SELECT {key_expr} AS k, {label} AS l, start_time FROM {source} AS r WHERE {time}) AS x\n  \
             WHERE k IS NOT NULL\n  GROUP BY k\n)"
        ));
        joins.push(format!(
            "\n  LEFT JOIN latest_{n} AS l_{n} ON l_{n}.k = {key_expr}"
        ));
        inner_cols.push(format!("l_{n}.label AS {n}"));
    }
    let mut sql = String::new();
    if !ctes.is_empty() {
        let _ = writeln!(sql, "WITH {}", ctes.join(",\n"));
    }

    // Outer query: group and measure over the matching records of the inner one.
    let mut select: Vec<String> = Vec::new();
    let mut group: Vec<&str> = Vec::new();
    for g in &section.group_by {
        if matches!(g.expr, GroupExpr::Values(_)) {
            let n = g.name;
            select.push(match dialect {
                Dialect::Postgres => format!(
                    "coalesce(array_agg(DISTINCT {n} COLLATE \"C\" ORDER BY {n} COLLATE \"C\") \
                     FILTER (WHERE {n} IS NOT NULL), '{{}}') AS {n}"
                ),
                Dialect::DuckDb { .. } => format!("list_sort(list_distinct(list({n}))) AS {n}"),
            });
        } else {
            select.push(g.name.to_owned());
            group.push(g.name);
        }
    }
    for m in &section.measures {
        let counted = match m.kind {
            MeasureKind::Records => "count(DISTINCT record_id)".to_owned(),
            MeasureKind::DistinctValues(col) => format!("count(DISTINCT {col})"),
        };
        let filter = m
            .filter
            .as_ref()
            .map(|f| format!(" FILTER (WHERE {})", c.pred(f)))
            .unwrap_or_default();
        select.push(format!("{counted}{filter} AS {}", m.name));
    }

    // Inner query: the records, plus the computed group columns.
    for g in &section.group_by {
        if !matches!(g.expr, GroupExpr::Col(_) | GroupExpr::Latest { .. }) {
            inner_cols.push(format!("{} AS {}", c.group_expr(&g.expr), g.name));
        }
    }
    let mut conds = vec![c.time_range()];
    if let Some(f) = &section.filter {
        conds.push(c.pred(f));
    }
    if let Some(b) = &section.baseline {
        let on: Vec<String> = b
            .keys
            .iter()
            .map(|k| format!("b.{k} IS NOT DISTINCT FROM r.{k}"))
            .collect();
        conds.push(format!(
            "EXISTS (SELECT 1 FROM baseline AS b WHERE {})",
            on.join(" AND ")
        ));
    }
    let _ = write!(
        sql,
        "SELECT {}\nFROM (\n  SELECT {}\n  FROM {source} AS r{}\n  WHERE {}\n) AS t\nGROUP BY {}\nORDER BY {} DESC",
        select.join(",\n       "),
        inner_cols.join(",\n         "),
        joins.concat(),
        conds.join("\n    AND "),
        group.join(", "),
        section.measures[0].name,
    );
    Query {
        text: sql,
        params: c.params,
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::sections;
    use super::*;

    #[test]
    fn every_section_binds_the_time_range_first_and_only_what_it_uses() {
        for d in [
            Dialect::Postgres,
            Dialect::DuckDb {
                data_dir: "/data/it's here".into(),
                files: None,
            },
            Dialect::DuckDb {
                data_dir: "/data".into(),
                files: Some(vec!["/data/dt=2026-03-02/hour=10/it's.parquet".into()]),
            },
        ] {
            for s in sections() {
                let q = compile(&s, &d);
                assert_eq!(q.params[..2], [Param::From, Param::To], "{}", s.id);
                for (i, _) in q.params.iter().enumerate() {
                    assert!(q.text.contains(&format!("${}::", i + 1)), "{}", s.id);
                }
                assert!(!q.text.contains(&format!("${}", q.params.len() + 1)));
                // Balanced quotes and parentheses: the text is well formed.
                assert_eq!(q.text.matches('(').count(), q.text.matches(')').count());
                assert_eq!(q.text.matches('\'').count() % 2, 0, "{}", q.text);
            }
        }
    }

    #[test]
    fn privileged_lists_are_parameters() {
        let s = sections()
            .into_iter()
            .find(|s| s.id == "privileged_access")
            .expect("section");
        let q = compile(&s, &Dialect::Postgres);
        assert_eq!(
            q.params,
            vec![
                Param::From,
                Param::To,
                Param::PrivilegedRoles,
                Param::PrivilegedGroups
            ]
        );
        assert!(q.text.contains("roles && $3::text[]"), "{}", q.text);
        assert!(q.text.contains("groups && $4::text[]"), "{}", q.text);
    }

    #[test]
    fn constants_are_quoted_and_the_duckdb_path_is_escaped() {
        assert_eq!(literal("it's"), "'it''s'");
        let s = &sections()[0];
        let q = compile(
            s,
            &Dialect::DuckDb {
                data_dir: "/d/o'x/".into(),
                files: None,
            },
        );
        assert!(
            q.text
                .contains("read_parquet('/d/o''x/**/*.parquet', hive_partitioning = true)"),
            "{}",
            q.text
        );
        let q = compile(
            s,
            &Dialect::DuckDb {
                data_dir: "/d".into(),
                files: Some(vec!["/d/a'1.parquet".into(), "/d/b.parquet".into()]),
            },
        );
        assert!(
            q.text.contains(
                "read_parquet(['/d/a''1.parquet', '/d/b.parquet'], hive_partitioning = true)"
            ),
            "{}",
            q.text
        );
    }

    #[test]
    fn the_latest_caller_name_is_one_cte_joined_on_the_key_in_both_dialects() {
        let s = sections()
            .into_iter()
            .find(|s| s.id == "access_review")
            .expect("section");
        for (d, order, apps) in [
            (
                Dialect::Postgres,
                "ORDER BY start_time DESC, l COLLATE \"C\" DESC",
                "array_agg(DISTINCT client_apps COLLATE \"C\"",
            ),
            (
                Dialect::DuckDb {
                    data_dir: "/d".into(),
                    files: None,
                },
                "ORDER BY start_time DESC, l DESC",
                "list_sort(list_distinct(list(client_apps)))",
            ),
        ] {
            let q = compile(&s, &d);
            assert!(q.text.starts_with("WITH latest_caller AS ("), "{}", q.text);
            assert!(q.text.contains(order), "{}", q.text);
            assert!(q.text.contains(apps), "{}", q.text);
            assert!(
                q.text
                    .contains("LEFT JOIN latest_caller AS l_caller ON l_caller.k = CASE WHEN"),
                "{}",
                q.text
            );
            // The attributes are not grouped by; the key is.
            let group_by = q.text.split("GROUP BY ").last().expect("group by");
            assert!(group_by.contains("caller_id") && !group_by.contains("client_apps"));
            // Only the time range is bound, once per use.
            assert_eq!(q.params, [Param::From, Param::To]);
        }
    }
}
