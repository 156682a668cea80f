//! `meshaudit report`: access evidence for SOC 2 auditors over a time range, from Postgres or
//! from the Parquet files, as HTML, CSV and JSON plus a SHA-256 manifest.
//!
//! Flow: [`spec`] defines each section once → Postgres runs its SQL ([`sql`],
//! [`postgres_source`]) or meshaudit evaluates the same definition over Parquet ([`eval`],
//! [`parquet_source`]) → [`result::Table`]s → [`render`] writes the files.
//!
//! Invariant: reports read storage, never the live pipeline, and never write to it (Postgres
//! work happens in a READ ONLY transaction; the data directory is only read).

pub mod eval;
pub mod parquet_source;
pub mod postgres_source;
pub mod privileged;
pub mod relabel;
pub mod render;
pub mod result;
pub mod spec;
pub mod sql;
pub mod time;

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde_json::Value;
use thiserror::Error;

use crate::store::postgres::url::DatabaseUrl;
use crate::store::postgres::PgError;
use eval::{Evaluator, ListParams};
use parquet_source::ScanStats;
use result::Table;
use spec::{MeasureKind, Param, Section};
use sql::Dialect;
use time::{Micros, TimeRange};

/// Rows per Arrow batch when reading Parquet: bounds memory per batch.
const BATCH_ROWS: usize = 8192;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{0}")]
    Range(String),
    #[error("give exactly one source: --database-url URL (Postgres), --data-dir DIR (Parquet) or --parquet-url URL (Parquet on object storage). Fix: pass one of them")]
    Source,
    #[error("--data-dir {0}: not a directory. Fix: point --data-dir at the collector's data directory (the one holding dt=YYYY-MM-DD/ folders)")]
    DataDir(PathBuf),
    #[error("--out {path}: {reason}. Fix: {fix}")]
    OutDir {
        path: PathBuf,
        reason: String,
        fix: &'static str,
    },
    #[error("{0}")]
    Privileged(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read Parquet file {path}: {reason}")]
    ParquetFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::layout::MirrorError),
    #[error("Parquet: {0}")]
    Parquet(String),
    #[error("the database has no audit_records table. Fix: point --database-url at the collector's database (run `meshaudit migrate` there if it was never set up)")]
    NoTable,
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error("--directory {path}: {reason}. Fix: point --directory at a snapshot written by `meshaudit directory sync` (or the collector's --directory file)")]
    Directory { path: PathBuf, reason: String },
    #[error("the Parquet scan stopped unexpectedly: {0}")]
    Task(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Html,
    Csv,
    Json,
}

/// `meshaudit report` flags.
#[derive(Debug, Args)]
pub struct ReportOptions {
    /// Start of the range, inclusive: RFC 3339 (2026-03-02T10:00:00Z) or a date (2026-03-02 =
    /// midnight UTC). Records are selected by request start time.
    #[arg(long, value_name = "TIME", value_parser = time::parse)]
    pub from: Micros,
    /// End of the range, exclusive; same forms as --from.
    #[arg(long, value_name = "TIME", value_parser = time::parse)]
    pub to: Micros,
    /// Read Postgres: postgres://USER@HOST:PORT/DATABASE (a role with SELECT on audit_records;
    /// a password can come from PGPASSWORD or ~/.pgpass instead of the URL).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<DatabaseUrl>,
    /// Read the Parquet files under the collector's data directory instead.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Or read the Parquet files on object storage, the URL the collector writes to
    /// (`az://CONTAINER/PREFIX`, `abfss://...`, `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`);
    /// credentials from the environment as for `serve` (read and list rights are enough).
    #[arg(long, value_name = "URL", conflicts_with_all = ["data_dir", "database_url"])]
    pub parquet_url: Option<String>,
    /// Directory to write the report into (created; must be empty or absent).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Output formats, comma-separated. A manifest (manifest.json, SHA256SUMS) is always written.
    #[arg(long, value_delimiter = ',', default_value = "html,csv,json")]
    pub format: Vec<Format>,
    /// An app role (`roles` claim) that counts as privileged; repeatable.
    #[arg(long = "privileged-role", value_name = "NAME")]
    pub privileged_roles: Vec<String>,
    /// A group object id (`groups` claim) that counts as privileged; repeatable.
    #[arg(long = "privileged-group", value_name = "ID")]
    pub privileged_groups: Vec<String>,
    /// A TOML file with `roles = [...]` and `groups = [...]`, added to the flags above.
    #[arg(long, value_name = "FILE")]
    pub privileged_config: Option<PathBuf>,
    /// A directory snapshot (`meshaudit directory sync`): callers are labelled with the names
    /// it gives their object or application ids, and the report says which snapshot it used.
    #[arg(long, value_name = "FILE")]
    pub directory: Option<PathBuf>,
}

