//! The policy host: WebAssembly components (the `wit/` world) decide for each manifest whether
//! to admit it, reject it, or have the host verify it natively first.
//!
//! Each module is compiled once (cached on disk by module digest and engine), instantiated
//! from one `InstancePre` into a fresh `Store` per evaluation, with WASI denied by default (no
//! filesystem, network, environment; clocks and random allowed), a CPU-time budget (checked at epoch ticks) and a memory cap. A module
//! that traps, times out or runs out of memory fails closed: its decision is a rejection naming
//! the failure.
//!
//! Layout: `host` (the host calls and per-evaluation state), `wasi` (the deny-by-default WASI),
//! `convert` (proxy types to WIT types), `v1` (modules of the 0.1.0 world), `budget` and
//! `ticker` (CPU time), `audit` (the decision log), [`oci`] (modules pulled from a registry and
//! verified), [`publish`] (`policy push`), `standalone` (`policy test` and `bench`), `scaffold`
//! (`policy new`).

mod audit;
mod budget;
mod convert;
mod host;
pub mod oci;
pub mod publish;
mod scaffold;
mod standalone;
mod ticker;
mod v1;
mod wasi;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};

use crate::attachments::{AttachmentSet, Attachments};
use crate::auth::glob_match;
use crate::cache::Cache;
use crate::config::{Config, ModuleSource, PolicyConfig, PolicyMode};
use crate::error::{Code, RegistryError, Result};
use crate::metrics::{Failure, Metrics, PolicyMetrics};
use crate::verify::{TrustStore, Verifier};
pub use audit::Audit;
pub use budget::Budget;
pub use host::{CallContext, State};
pub use scaffold::{new_project, Lang};
pub use standalone::{bench, test_module, Standalone, TestAttachment, TestRequest};

wasmtime::component::bindgen!({ world: "policy", path: "wit" });

/// How often the engine's epoch advances (the granularity of timeouts).
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The epoch ticks to wait before looking at a budget again, with `left` of it unspent.
fn ticks(left: Duration) -> u64 {
    (left.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// What is being decided on: one manifest, as asked for by one client.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    /// Pull or push.
    pub push: bool,
    /// The namespace (upstream or local).
    pub namespace: String,
    /// The repository.
    pub repository: String,
    /// The reference as the client asked for it.
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its bytes (parsed for the request's manifest essentials).
    #[serde(skip)]
    pub manifest: bytes::Bytes,
    /// The image an attachment manifest attaches to.
    pub attaches_to: Option<String>,
    /// The client's IP address.
    pub client: String,
    /// The signed-in user.
    pub user: Option<String>,
    /// The client's User-Agent.
    pub user_agent: Option<String>,
}

/// One policy's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Admitted.
    Admit,
    /// Rejected, with the reason.
    Reject(String),
}

/// A loaded policy module.
struct Loaded {
    config: PolicyConfig,
    digest: String,
    settings: String,
    settings_hash: String,
    pre: Pre,
    metrics: PolicyMetrics,
    /// What ran, for the audit log: `sha256:<module digest>`, or where a module pulled from a
    /// registry was pinned (`oci://<namespace>/<repository>@<manifest digest>`).
    origin: String,
}

/// A module ready to instantiate, by the version of the world it was built for.
enum Pre {
    /// `portcullis:policy@0.2.0`.
    Current(PolicyPre<State>),
    /// `portcullis:policy@0.1.0`.
    V1(v1::PolicyPre<State>),
}

impl Pre {
    /// Readies `component` for the version of the world it imports.
    fn new(linker: &Linker<State>, engine: &Engine, component: &Component) -> anyhow::Result<Pre> {
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)?;
        let old = component
            .component_type()
            .imports(engine)
            .any(|(name, _)| name.starts_with(v1::PACKAGE) && name.ends_with(v1::VERSION));
        Ok(if old {
            Pre::V1(v1::PolicyPre::new(instance_pre).map_err(anyhow::Error::from)?)
        } else {
            Pre::Current(PolicyPre::new(instance_pre).map_err(anyhow::Error::from)?)
        })
    }

    /// The module's metadata and its verdict on `settings`, in a fresh instance.
    fn validate(
        &self,
        store: &mut Store<State>,
        settings: &str,
    ) -> wasmtime::Result<(PolicyMetadata, std::result::Result<(), String>)> {
        match self {
            Pre::Current(pre) => {
                let instance = pre.instantiate(&mut *store)?;
                let meta = instance.call_metadata(&mut *store)?;
                Ok((
                    meta,
                    instance.call_validate_settings(&mut *store, settings)?,
                ))
            }
            Pre::V1(pre) => {
                let instance = pre.instantiate(&mut *store)?;
                let meta = v1::metadata(instance.call_metadata(&mut *store)?);
                Ok((
                    meta,
                    instance.call_validate_settings(&mut *store, settings)?,
                ))
            }
        }
    }

    /// The module's decision on `request`, in a fresh instance.
    fn evaluate(
        &self,
        store: &mut Store<State>,
        request: &Request,
        settings: &str,
    ) -> wasmtime::Result<Decision> {
        match self {
            Pre::Current(pre) => {
                pre.instantiate(&mut *store)?
                    .call_evaluate(&mut *store, request, settings)
            }
            Pre::V1(pre) => {
                let request = v1::request(request);
                let decision =
                    pre.instantiate(&mut *store)?
                        .call_evaluate(&mut *store, &request, settings)?;
                Ok(v1::decision(decision))
            }
        }
    }
}

