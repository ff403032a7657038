use super::approvals::Approvals;
use super::config::{ApprovalRule, IntegritySpec, PinsSpec};
use super::pins::{Pins, PinsError};
use super::service::{Governor, Inner, State, ToolIntegrity};
use super::{Kind, Mode};
use crate::govern::{Govern, Governed, IntoGovern};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use tower_layer::Layer;

/// Applies [`ToolIntegrity`]: pinned definitions and approval gates. See the [module
/// docs](super). Cheap to clone; clones (and every service they make) share the definitions
/// seen and the calls held.
#[derive(Clone, Debug)]
pub struct ToolIntegrityLayer {
    governor: Governor,
    body_limit: usize,
}

impl ToolIntegrityLayer {
    /// Pins kept in `pins_file` (read now; a missing file pins nothing yet), applied in
    /// `mode` to every upstream.
    pub fn new(pins_file: impl Into<PathBuf>, mode: Mode) -> Result<Self, PinsError> {
        Self::from_spec(IntegritySpec {
            pins: Some(PinsSpec {
                pins_file: pins_file.into(),
                mode,
                modes: BTreeMap::new(),
                trust_on_first_use: false,
            }),
            approvals: Vec::new(),
        })
    }

    /// Approval gates alone, without pins.
    pub fn approvals_only(rules: impl IntoIterator<Item = ApprovalRule>) -> Self {
        Self::build(
            IntegritySpec {
                pins: None,
                approvals: rules.into_iter().collect(),
            },
            Pins::default(),
        )
    }

    /// The layer for checked settings, its pins read from the pins file.
    pub fn from_spec(spec: IntegritySpec) -> Result<Self, PinsError> {
        let pins = match &spec.pins {
            Some(p) => Pins::load(&p.pins_file)?,
            None => Pins::default(),
        };
        Ok(Self::build(spec, pins))
    }

    fn build(spec: IntegritySpec, pins: Pins) -> Self {
        Self {
            governor: Governor {
                inner: Arc::new(Inner {
                    spec,
                    pins: RwLock::new(pins),
                    state: Arc::new(State::default()),
                    upstream: None,
                    sealing: None,
                }),
            },
            body_limit: crate::parse::DEFAULT_BODY_LIMIT,
        }
    }

    /// A copy of this layer changed by `f`, sharing its state (what was seen, the calls
    /// held) unless `f` replaces it.
    fn edit(self, f: impl FnOnce(&mut Inner)) -> Self {
        let old = &self.governor.inner;
        let mut inner = Inner {
            spec: old.spec.clone(),
            pins: RwLock::new(
                old.pins
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ),
            state: old.state.clone(),
            upstream: old.upstream.clone(),
            sealing: old.sealing.clone(),
        };
        f(&mut inner);
        Self {
            governor: Governor {
                inner: Arc::new(inner),
            },
            body_limit: self.body_limit,
        }
    }

    /// Adds an approval rule (after the others: the first rule that holds a call applies).
    pub fn approval(self, rule: ApprovalRule) -> Self {
        self.edit(|i| i.spec.approvals.push(rule))
    }

    /// Pins an unpinned upstream's first complete list (`trust_on_first_use`). A layer
    /// without pins ([`approvals_only`](Self::approvals_only)) has nothing to pin: asking
    /// for it there is logged as an error and changes nothing.
    pub fn trust_on_first_use(self, yes: bool) -> Self {
        self.edit(|i| match &mut i.spec.pins {
            Some(p) => p.trust_on_first_use = yes,
            None if yes => tracing::error!(target: "mcp_gateway::integrity", "trust_on_first_use on a ToolIntegrityLayer without a pins file: nothing is pinned (build it with ToolIntegrityLayer::new)"),
            None => {}
        })
    }

    /// The upstream this layer serves, as pins and rules name it. Without it, the upstream
    /// is the request's route (the `mcp-gateway` binary's `/mcp/NAME`, axum's matched path).
    pub fn upstream(self, name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        self.edit(|i| i.upstream = Some(name))
    }

    /// Seals 2026-07-28 approval states with `keys` and spends them in `store` —
    /// SessionAffinity's ([`SessionAffinityLayer::keyring`](crate::sessions::SessionAffinityLayer::keyring),
    /// [`session_store`](crate::sessions::SessionAffinityLayer::session_store)): a client's
    /// retry then opens on any replica holding the key, and with a shared store (Redis) it is
    /// spent on all of them. Without it, a state lives in the replica that minted it.
    #[cfg(feature = "sessions")]
    pub fn sealed_with(
        self,
        keys: Arc<crate::sessions::Keyring>,
        store: Arc<dyn crate::sessions::SessionStore>,
    ) -> Self {
        self.edit(|i| i.sealing = Some(super::service::Sealing { keys, store }))
    }

