//! `[audit]`: the audit log as written in the gateway's configuration file, checked with a
//! location for every error, and started as an [`AuditWriter`] under an [`AuditLogLayer`].
//!
//! ```toml
//! [audit]                            # absent: no audit
//! path = "/var/log/mcp-gateway/audit.jsonl"
//! fsync = "interval"                 # or "always"
//! fsync_interval = "1s"
//! on_full = "block"                  # or "refuse"
//! rotate_size = "100MiB"
//! keep = 30
//! record_arguments = false
//! redact = ["password", "token", "api_key"]
//! # rotate_age = "24h"               # also rotate a file older than this
//! # queue = 65536                    # exchanges that may wait for their record
//! # linger = "2ms"                   # fsync = "interval": batch records for this long
//! # write_timeout = "5s"             # longest a call waits on a full queue or failing sink
//! # sink = "file"                    # or "stdout" (then no path)
//! ```
//!
//! An app with its own TOML file reads the section with [`from_toml`], the binary's
//! validation ([`check`]; a relative `path` is relative to the file's folder) with errors
//! located in the app's file, then starts the [`writer`] and builds the [`layer`]:
//!
//! ```
//! use mcp_gateway_layers::audit::config;
//!
//! let text = "[audit]\nsink = \"stdout\"\nkeep = 5\n";
//! let spec = config::from_toml(text, "app.toml")?.expect("[audit] is there");
//! assert!(matches!(spec.sink, config::AuditSinkSpec::Stdout));
//! // let writer = config::writer(&spec)?; let audit = config::layer(&writer, 4 << 20);
//!
//! let bad = "[audit]\npath = \"audit.jsonl\"\nfsync = \"never\"\nkeep = 0\n";
//! assert_eq!(
//!     config::from_toml(bad, "app.toml").unwrap_err().to_string(),
//!     "app.toml:3:9: audit.fsync: \"never\" is not \"interval\" or \"always\"\n\
//!      app.toml:4:8: audit.keep must be at least 1 (rotated files kept)"
//! );
//! # Ok::<(), mcp_gateway_layers::config::ConfigErrors>(())
//! ```

use super::{
    AuditLogLayer, AuditSink, AuditWriter, FileSink, FsyncPolicy, OnFull, StdoutSink, WriterOptions,
};
use crate::config::{check_section, resolve, ConfigErrors, Diagnostics, Dur, Size, Spanned};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The log file (relative to the configuration file's folder unless absolute).
    #[serde(default)]
    pub path: Option<Spanned<PathBuf>>,
    /// `file` (default) or `stdout`.
    #[serde(default)]
    pub sink: Option<Spanned<String>>,
    /// `interval` (default) or `always`.
    #[serde(default)]
    pub fsync: Option<Spanned<String>>,
    /// With `fsync = "interval"`: how often. Default 1 s.
    #[serde(default)]
    pub fsync_interval: Option<Spanned<Dur>>,
    /// `block` (default) or `refuse`.
    #[serde(default)]
    pub on_full: Option<Spanned<String>>,
    /// Rotate before a file passes this size. Default 100 MiB.
    #[serde(default)]
    pub rotate_size: Option<Spanned<Size>>,
    /// Also rotate a file older than this. Default: never by age.
    #[serde(default)]
    pub rotate_age: Option<Spanned<Dur>>,
    /// Rotated files kept. Default 30.
    #[serde(default)]
    pub keep: Option<Spanned<u64>>,
    /// Record tool arguments (redacted). Default false: only their SHA-256.
    #[serde(default)]
    pub record_arguments: Option<bool>,
    /// Argument keys whose values are redacted.
    #[serde(default)]
    pub redact: Option<Vec<String>>,
    /// Exchanges that may hold a place in the queue. Default 65 536.
    #[serde(default)]
    pub queue: Option<Spanned<u64>>,
    /// With `fsync = "interval"`: how long the writer gathers a batch after its first record
    /// (`0s`: each record written as it comes). Default 2 ms.
    #[serde(default)]
    pub linger: Option<Spanned<Dur>>,
    /// The longest a call waits on the audit log (a place in the queue, a failing sink's
    /// recovery, its record's sync with `fsync = "always"`) before it is refused with 503
    /// (or, once its answer started, cut off). Default 5 s.
    #[serde(default)]
    pub write_timeout: Option<Spanned<Dur>>,
}

