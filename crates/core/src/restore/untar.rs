//! Unpacking a base tar read from a repository, which other hosts may
//! write: only regular files and directories, only below the target
//! directory, modes masked (no set-id bits, nothing for others), and
//! every file created new without following a link. A base backup that
//! refugio wrote (`pg_basebackup -Ft -X none` of a cluster without
//! tablespaces) holds nothing else, so anything else is refused whole and
//! named: it was not written by refugio, and it is neither unpacked nor
//! taken as evidence that the backup is bad.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::OFlag;
use tar::EntryType;

/// Why unpacking stopped.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// Reading the tar or writing the target failed.
    Io(io::Error),
    /// An entry refugio never writes: nothing of it was written.
    Refused { entry: String, reason: String },
}

impl From<io::Error> for UnpackError {
    fn from(e: io::Error) -> Self {
        UnpackError::Io(e)
    }
}

/// Mode of a directory: the owner's always, the group's read and search
/// if the source had them (a cluster initialised with group access), never
/// others', never set-id or sticky.
pub(crate) fn dir_mode(mode: u32) -> u32 {
    0o700 | (mode & 0o050)
}

/// Mode of a file: read-write for the owner, the group's read if the
/// source had it; never executable, writable by the group, others' or
/// set-id.
pub(crate) fn file_mode(mode: u32) -> u32 {
    0o600 | (mode & 0o040)
}

/// Unpacks `reader` (a tar) into `dir`, which exists. Stops at the first
/// refused entry; what was unpacked before it stays (the target was
/// empty, and only the caller knows whether to remove it).
pub(crate) fn unpack<R: Read>(reader: R, dir: &Path) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |reason: String| UnpackError::Refused {
            entry: name.clone(),
            reason,
        };
        let kind = entry.header().entry_type();
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            // A pax global header only carries defaults for the entries
            // after it (tar reads them itself).
            EntryType::XGlobalHeader => continue,
            EntryType::Symlink => {
                return Err(refuse(format!("is a symbolic link (to {:?})", link())))
            }
            EntryType::Link => return Err(refuse(format!("is a hard link (to {:?})", link()))),
            EntryType::Char | EntryType::Block => return Err(refuse("is a device node".into())),
            EntryType::Fifo => return Err(refuse("is a FIFO".into())),
            other => {
                return Err(refuse(format!(
                    "has tar type {:?} (byte {:?})",
                    other,
                    char::from(other.as_byte())
                )))
            }
        }
        let rel = {
            let path = entry.path()?;
            inside(&path)
        };
        let Some(rel) = rel else {
            return Err(refuse(
                "is an absolute path or climbs out with `..`: it would land outside the target directory".into(),
            ));
        };
        let mode = entry.header().mode().unwrap_or(0);
        if rel.as_os_str().is_empty() {
            if kind == EntryType::Directory {
                continue; // The target itself, which exists.
            }
            return Err(refuse("names the target directory itself".into()));
        }
        let dest = dir.join(&rel);
        make_parents(dir, &rel).map_err(&refuse)?;
        if kind == EntryType::Directory {
            match std::fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {
                    std::fs::set_permissions(
                        &dest,
                        std::fs::Permissions::from_mode(dir_mode(mode)),
                    )?;
                }
                Ok(_) => {
                    return Err(refuse(
                        "is a directory where the tar already put something else".into(),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new().mode(dir_mode(mode)).create(&dest)?;
                    std::fs::set_permissions(
                        &dest,
                        std::fs::Permissions::from_mode(dir_mode(mode)),
                    )?;
                }
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let mut file = match create_new_nofollow(&dest, file_mode(mode)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(refuse(
                    "is in the tar twice (or names a directory it holds)".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        io::copy(&mut entry, &mut file)?;
        // The umask took its share at creation: set the mode as masked.
        file.set_permissions(std::fs::Permissions::from_mode(file_mode(mode)))?;
        if let Ok(secs) = entry.header().mtime() {
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))?;
        }
    }
    Ok(())
}

/// `path` as a relative path of plain names (`./` dropped); None when it
/// is absolute or holds `..`.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates the missing directories above `rel` (0700); an existing one
/// must be a directory, not a link to one.
fn make_parents(dir: &Path, rel: &Path) -> Result<(), String> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut at = dir.to_path_buf();
    for c in parent.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "lies below {}, which is not a directory",
                    at.display()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .mode(0o700)
                .create(&at)
                .map_err(|e| format!("creating {}: {e}", at.display()))?,
            Err(e) => return Err(format!("reading {}: {e}", at.display())),
        }
    }
    Ok(())
}