/// The policies of one configuration, compiled and validated.
pub struct PolicySet {
    policies: Vec<Arc<Loaded>>,
}

/// The engine, the loaded set (replaced on reload) and the decision cache.
pub struct Policies {
    engine: Engine,
    set: RwLock<Arc<PolicySet>>,
    cache_dir: PathBuf,
    permits: Arc<tokio::sync::Semaphore>,
    decisions: moka::sync::Cache<[u8; 32], Outcome>,
    verifier: Arc<Verifier>,
    attachments: Arc<Attachments>,
    cache: Arc<Cache>,
    trust: RwLock<Arc<TrustStore>>,
    audit: Audit,
    wait: Duration,
    max_memory: usize,
}

/// Builds the engine: component model, epoch interruption, pooling allocator for `concurrency`
/// instances of at most `max_memory` bytes each.
pub fn engine(concurrency: u32, max_memory: usize) -> anyhow::Result<Engine> {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    cfg.memory_reservation(max_memory as u64);
    cfg.memory_guard_size(64 << 10);
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(concurrency)
        .total_core_instances(concurrency * 32)
        .total_memories(concurrency * 4)
        .total_tables(concurrency * 32)
        .max_memory_size(max_memory);
    cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&cfg)?;
    ticker::register(&engine)?;
    Ok(engine)
}

