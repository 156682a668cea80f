//! The directory snapshot (`--directory FILE`, format in docs/audit-record.md): group and
//! application display names, which principals are managed identities, and users (object id →
//! UPN, display name, user type). `meshaudit directory sync` writes it from Microsoft Graph
//! ([`crate::directory_sync`]); the file format is this module's.
//!
//! The file is read at start-up (a bad file stops start-up with a clear error) and polled for
//! changes afterwards; a changed file is parsed off the async runtime and swapped in atomically,
//! so the join always sees one whole snapshot. A file that becomes unreadable or invalid keeps
//! the last good snapshot in use and is reported in the log and in metrics.
//!
//! Entra object ids are GUIDs that Entra writes in lower case; keys are lower-cased at load so
//! that an export with upper-case GUIDs still matches.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::telemetry::Metrics;

#[derive(Debug, Error)]
pub enum DirectoryError {
    #[error("cannot read the directory snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid directory snapshot {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The file's shape. Unknown keys are ignored so that exports from other tools can carry more
/// (and so that files written before `users` existed still load).
#[derive(Deserialize)]
struct DirectoryFile {
    #[serde(default)]
    groups: HashMap<String, String>,
    #[serde(default)]
    applications: HashMap<String, String>,
    #[serde(default)]
    managed_identities: Vec<String>,
    #[serde(default)]
    users: HashMap<String, User>,
    #[serde(default)]
    synced_at: Option<String>,
}

/// A user of the directory (Graph `user`: `userPrincipalName`, `displayName`, `userType`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Box<str>>,
    /// `Member` or `Guest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<Box<str>>,
}

impl User {
    /// How a report names the user: the UPN (what token name claims hold), else the display name.
    pub fn label(&self) -> Option<&str> {
        self.upn.as_deref().or(self.display_name.as_deref())
    }
}

/// One snapshot of the directory.
#[derive(Debug, Default)]
pub struct Directory {
    groups: HashMap<String, String>,
    applications: HashMap<String, String>,
    managed_identities: HashSet<String>,
    users: HashMap<String, User>,
    synced_at: Option<String>,
}

impl Directory {
    pub fn from_json(bytes: &[u8]) -> Result<Directory, serde_json::Error> {
        let f: DirectoryFile = serde_json::from_slice(bytes)?;
        let lower = |m: HashMap<String, String>| {
            m.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect()
        };
        Ok(Directory {
            groups: lower(f.groups),
            applications: lower(f.applications),
            managed_identities: f
                .managed_identities
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            users: f
                .users
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            synced_at: f.synced_at,
        })
    }

    /// The user with this object id.
    pub fn user(&self, object_id: &str) -> Option<&User> {
        if object_id.bytes().any(|b| b.is_ascii_uppercase()) {
            self.users.get(&object_id.to_ascii_lowercase())
        } else {
            self.users.get(object_id)
        }
    }

    /// When `meshaudit directory sync` wrote the snapshot (RFC 3339), if it says.
    pub fn synced_at(&self) -> Option<&str> {
        self.synced_at.as_deref()
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn group_name(&self, id: &str) -> Option<&str> {
        lookup(&self.groups, id)
    }

    pub fn app_name(&self, app_id: &str) -> Option<&str> {
        lookup(&self.applications, app_id)
    }

    pub fn is_managed_identity(&self, id: &str) -> bool {
        if id.bytes().any(|b| b.is_ascii_uppercase()) {
            self.managed_identities.contains(&id.to_ascii_lowercase())
        } else {
            self.managed_identities.contains(id)
        }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
            + self.applications.len()
            + self.managed_identities.len()
            + self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lookup<'a>(m: &'a HashMap<String, String>, id: &str) -> Option<&'a str> {
    // Allocates only for the rare upper-case id.
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        m.get(&id.to_ascii_lowercase()).map(String::as_str)
    } else {
        m.get(id).map(String::as_str)
    }
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The directory file and the snapshot in use; shared by the join (reads) and the poller.
#[derive(Debug)]
pub struct DirectoryWatch {
    path: PathBuf,
    current: ArcSwap<Directory>,
    seen: Mutex<Option<Stamp>>,
}

impl DirectoryWatch {
    /// Reads the file once; an error here stops start-up.
    pub fn load(path: &Path) -> Result<DirectoryWatch, DirectoryError> {
        let seen = stamp(path).ok();
        let dir = read(path)?;
        info!(path = %path.display(), entries = dir.len(), "directory snapshot loaded");
        Ok(DirectoryWatch {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(dir),
            seen: Mutex::new(seen),
        })
    }

    /// The snapshot in use. Cheap (no lock, no reference-count traffic in the common case).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Directory>> {
        self.current.load()
    }

