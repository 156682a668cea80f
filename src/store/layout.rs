//! Which files are in the store: the one enumeration of a data dir that `meshaudit report` and
//! `meshaudit verify` both use, so a report never counts a file verification did not check.
//!
//! The layout the Parquet sink writes and the digest chains it keeps:
//!
//! ```text
//! DATA_DIR/dt=YYYY-MM-DD/hour=HH/*.parquet          data files (and hidden .*.inprogress)
//! DATA_DIR/_digests/<instance>/<seq, 20 digits>.json one digest per data file
//! DATA_DIR/_spool/, DATA_DIR/_keys/                  the collector's own state
//! ```
//!
//! Nothing is followed: every entry is classified by the type `read_dir` reports for the entry
//! itself (a symbolic link is a link, never what it points at). A data file is a *regular* file
//! ending in `.parquet` directly inside a *real* `hour=HH` directory inside a *real*
//! `dt=YYYY-MM-DD` directory. Everything else that could carry or redirect evidence is a
//! [`Stray`]: a symbolic link anywhere under the data dir, a device, FIFO or socket, a `.parquet`
//! file anywhere outside the layout, a directory that cannot be read. `verify` reports every
//! stray as a finding; a report never reads one and says how many it skipped.

use std::fs::{self, File, FileType};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::store::digest::files::seq_of_name;
use crate::store::digest::DIGESTS_DIR;

const HOUR_MICROS: i64 = 3_600_000_000;

/// One `dt=YYYY-MM-DD/hour=HH/` directory and its data files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourDir {
    /// Start of the hour, µs since the epoch (UTC).
    pub start_us: i64,
    pub path: PathBuf,
    /// Its data files, sorted.
    pub files: Vec<DataFile>,
}

impl HourDir {
    pub const MICROS: i64 = HOUR_MICROS;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Relative to the data dir, `/`-separated (how digests name their file).
    pub rel: String,
    pub path: PathBuf,
    /// Device and inode of the regular file listed.
    id: (u64, u64),
}

impl DataFile {
    /// Opens the file listed, and only it: if the path was replaced since it was listed (by a
    /// link, or another file), this fails rather than read what is there now.
    pub fn open(&self) -> std::io::Result<File> {
        let f = File::open(&self.path)?;
        let m = f.metadata()?;
        if !m.is_file() || (m.dev(), m.ino()) != self.id {
            return Err(std::io::Error::other(
                "the file was replaced after the data dir was listed (by a link or another file)",
            ));
        }
        Ok(f)
    }
}

/// One instance's digest directory: `_digests/<instance>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDir {
    pub instance: String,
    pub path: PathBuf,
    /// Regular files named `<seq>.json`, by seq.
    pub digests: Vec<(u64, PathBuf)>,
}

/// Why an entry is not part of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrayKind {
    /// A symbolic link (never followed); where it points.
    Symlink { target: String },
    /// A device, FIFO or socket.
    Special,
    /// A `.parquet` file outside `dt=YYYY-MM-DD/hour=HH/`.
    OutsideLayout,
    /// A directory that could not be listed, or an entry whose type or metadata could not be
    /// read.
    Unreadable { error: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Relative to the data dir, `/`-separated.
    pub rel: String,
    pub kind: StrayKind,
}

impl Stray {
    /// One sentence for an operator.
    pub fn describe(&self) -> String {
        match &self.kind {
            StrayKind::Symlink { target } => format!(
                "a symbolic link (to {target}); the store holds only plain files and directories, and links are never followed"
            ),
            StrayKind::Special => {
                "a device, FIFO or socket, not a plain file or directory".to_owned()
            }
            StrayKind::OutsideLayout => {
                "a .parquet file outside the dt=YYYY-MM-DD/hour=HH/ layout; no report reads it"
                    .to_owned()
            }
            StrayKind::Unreadable { error } => format!("cannot be read: {error}"),
        }
    }
}

/// What a data dir holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// In time order.
    pub hours: Vec<HourDir>,
    /// By instance.
    pub chains: Vec<ChainDir>,
    /// Sorted by path.
    pub strays: Vec<Stray>,
}

impl Inventory {
    /// Every data file, in time order.
    pub fn data_files(&self) -> impl Iterator<Item = &DataFile> {
        self.hours.iter().flat_map(|h| h.files.iter())
    }
}

/// Where a directory sits in the layout, which decides what its entries may be.
enum Level {
    Root,
    /// A `dt=` directory: midnight, µs.
    Day(i64),
    /// An `hour=` directory: the start of its hour, µs.
    Hour(i64),
    Digests,
    /// `_digests/<instance>/`.
    Chain(String),
    /// Anywhere else: only strays are looked for.
    Other,
}

