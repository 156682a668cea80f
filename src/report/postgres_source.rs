//! Runs the sections' SQL against Postgres: one read-only, repeatable-read transaction, so every
//! section sees the same snapshot even while the collector keeps writing; user values only as
//! bound parameters.

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Connection, Row as _};

use super::eval::ListParams;
use super::result::{Key, Row, Table};
use super::spec::{GroupExpr, Param, Section};
use super::sql::{compile, Dialect};
use super::time::TimeRange;
use super::ReportError;
use crate::store::postgres::url::DatabaseUrl;
use crate::store::postgres::{connect, connect_options, PgError};

fn query_err(e: sqlx::Error, context: &'static str) -> ReportError {
    let reason = crate::store::postgres::url::redact(&e.to_string());
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("42P01") => return ReportError::NoTable,
            Some("42501") => {
                return ReportError::Postgres(PgError::Permission {
                    role: "the report's role".into(),
                    what: "SELECT on audit_records".into(),
                    fix: "GRANT SELECT ON audit_records TO <role>".into(),
                })
            }
            _ => {}
        }
    }
    ReportError::Postgres(PgError::Query { context, reason })
}

/// The server and database the report read (no user, no password).
pub fn describe(url: &DatabaseUrl) -> Result<String, ReportError> {
    let o = connect_options(url)?;
    Ok(format!(
        "{}:{}/{}",
        o.get_host(),
        o.get_port(),
        o.get_database().unwrap_or(o.get_username())
    ))
}

/// Evaluates every section; results in the order of `sections`.
pub async fn run(
    url: &DatabaseUrl,
    sections: &[Section],
    range: &TimeRange,
    params: &ListParams,
) -> Result<Vec<Table>, ReportError> {
    let opts = connect_options(url)?;
    let mut conn = connect(&opts).await?;
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| query_err(e, "starting a read-only transaction"))?;
    let from = range.from.rfc3339();
    let to = range.to.rfc3339();
    let mut out = Vec::with_capacity(sections.len());
    for s in sections {
        let q = compile(s, &Dialect::Postgres);
        let mut query = sqlx::query(AssertSqlSafe(q.text));
        for p in &q.params {
            query = match p {
                Param::From => query.bind(from.clone()),
                Param::To => query.bind(to.clone()),
                list => query.bind(params.get(*list).to_vec()),
            };
        }
        let rows = query
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| query_err(e, "running a report query"))?;
        let rows = rows
            .iter()
            .map(|r| read_row(s, r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| query_err(e, "reading a report row"))?;
        out.push(Table::new(rows));
    }
    tx.rollback()
        .await
        .map_err(|e| query_err(e, "ending the read-only transaction"))?;
    Ok(out)
}

fn read_row(s: &Section, r: &PgRow) -> Result<Row, sqlx::Error> {
    let mut keys = Vec::with_capacity(s.group_by.len());
    for (i, g) in s.group_by.iter().enumerate() {
        keys.push(match g.expr {
            GroupExpr::Intersect(..) | GroupExpr::Values(_) => {
                let v: Option<Vec<String>> = r.try_get(i)?;
                Key::List(v.unwrap_or_default())
            }
            GroupExpr::Col(_)
            | GroupExpr::Coalesce(_)
            | GroupExpr::Case(_)
            | GroupExpr::Latest { .. } => {
                let v: Option<String> = r.try_get(i)?;
                Key::from_text(v.as_deref())
            }
        });
    }
    let mut measures = Vec::with_capacity(s.measures.len());
    for i in 0..s.measures.len() {
        let n: i64 = r.try_get(s.group_by.len() + i)?;
        measures.push(u64::try_from(n).unwrap_or(0));
    }
    Ok(Row { keys, measures })
}
