//! Bad configuration fails at start-up, before any port is bound, with a message that names the
//! setting and the fix.

use std::process::Command;

fn serve(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshaudit"));
    cmd.arg("serve").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run meshaudit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_value_names_flag_env_and_fix() {
    let (ok, err) = serve(&["--parquet-zstd-level", "40"], &[]);
    assert!(!ok);
    assert!(
        err.contains("--parquet-zstd-level")
            && err.contains("MESHAUDIT_PARQUET_ZSTD_LEVEL")
            && err.contains("Fix:"),
        "{err}"
    );
}

#[test]
fn unknown_config_file_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meshaudit.toml");
    std::fs::write(&path, "data_dir = \"/tmp/x\"\nparquet_max_file_size = 10\n").expect("write");
    let (ok, err) = serve(&["--config", path.to_str().expect("utf8")], &[]);
    assert!(!ok);
    assert!(
        err.contains("parquet_max_file_size") && err.contains("Fix:"),
        "{err}"
    );
}

#[test]
fn unknown_environment_variable_is_named() {
    let (ok, err) = serve(&[], &[("MESHAUDIT_DATADIR", "/tmp/x")]);
    assert!(!ok);
    assert!(
        err.contains("MESHAUDIT_DATADIR") && err.contains("MESHAUDIT_DATA_DIR"),
        "{err}"
    );
}

#[test]
fn unparsable_flag_value_is_refused_by_the_parser() {
    let (ok, err) = serve(&["--als-addr", "not-an-address"], &[]);
    assert!(!ok);
    assert!(err.contains("--als-addr"), "{err}");
}

#[test]
fn an_unwritable_data_dir_fails_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let (ok, err) = serve(
        &[
            "--data-dir",
            file.join("sub").to_str().expect("utf8"),
            "--als-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("data dir"), "{err}");
}
