//! dashboards/*.json: the Grafana model checked statically, and every panel and variable query
//! run against a real PostgreSQL the way Grafana would run it.
//!
//! Seeding: a throwaway cluster (common/pg.rs) gets the schema from `meshaudit migrate`; the real
//! collector (`meshaudit serve --database-url`, Entra verification against a local JWKS endpoint,
//! a directory snapshot) receives crafted Envoy entries for the rare cases (every token status,
//! guests, managed identities, group overage, authorizer errors, 5xx with response flags) ten
//! days back, and `meshaudit loadgen` traffic now. Two days therefore have partitions.
//!
//! Static checks (rules.rs) hold the JSON model, the SQL as written and the provisioning files
//! to the conventions of dashboards/README.md. Then each query is expanded as Grafana expands it
//! (grafana.rs: variable interpolation, then the PostgreSQL macros) and run as the read-only role
//! deploy/grafana/README.md tells operators to create:
//! - over the whole seed with every filter on All: it runs, has the shape its panel format needs,
//!   returns data in every column, and equals the same query with its filters removed;
//! - with filters selected: it equals the filter-free query run on a view holding only the
//!   selected rows (so each variable filters exactly its column, and All filters nothing);
//! - over a window of the older day: EXPLAIN shows only that day's partition is read;
//! - over a range with no data: nothing but zeros and NULLs comes back;
//! - with an identity or destination namespace selected and sequential scans disabled: every
//!   partition is read through an index.

#[path = "../common/mod.rs"]
mod common;
mod grafana;
mod model;
mod query;
mod rules;
mod seed;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use meshaudit::record::values;
use sqlx::{Connection, PgConnection};

use common::pg::PgCluster;
use model::*;
use query::*;
use rules::{grafana_readme, sql_problems};
use seed::*;