/// Compiles a module (`bytes`, read from `label`), reusing a compiled copy cached under
/// `cache_dir` keyed by the module's digest and the engine's compatibility hash.
pub fn compile(
    engine: &Engine,
    bytes: &[u8],
    label: &str,
    cache_dir: &Path,
) -> anyhow::Result<(Component, String)> {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    let compat = std::hash::Hasher::finish(&hasher);
    let cached = cache_dir.join(format!("{digest}-{compat:016x}.cwasm"));
    if cached.exists() {
        // SAFETY: the file was written by `precompile_component` of an engine with the same
        // compatibility hash, into a directory only its owner writes (the proxy's storage, or
        // the private cache of `policy test`).
        if let Ok(c) = unsafe { Component::deserialize_file(engine, &cached) } {
            return Ok((c, digest));
        }
    }
    let compiled = engine
        .precompile_component(bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{label} is not a valid policy component"))?;
    std::fs::create_dir_all(cache_dir).ok();
    let tmp = cache_dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    if std::fs::write(&tmp, &compiled)
        .and_then(|_| std::fs::rename(&tmp, &cached))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
    // SAFETY: produced just now by this engine.
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    Ok((component, digest))
}

/// A linker with the host interface (current and 0.1.0) and WASI denied by default (see
/// [`wasi`]).
fn linker(engine: &Engine) -> anyhow::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    Policy::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    v1::Policy::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Loads every `[[policy]]`: compiles it, asks its metadata and validates its settings.
/// Modules from a registry come pulled and verified in `pulled` (see [`oci::pull_all`]).
pub fn load_set(
    engine: &Engine,
    configs: &[PolicyConfig],
    cache_dir: &Path,
    metrics: Option<&Metrics>,
    pulled: &HashMap<String, oci::Pulled>,
) -> anyhow::Result<PolicySet> {
    let mut policies = Vec::new();
    for c in configs {
        let settings =
            serde_json::to_string(&c.settings).context("settings are not representable as JSON")?;
        let counted = metrics.map(|m| m.policy(&c.name)).unwrap_or_default();
        let (bytes, origin) = match (&c.module, pulled.get(&c.name)) {
            (ModuleSource::File(path), _) => (
                std::fs::read(path).with_context(|| {
                    format!("policy {:?}: cannot read {}", c.name, path.display())
                })?,
                None,
            ),
            (ModuleSource::Oci { .. }, Some(p)) => (p.bytes.clone(), Some(p.pinned.clone())),
            (ModuleSource::Oci { .. }, None) => {
                anyhow::bail!("policy {:?}: {} was not pulled", c.name, c.module)
            }
        };
        policies.push(Arc::new(load_one(
            engine,
            c.clone(),
            settings,
            cache_dir,
            counted,
            (&bytes, origin),
        )?));
    }
    Ok(PolicySet { policies })
}

/// The largest `memory` of the policies, if any.
fn largest_memory(policies: &[PolicyConfig]) -> Option<usize> {
    policies.iter().map(|p| p.memory.0 as usize).max()
}

/// Where compiled modules are kept: `compiled_cache` under the storage path.
fn compiled_cache(config: &Config) -> PathBuf {
    config.storage.path.join(&config.policy_host.compiled_cache)
}

/// Loads every policy of `config` as the proxy would, for `portcullis check`: modules from a
/// registry are pulled (through the proxy's storage, shared with a running proxy) and verified.
pub fn check(config: &Config) -> anyhow::Result<()> {
    if config.policies.is_empty() {
        return Ok(());
    }
    let engine = engine(1, largest_memory(&config.policies).unwrap_or(64 << 20))?;
    let cache_dir = compiled_cache(config);
    let pulled = if oci::any(&config.policies) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let services = crate::server::services(config, true).await?;
            let verifier = Verifier::new(
                Arc::clone(&services.cache),
                services.attachments,
                config.policy_host.attachment_wait.0,
            );
            let trust = trust_store(config)?;
            oci::pull_all(&config.policies, &services.cache, &verifier, &trust).await
        })?
    } else {
        HashMap::new()
    };
    load_set(&engine, &config.policies, &cache_dir, None, &pulled)?;
    Ok(())
}

/// Pulls and verifies the `oci://` modules of `config` through `cache` (none: nothing to do).
fn pull_modules(
    config: &Config,
    cache: &Arc<Cache>,
    verifier: &Arc<Verifier>,
    trust: &TrustStore,
) -> anyhow::Result<HashMap<String, oci::Pulled>> {
    if !oci::any(&config.policies) {
        return Ok(HashMap::new());
    }
    let runtime = tokio::runtime::Handle::try_current()
        .context("pulling policy modules needs the proxy's runtime")?;
    runtime.block_on(oci::pull_all(&config.policies, cache, verifier, trust))
}

