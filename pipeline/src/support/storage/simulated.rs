//! A simulated disk: the real log and checkpoint code run on it, and a crash keeps only what a
//! real disk must keep.
//!
//! The model, for each file: the bytes and length that the last `sync_data` made durable, and
//! every write and length change since, in order. For each directory: the names its last sync
//! made durable, and its live names. A crash ([`SimulatedDisk::crash`]) builds the disk a
//! restarted machine would see:
//! - each write not yet synced survives sector by sector (512 bytes, aligned to the file),
//!   each sector independently, or not at all; a sector that did not survive reads as what was
//!   there before (zeros past the old end); a length change survives or not, independently;
//! - each directory has exactly the names it had at its last sync (names created, renamed or
//!   removed since are undone), and a file reachable by no durable name is gone;
//! - every handle of the old disk fails from then on, as a dead process's would.
//!
//! A disk can also be told to crash after a number of operations (every later call fails, as if
//! the process had died at that point), and to hold at most so many bytes (a write past it fails
//! with `StorageFull` after writing what fits, as a full file system does).
//!
//! Deterministic for a seed: the same seed and the same sequence of calls tear the same sectors.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{DirectoryLock, DirectoryLockError, OpenMode, Storage, StorageFile};

/// The unit a disk writes atomically.
pub const SECTOR_BYTES: u64 = 512;

/// A shared simulated disk; clones are handles on the same disk.
#[derive(Debug, Clone)]
pub struct SimulatedDisk {
    state: Arc<Mutex<DiskState>>,
}

type Inode = u64;

#[derive(Debug, Clone)]
enum Node {
    File(Inode),
    Dir,
}

#[derive(Debug, Default, Clone)]
struct Directory {
    live: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug)]
struct DiskState {
    generation: u64,
    files: HashMap<Inode, FileData>,
    next_inode: Inode,
    /// Every directory by its normalized path; the root is "/".
    directories: HashMap<PathBuf, Directory>,
    locks: HashSet<PathBuf>,
    operations: u64,
    crash_after_operations: Option<u64>,
    dead: bool,
    bytes_max: Option<u64>,
    syncs: u64,
    /// File syncs still to fail.
    failing_syncs: u64,
}

/// What the disk counted, for tests that want to see the code under test did sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskCounters {
    pub operations: u64,
    pub syncs: u64,
}

impl Default for SimulatedDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedDisk {
    /// An empty disk holding only the root directory `/`.
    pub fn new() -> Self {
        let mut directories = HashMap::new();
        directories.insert(PathBuf::from("/"), Directory::default());
        Self {
            state: Arc::new(Mutex::new(DiskState {
                generation: 0,
                files: HashMap::new(),
                next_inode: 1,
                directories,
                locks: HashSet::new(),
                operations: 0,
                crash_after_operations: None,
                dead: false,
                bytes_max: None,
                syncs: 0,
                failing_syncs: 0,
            })),
        }
    }

    /// Makes the next `count` file syncs fail as a failing disk's do on Linux: the sync reports
    /// an error after some sectors of the writes it should have made durable reached the disk
    /// and others did not (torn as at a crash); the rest are lost for good (the page cache still
    /// shows them, and a later sync does not bring them back).
    pub fn fail_next_syncs(&self, count: u64) {
        self.lock().failing_syncs = count;
    }

