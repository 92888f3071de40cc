//! Native verification of cosign signatures and attestations against public keys, offline.
//!
//! Signatures are the `.sig` attachment's simple-signing layers: the signature annotation is
//! checked over the exact payload bytes, then the payload must name the manifest's digest, the
//! right type, and an identity the requirement's `signedIdentity` accepts. Attestations are the
//! `.att` attachment's DSSE envelopes around in-toto statements. Results are cached per
//! (manifest, requirement, attachment set).

pub mod identity;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use sigstore::crypto::{CosignVerificationKey, Signature};

use crate::attachments::{AttachmentSet, Attachments, Kind};
use crate::cache::Cache;
use crate::error::{Code, RegistryError, Result};
use crate::manifest::Manifest;
use crate::names::{Digest, Reference, RepoName};
pub use identity::{ImageRef, SignedIdentity};

/// The simple-signing layer media type.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload type of cosign attestations.
const INTOTO_PAYLOAD: &str = "application/vnd.in-toto+json";

/// A public key trusted for verification, with a name for verdicts.
#[derive(Clone)]
pub struct TrustedKey {
    /// A name for messages: the file it came from, or a fingerprint.
    pub name: String,
    key: Arc<CosignVerificationKey>,
    /// SHA-256 of the PEM, for cache keys.
    fingerprint: String,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey").field("name", &self.name).finish()
    }
}

impl TrustedKey {
    /// Parses a PEM public key (ECDSA P-256/P-384, RSA, Ed25519).
    pub fn from_pem(name: &str, pem: &[u8]) -> std::result::Result<TrustedKey, String> {
        let key = CosignVerificationKey::try_from_pem(pem).map_err(|e| format!("{name}: not a usable public key: {e}"))?;
        let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pem));
        Ok(TrustedKey { name: name.to_string(), key: Arc::new(key), fingerprint })
    }

    /// Reads a PEM public key file.
    pub fn from_file(path: &std::path::Path) -> std::result::Result<TrustedKey, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TrustedKey::from_pem(&path.display().to_string(), &pem)
    }

    /// Whether a base64 signature over `message` verifies with this key.
    pub fn check(&self, signature_b64: &str, message: &[u8]) -> bool {
        self.verifies(signature_b64, message)
    }

    fn verifies(&self, signature_b64: &str, message: &[u8]) -> bool {
        self.key.verify_signature(Signature::Base64Encoded(signature_b64.as_bytes()), message).is_ok()
    }
}

/// What must hold for a manifest to be admitted.
#[derive(Debug, Clone, Default)]
pub struct Requirement {
    /// Keys, any of which may sign.
    pub keys: Vec<TrustedKey>,
    /// How many distinct keys must have signed (0 means 1).
    pub threshold: usize,
    /// Which names a signature may claim.
    pub identity: SignedIdentity,
    /// Predicate types that must be attested (by the same keys and threshold).
    pub attestations: Vec<String>,
}

impl Requirement {
    fn cache_key(&self) -> String {
        let keys: BTreeSet<&str> = self.keys.iter().map(|k| k.fingerprint.as_str()).collect();
        format!("{keys:?}|{}|{:?}|{:?}", self.threshold.max(1), self.identity, self.attestations)
    }
}

/// The verdict on one signature or attestation layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerVerdict {
    /// The layer's digest.
    pub layer: String,
    /// The key that verified it, if any.
    pub signer: Option<String>,
    /// Whether it counts towards the requirement.
    pub verified: bool,
    /// Why it does or does not.
    pub reason: String,
}

/// A verified in-toto statement.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    /// Its predicate type.
    pub predicate_type: String,
    /// The key that signed it.
    pub signer: String,
    /// The whole statement.
    pub statement: serde_json::Value,
}

/// The outcome of verifying one manifest against one requirement.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Whether the requirement holds.
    pub ok: bool,
    /// A one-line summary.
    pub reason: String,
    /// Each signature layer's verdict.
    pub signatures: Vec<LayerVerdict>,
    /// Each attestation layer's verdict.
    pub attestations: Vec<LayerVerdict>,
    /// The statements that verified.
    pub statements: Vec<Statement>,
}

