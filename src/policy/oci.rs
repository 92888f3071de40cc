//! Policy modules pulled from a registry (`module = "oci://<namespace>/<repository>:<tag>"`):
//! a Wasm OCI artifact (an `application/vnd.wasm.config.v0+json` config and one
//! `application/wasm` layer, as `wkg oci push` and `portcullis policy push` write it), fetched
//! through the proxy's own registry below the policy gate, run only after its manifest's cosign
//! signature verified with the `[trust.<name>]` named by `verify`; a tag is resolved at each
//! load and the module pinned by its manifest digest.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use futures_util::TryStreamExt;

use crate::cache::Cache;
use crate::config::{ModuleSource, PolicyConfig, SignerIdentity};
use crate::manifest::Manifest;
use crate::names::{Digest, Reference, RepoName};
use crate::verify::{
    upstream_identity, Identity, Requirement, SignedIdentity, TrustStore, Verifier,
};

/// The config media type of a Wasm OCI artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// The layer media type of a Wasm component.
pub const WASM_LAYER: &str = "application/wasm";

/// The largest module pulled (JavaScript and Python components are 12-18 MiB).
pub const MAX_MODULE: u64 = 256 << 20;

/// A module pulled and verified: its bytes and where they were pinned.
pub struct Pulled {
    /// The component.
    pub bytes: Vec<u8>,
    /// `oci://<namespace>/<repository>@<manifest digest>`.
    pub pinned: String,
}

/// Pulls and verifies every `oci://` module of `configs`, by policy name.
pub async fn pull_all(
    configs: &[PolicyConfig],
    cache: &Arc<Cache>,
    verifier: &Arc<Verifier>,
    trust: &TrustStore,
) -> anyhow::Result<HashMap<String, Pulled>> {
    let mut pulled = HashMap::new();
    for c in configs {
        let ModuleSource::Oci {
            namespace,
            repository,
            reference,
        } = &c.module
        else {
            continue;
        };
        let verify = c.verify.as_deref().unwrap_or_default();
        let requirement = requirement(trust, verify, c.verify_identity.as_ref())
            .with_context(|| format!("policy {:?} ({})", c.name, c.module))?;
        let source = (namespace.as_str(), repository.as_str(), reference.as_str());
        let module = pull(cache, verifier, source, &requirement, verify)
            .await
            .with_context(|| format!("policy {:?} ({})", c.name, c.module))?;
        pulled.insert(c.name.clone(), module);
    }
    Ok(pulled)
}

/// Whether any policy's module comes from a registry.
pub fn any(configs: &[PolicyConfig]) -> bool {
    configs
        .iter()
        .any(|c| matches!(c.module, ModuleSource::Oci { .. }))
}

/// The cosign requirement of a module: a signature by a key of `[trust.<verify>]`, or a
/// keyless one by `identity` under that entry's roots.
fn requirement(
    trust: &TrustStore,
    verify: &str,
    identity: Option<&SignerIdentity>,
) -> anyhow::Result<Requirement> {
    let (keys, roots) = trust
        .named(&[verify.to_string()])
        .map_err(anyhow::Error::msg)?;
    let identities = match identity {
        Some(i) => vec![Identity::new(
            Some(i.issuer.clone()),
            None,
            i.subject.clone(),
            i.subject_regexp.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("verify_identity: {e}"))?],
        None => Vec::new(),
    };
    anyhow::ensure!(
        !identities.is_empty() || !keys.is_empty(),
        "[trust.{verify}] has no keys: name the keyless signer with [policy.verify_identity]"
    );
    anyhow::ensure!(
        identities.is_empty() || !roots.is_empty(),
        "[trust.{verify}] has no trusted_root or ca_certs for a keyless signer"
    );
    Ok(Requirement {
        keys,
        identities,
        roots,
        threshold: 1,
        identity: SignedIdentity::MatchRepository,
        attestations: Vec::new(),
    })
}

/// Resolves, verifies and fetches one module.
async fn pull(
    cache: &Arc<Cache>,
    verifier: &Arc<Verifier>,
    (ns, repository, reference): (&str, &str, &str),
    requirement: &Requirement,
    verify: &str,
) -> anyhow::Result<Pulled> {
    let repo: RepoName = repository
        .parse()
        .map_err(|e: crate::error::RegistryError| anyhow::anyhow!(e.message))?;
    let reference: Reference = reference
        .parse()
        .map_err(|e: crate::error::RegistryError| anyhow::anyhow!(e.message))?;
    let served = cache
        .manifest(ns, &repo, &reference)
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch the module's manifest: {}", e.message))?;
    let digest = served.digest.clone();
    anyhow::ensure!(
        Digest::sha256_of(&served.bytes) == digest,
        "the module's manifest does not match its digest {digest}"
    );
    let manifest =
        Manifest::parse(&served.bytes).map_err(|e| anyhow::anyhow!("{digest}: {}", e.message))?;
    let layer = wasm_layer(&manifest).with_context(|| format!("{digest}"))?;
    let requested = upstream_identity(cache, ns, &repo, &Reference::Digest(digest.clone()))
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let verdict = verifier
        .verify(ns, &repo, &requested, &digest, requirement)
        .await
        .map_err(|e| anyhow::anyhow!("{digest} is not verified: {}", e.message))?;
    anyhow::ensure!(
        verdict.ok,
        "{digest} is not signed as [trust.{verify}] requires: {}",
        verdict.reason
    );
    let bytes = fetch_layer(cache, ns, &repo, &layer).await?;
    Ok(Pulled {
        bytes,
        pinned: format!("oci://{ns}/{repo}@{digest}"),
    })
}

/// The one `application/wasm` layer of a Wasm OCI artifact.
fn wasm_layer(m: &Manifest) -> anyhow::Result<crate::manifest::Descriptor> {
    let config = m.config.as_ref().map(|c| c.media_type.as_str());
    anyhow::ensure!(
        config == Some(WASM_CONFIG),
        "not a Wasm OCI artifact: its config is {}, not {WASM_CONFIG}",
        config.unwrap_or("absent")
    );
    match m.layers.as_slice() {
        [layer] if layer.media_type == WASM_LAYER => Ok(layer.clone()),
        _ => anyhow::bail!("not a Wasm OCI artifact: it must have exactly one {WASM_LAYER} layer"),
    }
}

/// The module's bytes, checked against the layer's digest and size as they arrive.
async fn fetch_layer(
    cache: &Arc<Cache>,
    ns: &str,
    repo: &RepoName,
    layer: &crate::manifest::Descriptor,
) -> anyhow::Result<Vec<u8>> {
    let digest = &layer.digest;
    anyhow::ensure!(
        u64::try_from(layer.size).is_ok_and(|s| s <= MAX_MODULE),
        "the module layer is {} bytes, over the {} MiB limit",
        layer.size,
        MAX_MODULE >> 20
    );
    cache
        .ensure_blob(ns, repo, digest)
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch the module layer {digest}: {}", e.message))?;
    let stream = cache
        .store()
        .read_blob(digest, 0, None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the module layer {digest} is missing"))?;
    let mut bytes = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.try_next().await? {
        anyhow::ensure!(
            (bytes.len() + chunk.len()) as u64 <= MAX_MODULE,
            "the module layer is over the {} MiB limit",
            MAX_MODULE >> 20
        );
        bytes.extend_from_slice(&chunk);
    }
    anyhow::ensure!(
        Digest::sha256_of(&bytes) == *digest && bytes.len() as i64 == layer.size,
        "the module layer does not match its digest {digest}"
    );
    Ok(bytes)
}
