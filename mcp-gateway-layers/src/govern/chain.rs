use super::{Decision, Govern, IntoGovern, Waiting};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mcp_gateway_core::exchange::Exchange;
use std::sync::Arc;

/// Several governors in stack order, outermost first: run by one [`Governed`](super::Governed)
/// as one future, with one read of the request and one observation of the response.
///
/// Each step runs every governor in order — every [`enter`](Govern::enter), the read, every
/// [`admit`](Govern::admit) — and stops at the first refusal. A governor that waits holds up
/// the ones after it until it decided.
///
/// ```
/// # #[cfg(all(feature = "limits", feature = "telemetry"))] {
/// use mcp_gateway_layers::govern::Chain;
/// use mcp_gateway_layers::limits::{Limits, TokenBucket2DLayer};
/// use mcp_gateway_layers::telemetry::TraceInjectLayer;
///
/// let chain = Chain::new()
///     .with(Some(TraceInjectLayer::new()))                            // observes every refusal below it
///     .with(Some(TokenBucket2DLayer::new(Limits::new().requests_per_minute(600))))
///     .with(None::<TokenBucket2DLayer>);                              // a layer that is off
/// assert_eq!(chain.len(), 2);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Chain {
    items: Arc<[Arc<dyn Govern>]>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("len", &self.items.len())
            .finish()
    }
}

impl Chain {
    /// An empty chain: every request passes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The chain with `layer`'s governor added innermost, when the layer is on (`Some`).
    pub fn with<L: IntoGovern>(self, layer: Option<L>) -> Self {
        match layer {
            Some(l) => self.push(l.into_govern()),
            None => self,
        }
    }

    /// The chain with `governor` added innermost.
    pub fn push(self, governor: Arc<dyn Govern>) -> Self {
        let mut items: Vec<Arc<dyn Govern>> = self.items.iter().cloned().collect();
        items.push(governor);
        Self {
            items: items.into(),
        }
    }

    /// How many governors the chain holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the chain holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl IntoGovern for Chain {
    fn into_govern(self) -> Arc<dyn Govern> {
        Arc::new(self)
    }
}

type Req = Request<Full<Bytes>>;

/// Runs `step` over the governors from `start` on, resuming after a wait.
fn run<T: Send + 'static>(
    items: &Arc<[Arc<dyn Govern>]>,
    start: usize,
    mut value: T,
    x: &Exchange,
    step: fn(&dyn Govern, T, &Exchange) -> Decision<T>,
) -> Decision<T> {
    for i in start..items.len() {
        match step(&*items[i], value, x) {
            Decision::Pass(v) => value = v,
            Decision::Refuse(r) => return Decision::Refuse(r),
            Decision::Wait(fut) => {
                let items = items.clone();
                let x = x.clone();
                let rest: Waiting<T> = Box::pin(async move {
                    let v = fut.await?;
                    match run(&items, i + 1, v, &x, step) {
                        Decision::Pass(v) => Ok(v),
                        Decision::Refuse(r) => Err(r),
                        Decision::Wait(f) => f.await,
                    }
                });
                return Decision::Wait(rest);
            }
        }
    }
    Decision::Pass(value)
}

impl Govern for Chain {
    fn enter(&self, head: &http::request::Parts, x: &Exchange) -> Decision<()> {
        // Entering reads only the head, so every governor enters at once; the waits are
        // awaited in order before the body is read.
        let mut waits: Option<Waiting<()>> = None;
        for g in self.items.iter() {
            match g.enter(head, x) {
                Decision::Pass(()) => {}
                Decision::Refuse(r) => {
                    return match waits {
                        None => Decision::Refuse(r),
                        Some(w) => Decision::Wait(Box::pin(async move {
                            w.await?;
                            Err(r)
                        })),
                    }
                }
                Decision::Wait(f) => {
                    waits = Some(match waits {
                        None => f,
                        Some(w) => Box::pin(async move {
                            w.await?;
                            f.await
                        }),
                    });
                }
            }
        }
        match waits {
            None => Decision::Pass(()),
            Some(w) => Decision::Wait(w),
        }
    }

    fn admit(&self, req: Req, x: &Exchange) -> Decision<Req> {
        run(&self.items, 0, req, x, |g, r, x| g.admit(r, x))
    }

    fn unread(&self, x: &Exchange) {
        for g in self.items.iter() {
            g.unread(x);
        }
    }
}
