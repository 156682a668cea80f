//! Static checks of the dashboard JSON, the SQL as written, and the Grafana provisioning files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::grafana;
use crate::model::*;

pub fn walk<'a>(v: &'a Value, path: &str, f: &mut impl FnMut(&str, &'a Value)) {
    f(path, v);
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                walk(x, &format!("{path}/{k}"), f);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}/{i}"), f);
            }
        }
        _ => {}
    }
}

/// Problems with one query's SQL as written in the dashboard.
pub fn sql_problems(q: &Query) -> Vec<String> {
    let sql = &q.sql;
    let mut bad = vec![];
    if sql.trim().is_empty() {
        return vec!["empty SQL".to_owned()];
    }
    // Newer Grafana strips SQL comments before expanding macros, older does not; a `;` would
    // let a second statement ride along.
    for forbidden in [";", "--", "/*"] {
        if sql.contains(forbidden) {
            bad.push(format!("contains {forbidden:?}"));
        }
    }
    // Variables: only filter variables, only as ${v:sqlstring} inside their canonical clause.
    let refs = grafana::variable_refs(sql);
    let macros = ["__timeFilter", "__timeGroupAlias", "__timeFrom", "__timeTo"];
    for r in &refs {
        let is_filter = FILTERS.iter().any(|(v, _)| *v == r.name);
        let ok = match r.name.as_str() {
            n if macros.contains(&n) => q.variable.is_none() || n != "__timeGroupAlias",
            "__interval" | "__interval_ms" => q.variable.is_none(),
            _ => is_filter && r.format.as_deref() == Some("sqlstring"),
        };
        if !ok {
            bad.push(format!("unexpected reference {}", &sql[r.start..r.end]));
        }
    }
    let stripped = without_filters(sql, &all_filter_names());
    if stripped.contains("${") {
        bad.push(format!(
            "a filter variable is used outside its clause; write exactly {}",
            canonical("VAR", "COLUMN")
        ));
    }
    // Macros: only the time macros (grafana.rs expands them as Grafana's engine does).
    for (_, _, name, args) in grafana::macro_calls(sql) {
        if !macros.contains(&name.as_str()) {
            bad.push(format!("macro ${name} is not one these dashboards use"));
        }
        if name == "__timeFilter" && args != "start_time" {
            bad.push(format!(
                "$__timeFilter({args}): must bound start_time, the partition key"
            ));
        }
    }
    // Every read of audit_records is bounded by the time range before the next one.
    let scans: Vec<usize> = sql.match_indices("audit_records").map(|(i, _)| i).collect();
    if scans.is_empty() {
        bad.push("reads no audit_records".to_owned());
    }
    for (k, &at) in scans.iter().enumerate() {
        let end = scans.get(k + 1).copied().unwrap_or(sql.len());
        if !sql[at..end].contains("$__timeFilter(start_time)") {
            bad.push("a read of audit_records without $__timeFilter(start_time)".to_owned());
        }
    }
    // Which filters: panels use all four; the namespace lists none; identity and app lists the
    // namespace filters only (a list never filters by itself).
    let have: BTreeSet<&str> = q.filters().into_iter().collect();
    let want: BTreeSet<&str> = match q.variable.as_deref() {
        None => all_filter_names().into_iter().collect(),
        Some("dst_ns") | Some("src_ns") => BTreeSet::new(),
        Some(_) => NS_FILTERS.into_iter().collect(),
    };
    if have != want {
        bad.push(format!("filters {have:?}, expected {want:?}"));
    }
    if q.format == Format::TimeSeries {
        if !sql.contains("$__timeGroupAlias(start_time, $__interval") {
            bad.push("time series without $__timeGroupAlias(start_time, $__interval)".to_owned());
        }
        if !sql.contains("ORDER BY 1") {
            bad.push("time series must be ordered by time (ORDER BY 1)".to_owned());
        }
    }
    bad
}

/// gridPos cells of a panel, for the overlap check.
pub fn cells(p: &Value) -> Vec<(u64, u64)> {
    let g = &p["gridPos"];
    let (x, y, w, h) = (
        g["x"].as_u64().unwrap_or(0),
        g["y"].as_u64().unwrap_or(0),
        g["w"].as_u64().unwrap_or(0),
        g["h"].as_u64().unwrap_or(0),
    );
    (x..x + w)
        .flat_map(|cx| (y..y + h).map(move |cy| (cx, cy)))
        .collect()
}