/// `p` relative to `root`, `/`-separated: how digests and findings name a file.
pub fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// `dt=YYYY-MM-DD` exactly as the sink writes it: midnight of that day in µs.
fn day_of(name: &str) -> Option<i64> {
    let d = name.strip_prefix("dt=")?;
    let date = NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?;
    if date.format("%Y-%m-%d").to_string() != d {
        return None;
    }
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros())
}

/// `hour=HH` exactly as the sink writes it (two digits, 00..=23).
fn hour_of(name: &str) -> Option<i64> {
    let h = name.strip_prefix("hour=")?;
    if h.len() != 2 || !h.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i64 = h.parse().ok()?;
    (0..24).contains(&h).then_some(h)
}

fn is_parquet(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "parquet")
}

struct Walk<'a> {
    root: &'a Path,
    inv: Inventory,
}

impl Walk<'_> {
    fn stray(&mut self, p: &Path, kind: StrayKind) {
        self.inv.strays.push(Stray {
            rel: relative(self.root, p),
            kind,
        });
    }

    /// Records links and special files; true for a plain directory or regular file.
    fn plain(&mut self, p: &Path, ft: FileType) -> bool {
        if ft.is_symlink() {
            let target = fs::read_link(p)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            self.stray(p, StrayKind::Symlink { target });
            return false;
        }
        if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            self.stray(p, StrayKind::Special);
            return false;
        }
        ft.is_dir() || ft.is_file()
    }

    /// Lists one directory: its subdirectories go on `stack` (an explicit stack, so no depth
    /// of nesting can exhaust the thread's stack), its files into the inventory.
    fn dir(&mut self, dir: PathBuf, level: Level, stack: &mut Vec<(PathBuf, Level)>) {
        let entries = fs::read_dir(&dir).and_then(|rd| rd.collect::<Result<Vec<_>, _>>());
        let mut entries = match entries {
            Ok(e) => e,
            Err(e) => {
                let error = e.to_string();
                self.stray(&dir, StrayKind::Unreadable { error });
                return;
            }
        };
        entries.sort_by_key(|e| e.file_name());
        let mut files = Vec::new();
        let mut digests = Vec::new();
        for e in entries {
            let p = e.path();
            let ft = match e.file_type() {
                Ok(ft) => ft,
                Err(err) => {
                    let error = err.to_string();
                    self.stray(&p, StrayKind::Unreadable { error });
                    continue;
                }
            };
            if !self.plain(&p, ft) {
                continue;
            }
            let name = e.file_name();
            let name = name.to_str().unwrap_or("");
            if ft.is_dir() {
                let next = match level {
                    Level::Root if name == DIGESTS_DIR => Level::Digests,
                    Level::Root => day_of(name).map_or(Level::Other, Level::Day),
                    Level::Day(midnight) => hour_of(name)
                        .map_or(Level::Other, |h| Level::Hour(midnight + h * HOUR_MICROS)),
                    Level::Digests => Level::Chain(name.to_owned()),
                    _ => Level::Other,
                };
                stack.push((p, next));
                continue;
            }
            // A regular file.
            match level {
                Level::Hour(_) if is_parquet(&p) => match e.metadata() {
                    // The entry's own metadata (lstat): the file listed, not a link's target.
                    Ok(m) => files.push(DataFile {
                        rel: relative(self.root, &p),
                        path: p,
                        id: (m.dev(), m.ino()),
                    }),
                    Err(err) => {
                        let error = err.to_string();
                        self.stray(&p, StrayKind::Unreadable { error });
                    }
                },
                Level::Chain(_) => {
                    if let Some(seq) = seq_of_name(name) {
                        digests.push((seq, p));
                    }
                }
                _ if is_parquet(&p) => self.stray(&p, StrayKind::OutsideLayout),
                _ => {}
            }
        }
        match level {
            Level::Hour(start_us) => self.inv.hours.push(HourDir {
                start_us,
                path: dir,
                files,
            }),
            Level::Chain(instance) => {
                digests.sort_by_key(|(seq, _)| *seq);
                self.inv.chains.push(ChainDir {
                    instance,
                    path: dir,
                    digests,
                });
            }
            _ => {}
        }
    }
}

/// Lists `data_dir` (which itself may be reached through a link: it is the operator's choice).
/// Err only when `data_dir` itself cannot be listed.
pub fn scan(data_dir: &Path) -> std::io::Result<Inventory> {
    fs::read_dir(data_dir)?;
    let mut w = Walk {
        root: data_dir,
        inv: Inventory::default(),
    };
    let mut stack = vec![(data_dir.to_path_buf(), Level::Root)];
    while let Some((dir, level)) = stack.pop() {
        w.dir(dir, level, &mut stack);
    }
    let mut inv = w.inv;
    inv.hours.sort_by_key(|h| h.start_us);
    inv.chains.sort_by(|a, b| a.instance.cmp(&b.instance));
    inv.strays.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(inv)
}

