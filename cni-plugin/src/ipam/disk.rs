//! The disk store, laid out as host-local lays out its own so either can
//! take over a data dir from the other:
//!
//! ```text
//! <dataDir>/<network>/
//!   lock                  flock(2)ed around every operation (host-local's too)
//!   10.22.0.5             one file per reserved address, created O_EXCL,
//!   fd00::5               content "containerid\r\nifname"
//!   last_reserved_ip.0    last address reserved in range set 0 (round robin)
//!   sluice.boot_id        boot id of the last operation (reboot reclaim)
//!   by-id/<cid>@<ifname>  index: JSON {containerID, ifname, ips}, tmp + rename
//!   by-id/.stamp          identity and mtime of <network>/ when the index
//!                         was last known to match it
//! ```
//!
//! The index lets DEL find a container's addresses without reading every
//! file (host-local scans). host-local neither reads nor writes the index,
//! so each lock compares the directory's mtime with `by-id/.stamp`: any
//! reservation or release made by someone else changed the mtime, and the
//! index is rebuilt from the address files. To make that comparison exact
//! although file timestamps are coarse (a later write in the same clock
//! tick would keep the mtime), the store sets the directory's mtime to one
//! second in the past after its own changes: any later change moves it
//! forward to "now".

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::store::{Reservation, Store};
use crate::error::{CniError, CniResult};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const BOOT_ID_FILE: &str = "sluice.boot_id";
const INDEX_DIR: &str = "by-id";
const STAMP_FILE: &str = ".stamp";
const TMP_PREFIX: &str = ".tmp-";
/// host-local's separator between container id and ifname.
const LINE_BREAK: &str = "\r\n";
/// Longest index file name; longer keys are shortened and hashed.
const MAX_INDEX_NAME: usize = 200;

/// One index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IndexEntry {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    ips: Vec<IpAddr>,
}

enum Lookup {
    Missing,
    Found(IndexEntry),
    /// Unreadable JSON: the index cannot be trusted until rebuilt.
    Corrupt,
}

/// Disk-backed [`Store`] under `dataDir/<network>/`.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    lock: Option<File>,
    /// This session changed the directory: record a new stamp at unlock.
    dirty: bool,
    /// The index may disagree with the address files: drop the stamp at
    /// unlock so that the next lock rebuilds it.
    index_suspect: bool,
    tmp_counter: u64,
}

