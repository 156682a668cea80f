//! `meshaudit directory sync`: writes the directory snapshot (the `--directory` file of
//! `serve` and `report`, format in [`crate::join::identity::directory`]) from Microsoft Graph.
//!
//! - Users (`id`, `userPrincipalName`, `displayName`, `userType`), groups (`id`,
//!   `displayName`) and service principals (`id`, `appId`, `displayName`,
//!   `servicePrincipalType`, so managed identities are known) through the **delta** queries,
//!   `$select`ing only those properties and following `@odata.nextLink`.
//! - Each resource's `@odata.deltaLink` is kept beside the snapshot (`FILE.graph-delta.json`,
//!   tied to the snapshot by its `synced_at`); the next run starts from it and fetches only
//!   what changed (applying `@removed` entries), on top of the snapshot it belongs to. A
//!   missing, mismatched or expired (`410 Gone`) delta state means a full round.
//! - All-or-nothing: everything is fetched and applied in memory first; the snapshot is then
//!   written to a temporary file in the same directory, fsynced and renamed over the old one
//!   (`serve --directory` sees the old or the new file, never half of one), and only then the
//!   delta state. A failed run leaves both files as they were.
//! - Authentication in [`auth`]; HTTP, throttling and paging in [`graph`].

pub mod auth;
pub mod graph;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tracing::info;

use crate::join::identity::directory::User;
use auth::{CertificateKey, Credential, Secret};
use graph::{Graph, Settings, Stats};

#[derive(Debug, Error)]
pub enum SyncError {
    #[error("{0}")]
    Config(String),
    #[error("{setting}: {reason}")]
    Credential {
        setting: &'static str,
        reason: String,
    },
    #[error("the token endpoint refused (HTTP {status}) {detail}. Fix: check --tenant-id, --client-id and the credential; the app needs the Graph application permissions User.Read.All, GroupMember.Read.All and Application.Read.All, admin-consented")]
    Token { status: u16, detail: String },
    #[error("Graph answered HTTP {status} to {path}: {detail}")]
    Graph {
        status: u16,
        path: String,
        detail: String,
    },
    #[error("{what} failed: {reason}")]
    Http { what: String, reason: String },
    #[error("still throttled after {retries} retries (the server asks for {wait_secs} s more, above --max-retry-after-secs); the last good snapshot is kept, run again later")]
    Throttled { retries: u32, wait_secs: u64 },
    #[error("the stored delta link has expired (HTTP 410)")]
    DeltaExpired,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `meshaudit directory sync` flags. The Azure SDKs' environment variables are read as they
/// read them, so a pod with Azure workload identity needs no flag for its credential.
#[derive(Debug, Args)]
pub struct SyncOptions {
    /// The snapshot file to write (what `serve --directory` and `report --directory` read).
    /// The delta state is kept beside it, in FILE.graph-delta.json.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The Entra tenant (directory) id.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "ID")]
    pub tenant_id: String,
    /// The application (client) id the sync signs in as.
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "ID")]
    pub client_id: String,
    /// Workload identity: the projected service account token (set by the Azure workload
    /// identity webhook).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", value_name = "FILE")]
    pub federated_token_file: Option<PathBuf>,
    /// A file holding the client secret (e.g. a mounted Kubernetes Secret). The secret can
    /// also come from the AZURE_CLIENT_SECRET environment variable; never from a flag.
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// A PEM file with the client certificate and its RSA private key.
    #[arg(long, env = "AZURE_CLIENT_CERTIFICATE_PATH", value_name = "FILE")]
    pub client_certificate: Option<PathBuf>,
    /// The Entra authority (sovereign clouds: https://login.microsoftonline.us,
    /// https://login.chinacloudapi.cn); the token endpoint is AUTHORITY/TENANT/oauth2/v2.0/token.
    #[arg(
        long,
        env = "AZURE_AUTHORITY_HOST",
        value_name = "URL",
        default_value = "https://login.microsoftonline.com"
    )]
    pub authority_url: String,
    /// Microsoft Graph's base URL (sovereign clouds: https://graph.microsoft.us,
    /// https://microsoftgraph.chinacloudapi.cn).
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://graph.microsoft.com"
    )]
    pub graph_url: String,
    /// The token scope [default: GRAPH_URL/.default].
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Ignore the stored delta links and fetch everything.
    #[arg(long)]
    pub full: bool,
    /// Retries of a throttled (429/503/504) or failed request before the run fails.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub max_retries: u32,
    /// The longest Retry-After the sync waits; a longer one fails the run (the CronJob's next
    /// run tries again).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub max_retry_after_secs: u64,
    /// Timeout of each HTTP request.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout_secs: u64,
}

