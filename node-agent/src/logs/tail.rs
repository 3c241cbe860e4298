//! Bounded, rotation-safe file tailing.
//!
//! [`FileTailer`] follows one path like `tail -F`: it keeps the open file, its identity
//! (device + inode) and the read offset. Each [`FileTailer::poll`] reads what is new, at
//! most `max_bytes_per_poll` bytes (the rest waits for the next poll), and splits it into
//! lines of at most `max_line_len` bytes (longer lines are cut, counted, and the rest of
//! them skipped). It handles:
//!
//! - truncation in place (`copytruncate`): the file shrank below the offset → read from 0;
//! - rename + recreate (logrotate's default, kubelet's container log rotation): at the end
//!   of the old file, if the path now names another inode, the old file is finished
//!   (including a last line without newline) and the new one read from its start;
//! - a path that does not exist (yet, or between rename and recreate): nothing to read;
//! - a writer faster than we read: once more than `max_lag_bytes` wait unread, the
//!   tailer jumps to the end of the file (counted in `skipped_bytes`) rather than fall
//!   further and further behind.
//!
//! It does IO but holds no clock and spawns nothing: the caller decides when to poll.
//! [`TailSet`] bounds the number of files followed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Tailer settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailConfig {
    /// Most bytes read per poll per file.
    pub max_bytes_per_poll: usize,
    /// Longest line kept, bytes; longer ones are cut.
    pub max_line_len: usize,
    /// Read a file that exists at the first poll from its start (else from its end, like
    /// `tail -f`). Files that appear later, or after a rotation, are always read from 0.
    pub from_start: bool,
    /// Unread bytes past which the tailer skips to the end of the file (0: never).
    pub max_lag_bytes: u64,
}

impl Default for TailConfig {
    fn default() -> Self {
        TailConfig {
            max_bytes_per_poll: 1 << 20,
            max_line_len: 16 * 1024,
            from_start: false,
            max_lag_bytes: 0,
        }
    }
}

/// What a tailer has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Switches to a new file at the path.
    pub rotations: u64,
    /// Times the file shrank under the offset.
    pub truncations: u64,
    /// Lines cut to `max_line_len`.
    pub truncated_lines: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Lines emitted.
    pub lines: u64,
    /// Bytes jumped over because the reader lagged more than `max_lag_bytes`.
    pub skipped_bytes: u64,
    /// Times the reader jumped.
    pub skips: u64,
}

/// Follows one file path. See the module documentation.
pub struct FileTailer {
    path: PathBuf,
    cfg: TailConfig,
    file: Option<File>,
    id: (u64, u64),
    offset: u64,
    partial: Vec<u8>,
    discarding: bool,
    polled: bool,
    stats: TailStats,
}

impl FileTailer {
    /// A tailer for `path` (nothing is opened until the first poll).
    pub fn new(path: impl Into<PathBuf>, cfg: TailConfig) -> Self {
        FileTailer {
            path: path.into(),
            cfg,
            file: None,
            id: (0, 0),
            offset: 0,
            partial: Vec::new(),
            discarding: false,
            polled: false,
            stats: TailStats::default(),
        }
    }

    /// The path followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset in the current file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Counters.
    pub fn stats(&self) -> &TailStats {
        &self.stats
    }

    /// Reads what is new, appending whole lines (without newline) to `out`; returns how
    /// many were appended. Errors other than "not found" are returned (the tailer stays
    /// usable; the next poll retries).
    pub fn poll(&mut self, out: &mut Vec<String>) -> io::Result<usize> {
        self.poll_limited(out, self.cfg.max_bytes_per_poll)
    }

