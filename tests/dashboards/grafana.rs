//! What Grafana does to a PostgreSQL panel query before the database sees it, so that the
//! dashboards' SQL can be run here exactly as Grafana 11/12 would run it:
//!
//! 1. The browser (`templateSrv.replace`) substitutes template variables: `$name`, `${name}`,
//!    `${name:format}`, `[[name]]`, plus the panel's `$__interval` / `$__interval_ms`. Macros such
//!    as `$__timeFilter` are not variables and pass through untouched.
//! 2. The backend (`sqleng.Interpolate`) substitutes `$__interval_ms`, `$__interval`,
//!    `$__unixEpochFrom()`, `$__unixEpochTo()`.
//! 3. The PostgreSQL macro engine (`pkg/tsdb/grafana-postgresql-datasource/macros.go`) expands
//!    every `$name(args)` (regexp `\$([_a-zA-Z0-9]+)\(([^\)]*)\)`): `$__timeFilter(col)` →
//!    `col BETWEEN 'FROM' AND 'TO'` (RFC 3339, UTC, Go's trailing-zero-free fraction),
//!    `$__timeGroup(col, 5m)` → `floor(extract(epoch from col)/300)*300` (`%v` of the seconds),
//!    `$__timeGroupAlias` adds ` AS "time"`, `$__timeFrom()` → `'FROM'`, ...; an unknown macro
//!    is an error.
//!
//! Formats follow Grafana's format registry: `sqlstring` quotes each value, doubles `'` and
//! turns `"` into `\"`; `singlequote` escapes `'` with a backslash; a custom all value
//! (`allValue`) is inserted as is, whatever the format. Queries without an explicit format are
//! refused: the SQL data sources changed their default quoting between Grafana versions.
// The emulation covers Grafana's macro set and formats, not only what the dashboards use today.
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};

/// One dashboard variable's definition, as far as interpolation needs it.
#[derive(Debug, Clone)]
pub struct VarDef {
    pub name: String,
    pub multi: bool,
    pub include_all: bool,
    pub all_value: Option<String>,
}

/// What is selected in a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Values(Vec<String>),
}

/// A variable with its selection and the values its query offered (what All expands to when
/// the variable has no custom all value).
#[derive(Debug, Clone)]
pub struct Bound {
    pub def: VarDef,
    pub selection: Selection,
    pub options: Vec<String>,
}

/// Everything a query is interpolated with: the dashboard time range, the panel interval and
/// the variables.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The panel's interval in milliseconds (`$__interval`, `$__interval_ms`).
    pub interval_ms: i64,
    pub vars: BTreeMap<String, Bound>,
}

impl Ctx {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>, interval: &str) -> Ctx {
        let interval_ms = parse_interval_ms(interval)
            .unwrap_or_else(|e| panic!("bad test interval {interval}: {e}"));
        Ctx {
            from,
            to,
            interval_ms,
            vars: BTreeMap::new(),
        }
    }

    pub fn bind(&mut self, def: VarDef, selection: Selection, options: Vec<String>) {
        self.vars.insert(
            def.name.clone(),
            Bound {
                def,
                selection,
                options,
            },
        );
    }

    pub fn select(&mut self, name: &str, selection: Selection) {
        self.vars
            .get_mut(name)
            .unwrap_or_else(|| panic!("no variable {name} bound"))
            .selection = selection;
    }
}

/// The SQL PostgreSQL receives for a panel target (`rawSql`).
pub fn expand_panel_sql(sql: &str, ctx: &Ctx) -> Result<String, String> {
    let scoped = BTreeMap::from([
        ("__interval".to_owned(), format_interval(ctx.interval_ms)),
        ("__interval_ms".to_owned(), ctx.interval_ms.to_string()),
    ]);
    let browser = template_replace(sql, ctx, &scoped)?;
    macros(&backend_interpolate(&browser, ctx), ctx)
}

