//! The host side of the WIT world: what a policy may call, and the per-evaluation state.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::StoreLimits;

use super::budget::Budget;
use super::portcullis::policy::host::{self as wit_host, Level};
use super::portcullis::policy::types::{self as wit_types, Descriptor, Requirements, SignerResult};
use super::{convert, Subject};
use crate::attachments::AttachmentSet;
use crate::cache::Cache;
use crate::error::{RegistryError, Result};
use crate::manifest::Manifest;
use crate::names::{Digest, Reference};
use crate::verify::{upstream_identity, Requirement, TrustStore, Verdict, Verifier};

/// How long one host call may take (verification may fetch attachments).
const HOST_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Host calls recorded per evaluation (each at most [`MAX_LOG_CHARS`] long).
const MAX_RECORDED: usize = 64;

/// Lines one evaluation may write to the proxy's log.
const MAX_LOG_LINES: usize = 100;

/// The longest line a policy may log.
const MAX_LOG_CHARS: usize = 4096;

/// What host calls of one evaluation work on.
pub struct CallContext {
    /// The manifest being decided on (none while validating settings).
    pub subject: Option<Subject>,
    /// Its attachments.
    pub attachments: Arc<AttachmentSet>,
    /// The verifier (none in `policy test`).
    pub verifier: Option<Arc<Verifier>>,
    /// The cache, for configs and blobs.
    pub cache: Option<Arc<Cache>>,
    /// Named trust.
    pub trust: Arc<TrustStore>,
    /// The runtime host calls block on (they run on a blocking thread).
    pub runtime: Option<tokio::runtime::Handle>,
    /// The host calls made, for `portcullis policy test`.
    pub calls: Mutex<Vec<String>>,
}

impl CallContext {
    /// A context with nothing to work on (settings validation, metadata).
    pub fn detached() -> CallContext {
        CallContext {
            subject: None,
            attachments: Arc::new(AttachmentSet::default()),
            verifier: None,
            cache: None,
            trust: Arc::new(TrustStore::default()),
            runtime: None,
            calls: Mutex::default(),
        }
    }

    /// Records a host call for `policy test`: the first [`MAX_RECORDED`] only, so a module
    /// calling in a loop cannot grow the host's memory.
    fn record(&self, call: String) {
        let mut calls = self.calls.lock().expect("calls lock");
        if calls.len() < MAX_RECORDED {
            calls.push(call);
        } else if calls.len() == MAX_RECORDED {
            calls.push("... (further calls not recorded)".into());
        }
    }

    /// Runs a future to completion from the blocking thread of an evaluation.
    fn block_on<T>(
        &self,
        fut: impl std::future::Future<Output = std::result::Result<T, String>>,
    ) -> std::result::Result<T, String> {
        let rt = self.runtime.as_ref().ok_or("no runtime for host calls")?;
        rt.block_on(async {
            tokio::time::timeout(HOST_CALL_TIMEOUT, fut)
                .await
                .map_err(|_| "host call timed out".to_string())?
        })
    }
}

/// The state of one evaluation's store.
pub struct State {
    /// Memory and instance limits.
    pub limits: StoreLimits,
    /// What host calls work on.
    pub ctx: Arc<CallContext>,
    /// The CPU time the evaluation may still use.
    pub budget: Budget,
    /// Lines logged so far by this evaluation.
    logged: usize,
    /// The module's WASI (deny by default) and what it wrote to stdout and stderr.
    pub wasi: super::wasi::Wasi,
}

impl State {
    /// State over limits, a call context and a time budget.
    pub fn new(limits: StoreLimits, ctx: Arc<CallContext>, budget: Budget) -> State {
        State {
            limits,
            ctx,
            budget,
            logged: 0,
            wasi: Default::default(),
        }
    }
}

impl Drop for State {
    /// What the module wrote to stdout and stderr goes to the debug log (and `policy test`).
    fn drop(&mut self) {
        let output = self.wasi.output.text();
        if !output.is_empty() {
            // escaped: the module's text cannot forge log lines
            tracing::debug!(target: "portcullis::policy", output = ?output.trim_end(), "the policy wrote to stdout or stderr");
            self.ctx.record(format!("output({})", output.trim_end()));
        }
    }
}

/// Verifies the subject against a requirement, with the identity its upstream gives it.
pub async fn verify_subject(
    verifier: &Arc<Verifier>,
    cache: &Cache,
    subject: &Subject,
    req: &Requirement,
) -> Result<Arc<Verdict>> {
    let repo = subject.repository.parse()?;
    let reference: Reference = subject.reference.parse()?;
    let digest: Digest = subject.digest.parse()?;
    let requested = upstream_identity(cache, &subject.namespace, &repo, &reference)?;
    verifier
        .verify(&subject.namespace, &repo, &requested, &digest, req)
        .await
}