/// Verifies manifests from the proxy's own view, caching verdicts.
pub struct Verifier {
    cache: Arc<Cache>,
    attachments: Arc<Attachments>,
    verdicts: moka::future::Cache<String, Arc<Verdict>>,
    wait: Duration,
}

/// cosign's `--type` short names and the predicate types they stand for.
pub fn predicate_type(name: &str) -> String {
    match name {
        "slsaprovenance" | "slsaprovenance02" => "https://slsa.dev/provenance/v0.2",
        "slsaprovenance1" => "https://slsa.dev/provenance/v1",
        "spdx" | "spdxjson" => "https://spdx.dev/Document",
        "cyclonedx" => "https://cyclonedx.org/bom",
        "vuln" => "https://cosign.sigstore.dev/attestation/vuln/v1",
        "link" => "https://in-toto.io/Link/v1",
        "custom" => "https://cosign.sigstore.dev/attestation/v1",
        other => other,
    }
    .to_string()
}

impl Verifier {
    /// A verifier over the cache and the attachment resolver.
    pub fn new(cache: Arc<Cache>, attachments: Arc<Attachments>, wait: Duration) -> Arc<Verifier> {
        Arc::new(Verifier {
            cache,
            attachments,
            verdicts: moka::future::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(3600)).build(),
            wait,
        })
    }

    /// Verifies the manifest `digest` of `<ns>/<repo>`, asked for as `requested`.
    pub async fn verify(&self, ns: &str, repo: &RepoName, requested: &ImageRef, digest: &Digest, req: &Requirement) -> Result<Arc<Verdict>> {
        if req.keys.is_empty() {
            return Err(RegistryError::of(Code::Denied, "the requirement names no key"));
        }
        let set = self.attachments.wait_for(ns, repo, digest, self.wait).await?;
        let fingerprint: Vec<String> = set.items.iter().map(|a| a.descriptor.digest.to_string()).collect();
        let key = format!("{ns}/{repo}|{}|{digest}|{}|{fingerprint:?}", requested.full(), req.cache_key());
        if let Some(v) = self.verdicts.get(&key).await {
            return Ok(v);
        }
        let verdict = Arc::new(self.verify_now(ns, repo, requested, digest, req, &set).await?);
        self.verdicts.insert(key, Arc::clone(&verdict)).await;
        Ok(verdict)
    }

    async fn verify_now(&self, ns: &str, repo: &RepoName, requested: &ImageRef, digest: &Digest, req: &Requirement, set: &AttachmentSet) -> Result<Verdict> {
        let threshold = req.threshold.max(1);
        let mut signatures = Vec::new();
        let proxy_path = format!("{}/{repo}", self.cache.canonical_namespace(ns).unwrap_or(ns));
        for layer in self.layers(ns, repo, set, Kind::Signature).await? {
            signatures.push(check_signature(&layer, digest, requested, &proxy_path, req));
        }
        let signers: BTreeSet<String> = signatures.iter().filter(|v| v.verified).filter_map(|v| v.signer.clone()).collect();
        let mut attestations = Vec::new();
        let mut statements = Vec::new();
        if !req.attestations.is_empty() {
            for layer in self.layers(ns, repo, set, Kind::Attestation).await? {
                let (verdict, statement) = check_attestation(&layer, digest, req);
                attestations.push(verdict);
                statements.extend(statement);
            }
        }
        let mut missing = Vec::new();
        if signers.len() < threshold {
            missing.push(format!("{} of {threshold} required signers verified", signers.len()));
        }
        for wanted in &req.attestations {
            let t = predicate_type(wanted);
            let by: BTreeSet<&str> = statements.iter().filter(|s| s.predicate_type == t).map(|s| s.signer.as_str()).collect();
            if by.len() < threshold {
                missing.push(format!("no verified {t} attestation by {threshold} signer(s)"));
            }
        }
        let ok = missing.is_empty();
        let reason = if ok {
            format!("verified by {}", signers.iter().cloned().collect::<Vec<_>>().join(", "))
        } else if signatures.is_empty() && attestations.is_empty() {
            "no signatures found".to_string()
        } else {
            missing.join("; ")
        };
        Ok(Verdict { ok, reason, signatures, attestations, statements })
    }

    /// The layers (annotations and blob bytes) of the attachments of one kind.
    async fn layers(&self, ns: &str, repo: &RepoName, set: &AttachmentSet, kind: Kind) -> Result<Vec<Layer>> {
        let mut out = Vec::new();
        for a in set.items.iter().filter(|a| a.kind == kind) {
            let m = self.cache.manifest(ns, repo, &Reference::Digest(a.descriptor.digest.clone())).await?;
            let manifest = Manifest::parse(&m.bytes)?;
            for l in manifest.layers {
                let bytes = self.read_blob(ns, repo, &l.digest).await?;
                let annotations: HashMap<String, String> = l
                    .annotations
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                    .collect();
                out.push(Layer { digest: l.digest, media_type: l.media_type, annotations, bytes });
            }
        }
        Ok(out)
    }

    async fn read_blob(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<bytes::Bytes> {
        self.cache.ensure_blob(ns, repo, digest).await?;
        self.cache.store().read_small(digest).await?.ok_or_else(|| RegistryError::of(Code::BlobUnknown, format!("blob unknown: {digest}")))
    }
}