fn load_one(
    engine: &Engine,
    config: PolicyConfig,
    settings: String,
    cache_dir: &Path,
    metrics: PolicyMetrics,
    (bytes, pinned): (&[u8], Option<String>),
) -> anyhow::Result<Loaded> {
    let context = || format!("policy {:?} ({})", config.name, config.module);
    let (component, digest) =
        compile(engine, bytes, &config.module.to_string(), cache_dir).with_context(context)?;
    let origin = pinned.unwrap_or_else(|| format!("sha256:{digest}"));
    let pre = Pre::new(&linker(engine).with_context(context)?, engine, &component)
        .with_context(context)?;
    let settings_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(settings.as_bytes()));
    let loaded = Loaded {
        config: config.clone(),
        digest,
        settings,
        settings_hash,
        pre,
        metrics,
        origin,
    };
    let (meta, valid) = loaded.validate(engine).with_context(context)?;
    if let Err(message) = valid {
        anyhow::bail!("{}: invalid settings: {message}", context());
    }
    tracing::info!(policy = %config.name, module = %meta.name, version = %meta.version, "policy loaded");
    Ok(loaded)
}

impl Loaded {
    fn store(&self, engine: &Engine, ctx: Arc<CallContext>) -> Store<State> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.memory.0 as usize)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            engine,
            State::new(limits, ctx, Budget::start(self.config.timeout.0)),
        );
        store.limiter(|s| &mut s.limits);
        // at each deadline: go on while CPU time is left (time spent waiting does not count)
        store.set_epoch_deadline(ticks(self.config.timeout.0));
        store.epoch_deadline_callback(|s| {
            Ok(match s.data().budget.remaining() {
                Some(left) => UpdateDeadline::Continue(ticks(left)),
                None => UpdateDeadline::Interrupt,
            })
        });
        store
    }

    /// Asks the module for its metadata and to validate its settings.
    fn validate(
        &self,
        engine: &Engine,
    ) -> anyhow::Result<(PolicyMetadata, std::result::Result<(), String>)> {
        let _running = ticker::running();
        let mut store = self.store(engine, Arc::new(CallContext::detached()));
        self.pre
            .validate(&mut store, &self.settings)
            .map_err(anyhow::Error::from)
    }

    /// Runs one evaluation (blocking: call from a blocking thread); its decision and the CPU
    /// time it used.
    fn evaluate(
        &self,
        engine: &Engine,
        ctx: Arc<CallContext>,
        request: &Request,
    ) -> (wasmtime::Result<Decision>, Duration) {
        let _running = ticker::running();
        let mut store = self.store(engine, ctx);
        let decision = self.pre.evaluate(&mut store, request, &self.settings);
        (decision, store.data().budget.used())
    }
}

impl Policies {
    /// Loads the configured policies (compiling each once) over the verifier.
    pub fn new(
        config: &Config,
        cache: Arc<Cache>,
        attachments: Arc<Attachments>,
        verifier: Arc<Verifier>,
    ) -> anyhow::Result<Arc<Policies>> {
        let host = &config.policy_host;
        let max_memory = largest_memory(&config.policies).unwrap_or(64 << 20);
        let engine = engine(host.concurrency, max_memory)?;
        let cache_dir = compiled_cache(config);
        let trust = trust_store(config)?;
        let pulled = pull_modules(config, &cache, &verifier, &trust)?;
        let set = load_set(
            &engine,
            &config.policies,
            &cache_dir,
            Some(cache.metrics()),
            &pulled,
        )?;
        Ok(Arc::new(Policies {
            engine,
            set: RwLock::new(Arc::new(set)),
            cache_dir,
            permits: Arc::new(tokio::sync::Semaphore::new(host.concurrency as usize)),
            decisions: moka::sync::Cache::builder()
                .weigher(|_, o: &Outcome| match o {
                    Outcome::Admit => DECISION_ENTRY_BYTES,
                    Outcome::Reject(r) => DECISION_ENTRY_BYTES
                        .saturating_add(u32::try_from(r.len()).unwrap_or(u32::MAX)),
                })
                .max_capacity(DECISION_CACHE_BYTES)
                .time_to_live(Duration::from_secs(600))
                .build(),
            verifier,
            attachments,
            cache,
            trust: RwLock::new(Arc::new(trust)),
            audit: Audit::open(&host.audit)?,
            wait: host.attachment_wait.0,
            max_memory,
        }))
    }