    /// The largest request body read (default 4 MiB).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// This layer, taking over `old`'s state: the definitions it saw and the calls it holds
    /// (a reload keeps them).
    pub fn carry_over(self, old: &Self) -> Self {
        let state = old.governor.inner.state.clone();
        self.edit(|i| i.state = state)
    }

    /// The calls held for a decision: list them, decide them.
    pub fn approvals(&self) -> &Approvals {
        &self.governor.inner.state.approvals
    }

    /// The pins of `upstream`, as read from the pins file (`None`: not pinned).
    pub fn pinned(&self, upstream: &str) -> Option<super::pins::UpstreamPins> {
        let pins = self
            .governor
            .inner
            .pins
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        pins.upstreams.get(upstream).cloned()
    }

    /// The settings.
    pub fn spec(&self) -> &IntegritySpec {
        &self.governor.inner.spec
    }

    /// What each upstream's lists showed against its pins, for `GET /integrity` and
    /// `mcp-gateway pins diff`: per upstream its mode, whether it is pinned, and each
    /// definition's status (`pinned`, `changed`, `unpinned` on a pinned upstream,
    /// `unpinned_upstream` on one that is not, `unseen` for a pin not listed since start),
    /// digests, and the current and pinned definitions.
    pub fn report(&self, upstream: Option<&str>) -> Value {
        let inner = &self.governor.inner;
        let pins = inner.pins.read().unwrap_or_else(PoisonError::into_inner);
        let observed = inner
            .state
            .observed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = pins.upstreams.keys().cloned().collect();
        names.extend(observed.keys().map(|(u, _)| u.clone()));
        names.sort();
        names.dedup();
        let mut out = serde_json::Map::new();
        for up in names.iter().filter(|u| upstream.is_none_or(|x| x == *u)) {
            let pinned = pins.upstreams.get(up);
            let mut items = Vec::new();
            for kind in [Kind::Tool, Kind::Prompt] {
                let mut seen: Vec<(&String, &super::service::Seen)> = observed
                    .get(&(up.clone(), kind))
                    .map(|m| m.iter().collect())
                    .unwrap_or_default();
                seen.sort_by(|a, b| a.0.cmp(b.0));
                for (name, s) in &seen {
                    let pin = pinned.and_then(|p| p.of(kind).get(*name));
                    let status = match pin {
                        Some(p) if p.digest == s.digest => "pinned",
                        Some(_) => "changed",
                        None if pinned.is_some() => "unpinned",
                        None => "unpinned_upstream",
                    };
                    items.push(json!({
                        "kind": kind.as_str(), "name": name, "status": status,
                        "current_digest": s.digest, "current": s.definition,
                        "pinned_digest": pin.map(|p| &p.digest), "pinned": pin.map(|p| &p.definition),
                    }));
                }
                if let Some(p) = pinned {
                    for (name, pin) in p.of(kind) {
                        if !seen.iter().any(|(n, _)| *n == name) {
                            items.push(json!({
                                "kind": kind.as_str(), "name": name, "status": "unseen",
                                "pinned_digest": pin.digest, "pinned": pin.definition,
                            }));
                        }
                    }
                }
            }
            let mode = inner
                .spec
                .pins
                .as_ref()
                .map_or(Mode::Off, |p| p.mode_of(up));
            out.insert(
                up.clone(),
                json!({"mode": mode.as_str(), "pinned": pinned.is_some(), "definitions": items}),
            );
        }
        Value::Object(out)
    }

    /// Checks one list result — a whole JSON-RPC response to `tools/list` (`Kind::Tool`) or
    /// `prompts/list` of `upstream` — as the layer checks the lists that stream through it:
    /// records the definitions, reports changes, and in `block` mode removes the changed and
    /// unpinned entries. How many it removed. For lists an app receives otherwise.
    pub fn check_list(&self, upstream: &str, kind: Kind, response: &mut Value) -> usize {
        let x = mcp_gateway_core::exchange::Exchange::new();
        super::service::check_list(&self.governor.inner, upstream, kind, response, &x)
    }

    /// The deciding part, to stack in a [`Chain`](crate::govern::Chain).
    pub fn governor(&self) -> &Governor {
        &self.governor
    }

    /// Appends the integrity metrics in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        self.governor.render_prometheus(out);
    }
}

impl<S> Layer<S> for ToolIntegrityLayer {
    type Service = ToolIntegrity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Governed::new(self.governor.clone(), super::held::HeldService::new(inner))
            .body_limit(self.body_limit)
    }
}

impl IntoGovern for ToolIntegrityLayer {
    fn into_govern(self) -> Arc<dyn Govern> {
        Arc::new(self.governor)
    }
}
