use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What a file looked like when last polled: enough to notice a rewrite in place, an atomic
/// rename over it and a symlink swapped under it (`None`: absent or unreadable).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Option<(u64, Option<SystemTime>, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        // `metadata` follows symlinks: a ConfigMap's `..data` swap changes the inode seen.
        Self(std::fs::metadata(path).ok().map(|m| {
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            (m.len(), m.modified().ok(), ino)
        }))
    }
}

/// Watches files by polling their metadata, and reports a change once it has settled.
///
/// Polling every `interval` costs one `stat` per file and needs no platform watcher, so it
/// works the same on every file system, mounted volumes included. A change is reported when
/// the files have then stayed the same for `debounce` (an editor's several writes, or a
/// deployment replacing several files, make one report).
#[derive(Debug)]
pub struct FileWatch {
    files: Vec<(PathBuf, Stamp)>,
    interval: Duration,
    debounce: Duration,
}

impl FileWatch {
    /// Watches `paths` as they are now.
    pub fn new(
        paths: impl IntoIterator<Item = PathBuf>,
        interval: Duration,
        debounce: Duration,
    ) -> Self {
        let mut w = Self {
            files: Vec::new(),
            interval: interval.max(Duration::from_millis(10)),
            debounce,
        };
        w.set_paths(paths);
        w
    }

    /// Watches `paths` from now on, instead of the earlier ones: a file watched before keeps
    /// its last state (a change not yet reported still is), a new one is taken as it is now.
    pub fn set_paths(&mut self, paths: impl IntoIterator<Item = PathBuf>) {
        let mut paths: Vec<PathBuf> = paths.into_iter().collect();
        paths.sort();
        paths.dedup();
        let old = std::mem::take(&mut self.files);
        self.files = paths
            .into_iter()
            .map(|p| {
                let s = old
                    .iter()
                    .find(|(o, _)| *o == p)
                    .map_or_else(|| Stamp::of(&p), |(_, s)| s.clone());
                (p, s)
            })
            .collect();
    }

    /// Waits `debounce` for the files to settle from now on.
    pub fn set_debounce(&mut self, debounce: Duration) {
        self.debounce = debounce;
    }

    /// The files watched.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// Polls once: the files that changed since the last poll (their new state is kept).
    pub fn poll(&mut self) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for (path, stamp) in &mut self.files {
            let now = Stamp::of(path);
            if now != *stamp {
                *stamp = now;
                changed.push(path.clone());
            }
        }
        changed
    }

    /// Waits for a change, then for the files to settle (no further change for `debounce`);
    /// returns every file that changed meanwhile.
    pub async fn changed(&mut self) -> Vec<PathBuf> {
        let mut seen = loop {
            tokio::time::sleep(self.interval).await;
            let c = self.poll();
            if !c.is_empty() {
                break c;
            }
        };
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let step = self
                .interval
                .min(self.debounce.max(Duration::from_millis(10)));
            tokio::time::sleep(step).await;
            let more = self.poll();
            if more.is_empty() {
                if quiet_since.elapsed() >= self.debounce {
                    break;
                }
            } else {
                quiet_since = tokio::time::Instant::now();
                for p in more {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                }
            }
        }
        seen
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rewrite_a_rename_and_a_removal_are_each_seen_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "one").unwrap();
        let mut w = FileWatch::new(
            [a.clone(), dir.path().join("absent")],
            Duration::from_millis(10),
            Duration::from_millis(30),
        );
        assert!(w.poll().is_empty());
        std::fs::write(&a, "two, longer").unwrap();
        assert_eq!(w.changed().await, vec![a.clone()]);
        assert!(w.poll().is_empty(), "reported once");
        // An atomic replace: a new inode under the same name.
        let tmp = dir.path().join("a.tmp");
        std::fs::write(&tmp, "two, longer").unwrap();
        std::fs::rename(&tmp, &a).unwrap();
        assert_eq!(w.changed().await, vec![a.clone()]);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(w.changed().await, vec![a]);
    }

    #[tokio::test]
    async fn several_writes_in_a_burst_make_one_report() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let mut w = FileWatch::new(
            [a.clone(), b.clone()],
            Duration::from_millis(10),
            Duration::from_millis(150),
        );
        let writer = tokio::spawn({
            let (a, b) = (a.clone(), b.clone());
            async move {
                for i in 0..5 {
                    std::fs::write(&a, format!("a{i}")).unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    std::fs::write(&b, format!("b{i}")).unwrap();
                }
            }
        });
        let mut changed = w.changed().await;
        changed.sort();
        assert_eq!(changed, vec![a, b]);
        writer.await.unwrap();
        assert!(w.poll().is_empty(), "the burst was one report");
    }
}
