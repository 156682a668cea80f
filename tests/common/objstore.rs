//! Real object-store emulators for the `--parquet-url` tests, started on free ports and killed on
//! drop: moto's S3 server (PyPI `moto[server]`, in target/pyenv), Azurite (npm, in
//! target/azurite) and PyPI's `gcp-storage-emulator` (in target/pyenv), installed by scripts/test. Each has `py`, which runs Python from
//! target/pyenv with clients the project did not write (pyarrow's filesystems, boto3) bound to
//! that server and returns what the code printed as JSON. [`FaultProxy`] puts
//! tests/python/fault_proxy.py (a separate process) between the collector and either of them, to
//! inject faults and record what the collector asked of the store.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{free_addrs, wait_for};

/// Azurite's documented development account key (public, the same in every Azurite).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A program in target/pyenv/bin, with the fix named when it is missing.
pub fn pyenv(bin: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/pyenv/bin")
        .join(bin);
    assert!(
        p.exists(),
        "{} is missing. Fix: scripts/test builds target/pyenv from tests/python/requirements.txt",
        p.display()
    );
    p
}

/// Runs `prelude` then `code` in target/pyenv's Python and parses its stdout as JSON.
///
/// The program ends with `os._exit(0)` once its output is flushed: pyarrow's thread pools can
/// abort the interpreter at exit ("terminate called without an active exception",
/// apache/arrow#34314) after the work is done, which made a passing check fail at random in CI.
/// An exception in `code` still exits non-zero with its traceback, before that line.
pub fn run_py(prelude: &str, code: &str) -> Value {
    let program = format!("{prelude}{code}\nimport os, sys\nsys.stdout.flush()\nos._exit(0)\n");
    let out = Command::new(pyenv("python"))
        .arg("-c")
        .arg(program)
        .output()
        .expect("run python (target/pyenv, built by scripts/test)");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// moto's S3 server, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// On a free port.
    pub fn start() -> Moto {
        let [addr] = free_addrs::<1>();
        Moto::start_on(addr.port())
    }

    /// On `port` (a restart on the same port brings "the store" back after an outage).
    pub fn start_on(port: u16) -> Moto {
        let child = Command::new(pyenv("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        wait_for("moto listening", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Python with `s3` (pyarrow S3FileSystem), `boto` (boto3 client), `pq`, `pa`, `io`, `json`.
    pub fn py(&self, code: &str) -> Value {
        let prelude = format!(
            "import json, io, boto3, pyarrow as pa, pyarrow.fs as pafs, pyarrow.parquet as pq, pyarrow.dataset as ds\n\
             s3 = pafs.S3FileSystem(access_key='test', secret_key='test', region='us-east-1', \
             scheme='http', endpoint_override='127.0.0.1:{port}')\n\
             boto = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', \
             aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n",
            port = self.port
        );
        run_py(&prelude, code)
    }

    pub fn create_bucket(&self, name: &str) {
        self.py(&format!(
            "boto.create_bucket(Bucket='{name}')\nprint('null')"
        ));
    }

    /// The environment a collector uses to reach this server, with `secret` as the secret key.
    pub fn env(&self, secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", secret.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's blob service on a free port, killed on drop.
pub struct Azurite {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/azurite/node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing. Fix: scripts/test installs azurite there (npm install in target/azurite)",
            bin.display()
        );
        let [addr] = free_addrs::<1>();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(addr.port().to_string())
            .arg("--location")
            .arg(dir.path())
            .args(["--skipApiVersionCheck", "--loose", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        wait_for("azurite listening", Duration::from_secs(30), || {
            TcpStream::connect(addr).is_ok()
        });
        Azurite {
            child,
            port: addr.port(),
            _dir: dir,
        }
    }

    /// Python with `az` (pyarrow AzureFileSystem on this Azurite), `pq`, `pa`, `json`.
    pub fn py(&self, code: &str) -> Value {
        let prelude = format!(
            "import json, pyarrow as pa, pyarrow.fs as pafs, pyarrow.parquet as pq\n\
             az = pafs.AzureFileSystem(account_name='devstoreaccount1', account_key='{AZURITE_KEY}', \
             blob_storage_authority='127.0.0.1:{port}', dfs_storage_authority='127.0.0.1:{port}', \
             blob_storage_scheme='http', dfs_storage_scheme='http')\n",
            port = self.port
        );
        run_py(&prelude, code)
    }

    /// The environment a collector uses to reach this Azurite with account key `key`.
    pub fn env(&self, key: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            (
                "AZURITE_BLOB_STORAGE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1".into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", key.into()),
        ]
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PyPI's gcp-storage-emulator (in memory) on a free port with the bucket `bucket`, killed on
/// drop. object_store's GCS client needs [`FaultProxy`] in mode `gcs-etag` in front of it: the
/// emulator answers an object PUT without the ETag header that GCS sends.
pub struct GcsEmulator {
    child: Child,
    pub port: u16,
}

impl GcsEmulator {
    pub fn start(bucket: &str) -> GcsEmulator {
        let [addr] = free_addrs::<1>();
        let child = Command::new(pyenv("gcp-storage-emulator"))
            .args(["start", "--host", "127.0.0.1", "--port"])
            .arg(addr.port().to_string())
            .args(["--in-memory", "--quiet", "--default-bucket", bucket])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gcp-storage-emulator");
        wait_for(
            "gcp-storage-emulator listening",
            Duration::from_secs(30),
            || TcpStream::connect(addr).is_ok(),
        );
        GcsEmulator {
            child,
            port: addr.port(),
        }
    }

    /// Python with `gcs` (pyarrow GcsFileSystem, anonymous, on this emulator), `pq`, `pa`, `json`.
    pub fn py(&self, code: &str) -> Value {
        let prelude = format!(
            "import json, datetime, pyarrow as pa, pyarrow.fs as pafs, pyarrow.parquet as pq\n\
             gcs = pafs.GcsFileSystem(anonymous=True, scheme='http', endpoint_override='127.0.0.1:{port}', \
             retry_time_limit=datetime.timedelta(seconds=10))\n",
            port = self.port
        );
        run_py(&prelude, code)
    }

    /// The environment a collector uses to reach a GCS endpoint at `endpoint`: a service-account
    /// key as object_store reads it for an emulator (`gcs_base_url`, `disable_oauth`: no token is
    /// fetched and requests are not signed).
    pub fn env(endpoint: &str) -> Vec<(&'static str, String)> {
        vec![(
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            serde_json::json!({
                "gcs_base_url": endpoint,
                "disable_oauth": true,
                "client_email": "",
                "private_key": "",
                "private_key_id": "",
            })
            .to_string(),
        )]
    }
}

impl Drop for GcsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `.parquet` files under `dir` (a collector's data dir: files waiting for the store).
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

/// `meshaudit serve` with `--parquet-url url` that must fail at start-up: returns its output.
pub fn serve_fails(data_dir: &Path, url: &str, env: &[(&str, &str)]) -> String {
    let [als, admin] = free_addrs::<2>().map(|a| a.to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_meshaudit"))
        .args([
            "serve",
            "--als-addr",
            &als,
            "--admin-addr",
            &admin,
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--parquet-url", url])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run meshaudit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "serve should have failed:\n{text}");
    text
}

/// tests/python/fault_proxy.py in front of an emulator on `upstream_port`, killed on drop: a
/// reverse proxy whose mode the test switches at run time (`pass`, `503`, `429`, `trickle`,
/// `cut`, `refuse-after-part`; the script's docstring says what each does), and which counts
/// and logs every request it answered.
pub struct FaultProxy {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// One request the proxy answered: method, target (path and query as sent), and the status the
/// client got: the store's (recorded even if the client went away meanwhile), the proxy's own
/// 503/429/403, or 0 when there was no answer (the body was cut, or the client went mid-body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub status: u16,
}

impl Request {
    /// A part of a multipart upload: S3 UploadPart (`PUT ?partNumber=`) or Azure Put Block
    /// (`PUT ?comp=block&blockid=`, not Put Block List); the same rule as fault_proxy.py's.
    pub fn is_part(&self) -> bool {
        let q = self.query();
        self.method == "PUT"
            && q.iter()
                .any(|(k, v)| *k == "partNumber" || (*k == "comp" && *v == "block"))
    }

    /// The `uploadId` query value.
    pub fn upload_id(&self) -> Option<&str> {
        self.query()
            .into_iter()
            .find_map(|(k, v)| (k == "uploadId").then_some(v))
    }

    /// The target without its query (the object's path).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// [`Request::path`] percent-decoded (object_store's GCS client escapes `/` and `.` in keys).
    pub fn decoded_path(&self) -> String {
        let raw = self.path().as_bytes();
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (raw[i], hex) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn query(&self) -> Vec<(&str, &str)> {
        self.target
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect()
    }
}

impl FaultProxy {
    /// In front of `upstream_port`, in mode `pass`.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let [addr] = free_addrs::<1>();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mode"), "pass").expect("mode file");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fault_proxy.py");
        let child = Command::new(pyenv("python"))
            .arg(script)
            .arg(addr.port().to_string())
            .arg(upstream_port.to_string())
            .arg(dir.path().join("mode"))
            .arg(dir.path().join("state.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fault_proxy.py");
        wait_for("fault proxy listening", Duration::from_secs(30), || {
            TcpStream::connect(addr).is_ok()
        });
        FaultProxy {
            child,
            port: addr.port(),
            dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `env` (of [`Moto::env`] or [`Azurite::env`]) with the store's endpoint replaced by the
    /// proxy's.
    pub fn via(&self, env: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
        env.into_iter()
            .map(|(k, v)| match k {
                "AWS_ENDPOINT" | "AZURITE_BLOB_STORAGE_URL" => (k, self.endpoint()),
                _ => (k, v),
            })
            .collect()
    }

    /// Switches the mode for the next requests (written whole, then renamed into place: each
    /// `set("refuse-after-part")` arms it anew).
    pub fn set(&self, mode: &str) {
        let tmp = self.dir.path().join("mode.tmp");
        std::fs::write(&tmp, mode).expect("write mode");
        std::fs::rename(&tmp, self.dir.path().join("mode")).expect("rename mode");
    }

    /// What the proxy served so far (its state file, replaced atomically after every event).
    pub fn state(&self) -> Value {
        let text = std::fs::read(self.dir.path().join("state.json")).expect("proxy state");
        serde_json::from_slice(&text).expect("proxy state is JSON")
    }

    pub fn count(&self, key: &str) -> u64 {
        self.state()[key].as_u64().unwrap_or(0)
    }

    /// Every request answered so far, in the order answered.
    pub fn log(&self) -> Vec<Request> {
        self.state()["log"]
            .as_array()
            .expect("proxy log")
            .iter()
            .map(|r| Request {
                method: r["method"].as_str().expect("method").to_owned(),
                target: r["target"].as_str().expect("target").to_owned(),
                status: r["status"]
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .expect("status"),
            })
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
