//! [`AuditSink`]: where audit lines go. [`FileSink`] (append-only files, rotated by size and
//! age, kept by count, with a `.head` seal) is the default; [`StdoutSink`] writes to standard
//! output.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The latest record written: its sequence number and the hash of its line. A sink that can
/// keep it apart from the log ([`FileSink`]: the `.head` file) lets `audit verify` notice a
/// log cut short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The record's `seq`.
    pub seq: u64,
    /// [`line_hash`](super::record::line_hash) of its line.
    pub hash: String,
}

impl Head {
    /// The head as its one JSON line.
    pub fn to_line(&self) -> String {
        format!("{{\"seq\":{},\"hash\":\"{}\"}}\n", self.seq, self.hash)
    }
    /// Reads a head line.
    pub fn parse(text: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
        Some(Self {
            seq: v.get("seq")?.as_u64()?,
            hash: v.get("hash")?.as_str()?.to_owned(),
        })
    }
}

/// Where the writer puts audit lines. Called from the writer's own thread, never from the
/// request path, so methods may block.
pub trait AuditSink: Send + 'static {
    /// Appends `lines` (whole lines, each ending in `\n`). On error nothing of `lines` may
    /// remain written: the writer retries the same lines.
    fn write(&mut self, lines: &[u8]) -> io::Result<()>;
    /// Makes what was written durable, and records `head` as the latest record.
    fn sync(&mut self, head: &Head) -> io::Result<()>;
    /// The last complete line written before this process started, to continue the chain.
    fn last_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

impl AuditSink for Box<dyn AuditSink> {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        (**self).write(lines)
    }
    fn sync(&mut self, head: &Head) -> io::Result<()> {
        (**self).sync(head)
    }
    fn last_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        (**self).last_line()
    }
}

/// A sink from a closure that takes each batch of lines: nothing to sync, no chain to continue
/// across restarts. See [`sink_fn`].
pub struct SinkFn<F>(F);

impl<F> std::fmt::Debug for SinkFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkFn").finish_non_exhaustive()
    }
}

/// A sink from a closure — to ship lines somewhere of your own (a socket, a queue, a test).
///
/// ```
/// use mcp_gateway_layers::audit::{sink_fn, AuditWriter, WriterOptions};
/// let writer = AuditWriter::spawn(
///     sink_fn(|lines: &[u8]| {
///         eprint!("{}", String::from_utf8_lossy(lines));
///         Ok(())
///     }),
///     WriterOptions::default(),
/// )
/// .unwrap();
/// # drop(writer);
/// ```
pub fn sink_fn<F>(f: F) -> SinkFn<F>
where
    F: FnMut(&[u8]) -> io::Result<()> + Send + 'static,
{
    SinkFn(f)
}

impl<F> AuditSink for SinkFn<F>
where
    F: FnMut(&[u8]) -> io::Result<()> + Send + 'static,
{
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        (self.0)(lines)
    }
    fn sync(&mut self, _head: &Head) -> io::Result<()> {
        Ok(())
    }
}

/// Lines to standard output (one `write` per batch). Nothing is kept to continue the chain
/// across restarts: each process starts a new chain.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl AuditSink for StdoutSink {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(lines)?;
        out.flush()
    }
    fn sync(&mut self, _head: &Head) -> io::Result<()> {
        Ok(())
    }
}

/// Append-only JSON-lines files: `PATH` is written; when it would pass `rotate_size` (or is
/// older than `rotate_age`) it is renamed `PATH.000001`, `PATH.000002`, … and a new `PATH`
/// begun; the newest `keep` rotated files are kept. `PATH.head` holds the latest record's
/// [`Head`], replaced atomically at each sync after the log itself was synced.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: File,
    size: u64,
    opened: SystemTime,
    rotate_size: u64,
    rotate_age: Option<Duration>,
    keep: usize,
    rotated: u64,
}