/// The directory snapshot a report labelled callers with.
pub struct DirectoryUsed {
    pub path: String,
    /// When `meshaudit directory sync` wrote it, if it says.
    pub synced_at: Option<String>,
    pub users: usize,
    /// Result rows whose caller got the directory's name instead of the records'.
    pub relabelled_rows: u64,
}

/// Where the records came from.
pub enum Source {
    Postgres { target: String },
    Parquet { data_dir: String, stats: ScanStats },
}

/// A query as shown in the report: (placeholder, meaning, bound value) per parameter.
pub struct ShownQuery {
    pub dialect: &'static str,
    pub role: &'static str,
    pub text: String,
    pub params: Vec<(String, &'static str, Value)>,
}

pub struct SectionReport {
    pub spec: Section,
    pub table: Table,
    pub queries: Vec<ShownQuery>,
}

impl SectionReport {
    /// Records the section matched (its groups partition them).
    pub fn records(&self) -> u64 {
        self.table.rows.iter().map(|r| r.measures[0]).sum()
    }

    /// Per measure: the sum over rows for record counts; `None` for distinct-value counts,
    /// which do not add up across groups.
    pub fn totals(&self) -> Vec<Option<u64>> {
        let sums = self.table.totals(self.spec.measures.len());
        self.spec
            .measures
            .iter()
            .zip(sums)
            .map(|(m, t)| matches!(m.kind, MeasureKind::Records).then_some(t))
            .collect()
    }
}

pub struct Report {
    pub generated_at: String,
    pub range: TimeRange,
    pub source: Source,
    pub privileged: ListParams,
    pub directory: Option<DirectoryUsed>,
    pub sections: Vec<SectionReport>,
}

fn shown(q: sql::Query, dialect: &'static str, role: &'static str, r: &Report) -> ShownQuery {
    let params = q
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let value = match p {
                Param::From => Value::from(r.range.from.rfc3339()),
                Param::To => Value::from(r.range.to.rfc3339()),
                list => Value::from(r.privileged.get(*list).to_vec()),
            };
            (format!("${}", i + 1), p.describe(), value)
        })
        .collect();
    ShownQuery {
        dialect,
        role,
        text: q.text,
        params,
    }
}

fn out_err(path: &Path, reason: String, fix: &'static str) -> ReportError {
    ReportError::OutDir {
        path: path.to_path_buf(),
        reason,
        fix,
    }
}