impl DiskStore {
    /// Opens (creating it when missing) the store of `network` in `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> CniResult<Self> {
        let dir = data_dir.join(network);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io_error("cannot create IPAM store directory", &dir, e))?;
        Ok(Self::at(dir))
    }

    /// Opens the store when its directory exists; `None` otherwise (DEL and
    /// GC have nothing to do then and must not create it).
    pub fn open_existing(data_dir: &Path, network: &str) -> CniResult<Option<Self>> {
        let dir = data_dir.join(network);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some(Self::at(dir))),
            Ok(_) => Err(CniError::ipam(format!(
                "IPAM store {} is not a directory",
                dir.display()
            ))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot open IPAM store", &dir, e)),
        }
    }

    fn at(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: None,
            dirty: false,
            index_suspect: false,
            tmp_counter: 0,
        }
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_dir(&self) -> PathBuf {
        self.dir.join(INDEX_DIR)
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn require_lock(&self) -> CniResult<()> {
        if self.lock.is_some() {
            Ok(())
        } else {
            Err(CniError::ipam(format!(
                "IPAM store {} used without its lock",
                self.dir.display()
            )))
        }
    }

    /// The owner recorded in an address file, `None` when it does not exist.
    fn read_owner(&self, ip: IpAddr) -> CniResult<Option<(String, String)>> {
        let path = self.ip_path(ip);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(parse_owner(&text))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read reservation", &path, e)),
        }
    }

    fn remove_ip_file(&mut self, ip: IpAddr) -> CniResult<()> {
        let path = self.ip_path(ip);
        self.dirty = true;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot remove reservation", &path, e)),
        }
    }

    /// Every address file, read: the truth the index mirrors.
    fn scan(&self) -> CniResult<Vec<Reservation>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| io_error("cannot list IPAM store", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list IPAM store", &self.dir, e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if let Some((container_id, ifname)) = self.read_owner(ip)? {
                out.push(Reservation {
                    ip,
                    container_id,
                    ifname,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes `dir/name` through a temporary file and a rename.
    fn write_atomic(&mut self, dir: &Path, name: &str, content: &str) -> CniResult<()> {
        self.tmp_counter += 1;
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{}-{name}",
            std::process::id(),
            self.tmp_counter
        ));
        let target = dir.join(name);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(content.as_bytes())?;
            fs::rename(&tmp, &target)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("cannot write", &target, e));
        }
        Ok(())
    }

    fn lookup(&self, name: &str) -> CniResult<Lookup> {
        let path = self.index_dir().join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(serde_json::from_str(&text).map_or(Lookup::Corrupt, Lookup::Found)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Lookup::Missing),
            Err(e) => Err(io_error("cannot read index", &path, e)),
        }
    }

    fn write_index(&mut self, entry: &IndexEntry) -> CniResult<()> {
        let name = index_name(&entry.container_id, &entry.ifname);
        let dir = self.index_dir();
        let result = if entry.ips.is_empty() {
            match fs::remove_file(dir.join(&name)) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    Err(io_error("cannot remove index", &dir.join(&name), e))
                }
                _ => Ok(()),
            }
        } else {
            let text = serde_json::to_string(entry).map_err(|e| CniError::ipam(e.to_string()))?;
            self.write_atomic(&dir, &name, &text)
        };
        if result.is_err() {
            self.index_suspect = true;
        }
        result
    }

    /// Adds (or removes) `ip` in the index entry of (`cid`, `ifname`).
    fn index_update(&mut self, cid: &str, ifname: &str, ip: IpAddr, add: bool) -> CniResult<()> {
        let mut entry = match self.lookup(&index_name(cid, ifname))? {
            Lookup::Found(e) => e,
            Lookup::Missing => IndexEntry {
                container_id: cid.into(),
                ifname: ifname.into(),
                ips: Vec::new(),
            },
            Lookup::Corrupt => {
                self.index_suspect = true;
                IndexEntry {
                    container_id: cid.into(),
                    ifname: ifname.into(),
                    ips: Vec::new(),
                }
            }
        };
        entry.ips.retain(|i| *i != ip);
        if add {
            entry.ips.push(ip);
            entry.ips.sort();
        }
        self.write_index(&entry)
    }

    /// The stamp of the directory as it is now.
    fn current_stamp(&self) -> CniResult<String> {
        let m = fs::metadata(&self.dir)
            .map_err(|e| io_error("cannot stat IPAM store", &self.dir, e))?;
        Ok(format!(
            "{} {} {}.{:09}",
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec()
        ))
    }

    /// Rebuilds the index when the directory changed behind its back.
    fn sync_index(&mut self) -> CniResult<()> {
        let saved = fs::read_to_string(self.index_dir().join(STAMP_FILE)).ok();
        if saved.as_deref().map(str::trim) == Some(self.current_stamp()?.as_str()) {
            return Ok(());
        }
        self.rebuild_index()
    }

    /// Makes `by-id/` mirror the address files exactly.
    fn rebuild_index(&mut self) -> CniResult<()> {
        let index_dir = self.index_dir();
        DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(&index_dir)
            .map_err(|e| io_error("cannot create index directory", &index_dir, e))?;
        self.dirty = true;
        // Everyone who writes here holds the lock, so temporary files left
        // now are from a writer that died.
        for dir in [self.dir.clone(), index_dir.clone()] {
            for entry in fs::read_dir(&dir)
                .map_err(|e| io_error("cannot list", &dir, e))?
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let mut want: BTreeMap<String, IndexEntry> = BTreeMap::new();
        for r in self.scan()? {
            want.entry(index_name(&r.container_id, &r.ifname))
                .or_insert_with(|| IndexEntry {
                    container_id: r.container_id.clone(),
                    ifname: r.ifname.clone(),
                    ips: Vec::new(),
                })
                .ips
                .push(r.ip);
        }
        for entry in fs::read_dir(&index_dir).map_err(|e| io_error("cannot list", &index_dir, e))? {
            let entry = entry.map_err(|e| io_error("cannot list", &index_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || want.contains_key(&name) {
                continue;
            }
            if let Err(e) = fs::remove_file(entry.path()) {
                self.index_suspect = true;
                return Err(io_error(
                    "cannot remove stale index entry",
                    &entry.path(),
                    e,
                ));
            }
        }
        for (name, entry) in want {
            let same = matches!(self.lookup(&name)?, Lookup::Found(ref e) if *e == entry);
            if !same {
                self.write_index(&entry)?;
            }
        }
        self.index_suspect = false;
        Ok(())
    }

    /// Called at unlock after changes: pins the directory mtime in the past
    /// and records the stamp (or drops it when the index is suspect).
    fn seal(&mut self) -> CniResult<()> {
        let stamp_path = self.index_dir().join(STAMP_FILE);
        if self.index_suspect {
            let _ = fs::remove_file(&stamp_path);
            return Ok(());
        }
        let past = SystemTime::now() - Duration::from_secs(1);
        File::open(&self.dir)
            .and_then(|d| d.set_modified(past))
            .map_err(|e| io_error("cannot set mtime of", &self.dir, e))?;
        let stamp = self.current_stamp()?;
        let index_dir = self.index_dir();
        self.write_atomic(&index_dir, STAMP_FILE, &stamp)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        if self.lock.is_some() {
            let _ = self.unlock();
        }
    }
}

impl Store for DiskStore {
    fn lock(&mut self) -> CniResult<()> {
        if self.lock.is_some() {
            return Err(CniError::ipam(format!(
                "IPAM store {} locked twice",
                self.dir.display()
            )));
        }
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| io_error("cannot open lock", &path, e))?;
        file.lock().map_err(|e| io_error("cannot lock", &path, e))?;
        self.lock = Some(file);
        self.dirty = false;
        self.index_suspect = false;
        if let Err(e) = self.sync_index() {
            let _ = self.unlock();
            return Err(e);
        }
        Ok(())
    }

    fn unlock(&mut self) -> CniResult<()> {
        self.require_lock()?;
        if self.dirty {
            if let Err(e) = self.seal() {
                // The next lock then rebuilds the index: slower, still right.
                eprintln!("sluice-ipam: {e}");
                let _ = fs::remove_file(self.index_dir().join(STAMP_FILE));
            }
        }
        self.dirty = false;
        if let Some(file) = self.lock.take() {
            file.unlock()
                .map_err(|e| io_error("cannot unlock", &self.dir.join(LOCK_FILE), e))?;
        }
        Ok(())
    }

    fn reserve(
        &mut self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        range_id: usize,
    ) -> CniResult<bool> {
        self.require_lock()?;
        let cid = container_id.trim();
        let path = self.ip_path(ip);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_error("cannot create reservation", &path, e)),
        };
        self.dirty = true;
        if let Err(e) = file.write_all(format!("{cid}{LINE_BREAK}{ifname}").as_bytes()) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(io_error("cannot write reservation", &path, e));
        }
        drop(file);
        let dir = self.dir.clone();
        self.write_atomic(
            &dir,
            &format!("{LAST_RESERVED_PREFIX}{range_id}"),
            &ip.to_string(),
        )?;
        self.index_update(cid, ifname, ip, true)?;
        Ok(true)
    }

    fn last_reserved_ip(&self, range_id: usize) -> CniResult<Option<IpAddr>> {
        self.require_lock()?;
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{range_id}"));
        match fs::read_to_string(&path) {
            // An unreadable value only loses round robin once, as in host-local.
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }

    fn release_by_id(&mut self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        self.require_lock()?;
        let cid = container_id.trim();
        let mut released = Vec::new();
        // The attachment's own reservations; failing those, the container's
        // legacy ones (written without an ifname), as host-local does.
        for ifn in [ifname, ""] {
            let name = index_name(cid, ifn);
            let entry = match self.lookup(&name)? {
                Lookup::Missing => continue,
                Lookup::Found(e) => e,
                Lookup::Corrupt => {
                    self.rebuild_index()?;
                    match self.lookup(&name)? {
                        Lookup::Found(e) => e,
                        _ => continue,
                    }
                }
            };
            for ip in &entry.ips {
                if self.read_owner(*ip)? == Some((cid.to_string(), ifn.to_string())) {
                    self.remove_ip_file(*ip)?;
                    released.push(*ip);
                }
            }
            self.write_index(&IndexEntry {
                ips: Vec::new(),
                ..entry
            })?;
            self.dirty = true;
            if !released.is_empty() {
                break;
            }
        }
        Ok(released)
    }

    fn release(&mut self, r: &Reservation) -> CniResult<bool> {
        self.require_lock()?;
        if self.read_owner(r.ip)? != Some((r.container_id.clone(), r.ifname.clone())) {
            return Ok(false);
        }
        self.remove_ip_file(r.ip)?;
        self.index_update(&r.container_id, &r.ifname, r.ip, false)?;
        Ok(true)
    }

    fn get_by_id(&self, container_id: &str, ifname: &str) -> CniResult<Vec<IpAddr>> {
        self.require_lock()?;
        let cid = container_id.trim();
        let mut out = Vec::new();
        for ifn in [ifname, ""] {
            match self.lookup(&index_name(cid, ifn))? {
                Lookup::Missing => {}
                Lookup::Found(entry) => {
                    for ip in entry.ips {
                        if self.read_owner(ip)? == Some((cid.to_string(), ifn.to_string())) {
                            out.push(ip);
                        }
                    }
                }
                // Read-only here: answer from the address files themselves.
                Lookup::Corrupt => out.extend(
                    self.scan()?
                        .into_iter()
                        .filter(|r| r.container_id == cid && r.ifname == ifn)
                        .map(|r| r.ip),
                ),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn list(&self) -> CniResult<Vec<Reservation>> {
        self.require_lock()?;
        self.scan()
    }

    fn boot_id(&self) -> CniResult<Option<String>> {
        self.require_lock()?;
        let path = self.dir.join(BOOT_ID_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }

    fn set_boot_id(&mut self, boot_id: &str) -> CniResult<()> {
        self.require_lock()?;
        self.dirty = true;
        let dir = self.dir.clone();
        self.write_atomic(&dir, BOOT_ID_FILE, boot_id)
    }

    fn check_writable(&mut self) -> CniResult<()> {
        self.require_lock()?;
        self.dirty = true;
        self.tmp_counter += 1;
        let probe = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-probe",
            std::process::id(),
            self.tmp_counter
        ));
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&probe)
            .and_then(|mut f| f.write_all(b"probe"));
        let _ = fs::remove_file(&probe);
        result.map_err(|e| io_error("IPAM store is not writable:", &self.dir, e))
    }
}

/// Splits host-local's "containerid\r\nifname" (or the older "containerid").
fn parse_owner(text: &str) -> (String, String) {
    let text = text.trim();
    match text.split_once(LINE_BREAK) {
        Some((id, ifname)) => (id.trim().to_string(), ifname.trim().to_string()),
        None => (text.to_string(), String::new()),
    }
}

/// The index file name of an attachment: both parts escaped (anything but
/// `[A-Za-z0-9_.-]`, and a leading `.`, as `%XX`) and joined by `@`, which
/// the escaping never produces, so distinct attachments get distinct names.
fn index_name(container_id: &str, ifname: &str) -> String {
    let mut name = String::new();
    escape_into(container_id, &mut name);
    name.push('@');
    escape_into(ifname, &mut name);
    if name.len() > MAX_INDEX_NAME {
        // Keep a readable prefix; the hash keeps long keys apart and the
        // entry's content names the attachment exactly.
        let mut cut = MAX_INDEX_NAME - 17;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let hash = fnv1a(container_id.as_bytes(), ifname.as_bytes());
        name = format!("{}~{hash:016x}", &name[..cut]);
    }
    name
}

fn escape_into(s: &str, out: &mut String) {
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0u8].iter()).chain(b.iter()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::ipam(format!("{what} {}", path.display())).with_details(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_formats() {
        assert_eq!(parse_owner("c1\r\neth0"), ("c1".into(), "eth0".into()));
        assert_eq!(parse_owner("c1\n"), ("c1".into(), String::new()));
    }

    #[test]
    fn index_names_are_unambiguous_and_bounded() {
        assert_eq!(index_name("abc", "eth0"), "abc@eth0");
        assert_ne!(index_name("a-b", "c"), index_name("a", "b-c"));
        assert_eq!(index_name(".x", "e/0"), "%2Ex@e%2F0");
        assert_ne!(index_name("a@b", "c"), index_name("a", "b@c"));
        let long = "x".repeat(400);
        let name = index_name(&long, "eth0");
        assert!(name.len() <= MAX_INDEX_NAME);
        assert_ne!(name, index_name(&long, "eth1"));
    }
}