    /// This disk as the [`Storage`] the log and the checkpoint store take.
    pub fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }

    /// From the `operations`-th operation from now on, every call fails as if the process died.
    pub fn crash_after(&self, operations: u64) {
        let mut state = self.lock();
        state.crash_after_operations = Some(state.operations + operations);
    }

    /// Every call fails from now on.
    pub fn kill(&self) {
        self.lock().dead = true;
    }

    /// Whether the disk has stopped answering (a crash point was reached or it was killed).
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Limits the bytes all files may hold together; `None` lifts the limit.
    pub fn set_bytes_max(&self, bytes_max: Option<u64>) {
        self.lock().bytes_max = bytes_max;
    }

    /// Bytes all files hold now.
    pub fn bytes_used(&self) -> u64 {
        self.lock().bytes_used()
    }

    pub fn counters(&self) -> DiskCounters {
        let state = self.lock();
        DiskCounters {
            operations: state.operations,
            syncs: state.syncs,
        }
    }

    /// The disk a machine restarted after a crash at this moment would find: what was synced,
    /// with unsynced writes torn by `seed`. This disk's handles fail from now on.
    pub fn crash(&self, seed: u64) -> SimulatedDisk {
        let mut state = self.lock();
        state.dead = true;
        let mut random = SplitMix64(seed);
        let mut files = HashMap::new();
        let mut directories = HashMap::new();
        let mut reachable = Vec::new();
        for (path, directory) in &state.directories {
            if !is_reachable(&state.directories, path) {
                continue;
            }
            for node in directory.durable.values() {
                if let Node::File(inode) = node {
                    reachable.push(*inode);
                }
            }
            directories.insert(
                path.clone(),
                Directory {
                    live: directory.durable.clone(),
                    durable: directory.durable.clone(),
                },
            );
        }
        reachable.sort_unstable();
        reachable.dedup();
        for inode in reachable {
            let data = &state.files[&inode];
            let survived = tear(&data.durable, &data.pending, &mut random);
            files.insert(
                inode,
                FileData {
                    live: survived.clone(),
                    durable: survived,
                    pending: Vec::new(),
                },
            );
        }
        SimulatedDisk {
            state: Arc::new(Mutex::new(DiskState {
                generation: state.generation + 1,
                files,
                next_inode: state.next_inode,
                directories,
                locks: HashSet::new(),
                operations: 0,
                crash_after_operations: None,
                dead: false,
                bytes_max: state.bytes_max,
                syncs: 0,
                failing_syncs: 0,
            })),
        }
    }

    /// The live bytes of a file, for tests that damage or inspect files directly.
    pub fn read_whole(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        let inode = state.inode(&normalize(path))?;
        Ok(state.files[&inode].live.clone())
    }

    /// Overwrites bytes of a file and makes them durable at once: damage done to a disk.
    pub fn damage(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.inode(&normalize(path))?;
        let data = state.files.get_mut(&inode).expect("inode of a live name");
        write_into(&mut data.live, offset, bytes);
        data.durable = data.live.clone();
        data.pending.clear();
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock leaves plain data; the test that panicked reports it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one operation and fails it if the disk is dead or its crash point is reached.
    fn operation(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut state = self.lock();
        if let Some(limit) = state.crash_after_operations
            && state.operations >= limit
        {
            state.dead = true;
        }
        if state.dead {
            return Err(io::Error::other("simulated crash: the disk is gone"));
        }
        state.operations += 1;
        Ok(state)
    }
}

impl DiskState {
    fn directory(&self, path: &Path) -> io::Result<&Directory> {
        self.directories.get(path).ok_or_else(not_found)
    }

    fn directory_mut(&mut self, path: &Path) -> io::Result<&mut Directory> {
        self.directories.get_mut(path).ok_or_else(not_found)
    }

    fn inode(&self, path: &Path) -> io::Result<Inode> {
        let (parent, name) = split(path)?;
        match self.directory(&parent)?.live.get(&name) {
            Some(Node::File(inode)) => Ok(*inode),
            Some(Node::Dir) => Err(io::Error::other("is a directory")),
            None => Err(not_found()),
        }
    }

    fn bytes_used(&self) -> u64 {
        self.files.values().map(|data| data.live.len() as u64).sum()
    }
}

