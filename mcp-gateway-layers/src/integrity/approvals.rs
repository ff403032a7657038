//! Calls held for a person's decision, and the decisions.
//!
//! A held call is bound to its principal, the digest of its exact arguments and the digest of
//! the tool's definition; it is decided once (approve or deny), and expires. A call a client
//! was asked about through MCP (a 2026-07-28 `input_required` result) waits for the client's
//! retry instead, by an id only that result carries.

use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// A pending call, as `GET /approvals` and `mcp-gateway approvals list` show it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PendingCall {
    /// The approval's id (32 hex digits): what `POST /approvals/ID` names.
    pub id: String,
    /// The upstream.
    pub upstream: String,
    /// The tool.
    pub tool: String,
    /// The call's arguments, exactly as sent.
    pub arguments: Value,
    /// `sha256:` of the arguments' canonical form.
    pub arguments_digest: String,
    /// `sha256:` of the tool's definition as the gateway last saw it (`unknown` when it
    /// has not seen it listed).
    pub definition_digest: String,
    /// Who is calling.
    pub principal: PrincipalView,
    /// When the call arrived (RFC 3339).
    pub requested_at: String,
    /// When it is denied unless decided (RFC 3339).
    pub expires_at: String,
    /// The legacy session asked to decide (only its answer counts as the client's).
    #[serde(skip)]
    pub(crate) session: Option<String>,
}

/// The caller of a pending call.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PrincipalView {
    /// The agent (client id, else subject; `anonymous` without authentication).
    pub agent: String,
    /// The subject, when authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// How a pending call was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Approved by this person or client.
    Approved(String),
    /// Denied by this person or client.
    Denied(String),
    /// The tool's definition changed while the call waited.
    Voided,
}

/// Why a decision was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// No pending call has this id: decided already, expired, or never held.
    #[error("no pending call {0}: it was decided already, expired, or never existed")]
    NotFound(String),
    /// The decision named digests the pending call does not have.
    #[error("approval {id} is for {field} {actual}, not {expected}")]
    Mismatch {
        /// The pending call.
        id: String,
        /// `arguments_digest` or `definition_digest`.
        field: &'static str,
        /// What the pending call has.
        actual: String,
        /// What the decision named.
        expected: String,
    },
}

enum Waiter {
    /// A held call waits on this.
    Held(oneshot::Sender<Verdict>),
    /// A client was asked; its retry carries the id.
    Asked,
}

struct Entry {
    call: PendingCall,
    waiter: Waiter,
    expires: Instant,
}

/// The pending calls of one gateway process.
#[derive(Default)]
pub struct Approvals {
    pending: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("pending", &self.lock().len())
            .finish()
    }
}

