//! `--log FILE.jsonl`: one JSON object per line, written so that a `kill -9` or power cut
//! loses at most the line being written and the file still parses line by line.
//!
//! Each line is built in memory and handed to the kernel in one `write` on an `O_APPEND` file,
//! so no line is ever interleaved or split by our own buffering; a line cut short by a crash
//! (possible only mid-syscall on a full disk or power loss) is closed with a newline when the
//! log is reopened, so it cannot swallow the next run's first record.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::{Error, Result};

/// Rotated files kept: `FILE.1` (newest) .. `FILE.3`.
pub const KEEP_ROTATED: usize = 3;

pub struct ResultsLog {
    path: PathBuf,
    file: File,
    size: u64,
    rotate_at: Option<u64>,
    line: Vec<u8>,
}

impl ResultsLog {
    /// Append to `path` (created if missing); with `rotate_at`, a line that would take the file
    /// past that many bytes first moves it to `path.1` (and `.1` to `.2`, ...).
    pub fn open(path: &Path, rotate_at: Option<u64>) -> Result<ResultsLog> {
        if rotate_at == Some(0) {
            return Err(Error::usage("--log-rotate must be more than 0 bytes"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        }
        let mut file = open_append(path)?;
        let size = file.metadata().map_err(|e| Error::file(path, e))?.len();
        if size > 0 {
            // Close a line a crash left open.
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(|e| Error::file(path, e))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(|e| Error::file(path, e))?;
            }
        }
        let size = file.metadata().map_err(|e| Error::file(path, e))?.len();
        Ok(ResultsLog {
            path: path.to_path_buf(),
            file,
            size,
            rotate_at,
            line: Vec::with_capacity(512),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one line.
    pub fn append(&mut self, record: &impl Serialize) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(|e| Error::file(&self.path, e))?;
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if let Some(limit) = self.rotate_at {
            if self.size > 0 && self.size + len > limit {
                self.rotate()?;
            }
        }
        // One write(2) for the whole line on a regular file; write_all only loops if the
        // kernel wrote part of it (disk full), which the caller then hears about.
        self.file
            .write_all(&self.line)
            .map_err(|e| Error::file(&self.path, e))?;
        self.file.flush().map_err(|e| Error::file(&self.path, e))?;
        self.size += len;
        Ok(())
    }

    /// fsync: what is written survives a power cut, not only a killed process.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::file(&self.path, e))
    }

    fn rotate(&mut self) -> Result<()> {
        self.sync()?;
        for n in (1..KEEP_ROTATED).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))
                    .map_err(|e| Error::file(&from, e))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
            .map_err(|e| Error::file(&self.path, e))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| Error::file(path, e))
}

/// `FILE.n`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// `t` as RFC 3339 UTC with milliseconds, `2024-06-01T12:34:56.789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day of a /400 year) 12:34:56.789
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_827_696_789)),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn lines_rotation_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, b"{\"frame\":0}\n{\"fra").unwrap();
        let mut log = ResultsLog::open(&path, Some(200)).unwrap();
        for i in 1..=20 {
            log.append(&serde_json::json!({ "frame": i, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }))
                .unwrap();
        }
        log.sync().unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 200, "{}", current.len());
        assert!(current
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        assert!(
            rotated(&path, 1).exists() && rotated(&path, 3).exists() && !rotated(&path, 4).exists()
        );
        // The newest record is last in the current file, the torn line sits alone.
        assert!(current.lines().last().unwrap().contains("\"frame\":20"));
        let oldest = std::fs::read_to_string(rotated(&path, 3)).unwrap();
        assert!(
            oldest
                .lines()
                .all(|l| l == "{\"fra" || serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "{oldest}"
        );
        assert!(ResultsLog::open(&path, Some(0)).is_err());
    }
}