/// Creates `out` or accepts it empty: a report never mixes with, or overwrites, older evidence.
fn prepare_out(out: &Path) -> Result<(), ReportError> {
    const FIX: &str = "name a new or empty directory for each report";
    if out.exists() {
        let mut entries = std::fs::read_dir(out)
            .map_err(|e| out_err(out, format!("cannot read it ({e})"), FIX))?;
        if entries.next().is_some() {
            return Err(out_err(out, "the directory is not empty".into(), FIX));
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| {
        out_err(
            out,
            format!("cannot create it ({e})"),
            "check the path and its permissions",
        )
    })
}

/// What `meshaudit report` prints when done.
pub fn summary(r: &Report, out: &Path, files: &[render::manifest::Entry]) -> Value {
    serde_json::json!({
        "out": out.display().to_string(),
        "files": files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
        "sections": r.sections.iter().map(|s| serde_json::json!({
            "id": s.spec.id, "rows": s.table.rows.len(), "records": s.records(),
        })).collect::<Vec<_>>(),
        "warnings": match &r.source {
            Source::Parquet { stats, .. } => stats.skipped.iter()
                .map(|s| format!("not read (not part of the store; run meshaudit verify): {s}"))
                .collect::<Vec<_>>(),
            Source::Postgres { .. } => Vec::new(),
        },
    })
}

/// Writes the requested renderings and the manifest; returns the manifest's entries.
pub fn write(
    r: &Report,
    out: &Path,
    formats: &[Format],
) -> Result<Vec<render::manifest::Entry>, ReportError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if formats.contains(&Format::Html) {
        files.push(("report.html".into(), render::html::document(r).into_bytes()));
    }
    if formats.contains(&Format::Json) {
        let doc = render::json::document(r);
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
        text.push('\n');
        files.push(("report.json".into(), text.into_bytes()));
    }
    if formats.contains(&Format::Csv) {
        for s in &r.sections {
            files.push((
                render::csv::file_name(s),
                render::csv::section(s).into_bytes(),
            ));
        }
    }
    let mut entries = Vec::with_capacity(files.len() + 1);
    for (name, data) in &files {
        write_file(out, name, data)?;
        entries.push(render::manifest::entry(name, data));
    }
    let manifest = render::manifest::json(&entries, &r.generated_at);
    write_file(out, "manifest.json", manifest.as_bytes())?;
    let mut all = entries.clone();
    all.push(render::manifest::entry(
        "manifest.json",
        manifest.as_bytes(),
    ));
    let sums = render::manifest::sums(&all);
    write_file(out, "SHA256SUMS", sums.as_bytes())?;
    all.push(render::manifest::entry("SHA256SUMS", sums.as_bytes()));
    Ok(all)
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<(), ReportError> {
    let path = dir.join(name);
    std::fs::write(&path, data).map_err(|e| ReportError::Io { path, source: e })
}

/// Runs the report: evaluates every section over the chosen source and writes the files.
pub async fn run(opts: ReportOptions) -> Result<Value, ReportError> {
    let range = TimeRange::new(opts.from, opts.to).map_err(ReportError::Range)?;
    let privileged = privileged::load(
        &opts.privileged_roles,
        &opts.privileged_groups,
        opts.privileged_config.as_deref(),
    )?;
    let sections = spec::sections();
    // Checked before any query runs, so a mistake costs nothing.
    let source_kind = match (&opts.database_url, &opts.data_dir, &opts.parquet_url) {
        (Some(url), None, None) => Ok(url.clone()),
        (None, Some(dir), None) if dir.is_dir() => Err((dir.clone(), None)),
        (None, Some(dir), None) => return Err(ReportError::DataDir(dir.clone())),
        (None, None, Some(url)) => Err((PathBuf::new(), Some(url.clone()))),
        _ => return Err(ReportError::Source),
    };
    let directory = match &opts.directory {
        Some(path) => {
            let bad = |reason: String| ReportError::Directory {
                path: path.clone(),
                reason,
            };
            let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
            let dir = crate::join::identity::directory::Directory::from_json(&bytes)
                .map_err(|e| bad(format!("not a directory snapshot ({e})")))?;
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            Some((dir, shown.display().to_string()))
        }
        None => None,
    };
    prepare_out(&opts.out)?;

    let (mut tables, source) = match source_kind {
        Ok(url) => {
            let target = postgres_source::describe(&url)?;
            let tables = postgres_source::run(&url, &sections, &range, &privileged).await?;
            (tables, Source::Postgres { target })
        }
        Err((dir, url)) => {
            // An object store is read from a local copy (store::layout::Mirror, dropped at the
            // end of this arm), through the same listing and reader as a data dir.
            let mirror = match &url {
                Some(url) => Some(crate::store::layout::Mirror::fetch(url).await?),
                None => None,
            };
            let dir = mirror.as_ref().map_or(dir, |m| m.dir().to_path_buf());
            let (secs, params, dir2) = (sections.clone(), privileged.clone(), dir.clone());
            let (tables, stats) = tokio::task::spawn_blocking(move || {
                let mut eval = Evaluator::new(&secs, &params);
                let stats = parquet_source::scan(&dir2, &range, &mut eval, BATCH_ROWS)?;
                Ok::<_, ReportError>((eval.finish(), stats))
            })
            .await
            .map_err(|e| ReportError::Task(e.to_string()))??;
            let data_dir = match &mirror {
                Some(m) => m.shown.clone(),
                None => std::fs::canonicalize(&dir)
                    .unwrap_or(dir)
                    .display()
                    .to_string(),
            };
            (tables, Source::Parquet { data_dir, stats })
        }
    };

    let directory = directory.map(|(dir, path)| DirectoryUsed {
        relabelled_rows: relabel::relabel(&sections, &mut tables, &dir),
        path,
        synced_at: dir.synced_at().map(str::to_owned),
        users: dir.users(),
    });
    let mut report = Report {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        range,
        source,
        privileged,
        directory,
        sections: Vec::new(),
    };
    let mut evaluated = Vec::with_capacity(sections.len());
    for (spec, table) in sections.into_iter().zip(tables) {
        let queries = match &report.source {
            Source::Postgres { .. } => vec![shown(
                sql::compile(&spec, &Dialect::Postgres),
                "PostgreSQL",
                "the query this report ran",
                &report,
            )],
            Source::Parquet { data_dir, stats } => vec![shown(
                sql::compile(
                    &spec,
                    &Dialect::DuckDb {
                        data_dir: data_dir.clone(),
                        // A glob would read what the report skipped: name its files instead.
                        files: (!stats.skipped.is_empty()).then(|| {
                            stats
                                .read
                                .iter()
                                .map(|f| format!("{}/{f}", data_dir.trim_end_matches('/')))
                                .collect()
                        }),
                    },
                ),
                "DuckDB",
                "evaluated by meshaudit over the Parquet files; this equivalent query re-runs it in DuckDB",
                &report,
            )],
        };
        evaluated.push(SectionReport {
            spec,
            table,
            queries,
        });
    }
    report.sections = evaluated;
    let files = write(&report, &opts.out, &opts.format)?;
    Ok(summary(&report, &opts.out, &files))
}