/// Where checked audit records go.
#[derive(Debug, Clone)]
pub enum AuditSinkSpec {
    /// Append-only files.
    File {
        /// The active file.
        path: PathBuf,
        /// Rotation size in bytes.
        rotate_size: u64,
        /// Rotation age.
        rotate_age: Option<Duration>,
        /// Rotated files kept.
        keep: usize,
    },
    /// Standard output.
    Stdout,
}

/// Checked `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditSpec {
    /// The sink.
    pub sink: AuditSinkSpec,
    /// The writer's options.
    pub options: WriterOptions,
}

/// The keys redacted when `redact` is not given.
pub const DEFAULT_REDACT: [&str; 5] = ["password", "token", "api_key", "secret", "authorization"];

/// Checks `[audit]` (a relative `path` is relative to `base`, the configuration file's
/// folder). Each problem is reported at its key; `None` when there was one.
pub fn check(a: &AuditConfig, base: &Path, e: &mut Diagnostics<'_>) -> Option<AuditSpec> {
    let before = e.count();
    let mut options = WriterOptions::default();
    match a.fsync.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("interval", _)) => {
            let every = a
                .fsync_interval
                .as_ref()
                .map_or(Duration::from_secs(1), |d| d.get_ref().0);
            if every.is_zero() {
                let span = a.fsync_interval.as_ref().map(Spanned::span);
                e.error(span, "audit.fsync_interval must be greater than 0");
            }
            options.fsync = FsyncPolicy::Interval(every);
        }
        Some(("always", _)) => {
            if let Some(d) = &a.fsync_interval {
                e.error(
                    Some(d.span()),
                    "audit.fsync_interval is set but fsync is \"always\"",
                );
            }
            options.fsync = FsyncPolicy::Always;
        }
        Some((other, span)) => e.error(
            Some(span),
            format!("audit.fsync: {other:?} is not \"interval\" or \"always\""),
        ),
    }
    match a.on_full.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("block", _)) => options.on_full = OnFull::Block,
        Some(("refuse", _)) => options.on_full = OnFull::Refuse,
        Some((other, span)) => e.error(
            Some(span),
            format!("audit.on_full: {other:?} is not \"block\" or \"refuse\""),
        ),
    }
    if let Some(l) = &a.linger {
        if options.fsync == FsyncPolicy::Always {
            e.error(
                Some(l.span()),
                "audit.linger is set but fsync is \"always\" (which never lingers)",
            );
        } else if l.get_ref().0 > Duration::from_secs(1) {
            e.error(Some(l.span()), "audit.linger must be at most 1s");
        } else {
            options.linger = l.get_ref().0;
        }
    }
    if let Some(t) = &a.write_timeout {
        if t.get_ref().0.is_zero() {
            e.error(Some(t.span()), "audit.write_timeout must be greater than 0");
        } else {
            options.write_timeout = t.get_ref().0;
        }
    }
    if let Some(q) = &a.queue {
        match usize::try_from(*q.get_ref()) {
            Ok(n) if n > 0 => options.queue = n,
            _ => e.error(Some(q.span()), "audit.queue must be at least 1"),
        }
    }
    options.arguments.record = a.record_arguments.unwrap_or(false);
    options.arguments.redact = match &a.redact {
        Some(keys) => keys.clone(),
        None => DEFAULT_REDACT.iter().map(|k| (*k).to_owned()).collect(),
    };
    let rotate_size = a
        .rotate_size
        .as_ref()
        .map_or(100 << 20, |s| s.get_ref().0 as u64);
    if let Some(s) = a.rotate_size.as_ref().filter(|s| s.get_ref().0 == 0) {
        e.error(Some(s.span()), "audit.rotate_size must be greater than 0");
    }
    let rotate_age = a.rotate_age.as_ref().map(|d| d.get_ref().0);
    if let Some(d) = a.rotate_age.as_ref().filter(|d| d.get_ref().0.is_zero()) {
        e.error(Some(d.span()), "audit.rotate_age must be greater than 0");
    }
    let keep = a.keep.as_ref().map_or(30, |k| *k.get_ref());
    if let Some(k) = a.keep.as_ref().filter(|k| *k.get_ref() == 0) {
        e.error(
            Some(k.span()),
            "audit.keep must be at least 1 (rotated files kept)",
        );
    }
    let sink = match a.sink.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("file", _)) => match &a.path {
            None => {
                e.error(
                    a.sink.as_ref().map(Spanned::span),
                    "[audit] needs a path (or sink = \"stdout\")",
                );
                None
            }
            Some(p) => {
                let path = resolve(base, p.get_ref());
                if path.is_dir() || path.as_os_str().is_empty() {
                    e.error(
                        Some(p.span()),
                        format!("audit.path: {} is a folder, not a file", path.display()),
                    );
                }
                Some(AuditSinkSpec::File {
                    path,
                    rotate_size,
                    rotate_age,
                    keep: usize::try_from(keep).unwrap_or(usize::MAX),
                })
            }
        },
        Some(("stdout", span)) => {
            if let Some(p) = &a.path {
                e.error(Some(p.span()), "audit.path is set but sink is \"stdout\"");
            }
            let _ = span;
            Some(AuditSinkSpec::Stdout)
        }
        Some((other, span)) => {
            e.error(
                Some(span),
                format!("audit.sink: {other:?} is not \"file\" or \"stdout\""),
            );
            None
        }
    };
    if e.count() != before {
        return None;
    }
    sink.map(|sink| AuditSpec { sink, options })
}

