//! The pins file: the approved definition of every tool and prompt of each pinned upstream,
//! with its digest. JSON with sorted keys and one member per line, so that a change to it
//! reviews well in git.
//!
//! ```json
//! {
//!   "upstreams": {
//!     "github": {
//!       "tools": {
//!         "search_code": {
//!           "approved_at": "2026-12-06T10:00:00.000000Z",
//!           "approved_by": "alice",
//!           "definition": { "description": "Search code", "inputSchema": {}, "name": "search_code" },
//!           "digest": "sha256:…"
//!         }
//!       }
//!     }
//!   },
//!   "version": 1
//! }
//! ```

use super::canon;
use super::Kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

/// One approved definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// `sha256:` and the hex SHA-256 of the definition's canonical form.
    pub digest: String,
    /// The definition as approved (kept so a change can be shown member by member).
    #[serde(default)]
    pub definition: Value,
    /// When it was approved (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
    /// Who approved it (`trust_on_first_use` when the gateway pinned it on first sight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

impl Pin {
    /// A pin of `definition`, approved now by `by`.
    pub fn of(definition: Value, by: &str) -> Self {
        Self {
            digest: canon::digest(&definition),
            definition,
            approved_at: Some(crate::audit::record::format_time(
                std::time::SystemTime::now(),
            )),
            approved_by: Some(by.to_owned()),
        }
    }
}

/// The pins of one upstream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamPins {
    /// Tools by name.
    #[serde(default)]
    pub tools: BTreeMap<String, Pin>,
    /// Prompts by name.
    #[serde(default)]
    pub prompts: BTreeMap<String, Pin>,
}

impl UpstreamPins {
    /// The pins of one kind.
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Pin> {
        match kind {
            Kind::Tool => &self.tools,
            Kind::Prompt => &self.prompts,
        }
    }

    /// The pins of one kind, to change.
    pub fn of_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Pin> {
        match kind {
            Kind::Tool => &mut self.tools,
            Kind::Prompt => &mut self.prompts,
        }
    }
}

/// The whole pins file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pins {
    /// The file format's version: 1.
    pub version: u32,
    /// Pinned upstreams by name. An upstream listed here is *pinned*: a definition of it
    /// without a pin is quarantined.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamPins>,
}

impl Default for Pins {
    fn default() -> Self {
        Self {
            version: 1,
            upstreams: BTreeMap::new(),
        }
    }
}

/// Why a pins file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    /// Reading or writing failed.
    #[error("pins file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a pins file.
    #[error("pins file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with its line and column.
        message: String,
    },
}

impl Pins {
    /// Reads `path`; a missing file is an empty set of pins (nothing pinned yet).
    pub fn load(path: &Path) -> Result<Self, PinsError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(PinsError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let pins: Self = serde_json::from_slice(&text).map_err(|e| PinsError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if pins.version != 1 {
            return Err(PinsError::Invalid {
                path: path.display().to_string(),
                message: format!("version {} is not 1", pins.version),
            });
        }
        // A pin whose digest does not match its definition was edited by hand, or damaged:
        // refusing it is safer than trusting either.
        for (up, u) in &pins.upstreams {
            for kind in [Kind::Tool, Kind::Prompt] {
                for (name, pin) in u.of(kind) {
                    if !pin.definition.is_null() && canon::digest(&pin.definition) != pin.digest {
                        return Err(PinsError::Invalid {
                            path: path.display().to_string(),
                            message: format!(
                                "{up}: {} {name:?}: its digest does not match its definition",
                                kind.as_str()
                            ),
                        });
                    }
                }
            }
        }
        Ok(pins)
    }

    /// The file's text: sorted keys, two-space indentation, a final newline.
    pub fn to_text(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut out = serde_json::to_vec_pretty(&sorted(v)).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Writes the file atomically (a temporary file beside it, renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), PinsError> {
        let err = |source| PinsError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            name.as_deref().unwrap_or("pins.json"),
            std::process::id()
        ));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&self.to_text()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Reads `path`, changes it with `f` and writes it back (atomically): a change made to
    /// the file meanwhile by someone else (`mcp-gateway pins approve`) is kept.
    pub fn update<R>(path: &Path, f: impl FnOnce(&mut Pins) -> R) -> Result<(R, Pins), PinsError> {
        let mut pins = Self::load(path)?;
        let r = f(&mut pins);
        pins.save(path)?;
        Ok((r, pins))
    }
}

/// `v` with every object's members in sorted order (serde_json's map may keep insertion
/// order when another crate asks for it).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        v => v,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.json");
        assert_eq!(Pins::load(&path).unwrap(), Pins::default());
        let def = json!({"name":"search","description":"Search code"});
        Pins::update(&path, |p| {
            p.upstreams
                .entry("github".into())
                .or_default()
                .tools
                .insert("search".into(), Pin::of(def.clone(), "alice"));
        })
        .unwrap();
        let pins = Pins::load(&path).unwrap();
        assert_eq!(
            pins.upstreams["github"].tools["search"].digest,
            canon::digest(&def)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("}\n") && text.contains("\n  \"upstreams\""),
            "{text}"
        );
        // A definition edited by hand without its digest is refused.
        std::fs::write(&path, text.replace("Search code", "Search code!")).unwrap();
        let err = Pins::load(&path).unwrap_err().to_string();
        assert!(err.contains("digest does not match"), "{err}");
        std::fs::write(&path, "{\"version\":2}").unwrap();
        assert!(Pins::load(&path)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
    }
}
