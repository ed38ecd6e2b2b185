//! The policy engine: one immutable, validated snapshot of policies + catalog,
//! and the decision function.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use cedar_policy_core::ast::{Literal, SlotEnv, Value, ValueKind};
use cedar_policy_core::entities::{Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::{Evaluator, RestrictedEvaluator};
use cedar_policy_core::extensions::Extensions;
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use crate::catalog::TopicCatalog;
use crate::error::{PolicyError, PolicyProblem, SourceLocation};
use crate::index::PolicyIndex;
use crate::types::{Action, Principal, PrincipalKind, RequestContext, Resource, CLUSTER_NAME};

/// The Custos Cedar schema (human format), as shipped in `schema/custos.cedarschema`.
pub const SCHEMA_TEXT: &str = include_str!("../schema/custos.cedarschema");

/// Source name used for policy text handed to [`PolicyEngine::load`].
pub const INLINE_SOURCE: &str = "policy";

/// The parsed schema, shared by every engine: it never changes at run time.
fn schema() -> Result<&'static Schema, PolicyError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Schema::from_cedarschema_str(SCHEMA_TEXT)
                .map(|(schema, _warnings)| schema)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PolicyError::Schema(e.clone()))
}

/// The Custos Cedar schema, parsed.
pub fn custos_schema() -> Result<Schema, PolicyError> {
    schema().cloned()
}

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Whether the request is allowed. False unless a permit matched, no
    /// forbid matched and no policy failed to evaluate.
    pub allowed: bool,
    /// Ids of the policies that decided: the matching permits when allowed,
    /// the matching forbids when denied by one (empty for a default deny).
    pub determining_policies: Vec<String>,
    /// Evaluation errors (each naming its policy); any error denies.
    pub errors: Vec<String>,
}

impl Decision {
    fn deny_with_error(error: String) -> Self {
        Decision {
            allowed: false,
            determining_policies: Vec::new(),
            errors: vec![error],
        }
    }
}

/// Entity type names, parsed once per engine instead of per decision.
struct Types {
    user: EntityTypeName,
    service_account: EntityTypeName,
    group: EntityTypeName,
    topic: EntityTypeName,
    consumer_group: EntityTypeName,
    transactional_id: EntityTypeName,
    cluster: EntityTypeName,
}

impl Types {
    fn new() -> Result<Self, PolicyError> {
        let t =
            |n: &str| EntityTypeName::from_str(n).map_err(|e| PolicyError::Schema(e.to_string()));
        Ok(Types {
            user: t("User")?,
            service_account: t("ServiceAccount")?,
            group: t("Group")?,
            topic: t("Topic")?,
            consumer_group: t("ConsumerGroup")?,
            transactional_id: t("TransactionalId")?,
            cluster: t("Cluster")?,
        })
    }
}

/// An immutable snapshot: schema, validated policies, topic catalog, and the
/// SHA-256 of the policy sources and catalog that audit records cite.
pub struct PolicyEngine {
    policies: PolicySet,
    policy_ids: Vec<String>,
    warnings: Vec<PolicyProblem>,
    catalog: TopicCatalog,
    hash: String,
    generation: u64,
    types: Types,
    // Indexed by `Action::index`.
    actions: Vec<EntityUid>,
    // Indexed by `Action::index`: a store of that action's entity, with its
    // (already transitively closed) ancestors from the schema, which is how
    // `action in Action::"Read"` covers a Describe request, and the cluster
    // entity. Sized for the two entities a decision adds, so cloning it and
    // adding them never regrows (and rehashes) the map.
    base_stores: Vec<CoreEntities>,
    cluster: EntityUid,
    index: PolicyIndex,
    // Resource entities already built: a topic's attributes come from the
    // catalog (prefix and regex matches) and building an entity evaluates
    // them, so both are done once per resource and engine. Bounded.
    resources: std::sync::Mutex<HashMap<Resource, (EntityUid, SharedEntity)>>,
}