/// A service principal, as the snapshot keeps it (by object id) for delta updates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePrincipal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Graph `servicePrincipalType`: `Application`, `ManagedIdentity`, `Legacy`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_principal_type: Option<String>,
}

/// The snapshot file as the sync writes it. `applications` and `managed_identities` are
/// derived from `service_principals` (the collector reads them; the sync reads the latter).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(default)]
    pub synced_at: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
    #[serde(default)]
    pub applications: BTreeMap<String, String>,
    #[serde(default)]
    pub managed_identities: Vec<String>,
    #[serde(default)]
    pub service_principals: BTreeMap<String, ServicePrincipal>,
}

/// `FILE.graph-delta.json`: where each resource's next delta round starts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct DeltaState {
    /// The `synced_at` of the snapshot these links continue; any other snapshot → full round.
    synced_at: String,
    graph_url: String,
    tenant_id: String,
    links: BTreeMap<String, String>,
}

/// The three resources, their delta paths and the only properties fetched.
const RESOURCES: [(&str, &str); 3] = [
    ("users", "id,userPrincipalName,displayName,userType"),
    ("groups", "id,displayName"),
    (
        "servicePrincipals",
        "id,appId,displayName,servicePrincipalType",
    ),
];

fn removed(item: &Value) -> bool {
    item.get("@removed").is_some()
}

/// A property present in a delta item: `Some(None)` when set to null, `None` when absent
/// (a delta update carries at least the changed properties; absent ones keep their value).
fn prop(item: &Value, name: &str) -> Option<Option<String>> {
    item.get(name).map(|v| v.as_str().map(str::to_owned))
}

impl Snapshot {
    fn apply(&mut self, resource: &str, item: &Value) -> bool {
        let Some(id) = item["id"].as_str() else {
            return false;
        };
        let id = id.to_ascii_lowercase();
        match resource {
            "users" => {
                if removed(item) {
                    return self.users.remove(&id).is_some();
                }
                let u = self.users.entry(id).or_default();
                let boxed = |v: Option<String>| v.map(String::into_boxed_str);
                if let Some(v) = prop(item, "userPrincipalName") {
                    u.upn = boxed(v);
                }
                if let Some(v) = prop(item, "displayName") {
                    u.display_name = boxed(v);
                }
                if let Some(v) = prop(item, "userType") {
                    u.user_type = boxed(v);
                }
            }
            "groups" => {
                if removed(item) {
                    return self.groups.remove(&id).is_some();
                }
                if let Some(v) = prop(item, "displayName") {
                    match v {
                        Some(name) => self.groups.insert(id, name),
                        None => self.groups.remove(&id),
                    };
                }
            }
            _ => {
                if removed(item) {
                    return self.service_principals.remove(&id).is_some();
                }
                let sp = self.service_principals.entry(id).or_default();
                if let Some(v) = prop(item, "appId") {
                    sp.app_id = v.map(|s| s.to_ascii_lowercase());
                }
                if let Some(v) = prop(item, "displayName") {
                    sp.display_name = v;
                }
                if let Some(v) = prop(item, "servicePrincipalType") {
                    sp.service_principal_type = v;
                }
            }
        }
        true
    }

    /// Rebuilds the collector's `applications` and `managed_identities` from the principals.
    fn derive(&mut self) {
        self.applications.clear();
        let mut mis = Vec::new();
        for (oid, sp) in &self.service_principals {
            if let (Some(app), Some(name)) = (&sp.app_id, &sp.display_name) {
                self.applications.insert(app.clone(), name.clone());
            }
            if sp.service_principal_type.as_deref() == Some("ManagedIdentity") {
                mis.push(oid.clone());
                mis.extend(sp.app_id.clone());
            }
        }
        mis.sort_unstable();
        mis.dedup();
        self.managed_identities = mis;
    }
}

fn setting_err(msg: String) -> SyncError {
    SyncError::Config(msg)
}