impl Storage for SimulatedDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.operation()?;
        let path = normalize(path);
        let (parent, name) = split(&path)?;
        let existing = match state.directory(&parent)?.live.get(&name) {
            Some(Node::File(inode)) => Some(*inode),
            Some(Node::Dir) => return Err(io::Error::other("is a directory")),
            None => None,
        };
        let inode = match (existing, mode) {
            (Some(inode), OpenMode::CreateTruncate) => {
                let data = state.files.get_mut(&inode).expect("inode of a live name");
                data.live.clear();
                data.pending.push(Pending::SetLen(0));
                inode
            }
            (Some(inode), _) => inode,
            (None, OpenMode::Read | OpenMode::ReadWrite) => return Err(not_found()),
            (None, OpenMode::CreateOrOpen | OpenMode::CreateTruncate) => {
                let inode = state.next_inode;
                state.next_inode += 1;
                state.files.insert(inode, FileData::default());
                state
                    .directory_mut(&parent)?
                    .live
                    .insert(name, Node::File(inode));
                inode
            }
        };
        let generation = state.generation;
        Ok(Arc::new(SimulatedFile {
            disk: self.clone(),
            inode,
            generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.operation()?;
        let path = normalize(path);
        if state.directories.contains_key(&path) {
            return Ok(true);
        }
        let Ok((parent, name)) = split(&path) else {
            return Ok(false);
        };
        Ok(state
            .directories
            .get(&parent)
            .is_some_and(|directory| directory.live.contains_key(&name)))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.operation()?;
        let path = normalize(path);
        let (parent, name) = split(&path)?;
        let directory = state.directory_mut(&parent)?;
        if directory.live.contains_key(&name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        directory.live.insert(name, Node::Dir);
        state.directories.insert(path, Directory::default());
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.operation()?;
        Ok(state
            .directory(&normalize(path))?
            .live
            .keys()
            .cloned()
            .collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.operation()?;
        let (parent, name) = split(&normalize(path))?;
        let directory = state.directory_mut(&parent)?;
        match directory.live.get(&name) {
            Some(Node::File(_)) => {
                directory.live.remove(&name);
                Ok(())
            }
            Some(Node::Dir) => Err(io::Error::other("is a directory")),
            None => Err(not_found()),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.operation()?;
        let (from_parent, from_name) = split(&normalize(from))?;
        let (to_parent, to_name) = split(&normalize(to))?;
        let node = match state.directory(&from_parent)?.live.get(&from_name) {
            Some(Node::File(inode)) => Node::File(*inode),
            Some(Node::Dir) => {
                return Err(io::Error::other("renaming directories is not modelled"));
            }
            None => return Err(not_found()),
        };
        state.directory(&to_parent)?;
        state.directory_mut(&from_parent)?.live.remove(&from_name);
        state.directory_mut(&to_parent)?.live.insert(to_name, node);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.operation()?;
        state.syncs += 1;
        let directory = state.directory_mut(&normalize(path))?;
        directory.durable = directory.live.clone();
        Ok(())
    }

    fn lock_directory(&self, dir: &Path) -> Result<DirectoryLock, DirectoryLockError> {
        let mut state = self.operation().map_err(DirectoryLockError::Io)?;
        let dir = normalize(dir);
        if !state.locks.insert(dir.clone()) {
            return Err(DirectoryLockError::Held);
        }
        Ok(DirectoryLock::new(SimulatedLock {
            disk: self.clone(),
            dir,
        }))
    }
}

#[derive(Debug)]
struct SimulatedLock {
    disk: SimulatedDisk,
    dir: PathBuf,
}

impl Drop for SimulatedLock {
    fn drop(&mut self) {
        self.disk.lock().locks.remove(&self.dir);
    }
}

#[derive(Debug)]
struct SimulatedFile {
    disk: SimulatedDisk,
    inode: Inode,
    generation: u64,
    writable: bool,
}

impl SimulatedFile {
    fn state(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let state = self.disk.operation()?;
        if state.generation != self.generation {
            return Err(io::Error::other("handle of a disk from before a crash"));
        }
        Ok(state)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened read-only",
            ))
        }
    }
}

impl StorageFile for SimulatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.state()?;
        let live = &state.files[&self.inode].live;
        let start = (offset as usize).min(live.len());
        let read = buf.len().min(live.len() - start);
        buf[..read].copy_from_slice(&live[start..start + read]);
        Ok(read)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut state = self.state()?;
        let file_len = state.files[&self.inode].live.len() as u64;
        let growth = (offset + buf.len() as u64).saturating_sub(file_len);
        let fits = match state.bytes_max {
            Some(bytes_max) => bytes_max.saturating_sub(state.bytes_used()) >= growth,
            None => true,
        };
        let written = if fits {
            buf.len()
        } else {
            let room = state
                .bytes_max
                .unwrap_or(0)
                .saturating_sub(state.bytes_used());
            (file_len + room)
                .saturating_sub(offset)
                .min(buf.len() as u64) as usize
        };
        let data = state.files.get_mut(&self.inode).expect("open inode");
        if written > 0 {
            write_into(&mut data.live, offset, &buf[..written]);
            data.pending.push(Pending::Write {
                offset,
                bytes: buf[..written].to_vec(),
            });
        }
        if fits {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated disk is full",
            ))
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check_writable()?;
        let mut state = self.state()?;
        state.syncs += 1;
        if state.failing_syncs > 0 {
            state.failing_syncs -= 1;
            let mut random = SplitMix64(state.operations);
            let data = state.files.get_mut(&self.inode).expect("open inode");
            data.durable = tear(&data.durable, &data.pending, &mut random);
            data.pending.clear();
            return Err(io::Error::other("simulated sync failure"));
        }
        let data = state.files.get_mut(&self.inode).expect("open inode");
        data.durable = data.live.clone();
        data.pending.clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut state = self.state()?;
        let data = state.files.get_mut(&self.inode).expect("open inode");
        data.live.resize(len as usize, 0);
        data.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.state()?;
        Ok(state.files[&self.inode].live.len() as u64)
    }
}

