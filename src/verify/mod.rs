//! Native verification of cosign signatures and attestations against public keys, offline.
//!
//! Signatures are the `.sig` attachment's simple-signing layers: the signature annotation is
//! checked over the exact payload bytes, then the payload must name the manifest's digest, the
//! right type, and an identity the requirement's `signedIdentity` accepts. Attestations are the
//! `.att` attachment's DSSE envelopes around in-toto statements. Results are cached per
//! (manifest, requirement, attachment set).

pub mod bundle;
pub mod identity;
pub mod keyless;
pub mod strict;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use sigstore::crypto::{CosignVerificationKey, Signature};

use crate::attachments::{AttachmentSet, Attachments, Kind};
use crate::cache::Cache;
use crate::error::{Code, RegistryError, Result};
use crate::manifest::Manifest;
use crate::metrics::VerifyMethod;
use crate::names::{Digest, Reference, RepoName};
pub use identity::{ImageRef, SignedIdentity};
pub use keyless::{Identity, TrustRoot};

/// The simple-signing layer media type.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The annotation holding a keyless signature's Fulcio certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The annotation holding the certificate's chain (PEM).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// The annotation holding the Rekor bundle (SET and entry).
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// The artifact type of Sigstore bundles stored as OCI referrers.
pub const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The predicate type of a cosign v3 image signature made as a DSSE statement.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
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
        f.debug_struct("TrustedKey")
            .field("name", &self.name)
            .finish()
    }
}

impl TrustedKey {
    /// Parses a PEM public key (ECDSA P-256/P-384, RSA, Ed25519).
    pub fn from_pem(name: &str, pem: &[u8]) -> std::result::Result<TrustedKey, String> {
        let key = CosignVerificationKey::try_from_pem(pem)
            .map_err(|e| format!("{name}: not a usable public key: {e}"))?;
        let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pem));
        Ok(TrustedKey {
            name: name.to_string(),
            key: Arc::new(key),
            fingerprint,
        })
    }

    /// Reads a PEM public key file.
    pub fn from_file(path: &std::path::Path) -> std::result::Result<TrustedKey, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        TrustedKey::from_pem(&path.display().to_string(), &pem)
    }

    /// Whether a base64 signature over `message` verifies with this key.
    pub fn check(&self, signature_b64: &str, message: &[u8]) -> bool {
        self.verifies(signature_b64, message)
    }

    fn verifies(&self, signature_b64: &str, message: &[u8]) -> bool {
        verifies(&self.key, signature_b64, message)
    }
}

/// Whether a base64 signature verifies with `key`: ASN.1 DER as cosign writes it, or, for
/// ECDSA, the fixed-size `r||s` (IEEE P1363) some KMS and HSM signers give.
fn verifies(key: &CosignVerificationKey, signature_b64: &str, message: &[u8]) -> bool {
    if key
        .verify_signature(Signature::Base64Encoded(signature_b64.as_bytes()), message)
        .is_ok()
    {
        return true;
    }
    base64::engine::general_purpose::STANDARD
        .decode(signature_b64)
        .ok()
        .and_then(|raw| p1363_to_der(&raw))
        .is_some_and(|der| key.verify_signature(Signature::Raw(&der), message).is_ok())
}

/// An ECDSA P-256, P-384 or P-521 signature given as `r||s`, in DER (a sequence of two
/// integers).
fn p1363_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if ![64, 96, 132].contains(&raw.len()) {
        return None;
    }
    let integer = |x: &[u8]| {
        let first = x.iter().position(|&b| b != 0).unwrap_or(x.len() - 1);
        let x = &x[first..];
        let pad = usize::from(x[0] & 0x80 != 0);
        let mut out = vec![0x02, (x.len() + pad) as u8];
        out.extend(std::iter::repeat_n(0u8, pad));
        out.extend_from_slice(x);
        out
    };
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [integer(r), integer(s)].concat();
    // P-256 and P-384 fit the short length form; P-521's (up to 2 x (2 + 67) bytes) may not
    let length = match u8::try_from(body.len()) {
        Ok(n) if n < 0x80 => vec![n],
        Ok(n) => vec![0x81, n],
        Err(_) => return None,
    };
    Some([vec![0x30], length, body].concat())
}

/// What must hold for a manifest to be admitted.
#[derive(Debug, Clone, Default)]
pub struct Requirement {
    /// Keys, any of which may sign.
    pub keys: Vec<TrustedKey>,
    /// Keyless signer identities, any of which may sign.
    pub identities: Vec<Identity>,
    /// The trust roots keyless signatures must chain to.
    pub roots: Vec<Arc<TrustRoot>>,
    /// How many distinct signers (keys or keyless subjects) must have signed (0 means 1).
    pub threshold: usize,
    /// Which names a signature may claim.
    pub identity: SignedIdentity,
    /// Predicate types that must be attested (by the same keys and threshold).
    pub attestations: Vec<String>,
}

impl Requirement {
    fn cache_key(&self) -> String {
        let keys: BTreeSet<&str> = self.keys.iter().map(|k| k.fingerprint.as_str()).collect();
        let identities: Vec<String> = self.identities.iter().map(Identity::key).collect();
        // by content: a trust entry repointed at another CA or log is another requirement
        let roots: BTreeSet<&str> = self.roots.iter().map(|r| r.fingerprint.as_str()).collect();
        format!(
            "{keys:?}|{identities:?}|{roots:?}|{}|{:?}|{:?}",
            self.threshold.max(1),
            self.identity,
            self.attestations
        )
    }

