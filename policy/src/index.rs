//! A scope index over the policy set, so a decision evaluates only the
//! policies whose scope can match it.
//!
//! Cedar evaluates every policy in the set it is given, and a policy costs
//! about a microsecond; with hundreds of per-principal policies (what an ACL
//! import produces) that misses the latency budget. A policy whose scope
//! (action, resource type, principal) cannot match a request cannot affect
//! its decision, not even with an error (Cedar checks the scope before the
//! conditions), so splitting the set by scope and combining the per-part
//! answers gives exactly the answer of the whole set.

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Effect, Entities, EntityTypeName, EntityUid, Policy, PrincipalConstraint,
    ResourceConstraint,
};

use crate::types::Action;

/// Resource entity types, in index order.
pub(crate) const RESOURCE_TYPES: [&str; 4] =
    ["Topic", "ConsumerGroup", "TransactionalId", "Cluster"];

/// One policy, ready to evaluate.
pub(crate) struct Compiled {
    /// The id as written in its `@id` annotation.
    pub(crate) id: String,
    /// Cedar's rendering of the id, as its evaluation errors cite it.
    pub(crate) display_id: String,
    /// Permit or forbid.
    pub(crate) effect: Effect,
    /// Scope and clauses as one expression. Cedar's authorizer rebuilds this
    /// expression on every evaluation (allocating a tree each time); built
    /// once here it is only interpreted per decision.
    pub(crate) condition: cedar_policy_core::ast::Expr,
}

impl Compiled {
    fn new(policy: &Policy) -> Self {
        Compiled {
            id: crate::engine::id_str(policy.id()).to_string(),
            display_id: policy.id().to_string(),
            effect: policy.effect(),
            condition: AsRef::<cedar_policy_core::ast::Policy>::as_ref(policy).condition(),
        }
    }
}

/// The policies of one (action, resource type) pair.
#[derive(Default)]
struct Bucket {
    // Policies with an unconstrained (or type-only) principal scope.
    general: Vec<Arc<Compiled>>,
    // Policies whose principal scope names an entity (`principal == User::"a"`,
    // `principal in Group::"g"`), under that entity: a request looks up its
    // principal and each of its groups.
    keyed: HashMap<EntityUid, Vec<Arc<Compiled>>>,
}

/// Policies by (action, resource type, principal key).
pub(crate) struct PolicyIndex {
    // Indexed by `action.index() * RESOURCE_TYPES.len() + resource type index`.
    buckets: Vec<Bucket>,
}

/// Which policy sets one request must be evaluated against.
pub(crate) struct Candidates<'a> {
    pub(crate) sets: Vec<&'a [Arc<Compiled>]>,
}

impl PolicyIndex {
    /// Indexes `policies`; `actions` holds the action uids by [`Action::index`]
    /// and `action_entities` the action hierarchy.
    pub(crate) fn build(
        policies: &[&Policy],
        actions: &[EntityUid],
        action_entities: &Entities,
    ) -> Self {
        let mut buckets: Vec<Bucket> = (0..Action::COUNT * RESOURCE_TYPES.len())
            .map(|_| Bucket::default())
            .collect();
        for policy in policies {
            let compiled = Arc::new(Compiled::new(policy));
            let action_ix = matching_actions(policy, actions, action_entities);
            let resource_ix = matching_resource_types(policy);
            let key = match policy.principal_constraint() {
                PrincipalConstraint::Eq(uid)
                | PrincipalConstraint::In(uid)
                | PrincipalConstraint::IsIn(_, uid) => Some(uid),
                PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
            };
            for &a in &action_ix {
                for &r in &resource_ix {
                    let bucket = &mut buckets[a * RESOURCE_TYPES.len() + r];
                    let set = match &key {
                        Some(k) => bucket.keyed.entry(k.clone()).or_default(),
                        None => &mut bucket.general,
                    };
                    set.push(Arc::clone(&compiled));
                }
            }
        }
        PolicyIndex { buckets }
    }

    /// The sets a request must be evaluated against. They are disjoint, so
    /// no policy is evaluated twice.
    pub(crate) fn candidates<'a>(
        &'a self,
        action: Action,
        resource_type: usize,
        principal: &EntityUid,
        groups: &[EntityUid],
    ) -> Candidates<'a> {
        let mut sets = Vec::with_capacity(2 + groups.len());
        if let Some(bucket) = self
            .buckets
            .get(action.index() * RESOURCE_TYPES.len() + resource_type)
        {
            if !bucket.general.is_empty() {
                sets.push(bucket.general.as_slice());
            }
            if !bucket.keyed.is_empty() {
                sets.extend(
                    std::iter::once(principal)
                        .chain(groups)
                        .filter_map(|k| bucket.keyed.get(k).map(Vec::as_slice)),
                );
            }
        }
        Candidates { sets }
    }
}

/// Indexes of the actions the policy's action scope admits.
fn matching_actions(policy: &Policy, actions: &[EntityUid], hierarchy: &Entities) -> Vec<usize> {
    let admits = |requested: &EntityUid| match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == requested,
        ActionConstraint::In(groups) => groups.iter().any(|g| {
            g == requested
                || hierarchy
                    .ancestors(requested)
                    .is_some_and(|mut anc| anc.any(|x| x == g))
        }),
    };
    actions
        .iter()
        .enumerate()
        .filter(|(_, a)| admits(a))
        .map(|(i, _)| i)
        .collect()
}

/// Indexes (into [`RESOURCE_TYPES`]) of the resource types the policy's
/// resource scope admits.
fn matching_resource_types(policy: &Policy) -> Vec<usize> {
    let only = |ty: &EntityTypeName| {
        let name = ty.to_string();
        RESOURCE_TYPES
            .iter()
            .position(|t| *t == name)
            .into_iter()
            .collect()
    };
    match policy.resource_constraint() {
        ResourceConstraint::Any => (0..RESOURCE_TYPES.len()).collect(),
        // Resources have no parents, so `resource in X` is `resource == X`.
        ResourceConstraint::Eq(uid) | ResourceConstraint::In(uid) => only(uid.type_name()),
        ResourceConstraint::Is(ty) | ResourceConstraint::IsIn(ty, _) => only(&ty),
    }
}