/// What survives of a file's unsynced changes: each length change at random, each sector of
/// each write at random, in the order they were made.
fn tear(durable: &[u8], pending: &[Pending], random: &mut SplitMix64) -> Vec<u8> {
    let mut bytes = durable.to_vec();
    for change in pending {
        match change {
            Pending::SetLen(len) => {
                if random.coin() {
                    bytes.resize(*len as usize, 0);
                }
            }
            Pending::Write {
                offset,
                bytes: written,
            } => {
                let end = offset + written.len() as u64;
                let mut sector_start = offset - offset % SECTOR_BYTES;
                while sector_start < end {
                    let from = sector_start.max(*offset);
                    let to = (sector_start + SECTOR_BYTES).min(end);
                    if random.coin() {
                        let slice = &written[(from - offset) as usize..(to - offset) as usize];
                        write_into(&mut bytes, from, slice);
                    }
                    sector_start += SECTOR_BYTES;
                }
            }
        }
    }
    bytes
}

fn write_into(target: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if target.len() < end {
        target.resize(end, 0);
    }
    target[offset as usize..end].copy_from_slice(bytes);
}

/// Whether every ancestor of `path` names it durably, down from the root.
fn is_reachable(directories: &HashMap<PathBuf, Directory>, path: &Path) -> bool {
    let mut current = path.to_owned();
    while let Some(parent) = current.parent() {
        let name = current
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_owned();
        let durable = directories
            .get(parent)
            .is_some_and(|directory| matches!(directory.durable.get(&name), Some(Node::Dir)));
        if !durable {
            return false;
        }
        current = parent.to_owned();
    }
    true
}