    /// Finds who made `signature_b64` over `message`: a trusted key, or a keyless signer with
    /// its certificate evidence in `annotations` (the log entry must be for one of `hashes`).
    fn signer(
        &self,
        signature_b64: &str,
        message: &[u8],
        keyless: Option<Result<keyless::Evidence<'_>, String>>,
        hashes: &[String],
    ) -> std::result::Result<String, String> {
        if let Some(key) = self
            .keys
            .iter()
            .find(|k| k.verifies(signature_b64, message))
        {
            return Ok(key.name.clone());
        }
        let evidence = match keyless {
            Some(e) if !self.identities.is_empty() => e?,
            _ if self.keys.is_empty() => {
                return Err("the signature carries no certificate for a keyless identity".into())
            }
            _ => return Err("signature does not verify with any trusted key".into()),
        };
        let signer = keyless::certify(&evidence, &self.roots, hashes, signature_b64)?;
        if !verifies(&signer.key, signature_b64, message) {
            return Err("signature does not verify with its certificate's key".into());
        }
        let mut why = Vec::new();
        for id in &self.identities {
            match id.accepts(&signer) {
                Ok(()) => return Ok(signer.name()),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }
}

/// Hex SHA-256 of some bytes.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// The keyless evidence in a legacy layer's annotations, if it has a certificate.
fn layer_evidence(
    annotations: &HashMap<String, String>,
) -> Option<std::result::Result<keyless::Evidence<'static>, String>> {
    let cert = annotations
        .get(CERTIFICATE_ANNOTATION)
        .filter(|c| !c.trim().is_empty())?;
    Some(keyless::evidence_from_pem(
        cert,
        annotations
            .get(CHAIN_ANNOTATION)
            .map(String::as_str)
            .filter(|c| !c.trim().is_empty()),
        annotations.get(BUNDLE_ANNOTATION).map(String::as_str),
    ))
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

impl Verdict {
    /// Roughly the memory a verdict takes, for the cache's weigher.
    fn weight(&self) -> usize {
        let layer = |v: &LayerVerdict| {
            96 + v.layer.len() + v.reason.len() + v.signer.as_ref().map_or(0, String::len)
        };
        let layers: usize = self
            .signatures
            .iter()
            .chain(&self.attestations)
            .map(layer)
            .sum();
        let statements: usize = self
            .statements
            .iter()
            .map(|s| 64 + s.signer.len() + s.predicate_type.len() + s.statement.to_string().len())
            .sum();
        128 + self.reason.len() + layers + statements
    }
}

/// Verdicts by (image, requested name, manifest, requirement, attachment set): a change in the
/// image's attachments makes a new key.
pub struct VerdictCache {
    inner: moka::future::Cache<String, Arc<Verdict>>,
}

impl Default for VerdictCache {
    fn default() -> Self {
        VerdictCache::new()
    }
}

impl VerdictCache {
    /// An empty cache (32 MiB of verdicts, an hour each).
    pub fn new() -> VerdictCache {
        let inner = moka::future::Cache::builder()
            .weigher(|key: &String, v: &Arc<Verdict>| {
                u32::try_from(key.len() + v.weight()).unwrap_or(u32::MAX)
            })
            .max_capacity(32 << 20)
            .time_to_live(Duration::from_secs(3600))
            .build();
        VerdictCache { inner }
    }

    /// The key of one verification.
    pub fn key(
        image: &str,
        requested: &ImageRef,
        digest: &Digest,
        req: &Requirement,
        set: &AttachmentSet,
    ) -> String {
        let fingerprint: Vec<String> = set
            .items
            .iter()
            .map(|a| a.descriptor.digest.to_string())
            .collect();
        format!(
            "{image}|{}|{digest}|{}|{fingerprint:?}",
            requested.full(),
            req.cache_key()
        )
    }

    /// A cached verdict.
    pub async fn get(&self, key: &str) -> Option<Arc<Verdict>> {
        self.inner.get(key).await
    }

    /// Caches a verdict.
    pub async fn insert(&self, key: String, verdict: Arc<Verdict>) {
        self.inner.insert(key, verdict).await
    }
}

/// Verifies manifests from the proxy's own view, caching verdicts; concurrent verifications of
/// one image against one requirement share one computation.
pub struct Verifier {
    cache: Arc<Cache>,
    attachments: Arc<Attachments>,
    verdicts: VerdictCache,
    flights: crate::cache::singleflight::SingleFlight<String, Arc<Verdict>>,
    wait: Duration,
}

/// The largest signature, attestation or bundle payload read into memory.
pub const MAX_PAYLOAD: u64 = 4 << 20;
/// The most attachment layers read for one verification.
pub const MAX_LAYERS: usize = 64;
/// The most payload bytes read for one verification.
pub const MAX_READ: u64 = 16 << 20;

/// What one verification has read so far, against [`MAX_LAYERS`] and [`MAX_READ`].
#[derive(Default)]
struct Reading {
    layers: usize,
    bytes: u64,
    /// Whether layers were left unread (beyond [`MAX_LAYERS`]).
    cut: bool,
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
            verdicts: VerdictCache::new(),
            flights: Default::default(),
            wait,
        })
    }

    /// Forgets every cached verdict (the trust changed).
    pub fn forget_verdicts(&self) {
        self.verdicts.inner.invalidate_all();
    }

    /// Verifies the manifest `digest` of `<ns>/<repo>`, asked for as `requested`.
    pub async fn verify(
        self: &Arc<Self>,
        ns: &str,
        repo: &RepoName,
        requested: &ImageRef,
        digest: &Digest,
        req: &Requirement,
    ) -> Result<Arc<Verdict>> {
        if req.keys.is_empty() && req.identities.is_empty() {
            return Err(RegistryError::of(
                Code::Denied,
                "the requirement names no key and no keyless identity",
            ));
        }
        let set = self
            .attachments
            .wait_for(ns, repo, digest, self.wait)
            .await?;
        let key = VerdictCache::key(&format!("{ns}/{repo}"), requested, digest, req, &set);
        if let Some(v) = self.verdicts.get(&key).await {
            return Ok(v);
        }
        let this = Arc::clone(self);
        let (ns, repo, requested, digest, req, k) = (
            ns.to_string(),
            repo.clone(),
            requested.clone(),
            digest.clone(),
            req.clone(),
            key.clone(),
        );
        self.flights
            .run(key, async move {
                let verdict = Arc::new(
                    this.verify_now(&ns, &repo, &requested, &digest, &req, &set)
                        .await?,
                );
                this.verdicts.insert(k, Arc::clone(&verdict)).await;
                Ok(verdict)
            })
            .await
    }

    async fn verify_now(
        &self,
        ns: &str,
        repo: &RepoName,
        requested: &ImageRef,
        digest: &Digest,
        req: &Requirement,
        set: &AttachmentSet,
    ) -> Result<Verdict> {
        let threshold = req.threshold.max(1);
        let mut signatures = Vec::new();
        let mut reading = Reading::default();
        let proxy_path = format!(
            "{}/{repo}",
            self.cache.canonical_namespace(ns).unwrap_or(ns)
        );
        for layer in self
            .layers(ns, repo, set, Kind::Signature, &mut reading)
            .await?
        {
            signatures.push(check_signature(&layer, digest, requested, &proxy_path, req));
        }
        let mut attestations = Vec::new();
        let mut statements = Vec::new();
        if !req.attestations.is_empty() {
            for layer in self
                .layers(ns, repo, set, Kind::Attestation, &mut reading)
                .await?
            {
                let (verdict, statement) = check_attestation(&layer, digest, req);
                attestations.push(verdict);
                statements.extend(statement);
            }
        }
        let bundles = self
            .layers(ns, repo, set, Kind::Referrer, &mut reading)
            .await?;
        let bundles: Vec<Layer> = bundles
            .into_iter()
            .filter(|l| l.media_type == SIGSTORE_BUNDLE)
            .collect();
        if !bundles.is_empty() {
            let manifest = self
                .cache
                .manifest(ns, repo, &Reference::Digest(digest.clone()))
                .await?;
            for layer in &bundles {
                match check_bundle(layer, digest, &manifest.bytes, req) {
                    BundleOutcome::Signature(v) => signatures.push(v),
                    BundleOutcome::Attestation(v, statement) => {
                        attestations.push(v);
                        statements.extend(statement);
                    }
                }
            }
        }
        let signers: BTreeSet<String> = signatures
            .iter()
            .filter(|v| v.verified)
            .filter_map(|v| v.signer.clone())
            .collect();
        let mut missing = Vec::new();
        // a requirement that names attestations asks for them alone (as cosign
        // verify-attestation does): their signers count, not the image's signatures
        if req.attestations.is_empty() && signers.len() < threshold {
            let reasons: BTreeSet<&str> = signatures
                .iter()
                .filter(|v| !v.verified)
                .map(|v| v.reason.as_str())
                .collect();
            let why = if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.into_iter().collect::<Vec<_>>().join("; "))
            };
            missing.push(format!(
                "{} of {threshold} required signers verified{why}",
                signers.len()
            ));
        }
        for wanted in &req.attestations {
            let t = predicate_type(wanted);
            let by: BTreeSet<&str> = statements
                .iter()
                .filter(|s| s.predicate_type == t)
                .map(|s| s.signer.as_str())
                .collect();
            if by.len() < threshold {
                missing.push(format!(
                    "no verified {t} attestation by {threshold} signer(s)"
                ));
            }
        }
        let ok = missing.is_empty();
        let method = if !bundles.is_empty() {
            VerifyMethod::Bundle
        } else if !req.attestations.is_empty() {
            VerifyMethod::Attestation
        } else if !req.identities.is_empty() {
            VerifyMethod::Keyless
        } else {
            VerifyMethod::Key
        };
        self.cache.metrics().verify.verdict(ok, method);
        let reason = if ok {
            // who made it pass: the signers, or with attestations asked for, their attesters
            let by: BTreeSet<&str> = if req.attestations.is_empty() {
                signers.iter().map(String::as_str).collect()
            } else {
                let wanted: Vec<String> =
                    req.attestations.iter().map(|w| predicate_type(w)).collect();
                statements
                    .iter()
                    .filter(|s| wanted.contains(&s.predicate_type))
                    .map(|s| s.signer.as_str())
                    .collect()
            };
            format!(
                "verified by {}",
                by.into_iter().collect::<Vec<_>>().join(", ")
            )
        } else if signatures.is_empty() && attestations.is_empty() {
            "no signatures found".to_string()
        } else {
            missing.join("; ")
        };
        Ok(Verdict {
            ok,
            reason,
            signatures,
            attestations,
            statements,
        })
    }

    /// The layers (annotations and blob bytes) of the attachments of one kind; a layer over
    /// [`MAX_PAYLOAD`], or beyond what one verification reads, is not read but refused.
    async fn layers(
        &self,
        ns: &str,
        repo: &RepoName,
        set: &AttachmentSet,
        kind: Kind,
        reading: &mut Reading,
    ) -> Result<Vec<Layer>> {
        let mut out = Vec::new();
        let wanted = |a: &&crate::attachments::Attachment| {
            a.kind == kind
                && (kind != Kind::Referrer
                    || a.descriptor.artifact_type.as_deref() == Some(SIGSTORE_BUNDLE))
        };
        for a in set.items.iter().filter(wanted) {
            let m = self
                .cache
                .manifest(ns, repo, &Reference::Digest(a.descriptor.digest.clone()))
                .await?;
            let manifest = Manifest::parse(&m.bytes)?;
            for l in manifest.layers {
                if reading.layers >= MAX_LAYERS {
                    // one refusal stands for all the rest: nothing more is looked at
                    if !reading.cut {
                        reading.cut = true;
                        let refusal = Some(format!(
                            "not read: one verification reads at most {MAX_LAYERS} layers"
                        ));
                        out.push(Layer {
                            digest: l.digest,
                            media_type: l.media_type,
                            annotations: HashMap::new(),
                            bytes: bytes::Bytes::new(),
                            refusal,
                        });
                    }
                    return Ok(out);
                }
                let (bytes, refusal) = match self.read_payload(ns, repo, &l, reading).await? {
                    Ok(bytes) => (bytes, None),
                    Err(refusal) => (bytes::Bytes::new(), Some(refusal)),
                };
                let annotations: HashMap<String, String> = l
                    .annotations
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                    .collect();
                out.push(Layer {
                    digest: l.digest,
                    media_type: l.media_type,
                    annotations,
                    bytes,
                    refusal,
                });
            }
        }
        Ok(out)
    }

    /// A layer's payload, or why it is not read: over [`MAX_PAYLOAD`] (as declared, or as
    /// stored), or beyond [`MAX_LAYERS`] / [`MAX_READ`] for this verification.
    async fn read_payload(
        &self,
        ns: &str,
        repo: &RepoName,
        layer: &crate::manifest::Descriptor,
        reading: &mut Reading,
    ) -> Result<std::result::Result<bytes::Bytes, String>> {
        reading.layers += 1;
        let too_large = |size: u64| {
            format!(
                "payload is {size} bytes, over the {} MiB limit",
                MAX_PAYLOAD >> 20
            )
        };
        let declared = u64::try_from(layer.size).unwrap_or(0);
        if declared > MAX_PAYLOAD {
            return Ok(Err(too_large(declared)));
        }
        self.cache.ensure_blob(ns, repo, &layer.digest).await?;
        let unknown =
            || RegistryError::of(Code::BlobUnknown, format!("blob unknown: {}", layer.digest));
        let size = self
            .cache
            .store()
            .blob_size(&layer.digest)
            .await?
            .ok_or_else(unknown)?;
        if size > MAX_PAYLOAD {
            return Ok(Err(too_large(size)));
        }
        if reading.bytes + size > MAX_READ {
            return Ok(Err(format!(
                "not read: one verification reads at most {} MiB",
                MAX_READ >> 20
            )));
        }
        reading.bytes += size;
        Ok(Ok(self
            .cache
            .store()
            .read_small(&layer.digest)
            .await?
            .ok_or_else(unknown)?))
    }
}

