//! [`CappedLog`]: the node log file (`DATA_DIR/node.log` of `oncekv serve`), with
//! a size bound. It shares a disk with the Raft log, so it must not be able to
//! fill it: when a record would take the file past `max_bytes`, the file is
//! renamed to `node.log.1` (replacing the previous one) and a new `node.log` is
//! started. At most `2 * max_bytes` of log exist at any time.
//!
//! Hand-written because the usual crate does not fit: `tracing-appender` rotates
//! by time only (a flood inside one hour still fills the disk), and a
//! size-rotating crate would be a new dependency for forty lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A size-capped, rotating log file; `&CappedLog` is an [`io::Write`] that takes
/// one record (one log event) per `write` call, as `tracing-subscriber` writes.
#[derive(Debug)]
pub struct CappedLog {
    /// The open file and its length.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `node.log`.
    path: PathBuf,
    /// The file being appended to (`None` after a failed rotation: retried).
    file: Option<File>,
    /// Its length in bytes.
    len: u64,
    /// The bound on its length.
    max_bytes: u64,
}

impl CappedLog {
    /// Opens (appending) `path`, rotating it first if it is already at the bound.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<CappedLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let mut state = State {
            path: path.to_path_buf(),
            file: Some(file),
            len,
            max_bytes: max_bytes.max(1),
        };
        if len >= state.max_bytes {
            state.rotate()?;
        }
        Ok(CappedLog {
            state: Mutex::new(state),
        })
    }

    /// The previous file's path (`node.log.1`).
    pub fn old_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }
}

impl State {
    /// `node.log` becomes `node.log.1`; a new, empty `node.log` is opened.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        match std::fs::rename(&self.path, CappedLog::old_path(&self.path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.path)?;
        self.file = Some(file);
        self.len = 0;
        Ok(())
    }

    /// Appends one record, rotating first if it would not fit; a record longer
    /// than the bound is cut to it (ending in a newline).
    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        let max = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let cut;
        let record = if record.len() > max {
            cut = [&record[..max.saturating_sub(1)], b"\n"].concat();
            &cut[..]
        } else {
            record
        };
        if self.file.is_none() {
            // A rotation failed (e.g. the disk was full): try again.
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.len = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.len + record.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(record)?;
            self.len += record.len() as u64;
        }
        Ok(())
    }
}

impl Write for &CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A record that cannot be written (disk full) is dropped: logging must
        // not stop the node, and the bound holds either way.
        let _ = state.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_never_exceeds_its_bound_and_one_old_file_is_kept() {
        let dir = std::env::temp_dir().join(format!("oncekv-capped-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("node.log");
        // A log left over from before, already past the bound: rotated at open.
        std::fs::write(&path, vec![b'a'; 5_000]).expect("write");
        let log = CappedLog::open(&path, 1_000).expect("open");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
        let mut w = &log;
        for i in 0..10_000u32 {
            let record = format!("record {i} {}\n", "y".repeat((i % 97) as usize));
            w.write_all(record.as_bytes()).expect("write");
            let len = std::fs::metadata(&path).expect("meta").len();
            assert!(len <= 1_000, "node.log is {len} bytes after record {i}");
        }
        // A record longer than the bound is cut to it.
        w.write_all(&vec![b'z'; 50_000]).expect("write");
        let last = std::fs::read(&path).expect("read");
        assert_eq!(last.len(), 1_000);
        assert_eq!(last.last(), Some(&b'\n'));
        let old = std::fs::read_to_string(CappedLog::old_path(&path)).expect("old");
        assert!(old.len() <= 1_000 && old.starts_with("record "), "{old}");
        let files = std::fs::read_dir(&dir).expect("ls").count();
        assert_eq!(files, 2, "node.log and node.log.1 only");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
