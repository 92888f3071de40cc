//! Modules run on their own, without a proxy: `portcullis policy test` and `policy bench`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{
    convert, engine, fail_closed, load_one, CallContext, Decision, Loaded, Request, Subject,
};
use wasmtime::Engine;

use crate::attachments::AttachmentSet;
use crate::config::{ModuleSource, PolicyConfig, PolicyMode};
use crate::error::RegistryError;
use crate::metrics::PolicyMetrics;

/// A request for `portcullis policy test`, written by hand as JSON.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// `pull` (default) or `push`.
    #[serde(default)]
    pub operation: Option<String>,
    /// The namespace, e.g. `docker.io`.
    pub namespace: String,
    /// The repository.
    pub repository: String,
    /// The reference as asked for.
    pub reference: String,
    /// The manifest (JSON); its digest is computed.
    pub manifest: serde_json::Value,
    /// Attachments found: `{"kind": "signature", "digest": "...", "artifact_type": "..."}`.
    #[serde(default)]
    pub attachments: Vec<TestAttachment>,
    /// The image this manifest attaches to, for attachment manifests.
    #[serde(default)]
    pub attaches_to: Option<String>,
    /// The signed-in user.
    #[serde(default)]
    pub user: Option<String>,
}

/// An attachment in a [`TestRequest`].
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestAttachment {
    /// signature, attestation, sbom or referrer.
    pub kind: String,
    /// Its digest.
    pub digest: String,
    /// Its artifact type.
    #[serde(default)]
    pub artifact_type: Option<String>,
}

/// A module loaded on its own, with one request ready: for `policy test` and benchmarks.
pub struct Standalone {
    engine: Engine,
    loaded: Loaded,
    request: Request,
    subject: Subject,
    attachments: Arc<AttachmentSet>,
}

impl Standalone {
    /// Loads `module` with `settings` (JSON) and prepares `request`.
    pub fn new(module: &Path, settings: &str, request: &TestRequest) -> anyhow::Result<Standalone> {
        let engine = engine(1, 64 << 20)?;
        let bytes =
            std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
        let cache_dir = private_cache_dir()?;
        let config = PolicyConfig {
            name: module
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            module: ModuleSource::File(module.to_path_buf()),
            verify: None,
            verify_identity: None,
            scope: vec!["*".into()],
            mode: PolicyMode::Enforce,
            timeout: crate::config::HumanDuration(Duration::from_millis(200)),
            memory: crate::config::ByteSize(64 << 20),
            settings: toml::Table::new(),
        };
        let loaded = load_one(
            &engine,
            config,
            settings.to_string(),
            &cache_dir,
            PolicyMetrics::default(),
            (&bytes, None),
        )?;
        let (subject, attachments) = test_subject(request)?;
        let request = convert::request(&subject, &attachments);
        Ok(Standalone {
            engine,
            loaded,
            request,
            subject,
            attachments,
        })
    }

    /// One evaluation in a fresh instance: the decision text and the host calls made.
    pub fn evaluate(&self) -> (String, Vec<String>) {
        let mut ctx = CallContext::detached();
        ctx.subject = Some(self.subject.clone());
        ctx.attachments = Arc::clone(&self.attachments);
        let ctx = Arc::new(ctx);
        let decision = match self
            .loaded
            .evaluate(&self.engine, Arc::clone(&ctx), &self.request)
            .0
        {
            Ok(Decision::Admit) => "decision: admit".to_string(),
            Ok(Decision::Reject(r)) => format!("decision: reject: {r}"),
            Ok(Decision::Verify(r)) => format!(
                "decision: verify: trust={:?} keys={} identities={} attestations={:?} threshold={}",
                r.trust,
                r.keys.len(),
                r.identities.len(),
                r.attestations,
                r.threshold
            ),
            Err(e) => format!(
                "decision: reject: {}",
                fail_closed(&self.loaded.config.name, &e).1
            ),
        };
        let calls = ctx.calls.lock().expect("calls lock").clone();
        (decision, calls)
    }
}

fn test_subject(request: &TestRequest) -> anyhow::Result<(Subject, Arc<AttachmentSet>)> {
    let manifest = bytes::Bytes::from(serde_json::to_vec(&request.manifest)?);
    let parsed = crate::manifest::Manifest::parse(&manifest)
        .map_err(|e| anyhow::anyhow!("request.manifest: {}", e.message))?;
    if request.attaches_to.is_some() && !parsed.is_attachment() {
        anyhow::bail!("request.attaches_to: the manifest is no attachment by its content (it has filesystem layers, is an index, or carries no signature, attestation or SBOM layer or artifact type), so the proxy would never mark it as one");
    }
    let subject = Subject {
        push: request.operation.as_deref() == Some("push"),
        namespace: request.namespace.clone(),
        repository: request.repository.clone(),
        reference: request.reference.clone(),
        digest: crate::names::Digest::sha256_of(&manifest).to_string(),
        media_type: parsed.media_type().to_string(),
        manifest,
        attaches_to: request.attaches_to.clone(),
        client: "policy-test".into(),
        user: request.user.clone(),
        user_agent: None,
    };
    let mut set = AttachmentSet::default();
    for a in &request.attachments {
        let kind = match a.kind.as_str() {
            "signature" => crate::attachments::Kind::Signature,
            "attestation" => crate::attachments::Kind::Attestation,
            "sbom" => crate::attachments::Kind::Sbom,
            "referrer" => crate::attachments::Kind::Referrer,
            other => anyhow::bail!("request.attachments: unknown kind {other:?}"),
        };
        let digest = a
            .digest
            .parse()
            .map_err(|e: RegistryError| anyhow::anyhow!("request.attachments: {}", e.message))?;
        let descriptor = crate::manifest::Descriptor {
            media_type: crate::manifest::OCI_MANIFEST.into(),
            digest,
            size: 0,
            artifact_type: a.artifact_type.clone(),
            annotations: None,
            platform: None,
        };
        set.items.push(crate::attachments::Attachment {
            kind,
            tag: None,
            descriptor,
        });
    }
    Ok((subject, Arc::new(set)))
}