    /// Replaces the policies with a new configuration's and reopens the audit log; on any error
    /// the old ones stay.
    pub fn reload(&self, config: &Config) -> anyhow::Result<()> {
        let max_memory = largest_memory(&config.policies).unwrap_or(0);
        anyhow::ensure!(
            max_memory <= self.max_memory,
            "a policy's memory grew beyond what the running engine allows; restart to apply"
        );
        let trust = trust_store(config)?;
        let pulled = pull_modules(config, &self.cache, &self.verifier, &trust)?;
        let set = load_set(
            &self.engine,
            &config.policies,
            &self.cache_dir,
            Some(self.cache.metrics()),
            &pulled,
        )?;
        // the audit file is opened afresh, so that a rotated log is written anew
        self.audit.reopen(&config.policy_host.audit)?;
        *self.trust.write().expect("trust lock") = Arc::new(trust);
        *self.set.write().expect("policy lock") = Arc::new(set);
        // decisions and verdicts made under the old trust and policies apply no more
        self.decisions.invalidate_all();
        self.verifier.forget_verdicts();
        tracing::info!(policies = config.policies.len(), "policies reloaded");
        Ok(())
    }

    /// Writes an event that is not a policy decision to the audit log (see [`Audit::record_event`]).
    pub fn audit_event(&self, subject: &Subject, decision: &str, reason: &str) {
        self.audit.record_event(subject, decision, reason);
    }

    /// Whether any policy's scope covers `<namespace>/<repository>`.
    pub fn applies_to(&self, scope: &str) -> bool {
        self.set
            .read()
            .expect("policy lock")
            .policies
            .iter()
            .any(|p| p.config.scope.iter().any(|g| glob_match(g, scope)))
    }

    /// Decides on a manifest: every policy in scope must admit it. A rejection is `DENIED`
    /// with the policy's reason.
    pub async fn check(&self, subject: &Subject) -> Result<()> {
        let set = Arc::clone(&self.set.read().expect("policy lock"));
        let scope = format!("{}/{}", subject.namespace, subject.repository);
        let in_scope: Vec<&Arc<Loaded>> = set
            .policies
            .iter()
            .filter(|p| p.config.scope.iter().any(|g| glob_match(g, &scope)))
            .collect();
        if in_scope.is_empty() {
            return Ok(());
        }
        let repo = subject
            .repository
            .parse()
            .map_err(|_| RegistryError::internal("repository name"))?;
        let digest: crate::names::Digest = subject.digest.parse()?;
        let (attachments, unresolved) = if subject.attaches_to.is_some() {
            (Arc::new(AttachmentSet::default()), None)
        } else {
            match self
                .attachments
                .wait_for(&subject.namespace, &repo, &digest, self.wait)
                .await
            {
                Ok(set) => (set, None),
                Err(e) => {
                    tracing::warn!(digest = %subject.digest, error = %e.message, "deciding without attachments");
                    (Arc::new(AttachmentSet::default()), Some(e.message))
                }
            }
        };
        for policy in in_scope {
            let started = Instant::now();
            let (outcome, cpu) = self.decide(policy, subject, &attachments).await;
            let outcome = explain_unresolved(outcome, unresolved.as_deref());
            policy.metrics.decided(
                matches!(outcome, Outcome::Reject(_)),
                policy.config.mode == PolicyMode::Warn,
                cpu.is_none(),
            );
            self.audit.record(
                subject,
                &policy.config.name,
                &policy.origin,
                policy.config.mode,
                &outcome,
                started.elapsed(),
                cpu,
            );
            if let Outcome::Reject(reason) = outcome {
                if policy.config.mode == PolicyMode::Enforce {
                    return Err(RegistryError::of(
                        Code::Denied,
                        format!("policy {}: {reason}", policy.config.name),
                    ));
                }
                tracing::warn!(policy = %policy.config.name, %reason, "would reject (warn mode)");
            }
        }
        Ok(())
    }

