//! One owner per `pin_dir`: an exclusive `flock` on the pin directory itself.
//!
//! Every command that can change pinned state (`xlb run`, `xlb down`) takes this lock
//! first, before touching maps, program, state file or socket, and gives up at once
//! (no waiting) when another live process holds it. The kernel releases it when its
//! holder exits however it exits (SIGKILL included), so a stale lock cannot exist.
//!
//! Why the directory and not a lock file: bpffs holds only maps, programs, links and
//! directories (no regular files), and `flock` on a directory fd works there (checked on
//! kernel 6.18). The holder's pid is found in /proc/locks, whose lines name the locked
//! inode as `MAJOR:MINOR:INODE` (major and minor in hex).
//!
//! This module must not touch anything inside the directory.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another xlb daemon holds {pin_dir} ({}); it is still running: stop it first (nothing was changed)",
        holder(*pid)
    )]
    Held { pin_dir: PathBuf, pid: Option<u32> },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_string(),
    }
}

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct PinDirLock {
    _dir: File,
    path: PathBuf,
}

impl PinDirLock {
    /// Creates `pin_dir` if needed and locks it (`xlb run`).
    pub fn acquire(pin_dir: &Path) -> Result<Self, LockError> {
        std::fs::create_dir_all(pin_dir).map_err(|source| LockError::Io {
            what: "creating",
            path: pin_dir.to_path_buf(),
            source,
        })?;
        Self::lock(pin_dir)
    }

    /// Locks `pin_dir` if it exists (`xlb down`): `None` when there is nothing to lock.
    pub fn acquire_existing(pin_dir: &Path) -> Result<Option<Self>, LockError> {
        match Self::lock(pin_dir) {
            Err(LockError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            r => r.map(Some),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(pin_dir: &Path) -> Result<Self, LockError> {
        let io = |what| {
            move |source| LockError::Io {
                what,
                path: pin_dir.to_path_buf(),
                source,
            }
        };
        let dir = File::open(pin_dir).map_err(io("opening"))?;
        // SAFETY: a valid fd we own; flock has no memory effects.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io("locking")(err));
            }
            let meta = dir.metadata().map_err(io("reading"))?;
            return Err(LockError::Held {
                pin_dir: pin_dir.to_path_buf(),
                pid: holder_pid(meta.dev(), meta.ino()),
            });
        }
        Ok(Self {
            _dir: dir,
            path: pin_dir.to_path_buf(),
        })
    }
}

/// The pid of the process holding the lock on `pin_dir` (a running daemon), read from
/// /proc/locks without taking the lock, so probing never makes a starting daemon fail.
/// `Ok(None)`: the directory exists and nobody holds it (or /proc/locks does not name the
/// holder). Errors: `pin_dir` cannot be inspected (e.g. does not exist: `NotFound`).
pub fn holder_of(pin_dir: &Path) -> io::Result<Option<u32>> {
    let meta = std::fs::metadata(pin_dir)?;
    Ok(holder_pid(meta.dev(), meta.ino()))
}

/// The pid holding a `flock` on the inode (`dev`, `ino`), from /proc/locks.
fn holder_pid(dev: u64, ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    find_holder(&locks, dev, ino)
}

/// Parses /proc/locks lines like `5: FLOCK  ADVISORY  WRITE 28522 00:27:57001 0 EOF`.
fn find_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Waiters are listed as "N: -> FLOCK ..."; only the holder's line counts.
        match f.as_slice() {
            [_, "FLOCK", _, _, pid, inode, ..] if *inode == want => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_holder_line_of_the_inode() {
        let locks = "1: FLOCK  ADVISORY  WRITE 28209 fe:00:5472893 0 EOF\n\
                     5: FLOCK  ADVISORY  WRITE 28522 00:27:57001 0 EOF\n\
                     5: -> FLOCK  ADVISORY  WRITE 31000 00:27:57001 0 EOF\n";
        let dev = libc::makedev(0, 0x27) as u64;
        assert_eq!(find_holder(locks, dev, 57001), Some(28522));
        assert_eq!(find_holder(locks, dev, 57002), None);
    }

    /// A second open of the same directory cannot take the lock while the first holds
    /// it, and names this process as the holder; after a drop it can.
    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("xlb-lock-test-{}", std::process::id()));
        let first = PinDirLock::acquire(&dir).expect("first lock");
        match PinDirLock::acquire(&dir) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        let msg = PinDirLock::acquire(&dir).expect_err("held").to_string();
        assert!(
            msg.contains(&format!(
                "another xlb daemon holds {} (pid {})",
                dir.display(),
                std::process::id()
            )),
            "{msg}"
        );
        assert_eq!(holder_of(&dir).expect("probe"), Some(std::process::id()));
        drop(first);
        assert_eq!(holder_of(&dir).expect("probe"), None);
        let again = PinDirLock::acquire_existing(&dir).expect("lock after release");
        assert!(again.is_some());
        drop(again);
        std::fs::remove_dir(&dir).expect("cleanup");
        assert!(
            PinDirLock::acquire_existing(&dir)
                .expect("absent dir")
                .is_none()
        );
    }
}
