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

use std::collections::HashMap;
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

/// Hex digit values; 0xff for anything else.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses an id in GUID form (`8-4-4-4-12` hex digits, either case) to its 128 bits.
fn guid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut v: u128 = 0;
    let mut bad = 0u8;
    for part in [&b[0..8], &b[9..13], &b[14..18], &b[19..23], &b[24..36]] {
        for &c in part {
            let d = HEX[c as usize];
            bad |= d;
            v = (v << 4) | u128::from(d & 0x0f);
        }
    }
    // A non-hex byte set the high bits of `bad` (0xff); hex digits never do.
    (bad & 0xf0 == 0).then_some(v)
}

/// Hashes a GUID key by mixing its two halves: Entra object ids are random (v4) GUIDs, and the
/// table's keys come from the directory, not from requests, so no seed is needed to keep
/// lookups O(1); SipHash over the 36-character text cost more than the rest of a lookup.
#[derive(Default)]
struct GuidHasher(u64);

impl std::hash::Hasher for GuidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed here; anything else still hashes correctly, just slowly.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let folded = (v as u64) ^ ((v >> 64) as u64);
        self.0 = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (folded >> 29);
    }
}

type GuidMap<V> = HashMap<u128, V, std::hash::BuildHasherDefault<GuidHasher>>;

/// Entries keyed by directory id: GUIDs as 128-bit numbers (less memory, cheap lookups, any
/// letter case), anything else (hand-made files) by its lower-cased text.
#[derive(Debug)]
struct IdMap<V> {
    guids: GuidMap<V>,
    other: HashMap<String, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            guids: GuidMap::default(),
            other: HashMap::new(),
        }
    }
}

impl<V> IdMap<V> {
    fn build(entries: impl IntoIterator<Item = (String, V)>) -> Self {
        let mut m = IdMap::default();
        for (k, v) in entries {
            match guid(&k) {
                Some(g) => {
                    m.guids.insert(g, v);
                }
                None => {
                    m.other.insert(k.to_ascii_lowercase(), v);
                }
            }
        }
        m.guids.shrink_to_fit();
        m
    }

    fn get(&self, id: &str) -> Option<&V> {
        if let Some(g) = guid(id) {
            return self.guids.get(&g);
        }
        if self.other.is_empty() {
            return None;
        }
        // Allocates only for the rare upper-case, non-GUID id.
        if id.bytes().any(|b| b.is_ascii_uppercase()) {
            self.other.get(&id.to_ascii_lowercase())
        } else {
            self.other.get(id)
        }
    }

    fn len(&self) -> usize {
        self.guids.len() + self.other.len()
    }
}

/// One snapshot of the directory.
#[derive(Debug, Default)]
pub struct Directory {
    groups: IdMap<Box<str>>,
    applications: IdMap<Box<str>>,
    managed_identities: IdMap<()>,
    users: IdMap<User>,
    synced_at: Option<String>,
}

impl Directory {
    pub fn from_json(bytes: &[u8]) -> Result<Directory, serde_json::Error> {
        let f: DirectoryFile = serde_json::from_slice(bytes)?;
        let names = |m: HashMap<String, String>| {
            IdMap::build(m.into_iter().map(|(k, v)| (k, v.into_boxed_str())))
        };
        Ok(Directory {
            groups: names(f.groups),
            applications: names(f.applications),
            managed_identities: IdMap::build(f.managed_identities.into_iter().map(|k| (k, ()))),
            users: IdMap::build(f.users),
            synced_at: f.synced_at,
        })
    }

    /// The user with this object id.
    pub fn user(&self, object_id: &str) -> Option<&User> {
        self.users.get(object_id)
    }

    /// When `meshaudit directory sync` wrote the snapshot (RFC 3339), if it says.
    pub fn synced_at(&self) -> Option<&str> {
        self.synced_at.as_deref()
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn group_name(&self, id: &str) -> Option<&str> {
        self.groups.get(id).map(|n| &**n)
    }

    pub fn app_name(&self, app_id: &str) -> Option<&str> {
        self.applications.get(app_id).map(|n| &**n)
    }

    pub fn is_managed_identity(&self, id: &str) -> bool {
        self.managed_identities.get(id).is_some()
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
    fn guid_keys_match_in_any_case_and_other_keys_still_work() {
        let d = Directory::from_json(
            br#"{"groups":{"5C6D7E8F-0000-4000-8000-00000000B001":"Admins","not-a-guid":"N"},
                "managed_identities":["9e8d7c6b-0000-4000-8000-00000000e002"]}"#,
        )
        .expect("valid");
        assert_eq!(
            d.group_name("5c6d7e8f-0000-4000-8000-00000000b001"),
            Some("Admins")
        );
        assert_eq!(d.group_name("5c6d7e8f-0000-4000-8000-00000000b002"), None);
        assert_eq!(d.group_name("NOT-A-GUID"), Some("N"));
        assert!(d.is_managed_identity("9E8D7C6B-0000-4000-8000-00000000E002"));
        assert_eq!(guid("5c6d7e8f-0000-4000-8000-00000000b00g"), None);
        assert_eq!(guid("5c6d7e8f00000-4000-8000-00000000b001"), None);
        assert_eq!(guid("00000000-0000-0000-0000-0000000000ff"), Some(255));
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