    /// Re-reads the file if it changed since the last look. `Ok(true)` when a new snapshot is
    /// in use; on error the last good snapshot stays. Blocking: call off the async runtime.
    pub fn poll(&self) -> Result<bool, DirectoryError> {
        let now = stamp(&self.path).map_err(|source| DirectoryError::Read {
            path: self.path.clone(),
            source,
        })?;
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == Some(now) {
                return Ok(false);
            }
        }
        let result = read(&self.path);
        // Remember this version even when it is invalid, so a bad file is reported once, not at
        // every poll; the next change is read again.
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        self.current.store(Arc::new(result?));
        Ok(true)
    }

    /// Polls the file every `every` until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.poll()).await {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    metrics.directory_reloads.fetch_add(1, Relaxed);
                    info!(path = %self.path.display(), entries = self.snapshot().len(), "directory snapshot reloaded");
                }
                Ok(Err(e)) => {
                    metrics.directory_reload_errors.fetch_add(1, Relaxed);
                    warn!(error = %e, "keeping the previous directory snapshot");
                }
                Err(e) => warn!(error = %e, "directory poll task failed"),
            }
        }
    }
}

fn read(path: &Path) -> Result<Directory, DirectoryError> {
    let bytes = std::fs::read(path).map_err(|source| DirectoryError::Read {
        path: path.to_owned(),
        source,
    })?;
    Directory::from_json(&bytes).map_err(|source| DirectoryError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_unknown_keys_and_case() {
        let d = Directory::from_json(
            br#"{"groups":{"5C6D-B001":"Payments Admins"},"applications":{"app1":"orders-web"},
                "managed_identities":["mi1"],"exported_by":"some-tool","users":{}}"#,
        )
        .expect("valid");
        assert_eq!(d.group_name("5c6d-b001"), Some("Payments Admins"));
        assert_eq!(d.group_name("5C6D-B001"), Some("Payments Admins"));
        assert_eq!(d.group_name("other"), None);
        assert_eq!(d.app_name("app1"), Some("orders-web"));
        assert!(d.is_managed_identity("MI1"));
        assert!(!d.is_managed_identity("app1"));
        assert!(Directory::from_json(b"{}")
            .expect("empty is valid")
            .is_empty());
        assert!(Directory::from_json(br#"{"groups":[]}"#).is_err());
    }

    #[test]
    fn users_and_sync_time_load_and_old_files_still_do() {
        let d = Directory::from_json(
            br#"{"users":{"AB-1":{"upn":"ada@contoso.example","display_name":"Ada","user_type":"Member","since":"x"},
                 "g-2":{"display_name":"Guest Gil","user_type":"Guest"}},
                "synced_at":"2026-03-02T10:00:00Z"}"#,
        )
        .expect("valid");
        assert_eq!(
            d.user("ab-1").and_then(User::label),
            Some("ada@contoso.example")
        );
        assert_eq!(d.user("G-2").and_then(User::label), Some("Guest Gil"));
        assert_eq!(
            d.user("g-2").and_then(|u| u.user_type.as_deref()),
            Some("Guest")
        );
        assert_eq!(d.synced_at(), Some("2026-03-02T10:00:00Z"));
        let old = Directory::from_json(br#"{"groups":{"g":"G"}}"#).expect("old file");
        assert_eq!((old.users(), old.synced_at()), (0, None));
        assert!(Directory::from_json(br#"{"users":{"u":"not an object"}}"#).is_err());
    }

    #[test]
    fn reload_on_change_and_keep_last_good_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("directory.json");
        std::fs::write(&path, br#"{"groups":{"g1":"One"}}"#).expect("write");
        let w = DirectoryWatch::load(&path).expect("load");
        assert_eq!(w.snapshot().group_name("g1"), Some("One"));
        assert!(!w.poll().expect("unchanged"), "no change, no reload");

        // A different length guarantees a different stamp even on a coarse-mtime filesystem.
        std::fs::write(&path, br#"{"groups":{"g1":"One renamed"}}"#).expect("write");
        assert!(w.poll().expect("changed"));
        assert_eq!(w.snapshot().group_name("g1"), Some("One renamed"));

        std::fs::write(&path, b"{not json").expect("write");
        assert!(matches!(w.poll(), Err(DirectoryError::Parse { .. })));
        assert_eq!(
            w.snapshot().group_name("g1"),
            Some("One renamed"),
            "last good kept"
        );
        assert!(!w.poll().expect("same bad version is not re-read"));

        assert!(matches!(
            DirectoryWatch::load(&dir.path().join("missing.json")),
            Err(DirectoryError::Read { .. })
        ));
    }
}
