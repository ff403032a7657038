//! `audit verify`: walks the hash chain of audit files and names the first break.

use super::record::{line_hash, GENESIS};
use super::sink::{FileSink, Head};
use serde::Deserialize;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// What a successful verification saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The first and last `seq` seen.
    pub seqs: Option<(u64, u64)>,
    /// The `.head` checked against the files, when one was found.
    pub head: Option<Head>,
    /// Remarks that are not breaks (a chain that starts after seq 1: older files rotated away
    /// or not given).
    pub notes: Vec<String>,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The chain is broken at this record.
    #[error("{}:{line}: {problem}", file.display())]
    Broken {
        /// The file.
        file: PathBuf,
        /// The 1-based line.
        line: u64,
        /// What is wrong.
        problem: String,
    },
}

/// The `audit verify` summary: `ok: N records, seq A..B, head checked` (the notes are not
/// included).
impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok: {} records", self.records)?;
        if let Some((a, b)) = self.seqs {
            write!(f, ", seq {a}..{b}")?;
        }
        f.write_str(if self.head.is_some() {
            ", head checked"
        } else {
            ", no .head file found: a cut-off tail cannot be detected"
        })
    }
}

#[derive(Deserialize)]
struct Link<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
}

/// True for the `.head` seal (and its temporary copy): a glob such as `audit.jsonl*` names
/// them along with the logs.
fn is_sidecar(f: &Path) -> bool {
    f.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".head") || n.ends_with(".head.tmp"))
}

/// The log files of `files` (sidecars left out), in chain order: by their first record's
/// `seq`, empty files last.
pub(crate) fn in_chain_order(files: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let mut keyed = Vec::with_capacity(files.len());
    for f in files.iter().filter(|f| !is_sidecar(f)) {
        let io = |source| VerifyError::Io {
            file: f.clone(),
            source,
        };
        let mut first = Vec::new();
        BufReader::new(File::open(f).map_err(io)?)
            .read_until(b'\n', &mut first)
            .map_err(io)?;
        let seq = serde_json::from_slice::<Link<'_>>(&first)
            .map(|l| l.seq)
            .unwrap_or(u64::MAX);
        // Empty files (a log just rotated) go last: they hold nothing yet.
        keyed.push((if first.is_empty() { u64::MAX } else { seq }, f.clone()));
    }
    keyed.sort_by_key(|k| k.0);
    Ok(keyed.into_iter().map(|(_, f)| f).collect())
}

fn head_of(files: &[PathBuf]) -> Result<Option<Head>, VerifyError> {
    let mut best: Option<Head> = None;
    for f in files {
        let path = FileSink::head_path(f);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let head = Head::parse(&text).ok_or_else(|| VerifyError::Broken {
                    file: path.clone(),
                    line: 1,
                    problem: "not a head record".into(),
                })?;
                if best.as_ref().is_none_or(|b| head.seq > b.seq) {
                    best = Some(head);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(VerifyError::Io { file: path, source }),
        }
    }
    Ok(best)
}

