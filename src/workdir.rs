//! The supervisor's scratch space on local disk, where each job's input is staged for its worker.
//!
//! Staged inputs are tenant data, so the directory is private and short-lived:
//! - created with `mkdtemp` semantics (`airlock-work-XXXXXX`, a name nobody can predict) under a
//!   base the operator chooses (`AIRLOCK_WORK_DIR`, default the system temp directory), mode 0700,
//!   and every job directory inside it 0700 too;
//! - held with an exclusive `flock` on the directory itself for as long as the supervisor lives;
//! - on start, the leftovers of supervisors killed on this host (their lock no longer held) are
//!   removed, so staged data does not outlive its retention on local disk.
//!
//! Running as root, it never follows or replaces what it did not create: an entry that is a
//! symlink, not a directory, owned by another user or not 0700 is left alone (and logged).

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

const PREFIX: &str = "airlock-work-";
/// An unlocked directory younger than this may be a supervisor caught between `mkdtemp` and its
/// `flock`; only an older one is a leftover.
const UNLOCKED_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error("the work directory base {path} is not a directory (a symlink or a file); set AIRLOCK_WORK_DIR to a real directory")]
    BaseNotDirectory { path: PathBuf },
    #[error("cannot create a work directory under {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A private work directory, removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    dir: tempfile::TempDir,
    /// Holds the `flock` that marks the directory as in use.
    _lock: File,
}

fn private() -> std::fs::Permissions {
    std::fs::Permissions::from_mode(0o700)
}

impl WorkDir {
    /// Sweep leftovers under `base`, then create a fresh, locked, private directory there.
    pub fn create(base: &Path) -> Result<Self, WorkDirError> {
        match std::fs::symlink_metadata(base) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(WorkDirError::BaseNotDirectory {
                    path: base.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(base)
                    .map_err(|source| WorkDirError::Create {
                        path: base.to_path_buf(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(WorkDirError::Create {
                    path: base.to_path_buf(),
                    source,
                })
            }
        }
        remove_leftovers(base);
        let create = |source| WorkDirError::Create {
            path: base.to_path_buf(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .permissions(private())
            .tempdir_in(base)
            .map_err(create)?;
        let lock = open_dir(dir.path()).map_err(create)?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| create(e.into()))?;
        Ok(WorkDir { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A fresh private (0700) directory for one job inside `work_dir`, removed when dropped.
pub fn job_dir(work_dir: &Path) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("job-")
        .permissions(private())
        .tempdir_in(work_dir)
}

/// Remove the work directories of supervisors that died on this host.
fn remove_leftovers(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ours = meta.is_dir() && meta.uid() == me && meta.mode() & 0o7777 == 0o700;
        if !ours {
            tracing::warn!(path = %path.display(), "a work directory Airlock did not create is in the way; leaving it alone");
            continue;
        }
        if is_abandoned(&path, &meta) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a dead supervisor's work directory")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a dead supervisor's work directory")
                }
            }
        }
    }
}

/// The directory itself, without following a symlink.
fn open_dir(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::DIRECTORY).bits() as i32)
        .open(path)
}

/// Nobody holds its lock, and it is too old to be a supervisor that has not locked it yet.
fn is_abandoned(path: &Path, meta: &std::fs::Metadata) -> bool {
    let old = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > UNLOCKED_GRACE);
    old && open_dir(path)
        .is_ok_and(|dir| rustix::fs::flock(&dir, FlockOperation::NonBlockingLockExclusive).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn work_and_job_directories_are_private_and_unpredictable() {
        let base = tempfile::tempdir().unwrap();
        let a = WorkDir::create(base.path()).unwrap();
        let b = WorkDir::create(base.path()).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(mode(a.path()), 0o700);
        let job = job_dir(a.path()).unwrap();
        assert_eq!(mode(job.path()), 0o700);
        // A live supervisor's directory survives another one starting.
        let _c = WorkDir::create(base.path()).unwrap();
        assert!(a.path().exists() && b.path().exists());
        let path = a.path().to_path_buf();
        drop((job, a));
        assert!(!path.exists(), "removed at exit");
    }

    #[test]
    fn a_dead_supervisors_leftovers_are_removed_on_start() {
        let base = tempfile::tempdir().unwrap();
        let dead = WorkDir::create(base.path()).unwrap();
        let staged = job_dir(dead.path()).unwrap().keep();
        std::fs::write(staged.join("input"), b"tenant data").unwrap();
        let dead_path = dead.path().to_path_buf();
        // As after kill -9: the directory stays, the lock is released with the process.
        let WorkDir { dir, _lock } = dead;
        let _ = dir.keep();
        drop(_lock);
        assert!(staged.join("input").exists());
        // Just created and not yet locked looks the same, so only an older one is removed.
        let _young = WorkDir::create(base.path()).unwrap();
        assert!(
            dead_path.exists(),
            "an unlocked directory this young may be starting up"
        );
        let past = SystemTime::now() - Duration::from_secs(60);
        File::open(&dead_path).unwrap().set_modified(past).unwrap();
        let _next = WorkDir::create(base.path()).unwrap();
        assert!(
            !dead_path.exists(),
            "the staged input outlived its supervisor"
        );
    }

    #[test]
    fn what_airlock_did_not_create_is_never_followed_or_removed() {
        let base = tempfile::tempdir().unwrap();
        // Another user's world-writable directory with a guessable name.
        let squat = base.path().join("airlock-work-squat");
        std::fs::create_dir(&squat).unwrap();
        std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(&squat, Some(4242), Some(4242)).unwrap();
        // A symlink to a directory of precious files.
        let precious = tempfile::tempdir().unwrap();
        std::fs::write(precious.path().join("keep"), b"x").unwrap();
        let link = base.path().join("airlock-work-link");
        std::os::unix::fs::symlink(precious.path(), &link).unwrap();
        // Our uid, but not 0700: not one of ours.
        let odd = base.path().join("airlock-work-odd");
        std::fs::create_dir(&odd).unwrap();
        std::fs::set_permissions(&odd, std::fs::Permissions::from_mode(0o750)).unwrap();
        let past = SystemTime::now() - Duration::from_secs(60);
        for d in [&squat, &odd, precious.path()] {
            File::open(d).unwrap().set_modified(past).unwrap();
        }
        // The link itself old too, so only its being a link keeps it.
        let old = rustix::fs::Timespec {
            tv_sec: (SystemTime::now() - Duration::from_secs(60))
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &link,
            &rustix::fs::Timestamps {
                last_access: old,
                last_modification: old,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let wd = WorkDir::create(base.path()).unwrap();
        assert!(squat.exists() && mode(&squat) == 0o777);
        assert!(precious.path().join("keep").exists());
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert!(odd.exists());
        assert_ne!(wd.path(), squat.as_path());
        assert_eq!(mode(wd.path()), 0o700);
        // A base that is a symlink is refused.
        let base_link = base.path().join("base-link");
        std::os::unix::fs::symlink(precious.path(), &base_link).unwrap();
        assert!(matches!(
            WorkDir::create(&base_link),
            Err(WorkDirError::BaseNotDirectory { .. })
        ));
    }
}
