//! Where `process` puts its three results, and how: each is written under a temporary name and
//! published (renamed into place, or copied to stdout) only when it is good. A destination that
//! exists and is not a regular file — a symlink, a device, a FIFO, a directory — is refused
//! before anything runs: running as root, `--report /dev/null` must never replace the device,
//! and a symlinked `--output` must never be replaced or written through.

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tempfile::NamedTempFile;

use super::UsageError;

/// Where one result goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Dest {
    /// Not kept.
    #[default]
    Discard,
    /// Standard output (`-` on the command line).
    Stdout,
    /// A regular file, created or replaced whole.
    File(PathBuf),
}

impl Dest {
    /// `-` is standard output; anything else a path.
    pub fn from_arg(arg: Option<PathBuf>) -> Self {
        match arg {
            None => Dest::Discard,
            Some(p) if p.as_os_str() == "-" => Dest::Stdout,
            Some(p) => Dest::File(p),
        }
    }

    /// Refuse a path that exists and is not a regular file (without following a symlink).
    pub fn check(&self) -> Result<(), UsageError> {
        let Dest::File(path) = self else {
            return Ok(());
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_file() => Ok(()),
            Ok(meta) => Err(UsageError::Destination {
                path: path.clone(),
                kind: super::kind_of(&meta.file_type()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(UsageError::Open {
                path: path.clone(),
                source,
            }),
        }
    }
}

/// Where the three results go.
#[derive(Debug, Default)]
pub struct Destinations {
    pub output: Dest,
    pub rejects: Dest,
    pub report: Dest,
}

impl Destinations {
    /// Every destination is a regular file or new, and at most one of them is stdout.
    pub fn check(&self) -> Result<(), UsageError> {
        let all = [&self.output, &self.rejects, &self.report];
        for d in all {
            d.check()?;
        }
        if all.iter().filter(|d| ***d == Dest::Stdout).count() > 1 {
            return Err(UsageError::TwoOnStdout);
        }
        let files: Vec<PathBuf> = all
            .iter()
            .filter_map(|d| match d {
                Dest::File(p) => Some(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
                _ => None,
            })
            .collect();
        for (i, a) in files.iter().enumerate() {
            if files[i + 1..].iter().any(|b| same_file(a, b)) {
                return Err(UsageError::SameDestination { path: a.clone() });
            }
        }
        Ok(())
    }
}

/// The same path, or two names of one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// A result being written.
pub(super) enum Staged {
    Discard,
    Stdout(File),
    File { temp: NamedTempFile, dest: PathBuf },
}

impl Staged {
    pub(super) fn new(dest: &Dest) -> anyhow::Result<Self> {
        Ok(match dest {
            Dest::Discard => Staged::Discard,
            Dest::Stdout => Staged::Stdout(tempfile::tempfile().context("creating a temp file")?),
            Dest::File(dest) => {
                let dir = match dest.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                let temp = tempfile::Builder::new()
                    .prefix(".airlock-")
                    .tempfile_in(dir)
                    .with_context(|| format!("creating a temp file in {}", dir.display()))?;
                Staged::File {
                    temp,
                    dest: dest.clone(),
                }
            }
        })
    }

    fn file(&self) -> Option<&File> {
        match self {
            Staged::Discard => None,
            Staged::Stdout(f) => Some(f),
            Staged::File { temp, .. } => Some(temp.as_file()),
        }
    }

    /// The staged file's current size (`None` when discarded).
    pub(super) fn len(&self) -> Option<u64> {
        self.file().and_then(|f| f.metadata().ok()).map(|m| m.len())
    }

    /// Write `bytes` to the staged file (the parent's own results, such as the final report).
    pub(super) fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file() {
            None => Ok(()),
            Some(mut f) => f.write_all(bytes),
        }
    }

    /// Published with an fsync (a file in place), so flushing it early, while the worker still
    /// writes, takes that wait off the end of the run.
    pub(super) fn synced_on_publish(&self) -> bool {
        matches!(self, Staged::File { .. })
    }

    /// A separate read handle on the staged file, to hash it while the worker writes it.
    pub(super) fn reader(&self) -> anyhow::Result<Option<File>> {
        self.file().map(reopen_read_only).transpose()
    }

    /// The worker's end: write-only, so it can neither read back nor map what it wrote.
    pub(super) fn fd(&self) -> anyhow::Result<OwnedFd> {
        match self.file() {
            None => Ok(OwnedFd::from(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")
                    .context("opening /dev/null")?,
            )),
            Some(f) => write_only(f),
        }
    }

    pub(super) fn publish(self) -> anyhow::Result<()> {
        match self {
            Staged::Discard => Ok(()),
            Staged::Stdout(mut f) => {
                f.rewind()?;
                let mut out = std::io::stdout().lock();
                std::io::copy(&mut f, &mut out).context("writing to standard output")?;
                out.flush()?;
                Ok(())
            }
            Staged::File { temp, dest } => {
                // Checked again right before the rename: the destination may have changed since.
                Dest::File(dest.clone()).check()?;
                temp.as_file().sync_all().ok();
                temp.persist(&dest)
                    .with_context(|| format!("writing {}", dest.display()))?;
                Ok(())
            }
        }
    }
}

/// The same open file, opened again write-only through `/proc/self/fd`.
pub(super) fn write_only(file: &File) -> anyhow::Result<OwnedFd> {
    reopen(file, rustix::fs::OFlags::WRONLY)
}

fn reopen_read_only(file: &File) -> anyhow::Result<File> {
    reopen(file, rustix::fs::OFlags::RDONLY).map(File::from)
}

fn reopen(file: &File, mode: rustix::fs::OFlags) -> anyhow::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
    rustix::fs::open(
        path.as_str(),
        mode | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("reopening a staged file through {path} (is /proc mounted?)"))
}