/// The README's role, created by running its SQL block as written.
fn create_reader(pg: &PgCluster, db: &str) -> String {
    let readme = grafana_readme();
    let block = readme
        .split("```sql")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```sql block in deploy/grafana/README.md");
    pg.psql(db, block);
    let role = block
        .split_whitespace()
        .skip_while(|w| *w != "ROLE")
        .nth(1)
        .expect("CREATE ROLE in the README's SQL")
        .to_owned();
    format!("postgres://{role}@127.0.0.1:{}/{db}", pg.port)
}

/// Filter selections checked against views holding only the selected rows.
fn selections() -> Vec<Vec<(&'static str, Vec<String>)>> {
    vec![
        vec![("dst_ns", vec!["payments".into()])],
        vec![("dst_ns", vec!["payments".into(), "shop".into()])],
        vec![("src_ns", vec!["frontend".into()])],
        vec![("identity", vec![OBRIEN.into()])],
        vec![("identity", vec![ADA.into(), MI_OID.into()])],
        vec![("app", vec![WEB_APP.into()])],
        vec![
            ("dst_ns", vec!["payments".into()]),
            ("identity", vec![ADA.into()]),
        ],
    ]
}

/// Schema `oracle{n}` with a view `audit_records` of the rows selection `n` selects, written
/// here with plain SQL quoting (not Grafana's).
fn create_oracles(pg: &PgCluster, db: &str, selections: &[Vec<(&str, Vec<String>)>]) {
    let literal = |v: &str| format!("'{}'", v.replace('\'', "''"));
    for (n, sel) in selections.iter().enumerate() {
        let conds: Vec<String> = sel
            .iter()
            .map(|(var, vals)| {
                let list: Vec<String> = vals.iter().map(|v| literal(v)).collect();
                format!("{} IN ({})", column_of(var), list.join(", "))
            })
            .collect();
        pg.psql(
            db,
            &format!(
                "CREATE SCHEMA oracle{n};
                 CREATE VIEW oracle{n}.audit_records AS
                   SELECT * FROM public.audit_records WHERE {};
                 GRANT USAGE ON SCHEMA oracle{n} TO PUBLIC;
                 GRANT SELECT ON oracle{n}.audit_records TO PUBLIC;",
                conds.join(" AND ")
            ),
        );
    }
}

struct Suite {
    conn: PgConnection,
    failures: Vec<String>,
    ran: usize,
    /// The whole seed.
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl Suite {
    fn fail(&mut self, q: &Query, m: impl std::fmt::Display) {
        self.failures.push(format!("{}: {m}", q.label()));
    }

    async fn run(&mut self, q: &Query, sql: &str) -> Table {
        self.ran += 1;
        must_run(&mut self.conn, q, sql).await
    }

    async fn partitions_read(&mut self, q: &Query, sql: &str) -> BTreeSet<String> {
        self.ran += 1;
        explain(&mut self.conn, q, sql)
            .await
            .into_iter()
            .map(|n| n.relation)
            .filter(|r| is_day_partition(r))
            .collect()
    }

    /// Step 1: the whole seed, every filter on All: shape, data in every column, and the same rows
    /// as the query without its filters. Returns the results by query.
    async fn whole_seed(&mut self, d: &Dash) -> BTreeMap<String, Table> {
        let ctx = ctx_for(d, self.from, self.to, "15m", &[]);
        let mut results = BTreeMap::new();
        for q in queries(d) {
            // The checks below rely on the filter convention: a query that breaks it is
            // reported here too, not skipped.
            for m in sql_problems(&q) {
                self.fail(&q, m);
            }
            let sql = q.expand(&ctx);
            let t = self.run(&q, &sql).await;
            for m in shape_problems(&q, &t, 900.0)
                .into_iter()
                .chain(data_problems(&t))
            {
                self.fail(&q, format!("{m}\n{sql}"));
            }
            let plain = q.expand_with_sql(&ctx, &without_filters(&q.sql, &all_filter_names()));
            if self.run(&q, &plain).await != t {
                self.fail(&q, "All does not keep every row");
            }
            results.insert(q.what.clone(), t);
        }
        // Daily buckets too, for the series.
        let ctx = ctx_for(d, self.from, self.to, "1d", &[]);
        for q in queries(d)
            .into_iter()
            .filter(|q| q.format == Format::TimeSeries)
        {
            let t = self.run(&q, &q.expand(&ctx)).await;
            for m in shape_problems(&q, &t, 86_400.0) {
                self.fail(&q, format!("(1d) {m}"));
            }
        }
        results
    }

    /// Step 2: each selection equals the filter-free query on the oracle view of the selected rows,
    /// and changes something.
    async fn selected(
        &mut self,
        d: &Dash,
        selections: &[Vec<(&str, Vec<String>)>],
        all: &BTreeMap<String, Table>,
    ) {
        for (n, sel) in selections.iter().enumerate() {
            let ctx = ctx_for(d, self.from, self.to, "15m", sel);
            let all_ctx = ctx_for(d, self.from, self.to, "15m", &[]);
            let vars: Vec<&str> = sel.iter().map(|(v, _)| *v).collect();
            let (mut with_data, mut differs) = (0, 0);
            for q in queries(d)
                .into_iter()
                .filter(|q| vars.iter().all(|v| q.filters().contains(v)))
            {
                let got = self.run(&q, &q.expand(&ctx)).await;
                exec(&mut self.conn, &format!("SET search_path TO oracle{n}")).await;
                let oracle = q.expand_with_sql(&all_ctx, &without_filters(&q.sql, &vars));
                let want = self.run(&q, &oracle).await;
                exec(&mut self.conn, "RESET search_path").await;
                if got != want {
                    self.fail(
                        &q,
                        format!(
                            "with {sel:?} the filter does not select exactly the matching rows\n got: {:?}\nwant: {:?}",
                            &got.rows[..got.rows.len().min(5)],
                            &want.rows[..want.rows.len().min(5)]
                        ),
                    );
                }
                with_data += usize::from(!empty_problems(&got).is_empty());
                differs += usize::from(all.get(&q.what) != Some(&got));
            }
            if with_data == 0 || differs == 0 {
                self.failures.push(format!(
                    "{}: selecting {sel:?} returns nothing ({with_data} queries with data) or changes nothing ({differs} differ)",
                    d.file
                ));
            }
        }
    }

    /// Step 3: a window of the crafted day reads that day's partition and no other.
    async fn pruned(&mut self, d: &Dash, seed: &Seed, existing: &BTreeSet<String>) {
        let from = seed.crafted_from - chrono::Duration::minutes(10);
        let to = seed.crafted_to + chrono::Duration::minutes(10);
        let ctx = ctx_for(d, from, to, "10s", &[]);
        let in_range: BTreeSet<String> = partitions_between(from, to)
            .intersection(existing)
            .cloned()
            .collect();
        assert!(
            !in_range.is_empty(),
            "no partition for the crafted day: {existing:?}"
        );
        for q in queries(d) {
            let sql = q.expand(&ctx);
            self.run(&q, &sql).await;
            let read = self.partitions_read(&q, &sql).await;
            if read != in_range {
                self.fail(
                    &q,
                    format!("reads partitions {read:?}; the range covers {in_range:?}"),
                );
            }
        }
    }

    /// Step 4: a range without data: zeros and NULLs only, and no day partition read.
    async fn empty_range(&mut self, d: &Dash) {
        let from = grafana::utc(978_307_200, 0); // 2001-01-01
        let ctx = ctx_for(d, from, from + chrono::Duration::days(1), "1m", &[]);
        for q in queries(d) {
            // The checks below rely on the filter convention: a query that breaks it is
            // reported here too, not skipped.
            for m in sql_problems(&q) {
                self.fail(&q, m);
            }
            let sql = q.expand(&ctx);
            let t = self.run(&q, &sql).await;
            for m in empty_problems(&t) {
                self.fail(&q, format!("(2001) {m}"));
            }
            let read = self.partitions_read(&q, &sql).await;
            if !read.is_empty() {
                self.fail(&q, format!("(2001) reads {read:?}"));
            }
        }
    }

    /// Step 5: a selected identity or destination namespace is read through an index: with
    /// sequential scans disabled, none is left on a partition.
    async fn indexed(&mut self, d: &Dash) {
        exec(&mut self.conn, "SET enable_seqscan = off").await;
        for (var, value) in [("identity", ADA), ("dst_ns", "payments")] {
            let ctx = ctx_for(
                d,
                self.from,
                self.to,
                "15m",
                &[(var, vec![value.to_owned()])],
            );
            for q in queries(d)
                .into_iter()
                .filter(|q| q.filters().contains(&var))
            {
                self.ran += 1;
                let seq: Vec<String> = explain(&mut self.conn, &q, &q.expand(&ctx))
                    .await
                    .into_iter()
                    .filter(|n| n.node == "Seq Scan" && n.relation.starts_with("audit_records"))
                    .map(|n| n.relation)
                    .collect();
                if !seq.is_empty() {
                    self.fail(
                        &q,
                        format!("with {var} selected, sequential scans of {seq:?}"),
                    );
                }
            }
        }
        exec(&mut self.conn, "RESET enable_seqscan").await;
    }

    /// A panel's result over the whole seed, with `selections`.
    async fn panel(
        &mut self,
        dashes: &[Dash],
        file: &str,
        title: &str,
        selections: &[(&str, Vec<String>)],
    ) -> Table {
        self.query(dashes, file, &format!("{title:?}"), selections)
            .await
    }

    /// The result over the whole seed, with `selections`, of the query whose label ends with
    /// `what` (a quoted panel title, or `variable NAME`).
    async fn query(
        &mut self,
        dashes: &[Dash],
        file: &str,
        what: &str,
        selections: &[(&str, Vec<String>)],
    ) -> Table {
        let d = dashes
            .iter()
            .find(|d| d.file == file)
            .unwrap_or_else(|| panic!("no dashboard {file}"));
        let q = queries(d)
            .into_iter()
            .find(|q| q.what.ends_with(what))
            .unwrap_or_else(|| panic!("{file}: no query {what}"));
        let ctx = ctx_for(d, self.from, self.to, "15m", selections);
        self.run(&q, &q.expand(&ctx)).await
    }

    /// Two people without name claims, signed in through the same client app: their records
    /// carry the app's name, yet every dashboard shows two callers named by their object ids.
    async fn callers_are_principals(&mut self, dashes: &[Dash]) {
        let app = "orders-web";
        for (oid, requests, _) in NAMELESS {
            let stored = self
                .count(&format!(
                    "object_id = '{oid}' AND identity_kind = 'user' AND token_status = 'verified' \
                     AND user_principal IS NULL AND display_name IS NULL \
                     AND app_display_name = '{app}'"
                ))
                .await;
            self.expect_eq(
                &format!("{oid}: verified records through {app} without a name"),
                stored,
                requests as f64,
            );
        }
        let rows_of = |t: &Table, col: &str, v: &str| -> Vec<usize> {
            (0..t.rows.len())
                .filter(|&r| t.value(r, col) == Some(v))
                .collect()
        };

        let t = self
            .panel(dashes, "authorization.json", "Denied callers", &[])
            .await;
        for (oid, _, denied) in NAMELESS {
            match rows_of(&t, "Caller ID", oid)[..] {
                [r] => {
                    if t.value(r, "Caller") != Some(oid) {
                        self.failures.push(format!(
                            "Denied callers labels {oid} as {:?}",
                            t.value(r, "Caller")
                        ));
                    }
                    self.expect_eq(
                        &format!("Denied callers: {oid}'s denials"),
                        t.number(r, "Denials"),
                        denied as f64,
                    );
                }
                _ => self
                    .failures
                    .push(format!("Denied callers: not one row for {oid}: {t:?}")),
            }
        }

        let t = self
            .panel(dashes, "authorization.json", "Recent denials", &[])
            .await;
        for (oid, _, denied) in NAMELESS {
            let rows = rows_of(&t, "Caller ID", oid);
            let named = rows_of(&t, "Caller", oid);
            if rows.len() != denied || named != rows {
                self.failures.push(format!(
                    "Recent denials: {oid} has {} rows, {} labelled by its object id; expected {denied}",
                    rows.len(),
                    named.len()
                ));
            }
        }

        let t = self
            .query(dashes, "authorization.json", "variable identity", &[])
            .await;
        for (oid, _, _) in NAMELESS {
            match rows_of(&t, "__value", oid)[..] {
                [r] if t.value(r, "__text") == Some(&format!("{oid} (user)")) => {}
                _ => self.failures.push(format!(
                    "identity variable: {oid} is not labelled by its id: {t:?}"
                )),
            }
        }

        let t = self
            .panel(
                dashes,
                "token-health.json",
                "Anomalies by claimed identity",
                &[],
            )
            .await;
        let rows = rows_of(&t, "Claimed object ID", NAMELESS_2);
        if rows.len() != 1 || rows_of(&t, "Claimed identity", NAMELESS_2) != rows {
            self.failures.push(format!(
                "Anomalies by claimed identity: the forged {NAMELESS_2} is not one row labelled by its id: {t:?}"
            ));
        }

        for (file, title, col) in [
            ("authorization.json", "Denied callers", "Caller"),
            ("authorization.json", "Recent denials", "Caller"),
            (
                "token-health.json",
                "Anomalies by claimed identity",
                "Claimed identity",
            ),
            ("token-health.json", "Tokens with group overage", "Identity"),
        ] {
            let t = self.panel(dashes, file, title, &[]).await;
            if !rows_of(&t, col, app).is_empty() {
                self.failures.push(format!(
                    "{file} {title:?} names a caller by the client app {app}"
                ));
            }
        }
    }

    /// A direct count over the whole seed, to hold panel values against.
    async fn count(&mut self, cond: &str) -> f64 {
        let sql = format!(
            "SELECT count(*) FROM audit_records WHERE start_time BETWEEN '{}' AND '{}' AND {cond}",
            grafana::rfc3339_nano(self.from),
            grafana::rfc3339_nano(self.to)
        );
        let t = run(&mut self.conn, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        t.number(0, "count")
    }

    fn expect_eq(&mut self, what: &str, got: f64, want: f64) {
        if got != want {
            self.failures
                .push(format!("{what}: {got}, expected {want}"));
        }
    }

    /// Values that mean something: panels agree with direct counts and with the seed.
    async fn values_agree(&mut self, dashes: &[Dash]) {
        let t = self
            .panel(dashes, "access-overview.json", "Requests", &[])
            .await;
        let all = self.count("TRUE").await;
        self.expect_eq("overview Requests", t.number(0, "Requests"), all);

        let verified = "token_status IN ('verified', 'proxy_verified')";
        let t = self
            .panel(dashes, "identities.json", "Token verification", &[])
            .await;
        let want = self.count(verified).await;
        self.expect_eq(
            "verified token requests",
            t.number(0, "Requests with a verified token"),
            want,
        );
        let want = self
            .count(&format!("NOT {verified} AND token_status <> 'absent'"))
            .await;
        self.expect_eq(
            "unverified token requests",
            t.number(0, "Requests with an unverified token"),
            want,
        );

        // Ada sent three verified requests; a forged token claimed her identity once.
        let ada = vec![("identity", vec![ADA.to_owned()])];
        let t = self.panel(dashes, "identities.json", "Users", &ada).await;
        let rows: Vec<usize> = (0..t.rows.len())
            .filter(|&r| t.value(r, "Object ID") == Some(ADA))
            .collect();
        if rows.len() == 1 && t.rows.len() == 1 {
            self.expect_eq(
                "Ada's verified requests",
                t.number(0, "Verified requests"),
                3.0,
            );
            self.expect_eq(
                "Ada's unverified requests",
                t.number(0, "Unverified requests"),
                1.0,
            );
            if t.value(0, "User") != Some(ADA_UPN) {
                self.failures
                    .push(format!("Ada's row names {:?}", t.value(0, "User")));
            }
        } else {
            self.failures
                .push(format!("Users with Ada selected: {t:?}"));
        }

        // The quote and backslash in an object id survive Grafana's quoting.
        let obrien = vec![("identity", vec![OBRIEN.to_owned()])];
        let t = self
            .panel(dashes, "identities.json", "Users", &obrien)
            .await;
        if t.rows.len() == 1 && t.value(0, "Object ID") == Some(OBRIEN) {
            self.expect_eq(
                "O'Brien's verified requests",
                t.number(0, "Verified requests"),
                2.0,
            );
        } else {
            self.failures
                .push(format!("Users with {OBRIEN:?} selected: {t:?}"));
        }

        // Certificates and peer metadata are told apart, old rows included (`mtls` without a
        // source_principal was peer metadata before `peer_metadata` existed).
        let t = self
            .panel(dashes, "identities.json", "Identity sources", &[])
            .await;
        let by_source = |t: &Table, source: &str| {
            (0..t.rows.len())
                .find(|&r| t.value(r, "Source") == Some(source))
                .map_or(0.0, |r| t.number(r, "Requests"))
        };
        let want = self
            .count("identity_source = 'peer_metadata' OR (identity_source = 'mtls' AND source_principal IS NULL)")
            .await;
        if want < 3.0 {
            self.failures.push(format!(
                "the seed has {want} peer-metadata rows, expected 3"
            ));
        }
        self.expect_eq("peer_metadata source", by_source(&t, "peer_metadata"), want);
        let want = self
            .count("identity_source = 'mtls' AND source_principal IS NOT NULL")
            .await;
        self.expect_eq("mtls source", by_source(&t, "mtls"), want);
        let t = self
            .panel(dashes, "identities.json", "Workloads without a token", &[])
            .await;
        let peer_only: f64 = (0..t.rows.len())
            .filter(|&r| t.value(r, "Identified by") == Some("peer metadata only"))
            .map(|r| t.number(r, "Requests"))
            .sum();
        let want = self
            .count("identity_kind = 'workload' AND source_principal IS NULL")
            .await;
        self.expect_eq("workloads by peer metadata only", peer_only, want);

        let t = self
            .panel(dashes, "token-health.json", "Token anomalies", &[])
            .await;
        for status in [
            values::TOKEN_EXPIRED,
            values::TOKEN_NOT_YET_VALID,
            values::TOKEN_BAD_SIGNATURE,
            values::TOKEN_WRONG_AUDIENCE,
            values::TOKEN_UNKNOWN_KEY,
            values::TOKEN_UNTRUSTED_ISSUER,
            values::TOKEN_MALFORMED,
        ] {
            let want = self.count(&format!("token_status = '{status}'")).await;
            self.expect_eq(&format!("anomaly {status}"), t.number(0, status), want);
        }
    }
}

#[test]
fn every_panel_and_variable_query_runs_on_seeded_postgres() {
    let pg = PgCluster::start();
    let db = "dashboards";
    let url = pg.create_db(db);
    let seed = seed(&pg, db, &url);
    let reader_url = create_reader(&pg, db);
    let selections = selections();
    create_oracles(&pg, db, &selections);
    let existing: BTreeSet<String> = pg
        .psql(
            db,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'audit_records'::regclass",
        )
        .lines()
        .map(str::to_owned)
        .collect();
    let dashes = dashboards();

    rt().block_on(async {
        let conn = PgConnection::connect(&reader_url)
            .await
            .expect("connect as the Grafana role");
        let mut s = Suite {
            conn,
            failures: vec![],
            ran: 0,
            from: seed.crafted_from - chrono::Duration::hours(1),
            to: seed.now + chrono::Duration::minutes(5),
        };
        for d in &dashes {
            let all = s.whole_seed(d).await;
            s.selected(d, &selections, &all).await;
            s.pruned(d, &seed, &existing).await;
            s.empty_range(d).await;
            s.indexed(d).await;
        }
        s.values_agree(&dashes).await;
        s.callers_are_principals(&dashes).await;
        assert!(s.ran > 500, "ran only {} queries", s.ran);
        assert!(
            s.failures.is_empty(),
            "{} problems:\n{}",
            s.failures.len(),
            s.failures.join("\n\n")
        );
    });
}