impl FileSink {
    /// Opens (creating it and its folder when missing) the log at `path`.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        // A torn last line (a crash mid-write, which only a power cut can cause: a killed
        // process finishes its `write`) was never acknowledged: cut it off.
        let size = file.metadata()?.len();
        let good = complete_len(&mut file, size)?;
        if good != size {
            tracing::warn!(path = %path.display(), bytes = size - good, "audit: cutting off a torn last line");
            file.set_len(good)?;
        }
        let rotated = rotated_files(&path)?.last().map_or(0, |(n, _)| *n);
        // A head being replaced when the process died: the `.head` itself is whole.
        let mut tmp = Self::head_path(&path).into_os_string();
        tmp.push(".tmp");
        let _ = std::fs::remove_file(tmp);
        Ok(Self {
            path,
            file,
            size: good,
            opened: SystemTime::now(),
            rotate_size: 100 << 20,
            rotate_age: None,
            keep: 30,
            rotated,
        })
    }

    /// Rotates before a write would make the file larger than `bytes`. Default 100 MiB.
    pub fn rotate_size(mut self, bytes: u64) -> Self {
        self.rotate_size = bytes.max(1);
        self
    }

    /// Also rotates a non-empty file opened longer than `age` ago.
    pub fn rotate_age(mut self, age: Option<Duration>) -> Self {
        self.rotate_age = age;
        self
    }

    /// How many rotated files to keep (the oldest beyond are deleted). Default 30.
    pub fn keep(mut self, n: usize) -> Self {
        self.keep = n;
        self
    }

    /// The `.head` file next to the log at `path`.
    pub fn head_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".head");
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let next = self.rotated + 1;
        std::fs::rename(&self.path, numbered(&self.path, next))?;
        self.rotated = next;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)?;
        self.size = 0;
        self.opened = SystemTime::now();
        let files = rotated_files(&self.path)?;
        if files.len() > self.keep {
            for (_, old) in &files[..files.len() - self.keep] {
                std::fs::remove_file(old)?;
            }
        }
        Ok(())
    }
}

fn numbered(path: &Path, n: u64) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n:06}"));
    PathBuf::from(p)
}

/// The rotated files of the log at `path`, oldest first.
pub fn rotated_files(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        if let (6.., Ok(n)) = (rest.len(), rest.parse::<u64>()) {
            out.push((n, dir.join(&file)));
        }
    }
    out.sort();
    Ok(out)
}

/// The length of `file` up to and including its last `\n`.
fn complete_len(file: &mut File, size: u64) -> io::Result<u64> {
    let mut end = size;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(buf.len());
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The last complete line of the file at `path` (without reading all of it).
pub fn last_line_of(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let end = complete_len(&mut file, size)?;
    if end == 0 {
        return Ok(None);
    }
    // The line before the last `\n` starts after the `\n` before it.
    let start = complete_len(&mut file, end - 1)?;
    let mut line = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(Some(line))
}

impl AuditSink for FileSink {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        let old = self.opened.elapsed().unwrap_or_default();
        let too_old = self.rotate_age.is_some_and(|a| old >= a);
        if self.size > 0 && (self.size + lines.len() as u64 > self.rotate_size || too_old) {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(lines) {
            // Leave nothing half-written: the writer retries the whole batch.
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += lines.len() as u64;
        Ok(())
    }

    fn sync(&mut self, head: &Head) -> io::Result<()> {
        self.file.sync_data()?;
        let path = Self::head_path(&self.path);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp)?;
        f.write_all(head.to_line().as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)
    }

    fn last_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        if let Some(line) = last_line_of(&self.path)? {
            return Ok(Some(line));
        }
        // Just rotated: the newest rotated file ends the chain.
        for (_, p) in rotated_files(&self.path)?.iter().rev() {
            if let Some(line) = last_line_of(p)? {
                return Ok(Some(line));
            }
        }
        Ok(None)
    }
}