struct Layer {
    digest: Digest,
    media_type: String,
    annotations: HashMap<String, String>,
    bytes: bytes::Bytes,
    /// Why its payload was not read (too large), if it was not.
    refusal: Option<String>,
}

fn verdict(
    layer: &Layer,
    signer: Option<&str>,
    verified: bool,
    reason: impl Into<String>,
) -> LayerVerdict {
    LayerVerdict {
        layer: layer.digest.to_string(),
        signer: signer.map(str::to_string),
        verified,
        reason: reason.into(),
    }
}

/// Checks one simple-signing layer: signature (key or keyless), digest, type, identity.
/// `proxy_path` (`<namespace>/<repo>`) also matches signatures pushed through the proxy, which
/// name the image as `<proxy host>/<namespace>/<repo>`.
fn check_signature(
    layer: &Layer,
    digest: &Digest,
    requested: &ImageRef,
    proxy_path: &str,
    req: &Requirement,
) -> LayerVerdict {
    if let Some(refusal) = &layer.refusal {
        return verdict(layer, None, false, refusal.clone());
    }
    if layer.media_type != SIMPLE_SIGNING {
        return verdict(
            layer,
            None,
            false,
            format!("not a simple-signing layer ({})", layer.media_type),
        );
    }
    let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
        return verdict(layer, None, false, "no signature annotation");
    };
    let signer = match req.signer(
        sig,
        &layer.bytes,
        layer_evidence(&layer.annotations),
        &[sha256_hex(&layer.bytes)],
    ) {
        Ok(s) => s,
        Err(reason) => return verdict(layer, None, false, reason),
    };
    let signer_name = signer;
    let signer = Some(signer_name.as_str());
    let payload = match strict::parse(&layer.bytes, strict::PAYLOAD) {
        Ok(v) => v,
        Err(e) => return verdict(layer, signer, false, format!("payload refused: {e}")),
    };
    let critical = &payload["critical"];
    if critical["type"] != "cosign container image signature" {
        return verdict(
            layer,
            signer,
            false,
            format!(
                "payload type is {}, not a container image signature",
                critical["type"]
            ),
        );
    }
    if critical["image"]["docker-manifest-digest"].as_str() != Some(&digest.to_string()) {
        return verdict(
            layer,
            signer,
            false,
            format!(
                "payload is for {}, not {digest}",
                critical["image"]["docker-manifest-digest"]
            ),
        );
    }
    let claimed = critical["identity"]["docker-reference"]
        .as_str()
        .unwrap_or("");
    if let Err(reason) = req.identity.accepts(requested, claimed) {
        let claimed_ref = ImageRef::parse(claimed);
        let through_proxy = claimed_ref
            .repository
            .split_once('/')
            .filter(|(_, path)| *path == proxy_path)
            .map(|(host, _)| ImageRef {
                repository: format!("{host}/{proxy_path}"),
                tag: requested.tag.clone(),
                digest: requested.digest.clone(),
            });
        if through_proxy.is_none_or(|r| req.identity.accepts(&r, claimed).is_err()) {
            return verdict(layer, signer, false, reason);
        }
    }
    verdict(layer, signer, true, format!("signed by {signer_name}"))
}