impl wit_types::Host for State {}

impl wit_host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        self.logged += 1;
        if self.logged > MAX_LOG_LINES {
            if self.logged == MAX_LOG_LINES + 1 {
                tracing::warn!(target: "portcullis::policy", "the policy logged more than {MAX_LOG_LINES} lines in one evaluation; the rest are dropped");
            }
            return;
        }
        let policy_message: String = message.chars().take(MAX_LOG_CHARS).collect();
        match level {
            Level::Debug => tracing::debug!(target: "portcullis::policy", "{policy_message}"),
            Level::Info => tracing::info!(target: "portcullis::policy", "{policy_message}"),
            Level::Warn => tracing::warn!(target: "portcullis::policy", "{policy_message}"),
            Level::Error => tracing::error!(target: "portcullis::policy", "{policy_message}"),
        }
        self.ctx.record(format!("log({policy_message})"));
    }

    fn verify(
        &mut self,
        requirements: Requirements,
    ) -> std::result::Result<Vec<SignerResult>, String> {
        self.ctx.record("verify".into());
        let req = convert::requirement(&requirements, &self.ctx.trust)?;
        let verdict = self.run_verification(&req)?;
        Ok(verdict
            .signatures
            .iter()
            .chain(verdict.attestations.iter())
            .map(|v| SignerResult {
                signer: v.signer.clone().unwrap_or_default(),
                verified: v.verified,
                reason: v.reason.clone(),
            })
            .collect())
    }

    fn image_config(&mut self) -> std::result::Result<String, String> {
        self.ctx.record("image-config".into());
        let ctx = Arc::clone(&self.ctx);
        let subject = ctx.subject.as_ref().ok_or("no manifest in this call")?;
        let cache = ctx.cache.as_ref().ok_or("no registry in this call")?;
        let manifest = Manifest::parse(&subject.manifest).map_err(|e| e.message)?;
        let config = manifest
            .config
            .ok_or("the manifest has no config (an index?)")?;
        let repo = subject
            .repository
            .parse()
            .map_err(|e: RegistryError| e.message)?;
        let limit = crate::verify::MAX_PAYLOAD;
        let too_large = |size: u64| {
            format!(
                "the image config is {size} bytes, over the {} MiB limit",
                limit >> 20
            )
        };
        if u64::try_from(config.size).unwrap_or(0) > limit {
            return Err(too_large(config.size as u64));
        }
        ctx.block_on(async {
            cache
                .ensure_blob(&subject.namespace, &repo, &config.digest)
                .await
                .map_err(|e| e.message)?;
            let size = cache
                .store()
                .blob_size(&config.digest)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("config blob missing")?;
            if size > limit {
                return Err(too_large(size));
            }
            let bytes = cache
                .store()
                .read_small(&config.digest)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("config blob missing")?;
            String::from_utf8(bytes.to_vec()).map_err(|_| "config is not UTF-8".to_string())
        })
    }

    fn attestation(
        &mut self,
        predicate_type: String,
        requirements: Requirements,
    ) -> std::result::Result<Option<String>, String> {
        self.ctx.record(format!("attestation({predicate_type})"));
        let mut req = convert::requirement(&requirements, &self.ctx.trust)?;
        let wanted = crate::verify::predicate_type(&predicate_type);
        req.attestations = vec![wanted.clone()];
        let verdict = self.run_verification(&req)?;
        Ok(verdict
            .statements
            .iter()
            .find(|s| s.predicate_type == wanted)
            .map(|s| s.statement.to_string()))
    }

    fn referrers(
        &mut self,
        artifact_type: Option<String>,
    ) -> std::result::Result<Vec<Descriptor>, String> {
        self.ctx.record("referrers".into());
        Ok(self
            .ctx
            .attachments
            .items
            .iter()
            .filter(|a| artifact_type.is_none() || a.descriptor.artifact_type == artifact_type)
            .map(|a| convert::descriptor(&a.descriptor))
            .collect())
    }
}

impl State {
    fn run_verification(&self, req: &Requirement) -> std::result::Result<Arc<Verdict>, String> {
        let ctx = Arc::clone(&self.ctx);
        let subject = ctx.subject.as_ref().ok_or("no manifest in this call")?;
        let (verifier, cache) = match (&ctx.verifier, &ctx.cache) {
            (Some(v), Some(c)) => (v, c),
            _ => return Err("verification is not available here".into()),
        };
        ctx.block_on(async {
            verify_subject(verifier, cache, subject, req)
                .await
                .map_err(|e| e.message)
        })
    }
}
