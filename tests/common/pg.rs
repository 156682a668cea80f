//! A throwaway PostgreSQL cluster for tests, from the installed server binaries.
//!
//! `initdb` refuses to run as root, and tests here run as root, so the cluster runs as the
//! `postgres` OS user (via `runuser`) in a temporary directory it owns, on a free port on
//! 127.0.0.1 with trust authentication (plus one scram-sha-256 user for login-failure tests).
//! It is stopped with `pg_ctl -m immediate` and its directory removed on drop. Without root,
//! the binaries run as the current user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::wait_until;

/// The role that logs in with a password (scram-sha-256) instead of trust.
pub const PASSWORD_USER: &str = "meshaudit_pw";
pub const PASSWORD: &str = "correct-horse-battery";

pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    as_root: bool,
}

/// The newest `/usr/lib/postgresql/*/bin`, or a clear failure.
fn find_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((v, bin)) if v >= 15 => bin,
        Some((v, _)) => panic!("PostgreSQL {v} found under {root:?}, but these tests need 15 or newer. Fix: apt-get install postgresql"),
        None => panic!("no PostgreSQL server binaries under {root:?} (looked for */bin/initdb). Fix: apt-get install postgresql (scripts/test does this)"),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn check(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PgCluster {
    /// initdb + start; returns once the server accepts connections.
    pub fn start() -> PgCluster {
        let bin = find_bin();
        let as_root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("meshaudit-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let c = PgCluster {
            bin,
            dir,
            port: free_port(),
            as_root,
        };
        if as_root {
            check(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&c.dir)
                    .output(),
            );
        }
        let pwfile = c.dir.join("pw");
        std::fs::write(&pwfile, "unused\n").expect("pwfile");
        if as_root {
            check(
                "chown pwfile",
                Command::new("chown").arg("postgres").arg(&pwfile).output(),
            );
        }
        check(
            "initdb",
            c.cmd("initdb")
                .arg("-D")
                .arg(c.data())
                .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
                .output(),
        );
        // The password user must present a password; everyone else is trusted.
        let hba = format!(
            "host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\nlocal all all trust\n"
        );
        std::fs::write(c.data().join("pg_hba.conf"), hba).expect("pg_hba.conf");
        c.start_server();
        c.psql(
            "postgres",
            &format!("CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'"),
        );
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        check(
            "pg_ctl start",
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-o", &opts, "-l"])
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "60", "start"])
                .output(),
        );
        wait_until(
            "postgres accepting connections",
            Duration::from_secs(30),
            || {
                self.cmd("pg_isready")
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
    }

    /// Turns TLS on with a fresh test CA and a server certificate for 127.0.0.1 (IP SAN) and accepts
    /// TCP connections over TLS only (`hostssl`), so a plaintext client is refused. Returns the
    /// CA certificate's path, to be used as a client's `sslrootcert`.
    pub fn enable_tls(&self) -> PathBuf {
        let (crt, key) = (
            self.data().join("server.crt"),
            self.data().join("server.key"),
        );
        let (ca_crt, ca_key) = (self.dir.join("ca.pem"), self.dir.join("ca.key"));
        let csr = self.dir.join("server.csr");
        let ext = self.dir.join("server.ext");
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
        )
        .expect("ext");
        let openssl = |what: &str, args: Vec<std::ffi::OsString>| {
            check(what, Command::new("openssl").args(args).output());
        };
        let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let p = |p: &PathBuf| p.clone().into_os_string();
        // A CA, and a server certificate it signs (rustls refuses a CA certificate as a leaf).
        let mut a = os(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=meshaudit test CA",
            "-keyout",
        ]);
        a.extend([p(&ca_key), "-out".into(), p(&ca_crt)]);
        openssl("openssl CA", a);
        let mut a = os(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ]);
        a.extend([p(&key), "-out".into(), p(&csr)]);
        openssl("openssl CSR", a);
        let mut a = os(&["x509", "-req", "-days", "1", "-CAcreateserial", "-in"]);
        a.extend([
            p(&csr),
            "-CA".into(),
            p(&ca_crt),
            "-CAkey".into(),
            p(&ca_key),
            "-extfile".into(),
            p(&ext),
            "-out".into(),
            p(&crt),
        ]);
        openssl("openssl sign", a);
        if self.as_root {
            check(
                "chown cert",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&crt)
                    .arg(&key)
                    .output(),
            );
        }
        check(
            "chmod key",
            Command::new("chmod").arg("600").arg(&key).output(),
        );
        let hba = format!(
            "hostssl all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\nhostssl all all 127.0.0.1/32 trust\nlocal all all trust\n"
        );
        std::fs::write(self.data().join("pg_hba.conf"), hba).expect("pg_hba.conf");
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.stop_server();
        self.start_server();
        ca_crt
    }

    /// Stops the server at once (no checkpoint), like a crash or an outage.
    pub fn stop_server(&self) {
        check(
            "pg_ctl stop",
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output(),
        );
    }

    /// A trust-auth URL for `user` on database `db`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database and returns a superuser URL for it.
    pub fn create_db(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url("postgres", name)
    }

    /// Runs SQL as the superuser and returns psql's unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        check(
            &format!("psql {sql}"),
            Command::new(self.bin.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args([
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-X",
                    "-A",
                    "-t",
                    "-c",
                    sql,
                ])
                .output(),
        )
        .trim()
        .to_owned()
    }

    /// A single number from SQL.
    pub fn count(&self, db: &str, sql: &str) -> i64 {
        let out = self.psql(db, sql);
        out.parse()
            .unwrap_or_else(|_| panic!("`{sql}` gave `{out}`, not a number"))
    }

    /// True while the server answers.
    pub fn up(&self) -> bool {
        self.cmd("pg_isready")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.up() {
            let _ = self
                .cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