/// DSSE pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Checks one DSSE attestation layer: envelope signature, statement subject, predicate type.
fn check_attestation(
    layer: &Layer,
    digest: &Digest,
    req: &Requirement,
) -> (LayerVerdict, Option<Statement>) {
    let fail = |k: Option<&str>, r: String| (verdict(layer, k, false, r), None);
    if let Some(refusal) = &layer.refusal {
        return fail(None, refusal.clone());
    }
    let envelope = match strict::parse(&layer.bytes, strict::ENVELOPE) {
        Ok(v) => v,
        Err(e) => return fail(None, format!("envelope refused: {e}")),
    };
    let payload_type = envelope["payloadType"].as_str().unwrap_or("");
    let Some(payload) = envelope["payload"]
        .as_str()
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
    else {
        return fail(None, "envelope payload is not base64".into());
    };
    let message = pae(payload_type, &payload);
    let sigs: Vec<&str> = envelope["signatures"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["sig"].as_str()).collect())
        .unwrap_or_default();
    let hashes = [sha256_hex(&payload)];
    let mut reason = "envelope has no signature".to_string();
    let mut found = None;
    for sig in &sigs {
        match req.signer(sig, &message, layer_evidence(&layer.annotations), &hashes) {
            Ok(s) => {
                found = Some(s);
                break;
            }
            Err(r) => reason = r,
        }
    }
    let Some(signer) = found else {
        return fail(
            None,
            reason.replace("signature does not", "envelope signature does not"),
        );
    };
    check_statement(layer, &signer, payload_type, &payload, digest)
}