/// A new file at `path` (never an existing one, never through a link).
fn create_new_nofollow(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// Opens `path` in a data directory for writing (`append`, else
/// truncated), created 0600 if missing, and refuses a symbolic link
/// there (`O_NOFOLLOW`): whatever a tar or another user put in the
/// directory, refugio writes only the file itself.
pub(crate) fn open_in_data_dir(path: &Path, append: bool) -> io::Result<std::fs::File> {
    let mut opts = OpenOptions::new();
    opts.create(true).mode(0o600);
    if append {
        opts.append(true);
    } else {
        opts.write(true).truncate(true);
    }
    opts.custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::other(format!(
                    "it is a symbolic link; refusing to write through it ({e})"
                ))
            } else {
                e
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar header for `name` of `kind`, written byte by byte (the tar
    /// crate's own setters refuse `..` and absolute names).
    fn header(name: &str, kind: EntryType, size: u64, mode: u32, link: &str) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[(&str, EntryType, &[u8], u32, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, mode, link) in entries {
            let h = header(name, *kind, data.len() as u64, *mode, link);
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn regular_files_and_directories_unpack_with_masked_modes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let tar = tar_of(&[
            ("./", EntryType::Directory, b"", 0o755, ""),
            ("base/", EntryType::Directory, b"", 0o4777, ""),
            ("base/1/2", EntryType::Regular, b"page", 0o6777, ""),
            ("global/pg_control", EntryType::Regular, b"ctl", 0o640, ""),
            ("PG_VERSION", EntryType::Regular, b"16\n", 0o600, ""),
        ]);
        unpack(&tar[..], tmp.path()).expect("unpack");
        let d = tmp.path();
        assert_eq!(std::fs::read(d.join("base/1/2")).expect("read"), b"page");
        assert_eq!(mode_of(&d.join("base")), 0o750);
        assert_eq!(
            mode_of(&d.join("base/1")),
            0o700,
            "a parent made on the way"
        );
        assert_eq!(mode_of(&d.join("base/1/2")), 0o640);
        assert_eq!(mode_of(&d.join("global/pg_control")), 0o640);
        assert_eq!(mode_of(&d.join("PG_VERSION")), 0o600);
        let mtime = std::fs::metadata(d.join("PG_VERSION"))
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(
            mtime,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn links_devices_and_paths_outside_are_refused_by_name() {
        let cases: &[(&str, EntryType, &str, &str)] = &[
            (
                "recovery.signal",
                EntryType::Symlink,
                "/etc/x",
                "symbolic link",
            ),
            (
                "postgresql.auto.conf",
                EntryType::Link,
                "PG_VERSION",
                "hard link",
            ),
            ("dev", EntryType::Char, "", "device"),
            ("blk", EntryType::Block, "", "device"),
            ("pipe", EntryType::Fifo, "", "FIFO"),
            ("/etc/passwd", EntryType::Regular, "", "absolute"),
            ("base/../../escape", EntryType::Regular, "", "`..`"),
            ("../escape/", EntryType::Directory, "", "`..`"),
            ("odd", EntryType::new(b'Z'), "", "tar type"),
        ];
        for (name, kind, link, said) in cases {
            let tmp = tempfile::tempdir().expect("tmp");
            let target = tmp.path().join("t");
            std::fs::create_dir(&target).expect("mkdir");
            let tar = tar_of(&[
                ("PG_VERSION", EntryType::Regular, b"16\n", 0o600, ""),
                (name, *kind, b"", 0o600, link),
                ("after", EntryType::Regular, b"x", 0o600, ""),
            ]);
            match unpack(&tar[..], &target) {
                Err(UnpackError::Refused { entry, reason }) => {
                    assert_eq!(entry, *name);
                    assert!(reason.contains(said), "{name}: {reason}");
                }
                other => panic!("{name}: {other:?}"),
            }
            assert!(!target.join("after").exists(), "{name}: stops there");
            assert!(!tmp.path().join("escape").exists(), "{name}");
            assert!(
                std::fs::symlink_metadata(target.join(name.trim_start_matches('/'))).is_err(),
                "{name}: nothing made"
            );
        }
    }

    #[test]
    fn a_file_twice_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let tar = tar_of(&[
            ("a", EntryType::Regular, b"1", 0o600, ""),
            ("a", EntryType::Regular, b"2", 0o600, ""),
        ]);
        assert!(matches!(
            unpack(&tar[..], tmp.path()),
            Err(UnpackError::Refused { .. })
        ));
        assert_eq!(std::fs::read(tmp.path().join("a")).expect("read"), b"1");
    }

    #[test]
    fn writing_into_a_data_directory_never_follows_a_link() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "kept\n").expect("write");
        let link = tmp.path().join("postgresql.auto.conf");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        for append in [true, false] {
            let e = open_in_data_dir(&link, append).expect_err("a link");
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&outside).expect("read"), "kept\n");
        let plain = tmp.path().join("recovery.signal");
        let mut f = open_in_data_dir(&plain, false).expect("open");
        std::io::Write::write_all(&mut f, b"x").expect("write");
        assert_eq!(mode_of(&plain), 0o600);
    }
}