/// Runs one module on one request without a proxy; returns the decision and the host calls.
pub fn test_module(module: &Path, settings: &str, request: &TestRequest) -> anyhow::Result<String> {
    let (decision, calls) = Standalone::new(module, settings, request)?.evaluate();
    Ok(format!("{decision}\nhost calls: {calls:?}"))
}

/// Where `policy test` and `bench` keep compiled modules: the user's own cache directory
/// (`$XDG_CACHE_HOME` or `~/.cache`, `portcullis/policy-cache`), owned by the user and writable
/// by nobody else, since compiled code found there is run as it is; else a fresh private
/// directory under the temporary directory.
fn private_cache_dir() -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")));
    // SAFETY: geteuid has no preconditions
    let me = unsafe { libc::geteuid() };
    if let Some(dir) = base.map(|b| b.join("portcullis/policy-cache")) {
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir);
        let private = |m: std::fs::Metadata| m.uid() == me && m.mode() & 0o022 == 0;
        if made.is_ok() && std::fs::symlink_metadata(&dir).is_ok_and(private) {
            return Ok(dir);
        }
    }
    let dir = std::env::temp_dir().join(format!("portcullis-policy-{}", uuid::Uuid::new_v4()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Decision times of one module on one request.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The module's decision.
    pub decision: String,
    /// A fresh instance and an evaluation.
    pub cold: Duration,
    /// The same decision again, through the proxy's decision cache (the module does not run).
    pub cached: Duration,
}

/// Measures `module` on `request` over `iterations` decisions, cold and cached.
pub fn bench(
    module: &Path,
    settings: &str,
    request: &TestRequest,
    iterations: u32,
) -> anyhow::Result<Figures> {
    let iterations = iterations.max(1);
    let standalone = Standalone::new(module, settings, request)?;
    let (decision, _) = standalone.evaluate();
    for _ in 0..iterations.min(5) {
        standalone.evaluate();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        standalone.evaluate();
    }
    let cold = started.elapsed() / iterations;
    let cached = cached(module, settings, request, iterations)?;
    Ok(Figures {
        decision,
        cold,
        cached,
    })
}

/// The time of a cached decision: a proxy's policy gate (with its audit log) in a scratch
/// directory, asked for the same manifest again and again.
fn cached(
    module: &Path,
    settings: &str,
    request: &TestRequest,
    iterations: u32,
) -> anyhow::Result<Duration> {
    let settings: serde_json::Value = serde_json::from_str(settings).context("settings")?;
    let mut doc: toml::Table = toml::from_str(
        "[storage]\npath = \"data\"\n[[local]]\nname = \"bench\"\n[policies]\naudit = \"audit.log\"\n[[policy]]\nname = \"bench\"\nscope = [\"bench/*\"]\n",
    )?;
    if let Some(toml::Value::Array(policies)) = doc.get_mut("policy") {
        if let Some(toml::Value::Table(policy)) = policies.first_mut() {
            let module = std::path::absolute(module)?;
            policy.insert("module".into(), module.display().to_string().into());
            policy.insert(
                "settings".into(),
                toml::Value::try_from(settings).context("settings as TOML")?,
            );
        }
    }
    let text = toml::to_string(&doc)?;
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let measured = measure_cached(&text, &dir, request, iterations);
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

fn measure_cached(
    text: &str,
    dir: &Path,
    request: &TestRequest,
    iterations: u32,
) -> anyhow::Result<Duration> {
    let config = crate::config::Config::from_toml_str(text, "bench.toml", dir)
        .map_err(anyhow::Error::msg)?;
    let (mut subject, _) = test_subject(request)?;
    subject.namespace = "bench".into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let services = crate::server::services(&config, false).await?;
        let verifier = crate::verify::Verifier::new(
            Arc::clone(&services.cache),
            Arc::clone(&services.attachments),
            Duration::from_secs(1),
        );
        // on a blocking thread, as the proxy loads them (a module's WASI may block on the runtime)
        let policies = tokio::task::spawn_blocking(move || {
            super::Policies::new(&config, services.cache, services.attachments, verifier)
        })
        .await??;
        let _ = policies.check(&subject).await;
        let started = Instant::now();
        for _ in 0..iterations {
            let _ = policies.check(&subject).await;
        }
        Ok(started.elapsed() / iterations)
    })
}