/// Checks a verified DSSE payload: an in-toto statement about `digest`.
fn check_statement(
    layer: &Layer,
    signer: &str,
    payload_type: &str,
    payload: &[u8],
    digest: &Digest,
) -> (LayerVerdict, Option<Statement>) {
    let fail = |r: String| (verdict(layer, Some(signer), false, r), None);
    if payload_type != INTOTO_PAYLOAD {
        return fail(format!("payload type is {payload_type}, not in-toto"));
    }
    let statement = match strict::parse(payload, strict::STATEMENT) {
        Ok(v) => v,
        Err(e) => return fail(format!("statement refused: {e}")),
    };
    let hex = digest.hex();
    let alg = digest.algorithm().as_str();
    let about_us = statement["subject"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x["digest"][alg].as_str() == Some(hex)));
    if !about_us {
        return fail(format!("statement subject is not {digest}"));
    }
    let predicate_type = statement["predicateType"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let v = verdict(
        layer,
        Some(signer),
        true,
        format!("{predicate_type} attested by {signer}"),
    );
    (
        v,
        Some(Statement {
            predicate_type,
            signer: signer.to_string(),
            statement,
        }),
    )
}

/// What a Sigstore bundle referrer turned out to be.
enum BundleOutcome {
    /// A signature of the image.
    Signature(LayerVerdict),
    /// An attestation about it.
    Attestation(LayerVerdict, Option<Statement>),
}

