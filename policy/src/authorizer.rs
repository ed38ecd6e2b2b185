//! Hot reload ([`Authorizer`]) and per-connection decision caching ([`DecisionCache`]).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::catalog::TopicCatalog;
use crate::engine::{Decision, PolicyEngine};
use crate::error::PolicyError;
use crate::types::{Action, Principal, RequestContext, Resource};

/// The current [`PolicyEngine`], swappable while requests are being decided.
///
/// Readers never block: [`current`](Self::current) is an atomic load. A reload
/// builds and validates the new engine first and swaps only on success, so a
/// broken policy file leaves the previous policies in force.
pub struct Authorizer {
    current: ArcSwap<PolicyEngine>,
    // Serialises reloads so generations are handed out in swap order.
    reload_lock: Mutex<u64>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("current", &*self.current.load())
            .finish()
    }
}

impl Authorizer {
    /// An authorizer serving `engine` as generation 1.
    pub fn new(mut engine: PolicyEngine) -> Self {
        engine.set_generation(1);
        Authorizer {
            current: ArcSwap::from_pointee(engine),
            reload_lock: Mutex::new(1),
        }
    }

    /// The engine in force now; hold it for the whole of one request so all
    /// of that request's decisions come from the same policies.
    pub fn current(&self) -> Arc<PolicyEngine> {
        self.current.load_full()
    }

    /// The generation in force: starts at 1, +1 on every successful reload.
    pub fn generation(&self) -> u64 {
        self.current.load().generation()
    }

    /// Decides with the engine in force now (see [`PolicyEngine::authorize`]).
    pub fn authorize(
        &self,
        principal: &Principal,
        action: impl Into<Action>,
        resource: &Resource,
        ctx: &RequestContext,
    ) -> Decision {
        self.current
            .load()
            .authorize(principal, action, resource, ctx)
    }

    /// Loads `policy_text` with `catalog` and swaps it in; on any error the
    /// previous engine stays in force and the error is returned.
    pub fn reload(&self, policy_text: &str, catalog: TopicCatalog) -> Result<u64, PolicyError> {
        Ok(self.install(PolicyEngine::load(policy_text, catalog)?))
    }

    /// As [`reload`](Self::reload), from files or directories of `.cedar` files.
    pub fn reload_files<P: AsRef<Path>>(
        &self,
        paths: &[P],
        catalog: TopicCatalog,
    ) -> Result<u64, PolicyError> {
        Ok(self.install(PolicyEngine::load_files(paths, catalog)?))
    }

    /// Swaps in an engine built elsewhere; returns its generation.
    pub fn install(&self, mut engine: PolicyEngine) -> u64 {
        // A poisoned lock only means another reload panicked mid-way; the
        // counter it guards is still a valid number.
        let mut last = self
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last += 1;
        engine.set_generation(*last);
        self.current.store(Arc::new(engine));
        *last
    }
}

/// A cached decision and when it was made.
#[derive(Debug, Clone)]
struct Cached {
    at: Instant,
    decision: Arc<Decision>,
}

/// Decisions for one connection (one principal, one context), keyed by
/// (action, resource).
///
/// Owned by the connection, so no locking. Entries are dropped when the
/// [`Authorizer`]'s generation changes, when older than `max_age` (policies may
/// test `context.time`, which the key does not hold), and first-in-first-out
/// beyond `max_resources` resources. If the connection's principal or context
/// (other than time) changes, call [`clear`](Self::clear).
#[derive(Debug)]
pub struct DecisionCache {
    generation: u64,
    max_resources: usize,
    max_age: Duration,
    entries: HashMap<Resource, [Option<Cached>; Action::COUNT]>,
    // Insertion order of `entries`' keys, for eviction.
    order: VecDeque<Resource>,
    hits: u64,
    misses: u64,
}

impl DecisionCache {
    /// A cache of decisions for at most `max_resources` resources, each
    /// trusted for at most `max_age`.
    pub fn new(max_resources: usize, max_age: Duration) -> Self {
        DecisionCache {
            generation: 0,
            max_resources: max_resources.max(1),
            max_age,
            entries: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The decision for (`action`, `resource`), from the cache if it is still
    /// valid for the authorizer's current generation, else freshly decided.
    pub fn authorize(
        &mut self,
        authorizer: &Authorizer,
        principal: &Principal,
        action: impl Into<Action>,
        resource: &Resource,
        ctx: &RequestContext,
    ) -> Arc<Decision> {
        let engine = authorizer.current.load();
        self.decide(&engine, principal, action.into(), resource, ctx)
    }

    /// As [`authorize`](Self::authorize), with an engine the caller already holds.
    pub fn decide(
        &mut self,
        engine: &PolicyEngine,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        ctx: &RequestContext,
    ) -> Arc<Decision> {
        if engine.generation() != self.generation {
            self.clear();
            self.generation = engine.generation();
        }
        let now = Instant::now();
        if let Some(c) = self
            .entries
            .get(resource)
            .and_then(|slots| slots[action.index()].as_ref())
        {
            if now.duration_since(c.at) <= self.max_age {
                self.hits += 1;
                return Arc::clone(&c.decision);
            }
        }
        self.misses += 1;
        let decision = Arc::new(engine.authorize(principal, action, resource, ctx));
        let cached = Cached {
            at: now,
            decision: Arc::clone(&decision),
        };
        if let Some(slots) = self.entries.get_mut(resource) {
            slots[action.index()] = Some(cached);
        } else {
            while self.entries.len() >= self.max_resources {
                match self.order.pop_front() {
                    Some(old) => {
                        self.entries.remove(&old);
                    }
                    None => break,
                }
            }
            let mut slots: [Option<Cached>; Action::COUNT] = Default::default();
            slots[action.index()] = Some(cached);
            self.entries.insert(resource.clone(), slots);
            self.order.push_back(resource.clone());
        }
        decision
    }

    /// Forgets every cached decision.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Number of resources with at least one cached decision.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (hits, misses) since the cache was made.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}