/// The one credential configured; several or none is a configuration error.
fn credential(o: &SyncOptions) -> Result<Credential, SyncError> {
    let env_secret = std::env::var("AZURE_CLIENT_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let given = [
        o.federated_token_file
            .as_ref()
            .map(|_| "--federated-token-file / AZURE_FEDERATED_TOKEN_FILE"),
        o.client_secret_file
            .as_ref()
            .map(|_| "--client-secret-file"),
        env_secret.as_ref().map(|_| "AZURE_CLIENT_SECRET"),
        o.client_certificate
            .as_ref()
            .map(|_| "--client-certificate / AZURE_CLIENT_CERTIFICATE_PATH"),
    ];
    let given: Vec<&str> = given.into_iter().flatten().collect();
    if given.len() != 1 {
        return Err(setting_err(format!(
            "give exactly one credential, found {}: {}. Fix: use workload identity \
             (AZURE_FEDERATED_TOKEN_FILE, set by the Azure workload identity webhook), a client \
             secret (--client-secret-file FILE or AZURE_CLIENT_SECRET) or a certificate \
             (--client-certificate FILE)",
            given.len(),
            if given.is_empty() {
                "none".to_owned()
            } else {
                given.join(", ")
            }
        )));
    }
    if let Some(p) = &o.federated_token_file {
        // Read now, so a wrong path fails before anything else; re-read per token request.
        std::fs::metadata(p).map_err(|e| SyncError::Credential {
            setting: "--federated-token-file / AZURE_FEDERATED_TOKEN_FILE",
            reason: format!("cannot read {}: {e}", p.display()),
        })?;
        return Ok(Credential::FederatedToken(p.clone()));
    }
    if let Some(p) = &o.client_secret_file {
        let s = std::fs::read_to_string(p).map_err(|e| SyncError::Credential {
            setting: "--client-secret-file",
            reason: format!("cannot read {}: {e}", p.display()),
        })?;
        let s = s.trim_end_matches(['\r', '\n']).to_owned();
        if s.is_empty() {
            return Err(SyncError::Credential {
                setting: "--client-secret-file",
                reason: format!("{} is empty", p.display()),
            });
        }
        return Ok(Credential::Secret(Secret::new(s)));
    }
    if let Some(s) = env_secret {
        return Ok(Credential::Secret(Secret::new(s)));
    }
    match &o.client_certificate {
        Some(p) => Ok(Credential::Certificate(Box::new(CertificateKey::load(p)?))),
        None => Err(setting_err("no credential".into())),
    }
}

fn base_url(flag: &str, v: &str) -> Result<String, SyncError> {
    let v = v.trim_end_matches('/');
    let ok = (v.starts_with("https://") || v.starts_with("http://")) && !v.contains(['?', '#']);
    if !ok {
        return Err(setting_err(format!(
            "{flag} {v:?} is not an http(s) base URL. Fix: e.g. {flag} https://graph.microsoft.com"
        )));
    }
    Ok(v.to_owned())
}

fn delta_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".graph-delta.json");
    out.with_file_name(name)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced,
/// renamed over `path`, then the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SyncError> {
    let err = |source| SyncError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt as _;
        // 0644: the collector's user reads it (a snapshot holds no secret).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// What a run did (printed as JSON).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub out: String,
    pub synced_at: String,
    /// `full` or `delta`, per resource.
    pub rounds: BTreeMap<String, &'static str>,
    /// Items received per resource (changes, in a delta round).
    pub received: BTreeMap<String, u64>,
    pub users: usize,
    pub groups: usize,
    pub service_principals: usize,
    pub managed_identities: usize,
    pub http: Stats,
}