    /// A policy's outcome, and the CPU time its module used (`None`: a cached decision).
    async fn decide(
        &self,
        policy: &Arc<Loaded>,
        subject: &Subject,
        attachments: &Arc<AttachmentSet>,
    ) -> (Outcome, Option<Duration>) {
        let key = decision_key(&policy.digest, &policy.settings_hash, subject, attachments);
        if let Some(o) = self.decisions.get(&key) {
            return (o, None);
        }
        // boxed: an evaluation's state is large, and a cached decision should not carry it
        let (outcome, cpu) = Box::pin(self.evaluate(policy, subject, attachments)).await;
        self.decisions.insert(key, outcome.clone());
        (outcome, Some(cpu))
    }

    /// Evaluates one policy (fail closed), then runs a `verify` decision's verification; the
    /// outcome and the CPU time the module used.
    async fn evaluate(
        &self,
        policy: &Arc<Loaded>,
        subject: &Subject,
        attachments: &Arc<AttachmentSet>,
    ) -> (Outcome, Duration) {
        let request = convert::request(subject, attachments);
        let ctx = Arc::new(self.call_context(subject, attachments));
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return (
                Outcome::Reject("policy host is shutting down".into()),
                Duration::ZERO,
            );
        };
        let (engine, loaded) = (self.engine.clone(), Arc::clone(policy));
        let started = Instant::now();
        let ran =
            tokio::task::spawn_blocking(move || loaded.evaluate(&engine, ctx, &request)).await;
        policy.metrics.latency.observe(started.elapsed());
        let (decision, cpu) = match ran {
            Ok((Ok(d), cpu)) => (d, cpu),
            Ok((Err(e), cpu)) => {
                let (kind, reason) = fail_closed(&policy.config.name, &e);
                policy.metrics.failed(kind);
                return (Outcome::Reject(bounded(reason)), cpu);
            }
            Err(e) => {
                return (
                    Outcome::Reject(format!("policy module failed: {e}")),
                    Duration::ZERO,
                )
            }
        };
        let outcome = match decision {
            Decision::Admit => Outcome::Admit,
            Decision::Reject(reason) => Outcome::Reject(bounded(reason)),
            Decision::Verify(_) if subject.attaches_to.is_some() => Outcome::Admit,
            Decision::Verify(reqs) => self.run_verification(subject, &reqs).await,
        };
        (outcome, cpu)
    }

    async fn run_verification(
        &self,
        subject: &Subject,
        reqs: &portcullis::policy::types::Requirements,
    ) -> Outcome {
        let trust = Arc::clone(&self.trust.read().expect("trust lock"));
        let requirement = match convert::requirement(reqs, &trust) {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e),
        };
        match host::verify_subject(&self.verifier, &self.cache, subject, &requirement).await {
            Ok(v) if v.ok => Outcome::Admit,
            Ok(v) => Outcome::Reject(format!("verification failed: {}", v.reason)),
            Err(e) => Outcome::Reject(format!("verification failed: {}", e.message)),
        }
    }

    fn call_context(&self, subject: &Subject, attachments: &Arc<AttachmentSet>) -> CallContext {
        CallContext {
            subject: Some(subject.clone()),
            attachments: Arc::clone(attachments),
            verifier: Some(Arc::clone(&self.verifier)),
            cache: Some(Arc::clone(&self.cache)),
            trust: Arc::clone(&self.trust.read().expect("trust lock")),
            runtime: tokio::runtime::Handle::try_current().ok(),
            calls: Default::default(),
        }
    }
}

/// A rejection made without the image's attachments (the upstream did not give them in time)
/// says so, unless its reason already does.
fn explain_unresolved(outcome: Outcome, unresolved: Option<&str>) -> Outcome {
    match (outcome, unresolved) {
        (Outcome::Reject(reason), Some(why)) if !reason.contains(why) => Outcome::Reject(format!(
            "{reason} (decided without the image's attachments: {why})"
        )),
        (outcome, _) => outcome,
    }
}