/// The SQL PostgreSQL receives for a query variable (`metricFindQuery`: no panel interval).
pub fn expand_variable_sql(sql: &str, ctx: &Ctx) -> Result<String, String> {
    let browser = template_replace(sql, ctx, &BTreeMap::new())?;
    macros(&backend_interpolate(&browser, ctx), ctx)
}

// ---------------------------------------------------------------------------------------------
// 1. The browser: templateSrv.replace.

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A variable reference found in SQL: its byte span, name and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRef {
    pub start: usize,
    pub end: usize,
    pub name: String,
    pub format: Option<String>,
}

/// Every reference Grafana's variable regexp matches, left to right:
/// `\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\${(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?}`.
pub fn variable_refs(sql: &str) -> Vec<VarRef> {
    let b = sql.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let word_end = |from: usize| {
                let mut j = from;
                while j < b.len() && is_word(b[j] as char) {
                    j += 1;
                }
                j
            };
            let j = word_end(i + 1);
            if j > i + 1 {
                out.push(VarRef {
                    start: i,
                    end: j,
                    name: sql[i + 1..j].to_owned(),
                    format: None,
                });
                i = j;
                continue;
            }
            if b.get(i + 1) == Some(&b'{') {
                let n_end = word_end(i + 2);
                if let Some(close) = sql[n_end..].find('}').map(|k| n_end + k) {
                    let name = &sql[i + 2..n_end];
                    let rest = &sql[n_end..close];
                    // `.fieldPath` then `:format`; the field path never holds ':' or '^'.
                    let ok_rest = rest.is_empty() || rest.starts_with('.') || rest.starts_with(':');
                    if !name.is_empty() && ok_rest {
                        let format = rest.split_once(':').map(|(_, f)| f.to_owned());
                        out.push(VarRef {
                            start: i,
                            end: close + 1,
                            name: name.to_owned(),
                            format,
                        });
                        i = close + 1;
                        continue;
                    }
                }
            }
        } else if sql[i..].starts_with("[[") {
            if let Some(close) = sql[i + 2..].find("]]").map(|k| i + 2 + k) {
                let inner = &sql[i + 2..close];
                let (name, format) = match inner.split_once(':') {
                    Some((n, f)) => (n, Some(f.to_owned())),
                    None => (inner, None),
                };
                if !name.is_empty() && name.chars().all(is_word) {
                    out.push(VarRef {
                        start: i,
                        end: close + 2,
                        name: name.to_owned(),
                        format,
                    });
                    i = close + 2;
                    continue;
                }
            }
        }
        i += sql[i..].chars().next().map_or(1, char::len_utf8);
    }
    out
}

fn template_replace(
    sql: &str,
    ctx: &Ctx,
    scoped: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for r in variable_refs(sql) {
        out.push_str(&sql[last..r.start]);
        last = r.end;
        if let Some(v) = scoped.get(&r.name) {
            // Scoped values (the interval) are plain strings: no quoting applies.
            out.push_str(v);
        } else if let Some(b) = ctx.vars.get(&r.name) {
            out.push_str(&format_variable(b, r.format.as_deref(), ctx, scoped)?);
        } else {
            // Not a variable (a macro such as $__timeFilter): left for the backend.
            out.push_str(&sql[r.start..r.end]);
        }
    }
    out.push_str(&sql[last..]);
    Ok(out)
}