struct Layer {
    digest: Digest,
    media_type: String,
    annotations: HashMap<String, String>,
    bytes: bytes::Bytes,
}

fn verdict(layer: &Layer, signer: Option<&TrustedKey>, verified: bool, reason: impl Into<String>) -> LayerVerdict {
    LayerVerdict { layer: layer.digest.to_string(), signer: signer.map(|k| k.name.clone()), verified, reason: reason.into() }
}

/// Checks one simple-signing layer: signature, digest, type, identity.
/// `proxy_path` (`<namespace>/<repo>`) also matches signatures pushed through the proxy, which
/// name the image as `<proxy host>/<namespace>/<repo>`.
fn check_signature(layer: &Layer, digest: &Digest, requested: &ImageRef, proxy_path: &str, req: &Requirement) -> LayerVerdict {
    if layer.media_type != SIMPLE_SIGNING {
        return verdict(layer, None, false, format!("not a simple-signing layer ({})", layer.media_type));
    }
    let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
        return verdict(layer, None, false, "no signature annotation");
    };
    let Some(key) = req.keys.iter().find(|k| k.verifies(sig, &layer.bytes)) else {
        return verdict(layer, None, false, "signature does not verify with any trusted key");
    };
    let payload: serde_json::Value = match serde_json::from_slice(&layer.bytes) {
        Ok(v) => v,
        Err(e) => return verdict(layer, Some(key), false, format!("payload is not JSON: {e}")),
    };
    let critical = &payload["critical"];
    if critical["type"] != "cosign container image signature" {
        return verdict(layer, Some(key), false, format!("payload type is {}, not a container image signature", critical["type"]));
    }
    if critical["image"]["docker-manifest-digest"].as_str() != Some(&digest.to_string()) {
        return verdict(layer, Some(key), false, format!("payload is for {}, not {digest}", critical["image"]["docker-manifest-digest"]));
    }
    let claimed = critical["identity"]["docker-reference"].as_str().unwrap_or("");
    if let Err(reason) = req.identity.accepts(requested, claimed) {
        let claimed_ref = ImageRef::parse(claimed);
        let through_proxy = claimed_ref.repository.split_once('/').filter(|(_, path)| *path == proxy_path).map(|(host, _)| ImageRef {
            repository: format!("{host}/{proxy_path}"),
            tag: requested.tag.clone(),
            digest: requested.digest.clone(),
        });
        if !through_proxy.is_some_and(|r| req.identity.accepts(&r, claimed).is_ok()) {
            return verdict(layer, Some(key), false, reason);
        }
    }
    verdict(layer, Some(key), true, format!("signed by {}", key.name))
}

