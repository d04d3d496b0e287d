//! Storage: the one interface through which the log, the checkpoint journals and the control log
//! reach their files.
//!
//! What durability needs from a file system is small, and this module names exactly that:
//! positioned reads and writes, `fdatasync`, truncation, and the directory operations (create,
//! list, rename, remove) with `fsync` of a directory to make them durable. Nothing written is
//! durable until its file is synced, and no created, renamed or removed name is durable until
//! its directory is synced.
//!
//! - [`OsStorage`]: the real file system (the default everywhere).
//! - [`simulated`]: an in-memory disk that keeps what was synced apart from what was only
//!   written, and at a crash keeps the one and tears the other. Tests run the real log and
//!   checkpoint code on it and check that no acknowledged record and no committed checkpoint is
//!   lost at any crash point, which a `SIGKILL` test cannot show: the page cache outlives the
//!   process.

pub mod simulated;

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; created empty if missing, kept as it is if present.
    CreateOrOpen,
    /// Read and write; created if missing, emptied if present.
    CreateTruncate,
}

/// One open file.
pub trait StorageFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed. Not durable until
    /// [`sync_data`](Self::sync_data) returns.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write and length change of this file durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes; durable with the next `sync_data`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;

    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ends before the bytes asked for",
                    ));
                }
                Ok(read) => {
                    buf = &mut buf[read..];
                    offset += read as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A file system as durability sees it.
pub trait Storage: Send + Sync + Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates one directory; its parent must exist. Durable once the parent is synced.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// The names in a directory (names that are not UTF-8 are left out: tally writes none).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Replaces `to` with `from`, atomically. Durable once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (`fsync` of the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes the one-process lock of a directory, held until the returned guard is dropped.
    fn lock_directory(&self, dir: &Path) -> Result<DirectoryLock, DirectoryLockError>;
}

/// Held while a process owns a directory; dropping it releases the directory.
#[derive(Debug)]
pub struct DirectoryLock {
    _guard: Box<dyn Debug + Send + Sync>,
}

impl DirectoryLock {
    pub fn new(guard: impl Debug + Send + Sync + 'static) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

/// Why a directory could not be locked.
#[derive(Debug)]
pub enum DirectoryLockError {
    /// Another process holds it.
    Held,
    Io(io::Error),
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStorage;

impl OsStorage {
    /// The real file system, as a shared [`Storage`].
    pub fn shared() -> Arc<dyn Storage> {
        Arc::new(OsStorage)
    }
}

#[derive(Debug)]
struct OsFile(File);

impl StorageFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

impl Storage for OsStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true);
            }
            OpenMode::CreateOrOpen => {
                options.write(true).create(true).truncate(false);
            }
            OpenMode::CreateTruncate => {
                options.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(OsFile(options.open(path)?)))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn lock_directory(&self, dir: &Path) -> Result<DirectoryLock, DirectoryLockError> {
        crate::support::directory_lock::lock_directory(dir).map(DirectoryLock::new)
    }
}

/// Creates `dir` and every missing ancestor, syncing each new directory's parent so that the
/// new names survive a crash (a created directory is durable only once its parent is synced).
pub fn create_dir_all(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        if path.as_os_str().is_empty() || storage.exists(path)? {
            break;
        }
        missing.push(path.to_owned());
        current = path.parent();
    }
    for path in missing.iter().rev() {
        match storage.create_dir(path) {
            Ok(()) => {}
            // Another thread of this process created it in the meantime.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        storage.sync_dir(parent_or_current(path))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably: written to a temporary name, synced,
/// renamed into place, and the directory synced.
pub fn write_file_atomically(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = temporary_path(path);
    let file = storage.open(&temporary, OpenMode::CreateTruncate)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    storage.rename(&temporary, path)?;
    storage.sync_dir(parent_or_current(path))
}

/// The whole content of a file.
pub fn read_file(storage: &dyn Storage, path: &Path) -> io::Result<Vec<u8>> {
    let file = storage.open(path, OpenMode::Read)?;
    let mut bytes = vec![0u8; file.len()? as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_or_current(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads a [`StorageFile`] front to back through [`std::io::Read`].
#[derive(Debug)]
pub struct FileReader<'a> {
    file: &'a dyn StorageFile,
    position: u64,
}

impl<'a> FileReader<'a> {
    pub fn new(file: &'a dyn StorageFile, position: u64) -> Self {
        Self { file, position }
    }
}

impl io::Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

/// Whether an I/O error means the file system is out of space (or quota): an operating
/// condition that passes once space is freed, unlike a failed sync.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