/// How a module failed (trap, timeout or memory) and the rejection reason for it.
fn fail_closed(name: &str, e: &wasmtime::Error) -> (Failure, String) {
    let text = format!("{e:#}");
    let (kind, why) = if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        match trap {
            wasmtime::Trap::Interrupt => (Failure::Timeout, "exceeded its timeout".to_string()),
            other => (Failure::Trap, format!("trapped: {other}")),
        }
    } else if text.contains("memory") {
        (
            Failure::Memory,
            format!("exceeded its memory limit: {text}"),
        )
    } else {
        (Failure::Trap, format!("failed: {text}"))
    };
    tracing::warn!(policy = %name, error = %text, "policy failed; rejecting");
    (kind, format!("policy module {why}"))
}

/// The most memory cached decisions may take (keys and reasons).
const DECISION_CACHE_BYTES: u64 = 16 << 20;

/// What one cached decision costs besides its reason: the key, the value and the cache's own
/// bookkeeping (measured: 127k entries took 55 MiB).
const DECISION_ENTRY_BYTES: u32 = 512;

/// The longest rejection reason kept from a module (it reaches clients, logs and the cache).
const MAX_REASON: usize = 1024;

/// A module's reason, cut at [`MAX_REASON`] bytes (on a character boundary).
fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let cut = (0..=MAX_REASON)
            .rev()
            .find(|&i| reason.is_char_boundary(i))
            .unwrap_or(0);
        reason.truncate(cut);
        reason.push_str("...");
    }
    reason
}

/// The decision cache key: a hash of everything the module is told (the module and its
/// settings, the operation, the image, how and by whom it was asked for, its attachments), the
/// client's fields quoted so that no two different askers can spell the same key. A hash, so a
/// key costs the same whatever the client sent.
fn decision_key(
    module: &str,
    settings_hash: &str,
    subject: &Subject,
    attachments: &AttachmentSet,
) -> [u8; 32] {
    use std::fmt::Write;
    let mut key = String::with_capacity(320 + 72 * attachments.items.len());
    let _ = write!(
        key,
        "{module}|{settings_hash}|{}|{}/{}|{}|{}|{:?}|{:?}|{:?}|{:?}",
        subject.push,
        subject.namespace,
        subject.repository,
        subject.reference,
        subject.digest,
        subject.attaches_to,
        subject.client,
        subject.user,
        subject.user_agent
    );
    for a in &attachments.items {
        let _ = write!(key, "|{}", a.descriptor.digest);
    }
    <sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()).into()
}

fn trust_store(config: &Config) -> anyhow::Result<TrustStore> {
    TrustStore::from_config(config).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            push: false,
            namespace: "up".into(),
            repository: "demo/app".into(),
            reference: "v1".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: bytes::Bytes::new(),
            attaches_to: None,
            client: "10.0.0.1".into(),
            user: Some("alice".into()),
            user_agent: Some("podman/4.3".into()),
        }
    }

    #[test]
    fn decisions_are_cached_per_asker_as_well_as_per_manifest() {
        let none = AttachmentSet::default();
        let key = |s: &Subject| decision_key("module", "settings", s, &none);
        let base = subject();
        assert_eq!(
            key(&base),
            key(&subject()),
            "the same question has the same key"
        );
        let variants: [fn(&mut Subject); 7] = [
            |s| s.user = Some("bob".into()),
            |s| s.user = None,
            |s| s.client = "10.0.0.2".into(),
            |s| s.user_agent = Some("skopeo".into()),
            |s| s.reference = "v2".into(),
            |s| s.push = true,
            |s| s.attaches_to = Some(format!("sha256:{}", "b".repeat(64))),
        ];
        for change in variants {
            let mut other = subject();
            change(&mut other);
            assert_ne!(key(&base), key(&other), "{other:?}");
        }
        // a separator inside a client's field cannot make two askers share a key
        let (mut a, mut b) = (subject(), subject());
        (a.user, a.user_agent) = (Some("x|y".into()), Some("z".into()));
        (b.user, b.user_agent) = (Some("x".into()), Some("y|z".into()));
        assert_ne!(key(&a), key(&b));
    }
}