/// `[audit]` of the TOML `text` of the file `source`, checked by [`check`] as the binary
/// checks it (a relative `path` is relative to `source`'s folder): every error, located in
/// `source`, or the spec — `None` when the file has no `[audit]`.
pub fn from_toml(text: &str, source: &str) -> Result<Option<AuditSpec>, ConfigErrors> {
    check_section(text, source, "audit", |a, cx, e| check(a, &cx.base, e))
}

/// Opens the sink of checked `[audit]` (the file, or standard output).
pub fn sink(spec: &AuditSpec) -> std::io::Result<Box<dyn AuditSink>> {
    match &spec.sink {
        AuditSinkSpec::File {
            path,
            rotate_size,
            rotate_age,
            keep,
        } => {
            // The error names the file: "permission denied" alone says nothing of where.
            let sink = FileSink::open(path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
                .rotate_size(*rotate_size)
                .rotate_age(*rotate_age)
                .keep(*keep);
            Ok(Box::new(sink))
        }
        AuditSinkSpec::Stdout => Ok(Box::new(StdoutSink)),
    }
}

/// Opens the sink of checked `[audit]` and starts the writer (flush it at shutdown).
pub fn writer(spec: &AuditSpec) -> std::io::Result<AuditWriter> {
    AuditWriter::spawn(sink(spec)?, spec.options.clone())
}

/// Flushes `writer` at shutdown: waits at most `timeout` for every record to be written and
/// synced (what the sink did not take by then is counted as dropped, and logged), then logs
/// the counters.
pub async fn shutdown(writer: &AuditWriter, timeout: Duration) {
    if tokio::time::timeout(timeout, writer.flush()).await.is_err() {
        let n = writer.stats().in_flight;
        writer.dropped(n, "the audit sink did not take them before shutdown");
    }
    let s = writer.stats();
    tracing::info!(target: "mcp_gateway::audit", written = s.written, dropped = s.dropped, sink_errors = s.sink_errors, "audit log flushed");
}

/// The audit layer writing to `writer`, reading request bodies up to `body_limit` bytes. One
/// writer serves every route; each route may have its own layer.
pub fn layer(writer: &AuditWriter, body_limit: usize) -> AuditLogLayer {
    AuditLogLayer::new(writer.clone()).body_limit(body_limit)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::testing::run;

    #[derive(Deserialize)]
    struct Doc {
        audit: Option<AuditConfig>,
        #[serde(default, rename = "upstreams")]
        _upstreams: toml::Table,
    }

    fn parse(text: &str, base: &Path) -> Result<AuditSpec, Vec<String>> {
        run(text, |d: &Doc, e| check(d.audit.as_ref()?, base, e))
    }

    fn errs(text: &str) -> Vec<String> {
        parse(text, Path::new(".")).err().unwrap_or_default()
    }

    const BASE: &str = "[upstreams.a]\nurl = \"http://127.0.0.1:1/mcp\"\n";

    #[test]
    fn full_and_default() {
        let a = parse(
            &format!("{BASE}[audit]\npath = \"/tmp/a/audit.jsonl\"\nfsync = \"always\"\non_full = \"refuse\"\nrotate_size = \"1MiB\"\nkeep = 3\nrecord_arguments = true\nredact = [\"pin\"]\nrotate_age = \"1h\"\nqueue = 10\n"),
            Path::new("."),
        )
        .unwrap();
        assert!(matches!(
            a.sink,
            AuditSinkSpec::File {
                rotate_size: 1048576,
                keep: 3,
                ..
            }
        ));
        assert_eq!(a.options.fsync, crate::audit::FsyncPolicy::Always);
        assert_eq!(a.options.on_full, crate::audit::OnFull::Refuse);
        assert_eq!(a.options.queue, 10);
        assert!(a.options.arguments.record);
        assert_eq!(a.options.arguments.redact, ["pin"]);
        let a = parse(
            &format!("{BASE}[audit]\npath = \"audit.jsonl\"\n"),
            Path::new("/etc/gw"),
        )
        .unwrap();
        assert!(
            matches!(&a.sink, AuditSinkSpec::File { path, .. } if path == Path::new("/etc/gw/audit.jsonl"))
        );
        assert_eq!(
            a.options.fsync,
            crate::audit::FsyncPolicy::Interval(std::time::Duration::from_secs(1))
        );
        assert!(!a.options.arguments.record);
        assert_eq!(a.options.linger, std::time::Duration::from_millis(2));
        let a = parse(
            &format!("{BASE}[audit]\npath = \"a.jsonl\"\nlinger = \"0s\"\n"),
            Path::new("."),
        )
        .unwrap();
        assert!(a.options.linger.is_zero());
        assert_eq!(a.options.write_timeout, std::time::Duration::from_secs(5));
        let a = parse(
            &format!("{BASE}[audit]\npath = \"a.jsonl\"\nwrite_timeout = \"250ms\"\n"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            a.options.write_timeout,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn errors_point_at_their_keys() {
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\nfsync = \"sometimes\"\n"
        ));
        assert!(e[0].starts_with("gw.toml:5:9: audit.fsync"), "{e:?}");
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\non_full = \"drop\"\n"
        ));
        assert!(e[0].starts_with("gw.toml:5:11: audit.on_full"), "{e:?}");
        let e = errs(&format!("{BASE}[audit]\npath = \"a.jsonl\"\nkeep = 0\n"));
        assert!(e[0].starts_with("gw.toml:5:8: audit.keep"), "{e:?}");
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\nrotate_size = 0\n"
        ));
        assert!(e[0].starts_with("gw.toml:5:15: audit.rotate_size"), "{e:?}");
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\nfsync = \"always\"\nfsync_interval = \"1s\"\n"
        ));
        assert!(
            e[0].starts_with("gw.toml:6:18: audit.fsync_interval"),
            "{e:?}"
        );
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\nfsync = \"always\"\nlinger = \"1ms\"\n"
        ));
        assert!(e[0].starts_with("gw.toml:6:10: audit.linger"), "{e:?}");
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\nlinger = \"2s\"\n"
        ));
        assert!(e[0].starts_with("gw.toml:5:10: audit.linger"), "{e:?}");
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\nwrite_timeout = \"0s\"\n"
        ));
        assert!(
            e[0].starts_with("gw.toml:5:17: audit.write_timeout"),
            "{e:?}"
        );
        let e = errs(&format!("{BASE}[audit]\nfsync = \"always\"\n"));
        assert!(e[0].contains("needs a path"), "{e:?}");
        let e = errs(&format!("{BASE}[audit]\npath = \"a.jsonl\"\nbogus = 1\n"));
        assert!(e[0].starts_with("gw.toml:5:1"), "{e:?}");
        let e = errs(&format!(
            "{BASE}[audit]\npath = \"a.jsonl\"\nfsync_interval = \"soon\"\n"
        ));
        assert!(e[0].starts_with("gw.toml:5:18"), "{e:?}");
    }
}