#[derive(Deserialize)]
pub struct Kustomization {
    #[serde(rename = "configMapGenerator", default)]
    pub generators: Vec<Generator>,
}

#[derive(Deserialize)]
pub struct Generator {
    pub name: String,
    #[serde(default)]
    pub files: Vec<String>,
}

pub fn yaml_file(rel: &str) -> serde_json::Value {
    let p = Path::new(ROOT).join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub fn grafana_readme() -> String {
    let p = Path::new(ROOT).join("deploy/grafana/README.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn dashboard_json_is_well_formed() {
    let dashes = dashboards();
    assert!(dashes.len() >= 4, "found {} dashboards", dashes.len());
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut problems: Vec<String> = vec![];
    let provisioned_uid =
        yaml_file("deploy/grafana/provisioning/datasources/meshaudit-postgres.yaml")["datasources"]
            [0]["uid"]
            .as_str()
            .unwrap_or("")
            .to_owned();
    for d in &dashes {
        let j = &d.json;
        let mut bad = |m: String| problems.push(format!("{}: {m}", d.file));
        let uid = j["uid"].as_str().unwrap_or("");
        if uid.is_empty()
            || uid.len() > 40
            || !uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bad(format!("uid {uid:?}: 1-40 characters of [A-Za-z0-9_-]"));
        }
        if !uids.insert(uid.to_owned()) {
            bad(format!("uid {uid} used twice"));
        }
        let title = j["title"].as_str().unwrap_or("");
        if title.trim().is_empty() || !titles.insert(title.to_owned()) {
            bad(format!("title {title:?} missing or used twice"));
        }
        // Provisioned dashboards get their id from Grafana.
        if !j["id"].is_null() {
            bad("id must be null".to_owned());
        }
        // Grafana 11.0 writes 39, 12.x up to 42; a newer version would be migrated down by
        // nothing, an older one migrated up on every load.
        let sv = j["schemaVersion"].as_u64().unwrap_or(0);
        if !(39..=42).contains(&sv) {
            bad(format!("schemaVersion {sv}: not a Grafana 11/12 schema"));
        }
        // What migrations 40-42 would otherwise rewrite.
        if !j["refresh"].is_string() {
            bad("refresh must be a string (schema 40)".to_owned());
        }
        if !j["timepicker"]["time_options"].is_null() {
            bad("timepicker.time_options was removed (schema 41)".to_owned());
        }
        if !j["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("meshaudit")))
        {
            bad("tag meshaudit missing (the dashboard links use it)".to_owned());
        }

        // Data source references: only ever the variable.
        walk(j, "", &mut |path, v| {
            if path.ends_with("/datasource") && v.is_object() && v != &ds_ref() {
                problems.push(format!("{}{path}: {v} is not {}", d.file, ds_ref()));
            }
            if path.ends_with("/uid") && path != "/uid" && !path.ends_with("/datasource/uid") {
                problems.push(format!(
                    "{}{path}: a uid outside a data source reference",
                    d.file
                ));
            }
            if let Some(s) = v.as_str() {
                if !provisioned_uid.is_empty() && s.contains(&provisioned_uid) {
                    problems.push(format!(
                        "{}{path}: names the provisioned data source uid {provisioned_uid}",
                        d.file
                    ));
                }
            }
        });

        // Variables.
        let vars = variables(d);
        let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        let ds_var = vars.iter().find(|v| v["name"] == "datasource");
        match ds_var {
            Some(v) => {
                if v["type"] != "datasource" || v["query"] != DS_TYPE {
                    problems.push(format!(
                        "{}: variable datasource must list {DS_TYPE}",
                        d.file
                    ));
                }
                if v["current"]["value"].is_string() {
                    problems.push(format!(
                        "{}: variable datasource pins a data source ({})",
                        d.file, v["current"]
                    ));
                }
            }
            None => problems.push(format!("{}: no datasource variable", d.file)),
        }
        for (var, _) in FILTERS {
            let Some(v) = vars.iter().find(|v| v["name"] == var) else {
                problems.push(format!("{}: no variable {var}", d.file));
                continue;
            };
            let w = format!("{}: variable {var}", d.file);
            let checks = [
                (v["type"] == "query", "type query"),
                (v["multi"] == json!(true), "multi-value"),
                (v["includeAll"] == json!(true), "includeAll"),
                (v["allValue"] == ALL_VALUE, "allValue '__all'"),
                (v["refresh"] == 2, "refresh on time range change (2)"),
                (v["datasource"] == ds_ref(), "datasource ${datasource}"),
                (v["query"].is_string(), "a SQL string query"),
                (v["definition"] == v["query"], "definition equal to query"),
                (
                    v["label"].as_str().is_some_and(|l| !l.is_empty()),
                    "a label",
                ),
                (
                    v["current"]["value"] == json!(["$__all"]),
                    "All selected by default",
                ),
            ];
            for (ok, what) in checks {
                if !ok {
                    problems.push(format!("{w}: needs {what}"));
                }
            }
        }
        if names.len() != vars.len() || names.iter().collect::<BTreeSet<_>>().len() != names.len() {
            problems.push(format!("{}: variable names missing or repeated", d.file));
        }

        // Panels.
        let all = panels(d);
        if all.is_empty() {
            problems.push(format!("{}: no panels", d.file));
        }
        let mut ids = BTreeSet::new();
        let mut occupied: BTreeMap<(u64, u64), String> = BTreeMap::new();
        for p in &all {
            let t = p["title"].as_str().unwrap_or("");
            let w = format!("{}: panel {} {t:?}", d.file, p["id"]);
            match p["id"].as_u64() {
                Some(id) if id > 0 => {
                    if !ids.insert(id) {
                        problems.push(format!("{w}: id {id} used twice"));
                    }
                }
                _ => problems.push(format!("{w}: id must be a positive integer")),
            }
            if t.trim().is_empty() {
                problems.push(format!("{w}: no title"));
            }
            let ty = p["type"].as_str().unwrap_or("");
            if !PANEL_TYPES.contains(&ty) {
                problems.push(format!("{w}: type {ty:?}"));
            }
            let g = &p["gridPos"];
            let (x, wd, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            match (x, wd, h, g["y"].as_u64()) {
                (Some(x), Some(wd), Some(h), Some(_)) if wd >= 1 && x + wd <= 24 && h >= 1 => {}
                _ => problems.push(format!("{w}: gridPos {g} outside the 24-column grid")),
            }
            for c in cells(p) {
                if let Some(other) = occupied.insert(c, t.to_owned()) {
                    problems.push(format!("{w}: overlaps panel {other:?} at {c:?}"));
                    break;
                }
            }
            if ty == "row" {
                continue;
            }
            if p["datasource"] != ds_ref() {
                problems.push(format!("{w}: datasource must be {}", ds_ref()));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{w}: no query"));
            }
            let mut refs = BTreeSet::new();
            for tg in &targets {
                let checks = [
                    (tg["datasource"] == ds_ref(), "datasource ${datasource}"),
                    (tg["rawQuery"] == json!(true), "rawQuery"),
                    (tg["editorMode"] == "code", "editorMode code"),
                    (
                        tg["format"] == "time_series" || tg["format"] == "table",
                        "format time_series or table",
                    ),
                    (
                        refs.insert(tg["refId"].as_str().unwrap_or("").to_owned()),
                        "a unique refId",
                    ),
                    (
                        (ty == "timeseries") == (tg["format"] == "time_series"),
                        "time_series format exactly on timeseries panels",
                    ),
                ];
                for (ok, what) in checks {
                    if !ok {
                        problems.push(format!("{w}: target needs {what}"));
                    }
                }
            }
        }
        for q in queries(d) {
            for m in sql_problems(&q) {
                problems.push(format!("{}: {m}", q.label()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn sql_checks_catch_what_they_are_for() {
    // The static rules must be able to fail: a filter used bare, a scan without a time bound,
    // a comment, an unformatted variable.
    let q = |sql: &str| Query {
        dash: "t".into(),
        what: "panel".into(),
        panel_type: Some("table".into()),
        variable: None,
        format: Format::Table,
        sql: sql.into(),
    };
    let good = format!(
        "SELECT count(*) FROM audit_records WHERE $__timeFilter(start_time) AND {} AND {} AND {} AND {}",
        canonical("dst_ns", "destination_namespace"),
        canonical("src_ns", "source_namespace"),
        canonical("identity", "object_id"),
        canonical("app", "app_id")
    );
    assert_eq!(sql_problems(&q(&good)), Vec::<String>::new());
    for bad in [
        good.replace(
            "('__all' IN (${app:sqlstring}) OR app_id IN (${app:sqlstring}))",
            "app_id IN (${app:sqlstring})",
        ),
        good.replace(
            "$__timeFilter(start_time)",
            "start_time > now() - interval '1 day'",
        ),
        format!("{good} -- note"),
        good.replace("${dst_ns:sqlstring}) OR", "$dst_ns) OR"),
        format!("{good} UNION ALL SELECT count(*) FROM audit_records"),
        good.replace("OR object_id IN", "OR user_principal IN"),
    ] {
        assert!(!sql_problems(&q(&bad)).is_empty(), "not caught: {bad}");
    }
}

#[test]
fn provisioning_keeps_credentials_out_and_matches_the_dashboards() {
    // Every dashboard is generated into a ConfigMap, and nothing else is.
    let k: Kustomization =
        serde_json::from_value(yaml_file("dashboards/kustomization.yaml")).expect("kustomization");
    let listed: BTreeSet<String> = k.generators.iter().flat_map(|g| g.files.clone()).collect();
    let files: BTreeSet<String> = dashboards().into_iter().map(|d| d.file).collect();
    assert_eq!(
        listed, files,
        "dashboards/kustomization.yaml must list every dashboard"
    );
    for g in &k.generators {
        assert_eq!(g.files.len(), 1, "{}: one dashboard per ConfigMap", g.name);
        let size = std::fs::metadata(Path::new(ROOT).join("dashboards").join(&g.files[0]))
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        // Client-side apply stores the object in a 256 KiB annotation.
        assert!(size < 200 * 1024, "{}: {size} bytes", g.files[0]);
    }
    let grafana: Kustomization =
        serde_json::from_value(yaml_file("deploy/grafana/kustomization.yaml"))
            .expect("kustomization");
    let grafana_files: Vec<&String> = grafana.generators.iter().flat_map(|g| &g.files).collect();
    assert!(grafana_files.iter().any(|f| f.contains("datasources/")));
    assert!(grafana_files.iter().any(|f| f.contains("dashboards/")));

    let readme = grafana_readme();
    let ds = yaml_file("deploy/grafana/provisioning/datasources/meshaudit-postgres.yaml");
    assert_eq!(ds["apiVersion"], 1);
    let list = ds["datasources"].as_array().expect("datasources list");
    assert_eq!(list.len(), 1);
    let d = &list[0];
    assert_eq!(d["type"], DS_TYPE);
    // Connection settings and the password come from the environment: `${NAME}` only.
    let env_ref = |v: &Value, what: &str| -> String {
        let s = v.as_str().unwrap_or_else(|| panic!("{what} missing"));
        let name = s
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{what} = {s:?} is not a ${{VAR}} reference"));
        assert!(
            readme.contains(name),
            "{what} reads ${name}, which deploy/grafana/README.md does not document"
        );
        name.to_owned()
    };
    let mut names = BTreeSet::new();
    names.insert(env_ref(&d["url"], "url"));
    names.insert(env_ref(&d["user"], "user"));
    names.insert(env_ref(&d["jsonData"]["database"], "jsonData.database"));
    names.insert(env_ref(&d["jsonData"]["sslmode"], "jsonData.sslmode"));
    names.insert(env_ref(
        &d["secureJsonData"]["password"],
        "secureJsonData.password",
    ));
    assert_eq!(names.len(), 5, "five distinct settings: {names:?}");
    // A password anywhere else would be stored in clear text.
    walk(d, "", &mut |path, v| {
        let key = path.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
        if key.contains("password") && !path.starts_with("/secureJsonData/") {
            panic!("{path}: passwords belong in secureJsonData");
        }
        if path.starts_with("/secureJsonData/") && v.is_string() {
            assert!(
                v.as_str().is_some_and(|s| s.starts_with("${")),
                "{path}: literal secret"
            );
        }
    });

    let provider = yaml_file("deploy/grafana/provisioning/dashboards/meshaudit-dashboards.yaml");
    let p = &provider["providers"][0];
    assert_eq!(p["type"], "file");
    let path = p["options"]["path"].as_str().expect("provider path");
    assert!(
        readme.contains(&format!("mountPath: {path}")),
        "the README must mount the dashboards where the provider reads them ({path})"
    );
}
