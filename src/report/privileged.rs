//! Which app roles and groups count as privileged: `--privileged-role`, `--privileged-group`
//! (repeatable) and `--privileged-config FILE` (TOML, unknown keys refused so that a typo such
//! as `role = [...]` cannot silently leave the section empty). The sets are merged, sorted and
//! de-duplicated.
//!
//! ```toml
//! roles = ["Orders.Admin", "Directory.ReadWrite.All"]
//! groups = ["5c6d7e8f-0000-4000-8000-00000000b001"]
//! ```

use std::path::Path;

use serde::Deserialize;

use super::eval::ListParams;
use super::ReportError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivilegedFile {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

fn clean(values: Vec<String>, what: &str) -> Result<Vec<String>, ReportError> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        if v.trim().is_empty() {
            return Err(ReportError::Privileged(format!(
                "an empty {what} was given. Fix: name each privileged {what} exactly as it \
                 appears in tokens, or leave it out"
            )));
        }
        if v.trim() != v {
            return Err(ReportError::Privileged(format!(
                "the {what} `{v}` has leading or trailing spaces, so it would never match a \
                 token. Fix: remove the spaces"
            )));
        }
        out.push(v);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Merges the flags with the optional file.
pub fn load(
    roles: &[String],
    groups: &[String],
    file: Option<&Path>,
) -> Result<ListParams, ReportError> {
    let from_file = match file {
        None => PrivilegedFile::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ReportError::Privileged(format!(
                    "--privileged-config {}: cannot read it ({e}). Fix: check the path",
                    path.display()
                ))
            })?;
            toml::from_str(&text).map_err(|e| {
                ReportError::Privileged(format!(
                    "--privileged-config {}: {}. Fix: the file takes only `roles = [\"NAME\", ...]` and `groups = [\"OBJECT-ID\", ...]`",
                    path.display(),
                    e.to_string().trim_end()
                ))
            })?
        }
    };
    Ok(ListParams {
        privileged_roles: clean(
            roles.iter().cloned().chain(from_file.roles).collect(),
            "role",
        )?,
        privileged_groups: clean(
            groups.iter().cloned().chain(from_file.groups).collect(),
            "group",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn flags_and_file_merge() {
        let f = file("roles = [\"B\", \"A\"]\ngroups = [\"g1\"]\n");
        let p = load(&["A".into(), "C".into()], &[], Some(f.path())).expect("loads");
        assert_eq!(p.privileged_roles, ["A", "B", "C"]);
        assert_eq!(p.privileged_groups, ["g1"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let f = file("role = [\"A\"]\n");
        let e = load(&[], &[], Some(f.path()))
            .expect_err("typo")
            .to_string();
        assert!(
            e.contains("--privileged-config") && e.contains("role") && e.contains("Fix:"),
            "{e}"
        );
        let e = load(&[" A".into()], &[], None)
            .expect_err("spaces")
            .to_string();
        assert!(e.contains("spaces"), "{e}");
        let e = load(&[], &["".into()], None)
            .expect_err("empty")
            .to_string();
        assert!(e.contains("empty group"), "{e}");
    }
}