/// Checks one Sigstore bundle layer: a message signature over the image manifest
/// (`manifest`), or a DSSE statement about it (a cosign signature statement, or an attestation).
fn check_bundle(
    layer: &Layer,
    digest: &Digest,
    manifest: &[u8],
    req: &Requirement,
) -> BundleOutcome {
    if let Some(refusal) = &layer.refusal {
        return BundleOutcome::Signature(verdict(layer, None, false, refusal.clone()));
    }
    let b = match bundle::Bundle::parse(&layer.bytes) {
        Ok(b) => b,
        Err(e) => return BundleOutcome::Signature(verdict(layer, None, false, e)),
    };
    match &b.content {
        bundle::Content::Message {
            digest: signed,
            signature,
        } => {
            if signed != digest.hex() {
                return BundleOutcome::Signature(verdict(
                    layer,
                    None,
                    false,
                    format!("bundle signs sha256:{signed}, not {digest}"),
                ));
            }
            let v = match req.signer(
                signature,
                manifest,
                b.evidence(),
                std::slice::from_ref(signed),
            ) {
                Ok(s) => verdict(layer, Some(&s), true, format!("signed by {s}")),
                Err(reason) => verdict(layer, None, false, reason),
            };
            BundleOutcome::Signature(v)
        }
        bundle::Content::Dsse {
            payload_type,
            payload,
            signatures,
        } => {
            let message = pae(payload_type, payload);
            let hashes = [sha256_hex(payload)];
            let mut reason = "envelope has no signature".to_string();
            let mut signer = None;
            for sig in signatures {
                match req.signer(sig, &message, b.evidence(), &hashes) {
                    Ok(s) => {
                        signer = Some(s);
                        break;
                    }
                    Err(r) => reason = r,
                }
            }
            let Some(signer) = signer else {
                return BundleOutcome::Attestation(verdict(layer, None, false, reason), None);
            };
            let (v, statement) = check_statement(layer, &signer, payload_type, payload, digest);
            match statement {
                Some(st) if st.predicate_type == COSIGN_SIGN_PREDICATE => {
                    BundleOutcome::Signature(LayerVerdict {
                        reason: format!("signed by {signer}"),
                        ..v
                    })
                }
                other => BundleOutcome::Attestation(v, other),
            }
        }
    }
}

/// Named trust material from `[trust.<name>]`: keys, and roots for keyless signatures.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// Keys by trust name.
    pub keys: HashMap<String, Vec<TrustedKey>>,
    /// Keyless trust roots by trust name.
    pub roots: HashMap<String, Arc<TrustRoot>>,
}

impl TrustStore {
    /// Loads every `[trust.<name>]` entry; an error is (dotted key, problem naming the file).
    pub fn load(
        entries: &HashMap<String, crate::config::TrustConfig>,
    ) -> std::result::Result<TrustStore, (String, String)> {
        let mut store = TrustStore::default();
        for (name, t) in entries {
            let at = |field: &str| format!("trust.{name}.{field}");
            if t.keys.is_empty() && t.trusted_root.is_none() && t.ca_certs.is_empty() {
                return Err((
                    format!("trust.{name}"),
                    "names no keys, no trusted_root and no ca_certs".into(),
                ));
            }
            let keys = t
                .keys
                .iter()
                .map(|f| TrustedKey::from_file(f).map_err(|e| (at("keys"), e)))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            store.keys.insert(name.clone(), keys);
            let root = match (
                &t.trusted_root,
                t.ca_certs.is_empty(),
                t.rekor_keys.is_empty(),
            ) {
                (Some(_), false, _) | (Some(_), _, false) => {
                    return Err((
                        at("trusted_root"),
                        "give either trusted_root or ca_certs with rekor_keys, not both".into(),
                    ))
                }
                (Some(path), true, true) => Some(
                    TrustRoot::from_trusted_root(name, path)
                        .map_err(|e| (at("trusted_root"), e))?,
                ),
                (None, false, false) => Some(
                    TrustRoot::from_pem_files(name, &t.ca_certs, &t.rekor_keys)
                        .map_err(|e| (at("ca_certs"), e))?,
                ),
                (None, false, true) => {
                    return Err((
                        at("rekor_keys"),
                        "ca_certs need the transparency log's rekor_keys".into(),
                    ))
                }
                (None, true, false) => {
                    return Err((
                        at("ca_certs"),
                        "rekor_keys need the certificate authorities' ca_certs".into(),
                    ))
                }
                (None, true, true) => None,
            };
            if let Some(root) = root {
                store.roots.insert(name.clone(), Arc::new(root));
            }
        }
        Ok(store)
    }

    /// Loads the trust entries of a configuration, errors as `trust.<name>.<field>: problem`.
    pub fn from_config(config: &crate::config::Config) -> std::result::Result<TrustStore, String> {
        TrustStore::load(&config.trust).map_err(|(key, problem)| format!("{key}: {problem}"))
    }

    /// The keys and keyless roots of the named entries.
    pub fn named(
        &self,
        names: &[String],
    ) -> std::result::Result<(Vec<TrustedKey>, Vec<Arc<TrustRoot>>), String> {
        let mut keys = Vec::new();
        let mut roots = Vec::new();
        for name in names {
            let k = self
                .keys
                .get(name)
                .ok_or_else(|| format!("no [trust.{name}] is configured"))?;
            keys.extend(k.iter().cloned());
            roots.extend(self.roots.get(name).cloned());
        }
        Ok((keys, roots))
    }