/// Why an object store could not be listed or fetched for `report` / `verify`.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Url(#[from] crate::store::object::ObjectError),
    #[error("cannot read --parquet-url {url}: {reason}. Fix: check the store's credentials in the environment ({creds}) and that they may list and read (GET) objects under the prefix")]
    NotReadable {
        url: String,
        creds: &'static str,
        reason: String,
    },
    #[error("cannot write the local copy of {url} in {dir}: {source}. Fix: set TMPDIR to a directory with room for the Parquet files of the store")]
    Local {
        url: String,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// A local copy of what an object store holds under a `--parquet-url` prefix: the keys that
/// [`scan`] classifies (every `.parquet` object and everything under `_digests/`), written
/// under the same relative names into a private temporary directory (removed on drop). `report`
/// and `verify` then read it exactly as a data dir, through [`scan`], so the object store has no
/// second listing: a key outside the Hive layout becomes the same [`Stray`].
///
/// Downloading (streamed chunk by chunk, so memory stays bounded whatever the object size) is
/// chosen over ranged GETs: the Parquet reader and the digest hashing need random access and
/// whole-file reads anyway, and the readers already used for a data dir stay the only readers.
/// It costs local disk the size of the store's Parquet files.
pub struct Mirror {
    dir: PathBuf,
    /// The URL without query or userinfo, to name the store in reports and findings.
    pub shown: String,
    /// Objects fetched.
    pub objects: usize,
}

impl Mirror {
    /// The local copy, to [`scan`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lists and fetches `raw_url` (credentials from the environment, as `serve` uses them).
    pub async fn fetch(raw_url: &str) -> Result<Mirror, MirrorError> {
        use futures_util::StreamExt;
        use object_store::ObjectStoreExt;
        use std::os::unix::fs::DirBuilderExt;

        let opened = crate::store::object::open(raw_url)?;
        let shown = opened.shown.clone();
        let unreadable = |e: object_store::Error| MirrorError::NotReadable {
            url: opened.shown.clone(),
            creds: opened.creds,
            reason: crate::store::object::redact(&e.to_string()),
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("meshaudit-store-{}-{stamp}", std::process::id()));
        let local = |source: std::io::Error| MirrorError::Local {
            url: shown.clone(),
            dir: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(local)?;
        let mut mirror = Mirror {
            dir: dir.clone(),
            shown: shown.clone(),
            objects: 0,
        };
        let prefix = opened.prefix.clone();
        let mut listing = opened.store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(unreadable)?;
            let Some(parts) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_owned()).collect();
            let wanted = parts.first().is_some_and(|p| p == DIGESTS_DIR)
                || parts.last().is_some_and(|p| p.ends_with(".parquet"));
            // `object_store` paths never hold `.`/`..` segments or empty ones.
            if !wanted || parts.iter().any(|p| p == "." || p == "..") {
                continue;
            }
            let path = parts.iter().fold(dir.clone(), |p, part| p.join(part));
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(local)?;
            }
            let got = opened.store.get(&meta.location).await.map_err(unreadable)?;
            let mut file = tokio::fs::File::create(&path).await.map_err(local)?;
            let mut chunks = got.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(unreadable)?;
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                    .await
                    .map_err(local)?;
            }
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(local)?;
            mirror.objects += 1;
        }
        tracing::info!(url = %mirror.shown, objects = mirror.objects, "object store listed and fetched");
        Ok(mirror)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, b"x").expect("write");
    }

    #[test]
    fn plain_layout_only_and_every_stray_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        let outside = tmp.path().join("outside");
        touch(&root.join("dt=2026-01-01/hour=10/part-a.parquet"));
        touch(&root.join("dt=2026-01-01/hour=10/.part-b.parquet.inprogress"));
        touch(&root.join("dt=2025-12-31/hour=23/part-c.parquet"));
        touch(&root.join("_digests/inst-a/00000000000000000001.json"));
        touch(&root.join("_digests/inst-a/00000000000000000002.json"));
        touch(&root.join("_digests/inst-a/notes.txt"));
        touch(&root.join("_spool/seg-00000000000000000000.log"));
        touch(&outside.join("forged.parquet"));
        fs::create_dir_all(outside.join("hour=12")).expect("mkdir");
        // Links: an hour dir, a day dir, a data file, a digest file.
        symlink(&outside, root.join("dt=2026-01-01/hour=11")).expect("link");
        symlink(&outside, root.join("dt=2026-01-02")).expect("link");
        symlink(
            outside.join("forged.parquet"),
            root.join("dt=2026-01-01/hour=10/part-z.parquet"),
        )
        .expect("link");
        symlink(
            root.join("_digests/inst-a/00000000000000000001.json"),
            root.join("_digests/inst-a/00000000000000000003.json"),
        )
        .expect("link");
        // Data files outside the layout.
        touch(&root.join("extra.parquet"));
        touch(&root.join("dt=2026-01-01/loose.parquet"));
        touch(&root.join("dt=2026-01-01/hour=7/bad-hour.parquet"));
        touch(&root.join("dt=2026-1-01/hour=10/bad-day.parquet"));
        touch(&root.join("dt=2026-01-01/hour=10/nested/deep.parquet"));
        touch(&root.join("_spool/sneaky.parquet"));
        // A FIFO.
        let fifo = root.join("dt=2026-01-01/hour=10/pipe.parquet");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());

        let inv = scan(&root).expect("scan");
        let files: Vec<&str> = inv.data_files().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            files,
            [
                "dt=2025-12-31/hour=23/part-c.parquet",
                "dt=2026-01-01/hour=10/part-a.parquet"
            ]
        );
        assert_eq!(inv.hours.len(), 2);
        assert_eq!(inv.hours[1].start_us, 1_767_261_600_000_000);
        assert_eq!(inv.chains.len(), 1);
        let seqs: Vec<u64> = inv.chains[0].digests.iter().map(|d| d.0).collect();
        assert_eq!(seqs, [1, 2]);

        let strays: Vec<(&str, &StrayKind)> = inv
            .strays
            .iter()
            .map(|s| (s.rel.as_str(), &s.kind))
            .collect();
        let link = |to: &Path| StrayKind::Symlink {
            target: to.display().to_string(),
        };
        assert_eq!(
            strays,
            [
                (
                    "_digests/inst-a/00000000000000000003.json",
                    &link(&root.join("_digests/inst-a/00000000000000000001.json"))
                ),
                ("_spool/sneaky.parquet", &StrayKind::OutsideLayout),
                (
                    "dt=2026-01-01/hour=10/nested/deep.parquet",
                    &StrayKind::OutsideLayout
                ),
                (
                    "dt=2026-01-01/hour=10/part-z.parquet",
                    &link(&outside.join("forged.parquet"))
                ),
                ("dt=2026-01-01/hour=10/pipe.parquet", &StrayKind::Special),
                ("dt=2026-01-01/hour=11", &link(&outside)),
                (
                    "dt=2026-01-01/hour=7/bad-hour.parquet",
                    &StrayKind::OutsideLayout
                ),
                ("dt=2026-01-01/loose.parquet", &StrayKind::OutsideLayout),
                ("dt=2026-01-02", &link(&outside)),
                (
                    "dt=2026-1-01/hour=10/bad-day.parquet",
                    &StrayKind::OutsideLayout
                ),
                ("extra.parquet", &StrayKind::OutsideLayout),
            ]
        );
        assert!(inv.strays.iter().all(|s| !s.describe().is_empty()));
    }

    #[test]
    fn a_data_file_replaced_after_listing_is_not_opened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        let file = root.join("dt=2026-01-01/hour=10/part-a.parquet");
        touch(&file);
        touch(&tmp.path().join("forged.parquet"));
        let inv = scan(&root).expect("scan");
        let listed = inv.data_files().next().expect("one file").clone();
        assert!(listed.open().is_ok());
        // The listed file is kept (renamed away), so its inode cannot be reused.
        fs::rename(&file, tmp.path().join("kept")).expect("rename");
        symlink(tmp.path().join("forged.parquet"), &file).expect("link");
        let err = listed.open().expect_err("a link now");
        assert!(err.to_string().contains("replaced"), "{err}");
        fs::remove_file(&file).expect("remove");
        fs::copy(tmp.path().join("forged.parquet"), &file).expect("copy");
        assert!(listed.open().is_err(), "another file now");
        fs::remove_file(&file).expect("remove");
        fs::rename(tmp.path().join("kept"), &file).expect("rename back");
        assert!(listed.open().is_ok(), "the listed file again");
    }

    #[test]
    fn deep_nesting_is_walked_without_recursion() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A thousand levels (each costs two bytes of PATH_MAX).
        let mut deep = tmp.path().to_path_buf();
        for _ in 0..1000 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).expect("mkdir");
        touch(&deep.join("x.parquet"));
        let inv = scan(tmp.path()).expect("scan");
        assert_eq!(inv.strays.len(), 1);
        assert_eq!(inv.strays[0].kind, StrayKind::OutsideLayout);
        assert!(inv.strays[0].rel.ends_with("/d/x.parquet"));
    }

    #[test]
    fn an_empty_or_missing_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(scan(tmp.path()).expect("scan"), Inventory::default());
        assert!(scan(&tmp.path().join("nope")).is_err());
    }
}
