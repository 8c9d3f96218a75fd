//! Files that must survive a crash: written whole or not at all.
//!
//! A crate of its own, with no dependency but the standard library, because its users
//! share nothing else: the coordinator's run directory (journal, `metrics.jsonl`,
//! `summary.json`, the dashboard's token), a node's checkpoints, the transport's
//! certificates and keys (`wdml certs`), and the binary's figures and compare tables.
//! In the wire crate it made every reader of a message depend on file writing; in the
//! transport it would make the coordinator's journal depend on TLS.
//!
//! [`write_atomic`] writes a temporary file beside the target, flushes it to disk,
//! renames it over the target and flushes the directory, so a reader (or a process
//! restarted after a crash) sees either the old file or the new one, never a torn one.
//! [`read_bounded`] reads one whole, refusing a file larger than its kind can be (a run
//! directory or a state directory is written by others too).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Who may read a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `0644`.
    Public,
    /// `0600`: private keys.
    Secret,
}

/// Replaces `path` with `bytes` atomically (temporary file, fsync, rename, fsync of the
/// directory). An error names the path.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| named(io::Error::new(io::ErrorKind::InvalidInput, "not a file name")))?;
    let temp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(match mode {
                Mode::Public => 0o644,
                Mode::Secret => 0o600,
            });
        }
        let mut file = options.open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(named)
}

/// Reads `path` whole, refusing it when it is larger than `max` bytes. An error names
/// the path.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(named)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(named)?;
    if bytes.len() as u64 > max {
        return Err(named(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )));
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_bounded_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, max)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not UTF-8 text", path.display()),
        )
    })
}

/// Flushes a directory's entries (a rename, a new file) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Appends `bytes` to `file` and flushes them to disk before returning.
pub fn append_durable(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_with_their_mode() {
        let dir = std::env::temp_dir().join(format!("wdml-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret.key");
        write_atomic(&path, b"one", Mode::Secret).unwrap();
        write_atomic(&path, b"two", Mode::Secret).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(read_bounded(&path, 3).unwrap(), b"two");
        let error = read_bounded(&path, 2).unwrap_err();
        assert!(error.to_string().contains("larger than 2 bytes"), "{error}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Nothing left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let error = write_atomic(&dir.join("missing/x"), b"", Mode::Public).unwrap_err();
        assert!(error.to_string().contains("missing/x"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