/// 128 random bits as 32 hex digits.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: a unique, unguessable-enough id is still needed.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = (t ^ u128::from(fastrand::u64(..)) << 64).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `call` until it is decided, voided or `timeout` passes: the call as held (its
    /// id and expiry filled in), and the receiver that hears the verdict (nothing is heard on
    /// expiry).
    pub(crate) fn hold(
        &self,
        call: PendingCall,
        timeout: Duration,
    ) -> (PendingCall, oneshot::Receiver<Verdict>) {
        let (tx, rx) = oneshot::channel();
        (self.insert(call, Waiter::Held(tx), timeout), rx)
    }

    /// Records that a client was asked about `call`; its retry will name the id returned.
    pub(crate) fn ask(&self, call: PendingCall, timeout: Duration) -> String {
        self.insert(call, Waiter::Asked, timeout).id
    }

    fn insert(&self, mut call: PendingCall, waiter: Waiter, timeout: Duration) -> PendingCall {
        let id = new_id();
        call.id.clone_from(&id);
        call.expires_at = crate::audit::record::format_time(SystemTime::now() + timeout);
        let mut p = self.lock();
        sweep(&mut p);
        p.insert(
            id,
            Entry {
                call: call.clone(),
                waiter,
                expires: Instant::now() + timeout,
            },
        );
        call
    }

    /// Takes the asked call `id` (once: a second retry with the same id finds nothing).
    pub(crate) fn take_asked(&self, id: &str) -> Option<PendingCall> {
        let mut p = self.lock();
        match p.get(id) {
            Some(e) if matches!(e.waiter, Waiter::Asked) && e.expires > Instant::now() => {
                p.remove(id).map(|e| e.call)
            }
            Some(e) if e.expires <= Instant::now() => {
                p.remove(id);
                None
            }
            _ => None,
        }
    }

    /// Forgets a held call (its client went away, or it expired).
    pub(crate) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The held calls, oldest first.
    pub fn list(&self) -> Vec<PendingCall> {
        let mut p = self.lock();
        sweep(&mut p);
        let mut calls: Vec<PendingCall> = p
            .values()
            .filter(|e| matches!(e.waiter, Waiter::Held(_)))
            .map(|e| e.call.clone())
            .collect();
        calls.sort_by(|a, b| a.requested_at.cmp(&b.requested_at).then(a.id.cmp(&b.id)));
        calls
    }

    /// The number of held calls.
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(e.waiter, Waiter::Held(_)))
            .count()
    }

    /// True when no call is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides held call `id`: approve or deny, by `by`. When the decision names the digests
    /// it was made for, they must be the call's.
    pub fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &str,
        arguments_digest: Option<&str>,
        definition_digest: Option<&str>,
    ) -> Result<PendingCall, DecideError> {
        let mut p = self.lock();
        sweep(&mut p);
        let entry = match p.get(id) {
            Some(e) if matches!(e.waiter, Waiter::Held(_)) => e,
            _ => return Err(DecideError::NotFound(id.to_owned())),
        };
        for (field, expected, actual) in [
            (
                "arguments_digest",
                arguments_digest,
                &entry.call.arguments_digest,
            ),
            (
                "definition_digest",
                definition_digest,
                &entry.call.definition_digest,
            ),
        ] {
            if let Some(expected) = expected {
                if expected != actual {
                    return Err(DecideError::Mismatch {
                        id: id.to_owned(),
                        field,
                        actual: actual.clone(),
                        expected: expected.to_owned(),
                    });
                }
            }
        }
        let Some(entry) = p.remove(id) else {
            return Err(DecideError::NotFound(id.to_owned()));
        };
        let verdict = if approve {
            Verdict::Approved(by.to_owned())
        } else {
            Verdict::Denied(by.to_owned())
        };
        if let Waiter::Held(tx) = entry.waiter {
            // The caller may have gone in the meantime: then nothing waits for the verdict.
            if tx.send(verdict).is_err() {
                return Err(DecideError::NotFound(id.to_owned()));
            }
        }
        Ok(entry.call)
    }

    /// Decides held call `id` from its client's answer to the gateway's elicitation: only
    /// the session that was asked can.
    pub(crate) fn decide_asked(
        &self,
        id: &str,
        session: Option<&str>,
        approve: bool,
        by: &str,
    ) -> Result<(), DecideError> {
        let asked = self
            .lock()
            .get(id)
            .is_some_and(|e| e.call.session.is_some() && e.call.session.as_deref() == session);
        if !asked {
            return Err(DecideError::NotFound(id.to_owned()));
        }
        self.decide(id, approve, by, None, None).map(drop)
    }

    /// Voids every pending call of `upstream`'s `tool` made for another definition than
    /// `digest`: the tool changed while they waited. How many were voided.
    ///
    /// A call held before its tool was ever listed (`unknown`) learns the digest instead;
    /// a call a 2026-07-28 client was asked about is compared at its retry.
    pub(crate) fn void_changed(&self, upstream: &str, tool: &str, digest: &str) -> usize {
        let mut p = self.lock();
        for e in p.values_mut() {
            if e.call.upstream == upstream
                && e.call.tool == tool
                && e.call.definition_digest == "unknown"
            {
                e.call.definition_digest = digest.to_owned();
            }
        }
        let ids: Vec<String> = p
            .iter()
            .filter(|(_, e)| {
                matches!(e.waiter, Waiter::Held(_))
                    && e.call.upstream == upstream
                    && e.call.tool == tool
                    && e.call.definition_digest != digest
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            if let Some(Entry {
                waiter: Waiter::Held(tx),
                ..
            }) = p.remove(id)
            {
                let _ = tx.send(Verdict::Voided);
            }
        }
        ids.len()
    }
}

/// Drops expired entries (their waiters time out on their own).
fn sweep(p: &mut HashMap<String, Entry>) {
    let now = Instant::now();
    p.retain(|_, e| e.expires > now);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(tool: &str) -> PendingCall {
        PendingCall {
            id: String::new(),
            upstream: "github".into(),
            tool: tool.into(),
            arguments: serde_json::json!({"repo": "a"}),
            arguments_digest: "sha256:aa".into(),
            definition_digest: "sha256:dd".into(),
            principal: PrincipalView {
                agent: "bot".into(),
                subject: None,
            },
            requested_at: String::new(),
            expires_at: String::new(),
            session: None,
        }
    }

    #[test]
    fn decided_once_and_bound_to_digests() {
        let a = Approvals::default();
        let (held, mut rx) = a.hold(call("delete_repo"), Duration::from_secs(60));
        let id = held.id;
        assert!(!held.expires_at.is_empty());
        assert_eq!(a.list().len(), 1);
        let err = a
            .decide(&id, true, "alice", Some("sha256:bb"), None)
            .unwrap_err();
        assert!(matches!(
            err,
            DecideError::Mismatch {
                field: "arguments_digest",
                ..
            }
        ));
        a.decide(&id, true, "alice", Some("sha256:aa"), Some("sha256:dd"))
            .unwrap();
        assert_eq!(rx.try_recv().unwrap(), Verdict::Approved("alice".into()));
        // A replayed decision finds nothing.
        assert_eq!(
            a.decide(&id, true, "alice", None, None).unwrap_err(),
            DecideError::NotFound(id.clone())
        );
        assert!(a.is_empty());
    }

    #[test]
    fn a_changed_definition_voids() {
        let a = Approvals::default();
        let (_, mut rx) = a.hold(call("delete_repo"), Duration::from_secs(60));
        assert_eq!(a.void_changed("github", "delete_repo", "sha256:dd"), 0);
        assert_eq!(a.void_changed("github", "delete_repo", "sha256:ee"), 1);
        assert_eq!(rx.try_recv().unwrap(), Verdict::Voided);
        let asked = a.ask(call("x"), Duration::from_secs(60));
        assert_eq!(
            a.void_changed("github", "x", "sha256:ee"),
            0,
            "asked calls are compared at their retry"
        );
        assert!(
            a.list().is_empty(),
            "asked calls are the client's to decide"
        );
        assert!(a.take_asked(&asked).is_some());
        assert!(a.take_asked(&asked).is_none(), "used once");
    }
}