    /// Every configured keyless root.
    pub fn all_roots(&self) -> Vec<Arc<TrustRoot>> {
        let mut names: Vec<&String> = self.roots.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| Arc::clone(&self.roots[n]))
            .collect()
    }
}

/// The name a proxied image has at its upstream (what signatures made there claim):
/// `<upstream host>/<repo>`; for a local namespace, `<namespace>/<repo>`.
pub fn upstream_identity(
    cache: &Cache,
    ns: &str,
    repo: &RepoName,
    reference: &Reference,
) -> Result<ImageRef> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p1363_signatures_become_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r: high bit set, needs a zero byte in front
        raw[63] = 0x01; // s: 31 leading zero bytes dropped
        let der = p1363_to_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 33 + 2 + 1, 0x02, 33]);
        assert_eq!(der[4], 0x00);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 0x01]);
        assert!(
            p1363_to_der(&[1u8; 70]).is_none(),
            "DER-sized input is left alone"
        );
    }

    /// `r||s` of a DER ECDSA signature, each padded to `half` bytes.
    fn der_to_p1363(der: &[u8], half: usize) -> Vec<u8> {
        let mut at = if der[1] & 0x80 != 0 {
            2 + (der[1] & 0x7f) as usize
        } else {
            2
        };
        let mut out = Vec::new();
        for _ in 0..2 {
            let len = der[at + 1] as usize;
            let int = &der[at + 2..at + 2 + len];
            let int = &int[int.len().saturating_sub(half)..];
            out.extend(std::iter::repeat_n(0u8, half - int.len()));
            out.extend_from_slice(int);
            at += 2 + len;
        }
        out
    }

    #[test]
    fn raw_r_s_signatures_verify_on_every_curve() {
        for (scheme, half) in [
            (SigningScheme::ECDSA_P256_SHA256_ASN1, 32),
            (SigningScheme::ECDSA_P384_SHA384_ASN1, 48),
            (SigningScheme::ECDSA_P521_SHA512_ASN1, 66),
        ] {
            let name = scheme.to_string();
            let (s, key) = signer(scheme, &name);
            for _ in 0..8 {
                let raw = der_to_p1363(&s.sign(b"these bytes").unwrap(), half);
                assert_eq!(raw.len(), 2 * half);
                assert!(key.check(&b64(&raw), b"these bytes"), "{name}");
                assert!(!key.check(&b64(&raw), b"other bytes"), "{name}");
            }
        }
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // from the DSSE protocol document
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn predicate_type_aliases() {
        assert_eq!(
            predicate_type("slsaprovenance"),
            "https://slsa.dev/provenance/v0.2"
        );
        assert_eq!(
            predicate_type("https://example.com/x"),
            "https://example.com/x"
        );
    }

    use sigstore::crypto::{SigStoreSigner, SigningScheme};

    /// A signer of `scheme` and the key that verifies it, trusted under `name`.
    fn signer(scheme: SigningScheme, name: &str) -> (SigStoreSigner, TrustedKey) {
        let s = scheme.create_signer().unwrap();
        let pem = s
            .to_sigstore_keypair()
            .unwrap()
            .public_key_to_pem()
            .unwrap();
        let key = TrustedKey::from_pem(name, pem.as_bytes()).unwrap();
        (s, key)
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn image() -> Digest {
        Digest::sha256_of(b"the image manifest")
    }

    fn layer(media_type: &str, bytes: Vec<u8>, signature: Option<String>) -> Layer {
        let annotations = signature
            .map(|s| HashMap::from([(SIGNATURE_ANNOTATION.to_string(), s)]))
            .unwrap_or_default();
        Layer {
            digest: Digest::sha256_of(&bytes),
            media_type: media_type.into(),
            annotations,
            bytes: bytes.into(),
            refusal: None,
        }
    }

    fn requirement(keys: Vec<TrustedKey>, threshold: usize) -> Requirement {
        Requirement {
            keys,
            threshold,
            identity: SignedIdentity::MatchRepository,
            ..Requirement::default()
        }
    }

    fn payload(digest: &Digest) -> Vec<u8> {
        format!(r#"{{"critical":{{"identity":{{"docker-reference":"registry.example/app"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#).into_bytes()
    }

    fn signature_layer(s: &SigStoreSigner, digest: &Digest) -> Layer {
        let p = payload(digest);
        let sig = b64(&s.sign(&p).unwrap());
        layer(SIMPLE_SIGNING, p, Some(sig))
    }

    /// A DSSE envelope around an in-toto statement about `subject`, signed by `s` over
    /// `signed_type` (the envelope then says `payload_type`).
    fn envelope(
        s: &SigStoreSigner,
        subject: &Digest,
        signed_type: &str,
        payload_type: &str,
        tamper: bool,
    ) -> Layer {
        let statement = format!(
            r#"{{"_type":"https://in-toto.io/Statement/v0.1","subject":[{{"name":"registry.example/app","digest":{{"sha256":"{}"}}}}],"predicateType":"https://slsa.dev/provenance/v0.2","predicate":{{"builder":{{"id":"ci"}}}}}}"#,
            subject.hex()
        );
        let sig = b64(&s.sign(&pae(signed_type, statement.as_bytes())).unwrap());
        let carried = if tamper {
            statement.replace("\"ci\"", "\"evil\"")
        } else {
            statement
        };
        let env = format!(
            r#"{{"payloadType":"{payload_type}","payload":"{}","signatures":[{{"sig":"{sig}"}}]}}"#,
            b64(carried.as_bytes())
        );
        layer(
            "application/vnd.dsse.envelope.v1+json",
            env.into_bytes(),
            None,
        )
    }

    #[test]
    fn rsa_p384_and_ed25519_keys_verify_and_refuse_other_bytes() {
        for scheme in [
            SigningScheme::RSA_PKCS1_SHA256(2048),
            SigningScheme::ECDSA_P384_SHA384_ASN1,
            SigningScheme::ED25519,
            SigningScheme::ECDSA_P256_SHA256_ASN1,
        ] {
            let name = scheme.to_string();
            let (s, key) = signer(scheme, &name);
            let v = check_signature(
                &signature_layer(&s, &image()),
                &image(),
                &ImageRef::parse("registry.example/app"),
                "up/app",
                &requirement(vec![key.clone()], 1),
            );
            assert!(v.verified, "{name}: {}", v.reason);
            let sig = b64(&s.sign(b"these bytes").unwrap());
            assert!(
                key.check(&sig, b"these bytes") && !key.check(&sig, b"other bytes"),
                "{name}"
            );
        }
    }

    #[test]
    fn attestations_about_other_images_tampered_or_mistyped_do_not_verify() {
        let (s, key) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1, "release");
        let req = requirement(vec![key], 1);
        let (good, _) = check_attestation(
            &envelope(&s, &image(), INTOTO_PAYLOAD, INTOTO_PAYLOAD, false),
            &image(),
            &req,
        );
        assert!(good.verified, "{}", good.reason);
        let (other, st) = check_attestation(
            &envelope(
                &s,
                &Digest::sha256_of(b"another image"),
                INTOTO_PAYLOAD,
                INTOTO_PAYLOAD,
                false,
            ),
            &image(),
            &req,
        );
        assert!(!other.verified && st.is_none());
        assert!(
            other.reason.contains("subject"),
            "a statement about another image: {}",
            other.reason
        );
        let (tampered, _) = check_attestation(
            &envelope(&s, &image(), INTOTO_PAYLOAD, INTOTO_PAYLOAD, true),
            &image(),
            &req,
        );
        assert!(!tampered.verified);
        assert!(
            tampered
                .reason
                .contains("envelope signature does not verify"),
            "{}",
            tampered.reason
        );
        // signed as one payload type, claiming another: the signature covers the type
        let (relabelled, _) = check_attestation(
            &envelope(&s, &image(), "application/json", INTOTO_PAYLOAD, false),
            &image(),
            &req,
        );
        assert!(!relabelled.verified, "{}", relabelled.reason);
        // signed as what it says, but not in-toto
        let (mistyped, _) = check_attestation(
            &envelope(&s, &image(), "application/json", "application/json", false),
            &image(),
            &req,
        );
        assert!(!mistyped.verified);
        assert!(
            mistyped
                .reason
                .contains("payload type is application/json, not in-toto"),
            "{}",
            mistyped.reason
        );
    }

    #[test]
    fn a_bundle_signing_another_manifest_does_not_count() {
        let (s, key) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1, "release");
        let other = b"another manifest";
        let bundle = format!(
            r#"{{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{{"publicKey":{{"hint":"k"}}}},"messageSignature":{{"messageDigest":{{"algorithm":"SHA2_256","digest":"{}"}},"signature":"{}"}}}}"#,
            b64(&<sha2::Sha256 as sha2::Digest>::digest(other)),
            b64(&s.sign(other).unwrap())
        );
        match check_bundle(
            &layer(SIGSTORE_BUNDLE, bundle.into_bytes(), None),
            &image(),
            b"the image manifest",
            &requirement(vec![key], 1),
        ) {
            BundleOutcome::Signature(v) => {
                assert!(!v.verified);
                assert!(
                    v.reason.starts_with("bundle signs sha256:")
                        && v.reason.ends_with(&format!("not {}", image())),
                    "{}",
                    v.reason
                );
            }
            BundleOutcome::Attestation(v, _) => {
                panic!("a message signature read as an attestation: {}", v.reason)
            }
        }
    }

    #[test]
    fn one_key_listed_twice_is_one_signer() {
        let (s, key) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1, "keys/a.pub");
        let copy = TrustedKey {
            name: "keys/copy-of-a.pub".into(),
            ..key.clone()
        };
        let req = requirement(vec![key, copy], 2);
        let layers = [signature_layer(&s, &image()), signature_layer(&s, &image())];
        let verdicts: Vec<LayerVerdict> = layers
            .iter()
            .map(|l| {
                check_signature(
                    l,
                    &image(),
                    &ImageRef::parse("registry.example/app"),
                    "up/app",
                    &req,
                )
            })
            .collect();
        assert!(verdicts.iter().all(|v| v.verified));
        let signers: BTreeSet<String> = verdicts.iter().filter_map(|v| v.signer.clone()).collect();
        assert_eq!(signers.len(), 1, "two signatures by one key, listed twice, are one signer of the two required: {signers:?}");
    }
}