/// `path` made absolute (relative paths hang under the root) without `.` and `..`.
fn normalize(path: &Path) -> PathBuf {
    let mut normalized = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => normalized.push(name),
            Component::ParentDir => {
                normalized.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normalized
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let path = normalize(path);
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_owned();
    let parent = path.parent().unwrap_or(Path::new("/")).to_owned();
    Ok((parent, name))
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file or directory")
}

/// A small deterministic generator (SplitMix64), so a seed names one way of tearing.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with_dir() -> (SimulatedDisk, Arc<dyn Storage>) {
        let disk = SimulatedDisk::new();
        let storage = disk.storage();
        storage.create_dir(Path::new("/d")).unwrap();
        storage.sync_dir(Path::new("/")).unwrap();
        (disk, storage)
    }

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_names_do_not() {
        let (disk, storage) = disk_with_dir();
        let kept = storage
            .open(Path::new("/d/kept"), OpenMode::CreateTruncate)
            .unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        kept.write_all_at(b"durable", 0).unwrap();
        kept.sync_data().unwrap();
        let lost = storage
            .open(Path::new("/d/lost"), OpenMode::CreateTruncate)
            .unwrap();
        lost.write_all_at(b"synced but never named durably", 0)
            .unwrap();
        lost.sync_data().unwrap();
        let after = disk.crash(7);
        assert_eq!(after.read_whole(Path::new("/d/kept")).unwrap(), b"durable");
        assert!(after.read_whole(Path::new("/d/lost")).is_err());
        assert!(kept.len().is_err(), "old handles fail after the crash");
    }

    #[test]
    fn unsynced_writes_tear_by_sector() {
        let (disk, storage) = disk_with_dir();
        let file = storage
            .open(Path::new("/d/f"), OpenMode::CreateTruncate)
            .unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(&vec![0xAB; 4096], 0).unwrap();
        let mut outcomes = HashSet::new();
        for seed in 0..64 {
            let after = disk.clone_state_for_test().crash(seed);
            let bytes = after.read_whole(Path::new("/d/f")).unwrap();
            for sector in bytes.chunks(SECTOR_BYTES as usize) {
                assert!(
                    sector.iter().all(|&b| b == 0xAB) || sector.iter().all(|&b| b == 0),
                    "a sector survives whole or not at all"
                );
            }
            outcomes.insert(bytes);
        }
        assert!(outcomes.len() > 2, "different seeds tear differently");
    }

    #[test]
    fn a_full_disk_refuses_writes_until_space_is_freed() {
        let (disk, storage) = disk_with_dir();
        disk.set_bytes_max(Some(100));
        let file = storage
            .open(Path::new("/d/f"), OpenMode::CreateTruncate)
            .unwrap();
        let error = file.write_all_at(&[1; 150], 0).unwrap_err();
        assert!(super::super::is_out_of_space(&error));
        assert_eq!(file.len().unwrap(), 100, "what fits is written");
        file.set_len(0).unwrap();
        disk.set_bytes_max(None);
        file.write_all_at(&[1; 150], 0).unwrap();
    }

    #[test]
    fn the_crash_point_stops_every_later_call() {
        let (disk, storage) = disk_with_dir();
        disk.crash_after(2);
        let file = storage
            .open(Path::new("/d/f"), OpenMode::CreateTruncate)
            .unwrap();
        file.write_all_at(b"x", 0).unwrap();
        assert!(file.sync_data().is_err());
        assert!(disk.is_dead());
    }

    impl SimulatedDisk {
        /// A copy of this disk's state as an independent disk (crashing it leaves this one).
        fn clone_state_for_test(&self) -> SimulatedDisk {
            let state = self.lock();
            SimulatedDisk {
                state: Arc::new(Mutex::new(DiskState {
                    generation: state.generation,
                    files: state.files.clone(),
                    next_inode: state.next_inode,
                    directories: state.directories.clone(),
                    locks: HashSet::new(),
                    operations: state.operations,
                    crash_after_operations: None,
                    dead: false,
                    bytes_max: state.bytes_max,
                    syncs: state.syncs,
                    failing_syncs: 0,
                })),
            }
        }
    }
}
