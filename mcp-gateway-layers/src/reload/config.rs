//! The reload keys of `[server]`.
//!
//! ```toml
//! [server]
//! watch_config = true      # reload on a change of the file or of a file it names; default false
//! watch_debounce = "1s"    # wait until the files have been quiet this long; default 1s
//! drain_timeout = "30s"    # a removed route's open streams end after this; default 30s
//! ```
//!
//! Reloads are also triggered by SIGHUP and by `POST /reload` on the admin listener, whatever
//! `watch_config` says.

use crate::config::{Diagnostics, Dur, Spanned};
use std::time::Duration;

/// How long a removed route's open streams may go on after a reload, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long watched files must stay the same before a reload, by default.
pub const DEFAULT_WATCH_DEBOUNCE: Duration = Duration::from_secs(1);
/// How often watched files are polled.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Checked reload keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadSpec {
    /// Reload when the configuration file or a file it names changes.
    pub watch_config: bool,
    /// How long watched files must stay the same before a reload.
    pub watch_debounce: Duration,
    /// How long the open streams of a route a reload removed may go on.
    pub drain_timeout: Duration,
}

impl Default for ReloadSpec {
    fn default() -> Self {
        Self {
            watch_config: false,
            watch_debounce: DEFAULT_WATCH_DEBOUNCE,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// Checks the reload keys as written (each absent one takes its default).
pub fn check(
    watch_config: Option<bool>,
    watch_debounce: Option<&Spanned<Dur>>,
    drain_timeout: Option<&Spanned<Dur>>,
    errors: &mut Diagnostics<'_>,
) -> ReloadSpec {
    let mut spec = ReloadSpec {
        watch_config: watch_config.unwrap_or(false),
        ..ReloadSpec::default()
    };
    if let Some(d) = watch_debounce {
        if d.get_ref().0 > Duration::from_secs(60) {
            errors.error(
                Some(d.span()),
                "server.watch_debounce must be at most 60s (a change would wait that long to apply)",
            );
        } else {
            spec.watch_debounce = d.get_ref().0;
        }
    }
    if let Some(d) = drain_timeout {
        spec.drain_timeout = d.get_ref().0;
    }
    spec
}