/// DSSE pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Checks one DSSE attestation layer: envelope signature, statement subject, predicate type.
fn check_attestation(layer: &Layer, digest: &Digest, req: &Requirement) -> (LayerVerdict, Option<Statement>) {
    let fail = |k: Option<&TrustedKey>, r: String| (verdict(layer, k, false, r), None);
    let envelope: serde_json::Value = match serde_json::from_slice(&layer.bytes) {
        Ok(v) => v,
        Err(e) => return fail(None, format!("envelope is not JSON: {e}")),
    };
    let payload_type = envelope["payloadType"].as_str().unwrap_or("");
    let Some(payload) = envelope["payload"].as_str().and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok()) else {
        return fail(None, "envelope payload is not base64".into());
    };
    let message = pae(payload_type, &payload);
    let sigs: Vec<&str> = envelope["signatures"].as_array().map(|a| a.iter().filter_map(|s| s["sig"].as_str()).collect()).unwrap_or_default();
    let Some(key) = req.keys.iter().find(|k| sigs.iter().any(|s| k.verifies(s, &message))) else {
        return fail(None, "envelope signature does not verify with any trusted key".into());
    };
    if payload_type != INTOTO_PAYLOAD {
        return fail(Some(key), format!("payload type is {payload_type}, not in-toto"));
    }
    let statement: serde_json::Value = match serde_json::from_slice(&payload) {
        Ok(v) => v,
        Err(e) => return fail(Some(key), format!("statement is not JSON: {e}")),
    };
    let hex = digest.hex();
    let alg = digest.algorithm().as_str();
    let about_us = statement["subject"].as_array().is_some_and(|s| s.iter().any(|x| x["digest"][alg].as_str() == Some(hex)));
    if !about_us {
        return fail(Some(key), format!("statement subject is not {digest}"));
    }
    let predicate_type = statement["predicateType"].as_str().unwrap_or("").to_string();
    let v = verdict(layer, Some(key), true, format!("{predicate_type} attested by {}", key.name));
    (v, Some(Statement { predicate_type, signer: key.name.clone(), statement }))
}

/// Named trust material from `[trust.<name>]`: key files.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// Keys by trust name.
    pub keys: HashMap<String, Vec<TrustedKey>>,
}

impl TrustStore {
    /// Loads `[trust.<name>] keys = [...]` files; errors name the trust entry and file.
    pub fn load(entries: &HashMap<String, Vec<PathBuf>>) -> std::result::Result<TrustStore, String> {
        let mut keys = HashMap::new();
        for (name, files) in entries {
            let loaded = files.iter().map(|f| TrustedKey::from_file(f).map_err(|e| format!("trust.{name}: {e}"))).collect::<std::result::Result<Vec<_>, _>>()?;
            keys.insert(name.clone(), loaded);
        }
        Ok(TrustStore { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // from the DSSE protocol document
        assert_eq!(pae("http://example.com/HelloWorld", b"hello world"), b"DSSEv1 29 http://example.com/HelloWorld 11 hello world");
    }

    #[test]
    fn predicate_type_aliases() {
        assert_eq!(predicate_type("slsaprovenance"), "https://slsa.dev/provenance/v0.2");
        assert_eq!(predicate_type("https://example.com/x"), "https://example.com/x");
    }
}

/// The name a proxied image has at its upstream (what signatures made there claim):
/// `<upstream host>/<repo>`; for a local namespace, `<namespace>/<repo>`.
pub fn upstream_identity(cache: &Cache, ns: &str, repo: &RepoName, reference: &Reference) -> Result<ImageRef> {
    let (name, upstream) = cache.namespace(ns)?;
    let host = match &upstream {
        Some(up) => up.host(),
        None => name,
    };
    let (tag, digest) = match reference {
        Reference::Tag(t) => (Some(t.to_string()), None),
        Reference::Digest(d) => (None, Some(d.to_string())),
    };
    let mut r = ImageRef::parse(&format!("{host}/{repo}"));
    r.tag = tag;
    r.digest = digest;
    Ok(r)
}