/// Runs one sync.
pub async fn run(o: &SyncOptions) -> Result<Summary, SyncError> {
    let graph_url = base_url("--graph-url", &o.graph_url)?;
    let authority = base_url("--authority-url", &o.authority_url)?;
    if o.tenant_id.is_empty() || o.tenant_id.contains(['/', '?', '#']) {
        return Err(setting_err(
            "--tenant-id / AZURE_TENANT_ID is empty or not an id. Fix: the directory (tenant) id, a GUID".into(),
        ));
    }
    let credential = credential(o)?;
    let settings = Settings {
        token_url: format!("{authority}/{}/oauth2/v2.0/token", o.tenant_id),
        scope: o
            .scope
            .clone()
            .unwrap_or_else(|| format!("{graph_url}/.default")),
        graph_url: graph_url.clone(),
        client_id: o.client_id.clone(),
        credential,
        timeout: Duration::from_secs(o.timeout_secs.max(1)),
        max_retries: o.max_retries,
        max_retry_after: Duration::from_secs(o.max_retry_after_secs),
    };
    let mut graph = Graph::new(settings)?;

    // The last good snapshot and its delta state, when they belong together.
    let state_path = delta_path(&o.out);
    let (mut snap, mut state) = if o.full {
        (Snapshot::default(), DeltaState::default())
    } else {
        load_previous(o, &graph_url, &state_path)
    };
    let mut rounds = BTreeMap::new();
    let mut received = BTreeMap::new();
    for (resource, select) in RESOURCES {
        let first = format!("{graph_url}/v1.0/{resource}/delta?$select={select}");
        let mut mode = "full";
        let mut n = 0u64;
        let link = match state.links.get(resource).cloned() {
            Some(link) => {
                mode = "delta";
                let mut changed = Vec::new();
                match graph.delta(&link, |i| changed.push(i.clone())).await {
                    Ok(next) => {
                        for i in &changed {
                            snap.apply(resource, i);
                        }
                        n = changed.len() as u64;
                        Some(next)
                    }
                    Err(SyncError::DeltaExpired) => {
                        info!(resource, "delta link expired; fetching everything");
                        mode = "full";
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let link = match link {
            Some(l) => l,
            None => {
                // A full round replaces this resource's part of the snapshot.
                let mut fresh = Snapshot::default();
                let l = graph
                    .delta(&first, |i| {
                        n += 1;
                        fresh.apply(resource, i);
                    })
                    .await?;
                match resource {
                    "users" => snap.users = fresh.users,
                    "groups" => snap.groups = fresh.groups,
                    _ => snap.service_principals = fresh.service_principals,
                }
                l
            }
        };
        info!(resource, mode, received = n, "fetched");
        state.links.insert(resource.to_owned(), link);
        rounds.insert(resource.to_owned(), mode);
        received.insert(resource.to_owned(), n);
    }

    snap.derive();
    snap.synced_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    snap.source = format!("{graph_url}/v1.0 tenant {}", o.tenant_id);
    let mut bytes = serde_json::to_vec(&snap).map_err(|e| SyncError::Write {
        path: o.out.clone(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic(&o.out, &bytes)?;
    state.synced_at = snap.synced_at.clone();
    state.graph_url = graph_url;
    state.tenant_id = o.tenant_id.clone();
    let state_bytes = serde_json::to_vec_pretty(&state).map_err(|e| SyncError::Write {
        path: state_path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&state_path, &state_bytes)?;
    info!(
        path = %o.out.display(),
        users = snap.users.len(),
        groups = snap.groups.len(),
        service_principals = snap.service_principals.len(),
        "directory snapshot written"
    );
    Ok(Summary {
        out: o.out.display().to_string(),
        synced_at: snap.synced_at.clone(),
        rounds,
        received,
        users: snap.users.len(),
        groups: snap.groups.len(),
        service_principals: snap.service_principals.len(),
        managed_identities: snap.managed_identities.len(),
        http: graph.stats.clone(),
    })
}

/// The previous snapshot and delta state, or empty ones (→ full rounds) when either is
/// missing, unreadable, or they do not belong together.
fn load_previous(o: &SyncOptions, graph_url: &str, state_path: &Path) -> (Snapshot, DeltaState) {
    let snap: Option<Snapshot> = std::fs::read(&o.out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let state: Option<DeltaState> = std::fs::read(state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match (snap, state) {
        (Some(s), Some(st))
            if !st.synced_at.is_empty()
                && st.synced_at == s.synced_at
                && st.graph_url == graph_url
                && st.tenant_id == o.tenant_id =>
        {
            (s, st)
        }
        _ => {
            info!("no matching delta state beside the snapshot; fetching everything");
            (Snapshot::default(), DeltaState::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn delta_items_update_add_and_remove() {
        let mut s = Snapshot::default();
        s.apply(
            "users",
            &json!({"id": "U1", "userPrincipalName": "a@x", "displayName": "A", "userType": "Member"}),
        );
        s.apply("users", &json!({"id": "u2", "displayName": "B"}));
        // A delta update with only the changed property keeps the others.
        s.apply("users", &json!({"id": "u1", "displayName": "A2"}));
        s.apply(
            "users",
            &json!({"id": "u2", "@removed": {"reason": "deleted"}}),
        );
        assert_eq!(s.users.len(), 1);
        let u = &s.users["u1"];
        assert_eq!(
            (u.upn.as_deref(), u.display_name.as_deref()),
            (Some("a@x"), Some("A2"))
        );
        s.apply(
            "servicePrincipals",
            &json!({"id": "sp1", "appId": "APP1", "displayName": "mi", "servicePrincipalType": "ManagedIdentity"}),
        );
        s.apply(
            "servicePrincipals",
            &json!({"id": "sp2", "appId": "app2", "displayName": "web", "servicePrincipalType": "Application"}),
        );
        s.derive();
        assert_eq!(s.managed_identities, ["app1", "sp1"]);
        assert_eq!(s.applications["app2"], "web");
        assert!(!s.apply("groups", &json!({"displayName": "no id"})));
    }

    #[test]
    fn delta_state_sits_beside_the_snapshot() {
        assert_eq!(
            delta_path(Path::new("/d/directory.json")),
            Path::new("/d/directory.json.graph-delta.json")
        );
    }
}