fn format_variable(
    b: &Bound,
    format: Option<&str>,
    ctx: &Ctx,
    scoped: &BTreeMap<String, String>,
) -> Result<String, String> {
    let values: Vec<String> = match &b.selection {
        Selection::All => {
            if !b.def.include_all {
                return Err(format!("{} has no All option", b.def.name));
            }
            if let Some(custom) = &b.def.all_value {
                // Grafana skips formatting of a custom all value (except text/percentencode)
                // and interpolates variables inside it.
                return template_replace(custom, ctx, scoped);
            }
            b.options.clone()
        }
        Selection::Values(v) => v.clone(),
    };
    match format {
        Some("sqlstring") => Ok(sqlstring(&values)),
        Some("singlequote") => Ok(values
            .iter()
            .map(|v| format!("'{}'", v.replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(",")),
        Some("csv") | Some("raw") => Ok(values.join(",")),
        Some(other) => Err(format!("format {other} is not emulated here")),
        None => Err(format!(
            "${} has no explicit format: the SQL data sources' default quoting differs between Grafana versions; write ${{{}:sqlstring}}",
            b.def.name, b.def.name
        )),
    }
}

/// Grafana's `sqlstring` format: `'a','b'`, `'` doubled, `"` turned into `\"`.
pub fn sqlstring(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------------
// 2. The backend: sqleng.Interpolate.

fn backend_interpolate(sql: &str, ctx: &Ctx) -> String {
    sql.replace("$__interval_ms", &ctx.interval_ms.to_string())
        .replace("$__interval", &format_interval(ctx.interval_ms))
        .replace("$__unixEpochFrom()", &ctx.from.timestamp().to_string())
        .replace("$__unixEpochTo()", &ctx.to.timestamp().to_string())
}

// ---------------------------------------------------------------------------------------------
// 3. The PostgreSQL macro engine.

/// Every `$name(args)` the engine's regexp matches: (start, end, name, raw args).
pub fn macro_calls(sql: &str) -> Vec<(usize, usize, String, String)> {
    let b = sql.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j > i + 1 && b.get(j) == Some(&b'(') {
                if let Some(close) = sql[j + 1..].find(')').map(|k| j + 1 + k) {
                    out.push((
                        i,
                        close + 1,
                        sql[i + 1..j].to_owned(),
                        sql[j + 1..close].to_owned(),
                    ));
                    i = close + 1;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

fn macros(sql: &str, ctx: &Ctx) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for (start, end, mut name, raw_args) in macro_calls(sql) {
        out.push_str(&sql[last..start]);
        last = end;
        // Pre-5.3 compatibility: a $__timeGroup directly followed by ',' gets its alias (Grafana
        // looks at the first occurrence of the same text).
        if name == "__timeGroup" {
            let text = &sql[start..end];
            if let Some(at) = sql.find(text) {
                if sql[at + text.len()..].starts_with(',') {
                    name = "__timeGroupAlias".to_owned();
                }
            }
        }
        let args: Vec<String> = raw_args
            .split(',')
            .map(|a| a.trim_matches(' ').to_owned())
            .collect();
        out.push_str(&evaluate(&name, &args, ctx)?);
    }
    out.push_str(&sql[last..]);
    Ok(out)
}

fn evaluate(name: &str, args: &[String], ctx: &Ctx) -> Result<String, String> {
    let col = || {
        args.first()
            .filter(|a| !a.is_empty())
            .cloned()
            .ok_or_else(|| format!("missing time column argument for macro {name}"))
    };
    let from = rfc3339_nano(ctx.from);
    let to = rfc3339_nano(ctx.to);
    Ok(match name {
        "__time" => format!("{} AS \"time\"", col()?),
        "__timeEpoch" => format!("extract(epoch from {}) as \"time\"", col()?),
        "__timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", col()?),
        "__timeFrom" => format!("'{from}'"),
        "__timeTo" => format!("'{to}'"),
        "__timeGroup" | "__timeGroupAlias" => {
            let secs = group_seconds(name, args)?;
            let s = go_float(secs);
            let group = format!("floor(extract(epoch from {})/{s})*{s}", args[0]);
            if name == "__timeGroupAlias" {
                format!("{group} AS \"time\"")
            } else {
                group
            }
        }
        "__unixEpochFilter" => {
            let c = col()?;
            format!(
                "{c} >= {} AND {c} <= {}",
                ctx.from.timestamp(),
                ctx.to.timestamp()
            )
        }
        "__unixEpochGroup" | "__unixEpochGroupAlias" => {
            let s = go_float(group_seconds(name, args)?);
            let group = format!("floor(({})/{s})*{s}", args[0]);
            if name == "__unixEpochGroupAlias" {
                format!("{group} AS \"time\"")
            } else {
                group
            }
        }
        other => return Err(format!("unknown macro \"{other}\"")),
    })
}

/// The interval of a group macro in seconds, with the optional fill argument validated as
/// Grafana's SetupFillmode does (NULL, previous, or a number).
fn group_seconds(name: &str, args: &[String]) -> Result<f64, String> {
    if args.len() < 2 {
        return Err(format!(
            "macro {name} needs time column and interval and optional fill value"
        ));
    }
    let ms = parse_interval_ms(args[1].trim_matches('\''))
        .map_err(|_| format!("error parsing interval {}", args[1]))?;
    if let Some(fill) = args.get(2) {
        let ok = fill == "NULL" || fill == "previous" || fill.parse::<f64>().is_ok();
        if !ok {
            return Err(format!("error parsing fill value {fill}"));
        }
    }
    Ok(ms as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// Go formatting, the way Grafana's backend prints things.

/// `time.Time.Format(time.RFC3339Nano)` in UTC: fraction without trailing zeros.
pub fn rfc3339_nano(t: DateTime<Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos == 0 {
        format!("{base}Z")
    } else {
        let frac = format!("{nanos:09}");
        format!("{base}.{}Z", frac.trim_end_matches('0'))
    }
}

/// Go's `%v` of a float64 (`%g` with the shortest precision): plain decimal, or the exponent
/// form (`1e+06`) when the decimal exponent is below -4 or at least 6.
pub fn go_float(x: f64) -> String {
    if x == 0.0 {
        return "0".to_owned();
    }
    let exp = x.abs().log10().floor() as i32;
    if (-4..6).contains(&exp) {
        return format!("{x}");
    }
    // Rust prints `1e6` / `1.5e6`; Go prints `1e+06` / `1.5e+06`.
    let e = format!("{x:e}");
    let (mantissa, exponent) = e.split_once('e').unwrap_or((&e, "0"));
    let n: i32 = exponent.parse().unwrap_or(0);
    let sign = if n < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", n.abs())
}

/// gtime.FormatInterval: the largest whole unit (y, d, h, m, s, ms).
pub fn format_interval(ms: i64) -> String {
    const SEC: i64 = 1000;
    const MIN: i64 = 60 * SEC;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    const YEAR: i64 = 365 * DAY;
    for (unit, name) in [
        (YEAR, "y"),
        (DAY, "d"),
        (HOUR, "h"),
        (MIN, "m"),
        (SEC, "s"),
        (1, "ms"),
    ] {
        if ms >= unit {
            return format!("{}{name}", ms / unit);
        }
    }
    "1ms".to_owned()
}

/// gtime.ParseInterval for the fixed-length units (ms, s, m, h, d, w); calendar units (M, y)
/// depend on the current date and are not used by these dashboards.
pub fn parse_interval_ms(s: &str) -> Result<i64, String> {
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (n, unit) = s.split_at(digits);
    let n: i64 = n.parse().map_err(|_| format!("no number in {s:?}"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        other => return Err(format!("unit {other:?} of {s:?} is not emulated")),
    };
    Ok(n * unit_ms)
}

pub fn utc(secs: i64, ms: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, ms * 1_000_000)
        .single()
        .unwrap_or_else(|| panic!("invalid timestamp {secs}"))
}

// ---------------------------------------------------------------------------------------------
// The emulation against Grafana's own test expectations (macros_test.go and the format
// registry tests), so that a mistake here cannot hide a mistake in a dashboard.

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_2018() -> Ctx {
        // "Given a time range between 2018-04-12 00:00 and 2018-04-12 00:05" (18:00 UTC).
        let from = Utc
            .with_ymd_and_hms(2018, 4, 12, 18, 0, 0)
            .single()
            .expect("valid date");
        Ctx::new(from, from + chrono::Duration::minutes(5), "1m")
    }

    #[test]
    fn macros_match_grafanas_macro_tests() {
        let c = ctx_2018();
        let m = |s: &str| macros(s, &c).expect("expands");
        assert_eq!(
            m("select $__time(time_column)"),
            "select time_column AS \"time\""
        );
        assert_eq!(
            m("WHERE $__timeFilter(time_column)"),
            "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
        );
        assert_eq!(m("select $__timeFrom()"), "select '2018-04-12T18:00:00Z'");
        assert_eq!(m("select $__timeTo()"), "select '2018-04-12T18:05:00Z'");
        assert_eq!(
            m("SELECT $__timeGroup(time_column,'5m'), value"),
            "SELECT floor(extract(epoch from time_column)/300)*300 AS \"time\", value"
        );
        assert_eq!(
            m("SELECT $__timeGroup(time_column,'5m') as time, value"),
            "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"
        );
        assert_eq!(
            m("SELECT $__timeGroup(time_column,'5m')"),
            "SELECT floor(extract(epoch from time_column)/300)*300"
        );
        assert_eq!(
            m("$__timeGroupAlias(time_column , '5m')"),
            "floor(extract(epoch from time_column)/300)*300 AS \"time\""
        );
        assert_eq!(
            m("SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')"),
            "SELECT floor((time_column+time_adjustment)/300)*300 AS \"time\""
        );
        assert!(macros("$__nope(x)", &c).is_err(), "unknown macros fail");
        assert!(macros("$__timeGroup(x)", &c).is_err(), "interval required");
        // A half-second range prints Go's trimmed fraction.
        assert_eq!(
            rfc3339_nano(utc(-312_915_600, 500)),
            "1960-02-01T07:00:00.5Z"
        );
    }

    #[test]
    fn intervals_and_numbers_print_as_go_prints_them() {
        assert_eq!(format_interval(600_000), "10m");
        assert_eq!(format_interval(86_400_000), "1d");
        assert_eq!(format_interval(100), "100ms");
        assert_eq!(go_float(300.0), "300");
        assert_eq!(go_float(0.02), "0.02");
        assert_eq!(go_float(86_400.0), "86400");
        assert_eq!(go_float(1_036_800.0), "1.0368e+06");
        assert_eq!(go_float(1_000_000.0), "1e+06");
    }

    #[test]
    fn variables_format_as_grafanas_registry_does() {
        assert_eq!(sqlstring(&["test'value".to_owned()]), "'test''value'");
        assert_eq!(
            sqlstring(&[
                "test".to_owned(),
                "test'value2".to_owned(),
                "test\"value3".to_owned()
            ]),
            "'test','test''value2','test\\\"value3'"
        );
        let mut c = ctx_2018();
        let def = |all: Option<&str>| VarDef {
            name: "ns".to_owned(),
            multi: true,
            include_all: true,
            all_value: all.map(str::to_owned),
        };
        let opts = vec!["a".to_owned(), "b".to_owned()];
        c.bind(def(None), Selection::All, opts.clone());
        let sql = "x IN (${ns:sqlstring}) AND $__timeFilter(t)";
        // All without a custom all value: every option, quoted.
        assert!(expand_panel_sql(sql, &c)
            .expect("expands")
            .starts_with("x IN ('a','b') AND t BETWEEN"));
        // A custom all value is inserted as is, not formatted.
        c.bind(def(Some("'__all'")), Selection::All, opts.clone());
        assert!(expand_panel_sql(sql, &c)
            .expect("expands")
            .starts_with("x IN ('__all') AND"));
        c.select("ns", Selection::Values(vec!["o'hara".to_owned()]));
        assert!(expand_panel_sql(sql, &c)
            .expect("expands")
            .starts_with("x IN ('o''hara') AND"));
        // No explicit format: refused.
        assert!(expand_panel_sql("x IN ($ns)", &c).is_err());
        // The panel interval reaches the group macro through the browser and the backend.
        let g = expand_panel_sql("$__timeGroupAlias(t, $__interval, 0)", &c).expect("expands");
        assert_eq!(g, "floor(extract(epoch from t)/60)*60 AS \"time\"");
        // Macros and unknown $words are not variables.
        let refs = variable_refs("$__timeFilter(t) ${ns:sqlstring} [[ns]] $x");
        let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["__timeFilter", "ns", "ns", "x"]);
        assert_eq!(refs[1].format.as_deref(), Some("sqlstring"));
    }
}