    /// [`FileTailer::poll`] reading at most `max_bytes` (and at most `max_bytes_per_poll`):
    /// lets a caller share one byte budget between many files.
    pub fn poll_limited(&mut self, out: &mut Vec<String>, max_bytes: usize) -> io::Result<usize> {
        let first = !self.polled;
        self.polled = true;
        let before = out.len();
        if self.file.is_none() && !self.open(!first || self.cfg.from_start)? {
            return Ok(0);
        }
        let mut budget = self.cfg.max_bytes_per_poll.min(max_bytes).max(1);
        // A path rotated faster than we poll is followed at most a few hops per poll.
        for _ in 0..4 {
            let Some(file) = self.file.as_mut() else {
                break;
            };
            let len = file.metadata()?.len();
            if len < self.offset {
                file.seek(SeekFrom::Start(0))?;
                self.offset = 0;
                self.partial.clear();
                self.discarding = false;
                self.stats.truncations += 1;
            }
            self.skip_if_lagging(len)?;
            self.read_available(&mut budget, out)?;
            if budget == 0 {
                break;
            }
            match std::fs::metadata(&self.path) {
                Ok(meta) if (meta.dev(), meta.ino()) != self.id => {
                    // Finished with the old file: its last line may lack a newline.
                    self.flush_partial(out);
                    if !self.open(true)? {
                        break;
                    }
                    self.stats.rotations += 1;
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        let n = out.len() - before;
        self.stats.lines += n as u64;
        Ok(n)
    }

    /// Opens the path; `from_start` or at its end. False when it does not exist.
    fn open(&mut self, from_start: bool) -> io::Result<bool> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        self.id = (meta.dev(), meta.ino());
        self.offset = if from_start { 0 } else { meta.len() };
        file.seek(SeekFrom::Start(self.offset))?;
        self.file = Some(file);
        self.partial.clear();
        self.discarding = false;
        Ok(true)
    }

    /// Jumps to the end when too much waits unread. The partial line in hand is dropped,
    /// and so is the line the jump lands in, up to its newline: half lines would only
    /// mine into junk templates.
    fn skip_if_lagging(&mut self, len: u64) -> io::Result<()> {
        let lag = len.saturating_sub(self.offset);
        if self.cfg.max_lag_bytes == 0 || lag <= self.cfg.max_lag_bytes {
            return Ok(());
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(len))?;
        self.offset = len;
        self.partial.clear();
        // Until the next newline we are in the middle of a line nobody will see whole.
        self.discarding = true;
        self.stats.skipped_bytes += lag;
        self.stats.skips += 1;
        Ok(())
    }

    fn read_available(&mut self, budget: &mut usize, out: &mut Vec<String>) -> io::Result<()> {
        let mut buf = vec![0u8; (*budget).min(64 * 1024)];
        while *budget > 0 {
            let Some(file) = self.file.as_mut() else {
                return Ok(());
            };
            let want = (*budget).min(buf.len());
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            *budget -= n;
            self.offset += n as u64;
            self.stats.bytes_read += n as u64;
            self.split_lines(&buf[..n], out);
        }
        Ok(())
    }

    fn split_lines(&mut self, mut data: &[u8], out: &mut Vec<String>) {
        let max = self.cfg.max_line_len.max(1);
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    if self.discarding {
                        self.discarding = false;
                    } else {
                        let room = max.saturating_sub(self.partial.len());
                        self.partial.extend_from_slice(&data[..pos.min(room)]);
                        if pos > room {
                            self.stats.truncated_lines += 1;
                        }
                        self.emit(out);
                    }
                    data = &data[pos + 1..];
                }
                None => {
                    if !self.discarding {
                        let room = max.saturating_sub(self.partial.len());
                        self.partial
                            .extend_from_slice(&data[..data.len().min(room)]);
                        if data.len() > room {
                            // Over-long line: keep its head, skip to its end.
                            self.stats.truncated_lines += 1;
                            self.emit(out);
                            self.discarding = true;
                        }
                    }
                    data = &[];
                }
            }
        }
    }

    fn flush_partial(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            self.emit(out);
        }
        self.discarding = false;
    }

    fn emit(&mut self, out: &mut Vec<String>) {
        let bytes = std::mem::take(&mut self.partial);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
        out.push(String::from_utf8_lossy(bytes).into_owned());
    }
}

/// Too many files to follow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("already following {max} files (the limit)")]
pub struct TooManyFiles {
    /// The limit.
    pub max: usize,
}

/// A bounded set of tailers.
pub struct TailSet {
    cfg: TailConfig,
    max_files: usize,
    tailers: Vec<FileTailer>,
    rejected: u64,
}

impl TailSet {
    /// An empty set following at most `max_files` paths.
    pub fn new(cfg: TailConfig, max_files: usize) -> Self {
        TailSet {
            cfg,
            max_files,
            tailers: Vec::new(),
            rejected: 0,
        }
    }

    /// Starts following `path` (no-op if followed already).
    pub fn add(&mut self, path: impl Into<PathBuf>) -> Result<(), TooManyFiles> {
        let path = path.into();
        if self.tailers.iter().any(|t| t.path == path) {
            return Ok(());
        }
        if self.tailers.len() >= self.max_files {
            self.rejected += 1;
            return Err(TooManyFiles {
                max: self.max_files,
            });
        }
        self.tailers.push(FileTailer::new(path, self.cfg.clone()));
        Ok(())
    }

    /// Stops following `path`.
    pub fn remove(&mut self, path: &Path) {
        self.tailers.retain(|t| t.path != path);
    }

    /// Paths refused because of the limit.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The tailers, for their stats.
    pub fn tailers(&self) -> &[FileTailer] {
        &self.tailers
    }

    /// Polls every file once; appends `(file index, line)` and returns the errors by path
    /// (one file failing does not stop the others).
    pub fn poll(&mut self, out: &mut Vec<(usize, String)>) -> Vec<(PathBuf, io::Error)> {
        let mut errors = Vec::new();
        let mut lines = Vec::new();
        for (idx, t) in self.tailers.iter_mut().enumerate() {
            lines.clear();
            if let Err(e) = t.poll(&mut lines) {
                errors.push((t.path.clone(), e));
            }
            out.extend(lines.drain(..).map(|l| (idx, l)));
        }
        errors
    }
}