/// Verifies the chain through `files` (any order: they are put in chain order by their first
/// record; `.head` files among them are skipped). A `FILE.head` next to a file given is checked too: the record it names must be
/// there, unaltered, so a log cut short (its last records deleted) is caught.
pub fn verify(files: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    let ordered = in_chain_order(files)?;
    let head = head_of(files)?;
    let mut report = VerifyReport {
        head: head.clone(),
        ..VerifyReport::default()
    };
    // (file, line, hash, seq) of the record before.
    let mut prev: Option<(PathBuf, u64, String, u64)> = None;
    let mut head_seen = false;
    // The last few records' hashes: a record linking to one of them was inserted or moved.
    let mut recent: std::collections::VecDeque<(PathBuf, u64, String)> =
        std::collections::VecDeque::with_capacity(16);
    let mut line = Vec::with_capacity(1024);
    for file in &ordered {
        let io = |source| VerifyError::Io {
            file: file.clone(),
            source,
        };
        let broken = |n: u64, problem: String| VerifyError::Broken {
            file: file.clone(),
            line: n,
            problem,
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(file).map_err(io)?);
        let mut n = 0u64;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                break;
            }
            n += 1;
            if line.last() != Some(&b'\n') {
                return Err(broken(
                    n,
                    "incomplete last line: the file was cut or a write torn".into(),
                ));
            }
            let Ok(link) = serde_json::from_slice::<Link<'_>>(&line) else {
                return Err(broken(n, "record altered: not a valid audit record".into()));
            };
            let hash = line_hash(&line);
            match &prev {
                None if link.seq == 1 && link.prev != GENESIS => {
                    return Err(broken(
                        n,
                        "record altered: the first record does not start the chain".into(),
                    ));
                }
                None if link.seq != 1 => report.notes.push(format!(
                    "the chain starts at seq {} ({}:{n}): earlier records are not in the files given",
                    link.seq,
                    file.display()
                )),
                None => {}
                Some((pf, pl, ph, ps)) => {
                    let expected = ps.saturating_add(1);
                    if link.seq > expected {
                        return Err(broken(
                            n,
                            format!(
                                "record(s) missing: expected seq {expected}, found seq {} (deleted or reordered records)",
                                link.seq
                            ),
                        ));
                    }
                    if link.seq < expected {
                        return Err(broken(
                            n,
                            format!(
                                "record out of order or inserted: seq {} after seq {ps}",
                                link.seq
                            ),
                        ));
                    }
                    if link.prev != ph {
                        if let Some((ef, el, _)) = recent.iter().find(|r| r.2 == link.prev) {
                            return Err(broken(
                                n,
                                format!(
                                    "record inserted or out of order: it links to {}:{el}, not to the record before it",
                                    ef.display()
                                ),
                            ));
                        }
                        return Err(VerifyError::Broken {
                            file: pf.clone(),
                            line: *pl,
                            problem: format!(
                                "record altered: its hash is not the prev of the next record ({}:{n})",
                                file.display()
                            ),
                        });
                    }
                }
            }
            if let Some(h) = head.as_ref().filter(|h| h.seq == link.seq) {
                if h.hash != hash {
                    return Err(broken(
                        n,
                        "record altered: it does not match the .head file".into(),
                    ));
                }
                head_seen = true;
            }
            report.records += 1;
            report.seqs = Some(match report.seqs {
                None => (link.seq, link.seq),
                Some((a, _)) => (a, link.seq),
            });
            if recent.len() == 16 {
                recent.pop_front();
            }
            recent.push_back((file.clone(), n, hash.clone()));
            prev = Some((file.clone(), n, hash, link.seq));
        }
    }
    if let Some(h) = &head {
        let last = prev.as_ref().map_or(0, |p| p.3);
        if h.seq > last {
            let (file, line) = prev.as_ref().map_or_else(
                || (ordered.last().cloned().unwrap_or_default(), 0),
                |p| (p.0.clone(), p.1),
            );
            return Err(VerifyError::Broken {
                file,
                line: line + 1,
                problem: format!(
                    "truncated: the .head file records seq {} but the log ends at seq {last}",
                    h.seq
                ),
            });
        }
        if !head_seen {
            report.notes.push(format!(
                "the .head record (seq {}) is older than the files given; not checked",
                h.seq
            ));
        }
    }
    Ok(report)
}

/// Whether `path` looks like a log this module wrote (for the CLI's messages).
pub fn is_audit_file(path: &Path) -> bool {
    File::open(path)
        .ok()
        .and_then(|f| {
            let mut first = Vec::new();
            BufReader::new(f).read_until(b'\n', &mut first).ok()?;
            serde_json::from_slice::<Link<'_>>(&first)
                .ok()
                .map(|l| l.seq)
        })
        .is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line() {
        let mut r = VerifyReport {
            records: 3,
            seqs: Some((4, 6)),
            ..VerifyReport::default()
        };
        assert_eq!(
            r.to_string(),
            "ok: 3 records, seq 4..6, no .head file found: a cut-off tail cannot be detected"
        );
        r.seqs = None;
        r.head = Head::parse(&format!("{{\"seq\":6,\"hash\":\"{}\"}}", "0".repeat(64)));
        assert!(r.head.is_some());
        assert_eq!(r.to_string(), "ok: 3 records, head checked");
    }
}