/// An entity as Cedar's evaluator holds it, built once and shared.
type SharedEntity = Arc<cedar_policy_core::ast::Entity>;

/// `entity` in the form Cedar's store holds.
fn shared(entity: &Entity) -> SharedEntity {
    Arc::new(entity.as_ref().clone())
}

/// Resource entities kept per engine.
const RESOURCE_CACHE_MAX: usize = 16_384;

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.policy_ids.len())
            .field("catalog_entries", &self.catalog.entries().len())
            .field("hash", &self.hash)
            .field("generation", &self.generation)
            .finish()
    }
}

/// A request ready for Cedar, plus the keys the index looks up.
pub(crate) struct Prepared {
    pub(crate) request: Request,
    pub(crate) entities: Entities,
    pub(crate) principal: Arc<PrincipalParts>,
}

/// One parsed policy source.
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl PolicyEngine {
    /// Parses `policy_text`, validates it against the Custos schema in strict
    /// mode, and builds an engine with `catalog`.
    ///
    /// Policy ids come from `@id("...")` annotations, else `policy:N` (N = the
    /// policy's position in the text, from 0).
    pub fn load(policy_text: &str, catalog: TopicCatalog) -> Result<PolicyEngine, PolicyError> {
        Self::load_sources(&[(INLINE_SOURCE, policy_text)], catalog)
    }

    /// Loads every `.cedar` file among `paths`; a directory contributes its
    /// `.cedar` files (not recursively) in name order.
    ///
    /// Policy ids come from `@id("...")`, else `FILE:N` (file name, position from 0).
    pub fn load_files<P: AsRef<Path>>(
        paths: &[P],
        catalog: TopicCatalog,
    ) -> Result<PolicyEngine, PolicyError> {
        let mut files: Vec<PathBuf> = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let io = |source| PolicyError::Io {
                path: p.to_path_buf(),
                source,
            };
            if p.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(io)?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io)?
                    .into_iter()
                    .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "cedar"))
                    .collect();
                if found.is_empty() {
                    return Err(PolicyError::NoPolicyFiles {
                        path: p.to_path_buf(),
                    });
                }
                found.sort();
                files.extend(found);
            } else {
                files.push(p.to_path_buf());
            }
        }
        let mut texts = Vec::with_capacity(files.len());
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|source| PolicyError::Io {
                path: f.clone(),
                source,
            })?;
            let name = f.file_name().map_or_else(
                || f.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            texts.push((name, text));
        }
        let sources: Vec<(&str, &str)> = texts
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        Self::load_sources(&sources, catalog)
    }

    /// Loads named policy sources (`(name, text)`), as [`load_files`](Self::load_files) does.
    pub fn load_sources(
        sources: &[(&str, &str)],
        catalog: TopicCatalog,
    ) -> Result<PolicyEngine, PolicyError> {
        let schema = schema()?;
        let sources: Vec<Source<'_>> = sources
            .iter()
            .map(|(name, text)| Source { name, text })
            .collect();

        let mut combined = PolicySet::new();
        let mut policy_ids = Vec::new();
        // id → (source index, `file:N`) for error locations and duplicate reports.
        let mut origin: HashMap<String, (usize, String)> = HashMap::new();
        let mut parse_problems = Vec::new();

        for (si, src) in sources.iter().enumerate() {
            let set = match PolicySet::from_str(src.text) {
                Ok(set) => set,
                Err(errs) => {
                    parse_problems.extend(errs.iter().map(|e| problem(None, src, e)));
                    continue;
                }
            };
            if let Some(t) = set.templates().next() {
                return Err(PolicyError::Template {
                    origin: format!("{}:{}", src.name, generated_index(t.id()).unwrap_or(0)),
                });
            }
            // Cedar names the policies `policyN` in source order; sort by N so
            // `file:N` ids are positions, whatever the set's iteration order.
            let mut parsed: Vec<_> = set
                .policies()
                .map(|p| (generated_index(p.id()).unwrap_or(usize::MAX), p))
                .collect();
            parsed.sort_by_key(|(i, _)| *i);
            for (index, policy) in parsed {
                let here = format!("{}:{}", src.name, index);
                let id = policy
                    .annotation("id")
                    .map_or_else(|| here.clone(), str::to_string);
                if let Some((_, first)) = origin.get(&id) {
                    return Err(PolicyError::DuplicateId {
                        id,
                        first: first.clone(),
                        second: here,
                    });
                }
                combined
                    .add(policy.new_id(PolicyId::new(&id)))
                    .map_err(|e| PolicyError::DuplicateId {
                        id: id.clone(),
                        first: e.to_string(),
                        second: here.clone(),
                    })?;
                origin.insert(id.clone(), (si, here));
                policy_ids.push(id);
            }
        }
        if !parse_problems.is_empty() {
            return Err(PolicyError::Parse(parse_problems));
        }

        let validation = Validator::new(schema.clone()).validate(&combined, ValidationMode::Strict);
        let problems: Vec<PolicyProblem> = validation
            .validation_errors()
            .map(|e| {
                let id = id_str(e.policy_id()).to_string();
                match origin.get(&id) {
                    Some((si, _)) => problem(Some(id), &sources[*si], e),
                    None => PolicyProblem {
                        policy_id: Some(id),
                        location: None,
                        message: e.to_string(),
                    },
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(PolicyError::Validation(problems));
        }

        let warnings = validation
            .validation_warnings()
            .map(|w| {
                let id = id_str(w.policy_id()).to_string();
                match origin.get(&id) {
                    Some((si, _)) => problem(Some(id), &sources[*si], w),
                    None => PolicyProblem {
                        policy_id: Some(id),
                        location: None,
                        message: w.to_string(),
                    },
                }
            })
            .collect();
        let hash = content_hash(&sources, &catalog);
        let mut engine = Self::build(combined, policy_ids, catalog, hash, schema)?;
        engine.warnings = warnings;
        Ok(engine)
    }

    fn build(
        policies: PolicySet,
        policy_ids: Vec<String>,
        catalog: TopicCatalog,
        hash: String,
        schema: &Schema,
    ) -> Result<PolicyEngine, PolicyError> {
        let types = Types::new()?;
        let action_type =
            EntityTypeName::from_str("Action").map_err(|e| PolicyError::Schema(e.to_string()))?;
        let actions: Vec<EntityUid> = Action::all()
            .map(|a| {
                EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str()))
            })
            .collect();
        let cluster =
            EntityUid::from_type_name_and_id(types.cluster.clone(), EntityId::new(CLUSTER_NAME));
        let cluster_entity = Entity::new(
            cluster.clone(),
            HashMap::from([
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(CLUSTER_NAME.to_string()),
                ),
                ("tags".to_string(), RestrictedExpression::new_set([])),
            ]),
            HashSet::new(),
        )
        .map_err(|e| PolicyError::Schema(e.to_string()))?;
        // Checks the cluster entity against the schema once, here.
        Entities::from_entities([cluster_entity.clone()], Some(schema))
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        let hierarchy = schema
            .action_entities()
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        // Two placeholders, added then removed: a map keeps its capacity.
        let placeholders: Vec<Entity> = (0..2)
            .map(|i| {
                Entity::new_no_attrs(
                    EntityUid::from_type_name_and_id(
                        types.cluster.clone(),
                        EntityId::new(format!("custos-capacity-{i}")),
                    ),
                    HashSet::new(),
                )
            })
            .collect();
        let base_stores = actions
            .iter()
            .map(|uid| {
                let action = hierarchy.get(uid).map(shared).ok_or_else(|| {
                    PolicyError::Schema(format!("action {uid} is not in the schema"))
                })?;
                let schema_error = |e: cedar_policy_core::entities::err::EntitiesError| {
                    PolicyError::Schema(e.to_string())
                };
                CoreEntities::new()
                    .add_entities(
                        [action, shared(&cluster_entity)]
                            .into_iter()
                            .chain(placeholders.iter().map(shared)),
                        None::<&NoEntitiesSchema>,
                        TCComputation::AssumeAlreadyComputed,
                        Extensions::all_available(),
                    )
                    .map_err(schema_error)?
                    .remove_entities(
                        placeholders.iter().map(|p| p.uid().as_ref().clone()),
                        TCComputation::AssumeAlreadyComputed,
                    )
                    .map_err(schema_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let in_order: Vec<&cedar_policy::Policy> = policy_ids
            .iter()
            .filter_map(|id| policies.policy(&PolicyId::new(id)))
            .collect();
        let index = PolicyIndex::build(&in_order, &actions, &hierarchy);
        Ok(PolicyEngine {
            index,
            policies,
            policy_ids,
            warnings: Vec::new(),
            catalog,
            hash,
            generation: 0,
            types,
            actions,
            base_stores,
            cluster,
            resources: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// SHA-256 (lower-case hex) of the policy sources (names and texts, in
    /// load order) and the catalog: what audit records cite as "the policy".
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The [`Authorizer`](crate::Authorizer) generation this engine was
    /// installed as (0 for an engine not installed by one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Policy ids, in load order.
    pub fn policy_ids(&self) -> &[String] {
        &self.policy_ids
    }

    /// Validator warnings (e.g. a policy that can never match); the policies
    /// load anyway, as Cedar intends, but an operator should see these.
    pub fn warnings(&self) -> &[PolicyProblem] {
        &self.warnings
    }

    /// The validated policies.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The topic catalog.
    pub fn catalog(&self) -> &TopicCatalog {
        &self.catalog
    }

    /// Whether some permit policy could grant `principal` the `action` on at
    /// least one topic: Kafka's "authorize by resource type", which lets an
    /// idempotent producer in when it may write to any topic at all. An
    /// over-approximation (conditions are not evaluated), as Kafka's is.
    pub fn may_permit_on_some_topic(&self, principal: &Principal, action: Action) -> bool {
        let probe = Resource::Topic(String::new());
        let Ok(prepared) = self.request(principal, action, &probe, &RequestContext::default())
        else {
            return false;
        };
        self.index
            .candidates(
                action,
                resource_type_index(&probe),
                &prepared.principal.uid,
                &prepared.principal.groups,
            )
            .sets
            .iter()
            .any(|set| set.iter().any(|p| p.effect == cedar_policy::Effect::Permit))
    }

    /// Decides whether `principal` may perform `action` on `resource`.
    ///
    /// Deny by default: allowed only if some permit matches, no forbid
    /// matches, and no policy fails to evaluate. Counting an evaluation error
    /// as a deny means a forbid that errors can never let a permit through.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: impl Into<Action>,
        resource: &Resource,
        ctx: &RequestContext,
    ) -> Decision {
        let action = action.into();
        if action == Action::Decrypt && !matches!(resource, Resource::Topic(_)) {
            return Decision::deny_with_error(format!(
                "Decrypt applies to topics only, not to a {}",
                resource.type_name()
            ));
        }
        let Prepared {
            request,
            entities,
            principal: parts,
        } = match self.request(principal, action, resource, ctx) {
            Ok(r) => r,
            Err(e) => return Decision::deny_with_error(e),
        };
        let candidates = self.index.candidates(
            action,
            resource_type_index(resource),
            &parts.uid,
            &parts.groups,
        );
        // Evaluate each candidate's condition and combine as Cedar combines
        // one set: any satisfied forbid denies; else any satisfied permit
        // allows; else deny. Cedar's `Authorizer` does the same loop, but
        // through its partial-evaluation response (vectors of every policy's
        // outcome, annotations cloned, then converted); this loop is most of
        // a decision, so it runs Cedar's evaluator directly. The test
        // `index_gives_the_same_decisions_as_the_whole_set` holds it to the
        // `Authorizer`'s answers, errors included.
        let eval = Evaluator::new(
            AsRef::<cedar_policy_core::ast::Request>::as_ref(&request).clone(),
            entities.as_ref(),
            Extensions::all_available(),
        );
        let slots = SlotEnv::new();
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        let mut errors = Vec::new();
        for policy in candidates.sets.into_iter().flatten() {
            match eval.interpret(&policy.condition, &slots) {
                Ok(v) => match v.value_kind() {
                    ValueKind::Lit(Literal::Bool(true)) => match policy.effect {
                        cedar_policy::Effect::Permit => permits.push(policy.id.clone()),
                        cedar_policy::Effect::Forbid => forbids.push(policy.id.clone()),
                    },
                    ValueKind::Lit(Literal::Bool(false)) => {}
                    // A condition is `scope && clauses`, which is boolean
                    // or an error; anything else is a Cedar bug, and denies.
                    _ => errors.push(format!(
                        "error while evaluating policy `{}`: condition is not a boolean",
                        policy.display_id
                    )),
                },
                Err(e) => errors.push(format!(
                    "error while evaluating policy `{}`: {e}",
                    policy.display_id
                )),
            }
        }
        let allowed = forbids.is_empty() && !permits.is_empty() && errors.is_empty();
        let mut determining_policies = if forbids.is_empty() { permits } else { forbids };
        determining_policies.sort_unstable();
        Decision {
            allowed,
            determining_policies,
            errors,
        }
    }

    /// The decision of the whole policy set, without the index: the
    /// reference the index is tested against.
    #[cfg(test)]
    pub(crate) fn authorize_unindexed(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        ctx: &RequestContext,
    ) -> Decision {
        let Prepared {
            request, entities, ..
        } = match self.request(principal, action, resource, ctx) {
            Ok(r) => r,
            Err(e) => return Decision::deny_with_error(e),
        };
        // The full store: every action of the schema, not just the requested one.
        let entities = schema()
            .and_then(|s| {
                Entities::from_entities(
                    entities
                        .iter()
                        .filter(|e| e.uid().type_name().to_string() != "Action")
                        .cloned(),
                    Some(s),
                )
                .map_err(|e| PolicyError::Schema(e.to_string()))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let response =
            cedar_policy::Authorizer::new().is_authorized(&request, &self.policies, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        let mut determining_policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id_str(id).to_string())
            .collect();
        determining_policies.sort_unstable();
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow && errors.is_empty(),
            determining_policies,
            errors,
        }
    }

    /// The Cedar request and entities for one decision.
    pub(crate) fn request(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
        ctx: &RequestContext,
    ) -> Result<Prepared, String> {
        let parts = cached_principal(principal, |p| self.principal_entity(p));
        let (r_uid, r_entity) = self.resource_entity(resource)?;
        let context = if action == Action::Decrypt {
            decrypt_context(ctx)?
        } else {
            cached_context(ctx)?
        };
        // Only the entities a policy can reach: the principal (its groups are
        // its ancestors, so `in Group::"g"` needs no Group entity), the
        // resource, the cluster, and the requested action (`in` needs only
        // its ancestors). The public API recomputes the transitive closure
        // of every store it builds, which was a third of a decision; this
        // store is closed by construction (the principal's ancestors are its
        // groups and no Group entity is in it, the resource and cluster have
        // none, the action's come closed from the schema), so it is built
        // through Cedar's core with that computation skipped. The unit test
        // `request_entities_and_context_conform_to_the_schema` rebuilds it the
        // checked way.
        let store = self.base_stores[action.index()]
            .clone()
            .add_entities(
                std::iter::once(Arc::clone(&parts.entity)).chain(r_entity),
                None::<&NoEntitiesSchema>,
                TCComputation::AssumeAlreadyComputed,
                Extensions::all_available(),
            )
            .map_err(|e| format!("cannot build request entities: {e}"))?;
        let action_uid = self.actions[action.index()].clone();
        let request = Request::new(parts.uid.clone(), action_uid, r_uid, context, None)
            .map_err(|e| format!("cannot build request: {e}"))?;
        Ok(Prepared {
            request,
            entities: Entities::from(store),
            principal: parts,
        })
    }

    /// The principal's uid, entity, and group uids (deduplicated).
    fn principal_entity(&self, p: &Principal) -> PrincipalParts {
        let ty = match p.kind {
            PrincipalKind::User => &self.types.user,
            PrincipalKind::ServiceAccount => &self.types.service_account,
        };
        let uid = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(&p.name));
        let mut groups: Vec<EntityUid> = Vec::with_capacity(p.groups.len());
        for g in &p.groups {
            let uid = EntityUid::from_type_name_and_id(self.types.group.clone(), EntityId::new(g));
            // A repeated group would make the index evaluate its policies twice.
            if !groups.contains(&uid) {
                groups.push(uid);
            }
        }
        // Built as Cedar's core holds it: its attribute is a plain string, so
        // there is nothing for `Entity::new` to evaluate, and no copy to make.
        let ast_uid = |u: &EntityUid| AsRef::<cedar_policy_core::ast::EntityUID>::as_ref(u).clone();
        let entity = cedar_policy_core::ast::Entity::new_with_attr_partial_value(
            ast_uid(&uid),
            [("name".into(), Value::from(p.name.as_str()).into())],
            HashSet::new(),
            groups.iter().map(ast_uid).collect(),
            [],
        );
        PrincipalParts {
            uid,
            entity: Arc::new(entity),
            groups,
        }
    }

    /// The resource's uid, and its entity unless it is the prebuilt cluster.
    fn resource_entity(&self, r: &Resource) -> Result<(EntityUid, Option<SharedEntity>), String> {
        if matches!(r, Resource::Cluster) {
            return Ok((self.cluster.clone(), None));
        }
        // A poisoned lock only means a panic mid-insert; the map is still a map.
        let lock = || {
            self.resources
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((uid, entity)) = lock().get(r) {
            return Ok((uid.clone(), Some(Arc::clone(entity))));
        }
        let (uid, entity) = self.build_resource_entity(r)?;
        let entity = entity.as_ref().map(shared);
        if let Some(e) = &entity {
            let mut cache = lock();
            if cache.len() >= RESOURCE_CACHE_MAX {
                cache.clear();
            }
            cache.insert(r.clone(), (uid.clone(), Arc::clone(e)));
        }
        Ok((uid, entity))
    }

    fn build_resource_entity(&self, r: &Resource) -> Result<(EntityUid, Option<Entity>), String> {
        let ty = match r {
            Resource::Topic(_) => &self.types.topic,
            Resource::Group(_) => &self.types.consumer_group,
            Resource::TransactionalId(_) => &self.types.transactional_id,
            Resource::Cluster => return Ok((self.cluster.clone(), None)),
        };
        let name = r.name();
        let uid = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(name));
        let mut attrs = HashMap::with_capacity(4);
        attrs.insert(
            "name".to_string(),
            RestrictedExpression::new_string(name.to_string()),
        );
        if !matches!(r, Resource::Topic(_)) {
            attrs.insert("tags".to_string(), RestrictedExpression::new_set([]));
        }
        if let Resource::Topic(topic) = r {
            let info = self.catalog.lookup(topic);
            attrs.insert(
                "tags".to_string(),
                RestrictedExpression::new_set(
                    info.tags
                        .iter()
                        .map(|t| RestrictedExpression::new_string((*t).to_string())),
                ),
            );
            if let Some(owner) = info.owner {
                attrs.insert(
                    "owner".to_string(),
                    RestrictedExpression::new_string(owner.to_string()),
                );
            }
            if let Some(c) = info.classification {
                attrs.insert(
                    "classification".to_string(),
                    RestrictedExpression::new_string(c.to_string()),
                );
            }
        }
        let entity = Entity::new(uid.clone(), attrs, HashSet::new())
            .map_err(|e| format!("cannot build resource entity: {e}"))?;
        Ok((uid, Some(entity)))
    }
}

/// A policy id as written in its `@id` annotation. `PolicyId`'s `Display`
/// escapes it (and costs a formatter run per decision).
pub(crate) fn id_str(id: &PolicyId) -> &str {
    <PolicyId as AsRef<str>>::as_ref(id)
}

/// The key of a request context: its fields, with time in whole seconds.
#[derive(Clone, PartialEq, Eq)]
struct ContextKey {
    client_address: std::net::IpAddr,
    tls: bool,
    client_id: Option<String>,
    auth_method: crate::AuthMethod,
    time: i64,
}

/// Contexts and principals remembered per thread. A worker thread serves
/// many connections in turn; building a Cedar context is a third of an
/// uncached decision, so the last few are kept, not just the last one.
const RECENT: usize = 8;

/// The last few values built on one thread, newest first.
struct Recent<K, V>(Vec<(K, V)>);

impl<K, V: Clone> Recent<K, V> {
    const fn new() -> Self {
        Recent(Vec::new())
    }

    fn get(&mut self, hit: impl Fn(&K) -> bool) -> Option<V> {
        let at = self.0.iter().position(|(k, _)| hit(k))?;
        // Move it to the front, so the busiest connections stay.
        self.0[..=at].rotate_right(1);
        Some(self.0[0].1.clone())
    }

    fn put(&mut self, key: K, value: V) {
        if self.0.len() == RECENT {
            self.0.pop();
        }
        self.0.insert(0, (key, value));
    }
}

thread_local! {
    // Contexts and principals built on this thread. Both are the same for
    // every engine, so reloads need not clear them. A `Context` clone is one
    // `Arc` clone.
    static CONTEXTS: std::cell::RefCell<Recent<ContextKey, Context>> =
        const { std::cell::RefCell::new(Recent::new()) };
    static PRINCIPALS: std::cell::RefCell<Recent<Principal, Arc<PrincipalParts>>> =
        const { std::cell::RefCell::new(Recent::new()) };
}

/// A principal's uid, entity, and deduplicated group uids.
pub(crate) struct PrincipalParts {
    pub(crate) uid: EntityUid,
    entity: SharedEntity,
    pub(crate) groups: Vec<EntityUid>,
}

fn cached_principal(
    principal: &Principal,
    build: impl FnOnce(&Principal) -> PrincipalParts,
) -> Arc<PrincipalParts> {
    if let Some(hit) = PRINCIPALS.with_borrow_mut(|recent| recent.get(|p| p == principal)) {
        return hit;
    }
    let parts = Arc::new(build(principal));
    PRINCIPALS.with_borrow_mut(|recent| recent.put(principal.clone(), Arc::clone(&parts)));
    parts
}

fn cached_context(ctx: &RequestContext) -> Result<Context, String> {
    let key = ContextKey {
        client_address: ctx.client_address,
        tls: ctx.tls,
        client_id: None,
        auth_method: ctx.auth_method,
        time: unix_seconds(ctx.time),
    };
    let hit = CONTEXTS.with_borrow_mut(|recent| {
        recent.get(|k| {
            k.client_address == key.client_address
                && k.tls == key.tls
                && k.client_id == ctx.client_id
                && k.auth_method == key.auth_method
                && k.time == key.time
        })
    });
    if let Some(c) = hit {
        return Ok(c);
    }
    let context = context_from(context_values(ctx, key.time)?);
    CONTEXTS.with_borrow_mut(|recent| {
        recent.put(
            ContextKey {
                client_id: ctx.client_id.clone(),
                ..key
            },
            context.clone(),
        );
    });
    Ok(context)
}

/// Attribute name to Cedar value: the record a context is.
type ContextValues = std::collections::BTreeMap<smol_str::SmolStr, Value>;

/// The attributes of `RequestContext` in the schema, as Cedar values.
///
/// Built directly, not with `Context::from_pairs`, which evaluates an
/// expression per attribute and was a third of an uncached decision. The
/// test `context_values_are_what_cedar_builds` holds the two equal.
pub(crate) fn context_values(ctx: &RequestContext, time: i64) -> Result<ContextValues, String> {
    // Java (and so Kafka's ACL host match) presents IPv4-mapped IPv6
    // peers as IPv4; do the same so one address has one spelling.
    let address = ctx.client_address.to_canonical().to_string();
    Ok(ContextValues::from([
        ("client_ip".into(), ip_value(&address)?),
        ("client_address".into(), Value::from(address)),
        ("tls".into(), Value::from(ctx.tls)),
        (
            "client_id".into(),
            Value::from(ctx.client_id.as_deref().unwrap_or_default()),
        ),
        ("auth_method".into(), Value::from(ctx.auth_method.as_str())),
        ("time".into(), Value::from(time)),
    ]))
}

/// A Cedar context holding `values`.
fn context_from(values: ContextValues) -> Context {
    Context::from(cedar_policy_core::ast::Context::Value(Arc::new(values)))
}

/// The `DecryptContext` of a Decrypt decision: the request context plus the
/// classification of the protected data ("" when the rule names none).
/// Built fresh each time: Decrypt decisions are few (one per topic per
/// connection, then cached), so the per-thread cache is left to the others.
pub(crate) fn decrypt_context(ctx: &RequestContext) -> Result<Context, String> {
    let mut values = context_values(ctx, unix_seconds(ctx.time))?;
    values.insert(
        "classification".into(),
        Value::from(ctx.classification.as_deref().unwrap_or_default()),
    );
    Ok(context_from(values))
}

/// Whole seconds since the Unix epoch (negative before it).
fn unix_seconds(time: std::time::SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The Cedar value of `ip("address")`, cached per thread: building it
/// parses the name `ip` with Cedar's full parser and calls the extension.
fn ip_value(address: &str) -> Result<Value, String> {
    // Bounded: a proxy sees many client addresses; 4096 is plenty for the
    // connections one worker thread serves at once.
    const MAX: usize = 4096;
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<String, Value>> =
            std::cell::RefCell::new(HashMap::new());
    }
    if let Some(v) = CACHE.with_borrow(|cache| cache.get(address).cloned()) {
        return Ok(v);
    }
    let expr = RestrictedExpression::new_ip(address);
    let value = RestrictedEvaluator::new(Extensions::all_available())
        .interpret(AsRef::<cedar_policy_core::ast::RestrictedExpr>::as_ref(&expr).as_borrowed())
        .map_err(|e| format!("cannot build request context: client address {address}: {e}"))?;
    CACHE.with_borrow_mut(|cache| {
        if cache.len() >= MAX {
            cache.clear();
        }
        cache.insert(address.to_string(), value.clone());
    });
    Ok(value)
}

/// Position of the resource's type in [`crate::index::RESOURCE_TYPES`].
fn resource_type_index(r: &Resource) -> usize {
    match r {
        Resource::Topic(_) => 0,
        Resource::Group(_) => 1,
        Resource::TransactionalId(_) => 2,
        Resource::Cluster => 3,
    }
}

/// N of Cedar's generated id `policyN`.
fn generated_index(id: &PolicyId) -> Option<usize> {
    id.to_string().strip_prefix("policy")?.parse().ok()
}

/// A problem from a Cedar diagnostic, located in `src` by its first label.
fn problem(policy_id: Option<String>, src: &Source<'_>, d: &dyn Diagnostic) -> PolicyProblem {
    let location = d
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| SourceLocation::at(src.name, src.text, l.offset()));
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message.push_str(&format!(" ({help})"));
    }
    PolicyProblem {
        policy_id,
        location,
        message,
    }
}

/// SHA-256 over the sources and catalog, each length-prefixed so that no two
/// different inputs concatenate to the same bytes.
fn content_hash(sources: &[Source<'_>], catalog: &TopicCatalog) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"custos-policy-v1");
    for s in sources {
        field(s.name.as_bytes());
        field(s.text.as_bytes());
    }
    // Serialising a Vec of plain structs cannot fail; an empty string would
    // still hash deterministically if it did.
    let catalog_json = serde_json::to_string(catalog).unwrap_or_default();
    field(catalog_json.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
