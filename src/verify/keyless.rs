//! Keyless (Fulcio certificate) signatures: the trust root they chain to, the Rekor entry that
//! timestamps them, and the signer identity constraints they must meet. All offline.
//!
//! A keyless signature is trusted when: the transparency log entry's signed entry timestamp
//! (SET) verifies with a configured Rekor key; the entry's body binds the signed bytes' hash to
//! the signing certificate; the certificate chains to a configured CA at the entry's integrated
//! time (Fulcio certificates live minutes, the log proves the signature was made in that
//! window); and the certificate's subject and OIDC issuer meet the requirement's identity.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use sigstore::crypto::{CosignVerificationKey, Signature};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The code-signing extended key usage (1.3.6.1.5.5.7.3.3), DER content bytes.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Fulcio's OIDC issuer extension, raw string (1.3.6.1.4.1.57264.1.1).
const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// Fulcio's OIDC issuer extension, DER UTF8String (1.3.6.1.4.1.57264.1.8).
const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";

/// A GitHub Actions claim Fulcio writes into the certificate (raw-string extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GithubClaim {
    /// The event that triggered the workflow (`push`), 1.3.6.1.4.1.57264.1.2.
    WorkflowTrigger,
    /// The commit, 1.3.6.1.4.1.57264.1.3.
    WorkflowSha,
    /// The workflow's name, 1.3.6.1.4.1.57264.1.4.
    WorkflowName,
    /// `owner/repo`, 1.3.6.1.4.1.57264.1.5.
    WorkflowRepository,
    /// The git ref (`refs/heads/main`), 1.3.6.1.4.1.57264.1.6.
    WorkflowRef,
}

impl GithubClaim {
    fn oid(self) -> &'static str {
        match self {
            GithubClaim::WorkflowTrigger => "1.3.6.1.4.1.57264.1.2",
            GithubClaim::WorkflowSha => "1.3.6.1.4.1.57264.1.3",
            GithubClaim::WorkflowName => "1.3.6.1.4.1.57264.1.4",
            GithubClaim::WorkflowRepository => "1.3.6.1.4.1.57264.1.5",
            GithubClaim::WorkflowRef => "1.3.6.1.4.1.57264.1.6",
        }
    }

    fn label(self) -> &'static str {
        match self {
            GithubClaim::WorkflowTrigger => "github-workflow-trigger",
            GithubClaim::WorkflowSha => "github-workflow-sha",
            GithubClaim::WorkflowName => "github-workflow-name",
            GithubClaim::WorkflowRepository => "github-workflow-repository",
            GithubClaim::WorkflowRef => "github-workflow-ref",
        }
    }
}

/// Who a keyless signature must come from, as cosign's `--certificate-*` flags say it.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `--certificate-oidc-issuer`: the exact issuer.
    pub issuer: Option<String>,
    /// `--certificate-oidc-issuer-regexp`.
    pub issuer_regexp: Option<regex::Regex>,
    /// `--certificate-identity`: the exact subject (email or URI).
    pub subject: Option<String>,
    /// `--certificate-identity-regexp`.
    pub subject_regexp: Option<regex::Regex>,
    /// `--certificate-github-workflow-*`: exact values of GitHub claims.
    pub github: Vec<(GithubClaim, String)>,
}

impl Identity {
    /// Builds an identity; regexps are compiled, and at least an issuer and a subject form
    /// must be given (as cosign insists).
    pub fn new(
        issuer: Option<String>,
        issuer_regexp: Option<&str>,
        subject: Option<String>,
        subject_regexp: Option<&str>,
    ) -> Result<Identity, String> {
        let compile = |what: &str, r: Option<&str>| {
            r.map(|r| regex::Regex::new(r).map_err(|e| format!("{what} {r:?}: {e}")))
                .transpose()
        };
        let id = Identity {
            issuer,
            issuer_regexp: compile("issuer regexp", issuer_regexp)?,
            subject,
            subject_regexp: compile("subject regexp", subject_regexp)?,
            github: Vec::new(),
        };
        if id.issuer.is_none() && id.issuer_regexp.is_none() {
            return Err("a keyless identity needs an issuer or issuer regexp".into());
        }
        if id.subject.is_none() && id.subject_regexp.is_none() {
            return Err("a keyless identity needs a subject or subject regexp".into());
        }
        Ok(id)
    }

    /// A stable text form, for cache keys.
    pub fn key(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            self.issuer,
            self.issuer_regexp.as_ref().map(|r| r.as_str()),
            self.subject,
            self.subject_regexp.as_ref().map(|r| r.as_str()),
            self.github
        )
    }

    /// Whether a certified signer meets this identity; the error says which part did not.
    pub fn accepts(&self, signer: &Certified) -> Result<(), String> {
        let issuer = signer.issuer.as_deref().unwrap_or("");
        if let Some(want) = &self.issuer {
            if issuer != want {
                return Err(format!(
                    "certificate issuer is {}, not {want}",
                    shown(issuer)
                ));
            }
        }
        if let Some(re) = &self.issuer_regexp {
            if !re.is_match(issuer) {
                return Err(format!(
                    "certificate issuer {} does not match {}",
                    shown(issuer),
                    re.as_str()
                ));
            }
        }
        let subjects = &signer.subjects;
        if let Some(want) = &self.subject {
            if !subjects.iter().any(|s| s == want) {
                return Err(format!(
                    "certificate subject is {}, not {want}",
                    listed(subjects)
                ));
            }
        }
        if let Some(re) = &self.subject_regexp {
            if !subjects.iter().any(|s| re.is_match(s)) {
                return Err(format!(
                    "certificate subject {} does not match {}",
                    listed(subjects),
                    re.as_str()
                ));
            }
        }
        for (claim, want) in &self.github {
            let got = signer
                .github
                .iter()
                .find(|(c, _)| c == claim)
                .map(|(_, v)| v.as_str());
            if got != Some(want.as_str()) {
                return Err(format!(
                    "certificate {} is {}, not {want}",
                    claim.label(),
                    shown(got.unwrap_or(""))
                ));
            }
        }
        Ok(())
    }
}

/// A certificate value as a message shows it: itself, or "absent".
fn shown(value: &str) -> &str {
    if value.is_empty() {
        "absent"
    } else {
        value
    }
}

/// Certificate subjects as a message shows them: comma-separated, or "absent".
fn listed(subjects: &[String]) -> String {
    if subjects.is_empty() {
        "absent".into()
    } else {
        subjects.join(", ")
    }
}

/// A validity window from a trusted root (unix seconds; open ends allowed).
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: Option<i64>,
    end: Option<i64>,
}

impl Window {
    fn contains(&self, t: i64) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

/// A certificate authority: its root (the trust anchor) and intermediates.
struct Authority {
    root: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    window: Window,
}

/// A transparency log key.
struct Log {
    /// Hex SHA-256 of the key's DER SubjectPublicKeyInfo (Rekor's log ID).
    id: String,
    key: CosignVerificationKey,
    window: Window,
}

/// Trust material for keyless signatures: Fulcio-like CAs and Rekor keys.
pub struct TrustRoot {
    /// The `[trust.<name>]` entry it came from.
    pub name: String,
    /// SHA-256 of the files it was read from: what cached verdicts are keyed by.
    pub fingerprint: String,
    authorities: Vec<Authority>,
    logs: Vec<Log>,
}

impl std::fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoot")
            .field("name", &self.name)
            .field("authorities", &self.authorities.len())
            .field("logs", &self.logs.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrustedRootJson {
    #[serde(default)]
    tlogs: Vec<TlogJson>,
    #[serde(default)]
    certificate_authorities: Vec<CaJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogJson {
    public_key: PublicKeyJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicKeyJson {
    raw_bytes: String,
    #[serde(default)]
    valid_for: Option<ValidForJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaJson {
    cert_chain: CertChainJson,
    #[serde(default)]
    valid_for: Option<ValidForJson>,
}

#[derive(Deserialize)]
struct CertChainJson {
    certificates: Vec<RawBytesJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytesJson {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct ValidForJson {
    start: Option<String>,
    end: Option<String>,
}

fn window(v: &Option<ValidForJson>) -> Result<Window, String> {
    let parse = |s: &Option<String>| -> Result<Option<i64>, String> {
        s.as_deref()
            .map(|t| {
                humantime::parse_rfc3339_weak(t)
                    .map_err(|e| format!("bad time {t:?}: {e}"))
                    .map(unix)
            })
            .transpose()
    };
    match v {
        Some(v) => Ok(Window {
            start: parse(&v.start)?,
            end: parse(&v.end)?,
        }),
        None => Ok(Window::default()),
    }
}

fn unix(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn log_from_spki(der: &[u8], window: Window) -> Result<Log, String> {
    let key = CosignVerificationKey::try_from_der(der)
        .map_err(|e| format!("not a usable transparency log key: {e}"))?;
    let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der));
    Ok(Log { id, key, window })
}

fn authority(chain: Vec<CertificateDer<'static>>, window: Window) -> Result<Authority, String> {
    let mut chain = chain;
    let root = chain.pop().ok_or("a certificate chain is empty")?;
    webpki::anchor_from_trusted_cert(&root)
        .map_err(|e| format!("the root certificate is not usable: {e:?}"))?;
    Ok(Authority {
        root,
        intermediates: chain,
        window,
    })
}

fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs =
        Certificate::load_pem_chain(pem).map_err(|e| format!("not PEM certificates: {e}"))?;
    certs
        .iter()
        .map(|c| {
            c.to_der()
                .map(CertificateDer::from)
                .map_err(|e| e.to_string())
        })
        .collect()
}

impl TrustRoot {
    /// Reads a Sigstore `trusted_root.json`: its certificate authorities and transparency logs.
    pub fn from_trusted_root(name: &str, path: &Path) -> Result<TrustRoot, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json: TrustedRootJson = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: not a trusted_root.json: {e}", path.display()))?;
        let bad = |what: &str, e: String| format!("{}: {what}: {e}", path.display());
        let mut authorities = Vec::new();
        for (i, ca) in json.certificate_authorities.iter().enumerate() {
            let chain = ca
                .cert_chain
                .certificates
                .iter()
                .map(|c| {
                    B64.decode(&c.raw_bytes)
                        .map(CertificateDer::from)
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&format!("certificateAuthorities[{i}]"), e))?;
            authorities.push(
                authority(
                    chain,
                    window(&ca.valid_for).map_err(|e| bad("validFor", e))?,
                )
                .map_err(|e| bad(&format!("certificateAuthorities[{i}]"), e))?,
            );
        }
        let mut logs = Vec::new();
        for (i, t) in json.tlogs.iter().enumerate() {
            let der = B64
                .decode(&t.public_key.raw_bytes)
                .map_err(|e| bad(&format!("tlogs[{i}].publicKey"), e.to_string()))?;
            logs.push(
                log_from_spki(
                    &der,
                    window(&t.public_key.valid_for).map_err(|e| bad("validFor", e))?,
                )
                .map_err(|e| bad(&format!("tlogs[{i}]"), e))?,
            );
        }
        TrustRoot::checked(name, authorities, logs, &text)
    }

    /// Builds a root from PEM files: each CA file a chain ending in its root, each Rekor file
    /// a public key.
    pub fn from_pem_files(
        name: &str,
        ca_files: &[std::path::PathBuf],
        rekor_files: &[std::path::PathBuf],
    ) -> Result<TrustRoot, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut authorities = Vec::new();
        let mut material = Vec::new();
        for f in ca_files {
            let pem = read(f)?;
            material.extend_from_slice(&pem);
            let chain = pem_certificates(&pem).map_err(|e| format!("{}: {e}", f.display()))?;
            authorities.push(
                authority(chain, Window::default()).map_err(|e| format!("{}: {e}", f.display()))?,
            );
        }
        let mut logs = Vec::new();
        for f in rekor_files {
            let pem = read(f)?;
            material.extend_from_slice(&pem);
            let der = x509_cert::der::pem::decode_vec(&pem)
                .map_err(|e| format!("{}: not a PEM public key: {e}", f.display()))?
                .1;
            logs.push(
                log_from_spki(&der, Window::default())
                    .map_err(|e| format!("{}: {e}", f.display()))?,
            );
        }
        TrustRoot::checked(name, authorities, logs, &material)
    }

    fn checked(
        name: &str,
        authorities: Vec<Authority>,
        logs: Vec<Log>,
        material: &[u8],
    ) -> Result<TrustRoot, String> {
        if authorities.is_empty() {
            return Err("names no certificate authority".into());
        }
        if logs.is_empty() {
            return Err("names no transparency log key".into());
        }
        let fingerprint = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(material));
        Ok(TrustRoot {
            name: name.to_string(),
            fingerprint,
            authorities,
            logs,
        })
    }
}

/// A transparency log entry as a signature carries it (cosign's bundle annotation, or a
/// Sigstore bundle's tlog entry).
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The base64 canonicalized entry body.
    pub body: String,
    /// When the log integrated the entry (unix seconds).
    pub integrated_time: i64,
    /// The entry's index.
    pub log_index: i64,
    /// Hex log ID.
    pub log_id: String,
    /// The signed entry timestamp (DER signature).
    pub set: Vec<u8>,
    /// The entry's inclusion proof with a signed checkpoint, when the bundle carries one.
    pub proof: Option<InclusionProof>,
}

/// A Merkle inclusion proof (RFC 9162) of a log entry, and the log's signed checkpoint of the
/// tree it was made for.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    /// The entry's index in the tree.
    pub log_index: u64,
    /// The tree's root hash.
    pub root_hash: Vec<u8>,
    /// The tree's size.
    pub tree_size: u64,
    /// The sibling hashes, leaf to root.
    pub hashes: Vec<Vec<u8>>,
    /// The checkpoint: a signed note naming the tree size and root hash.
    pub checkpoint: String,
}

/// The root a proof leads to from `leaf` (RFC 9162, 2.1.3.2), or `None` when it cannot hold.
fn root_from_proof(index: u64, size: u64, leaf: [u8; 32], proof: &[Vec<u8>]) -> Option<[u8; 32]> {
    use sha2::Digest;
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return None;
        }
        let mut h = sha2::Sha256::new();
        h.update([1u8]);
        if f & 1 == 1 || f == s {
            h.update(p);
            h.update(r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            h.update(r);
            h.update(p);
        }
        r = h.finalize().into();
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// Checks an entry's inclusion proof: its leaf (the entry's body) leads to the root the log's
/// checkpoint names, for the tree size it names, and the checkpoint is signed by the log's key.
fn check_inclusion(
    entry: &LogEntry,
    proof: &InclusionProof,
    key: &CosignVerificationKey,
) -> Result<(), String> {
    use sha2::Digest;
    let body = B64
        .decode(&entry.body)
        .map_err(|_| "the log entry body is not base64".to_string())?;
    let leaf: [u8; 32] = sha2::Sha256::new()
        .chain_update([0u8])
        .chain_update(&body)
        .finalize()
        .into();
    let root = root_from_proof(proof.log_index, proof.tree_size, leaf, &proof.hashes)
        .ok_or("the inclusion proof does not fit its tree")?;
    if root.as_slice() != proof.root_hash.as_slice() {
        return Err("the inclusion proof does not lead to its root hash".into());
    }
    let (note, signatures) = proof
        .checkpoint
        .split_once("\n\n")
        .ok_or("the checkpoint is not a signed note")?;
    let mut lines = note.lines();
    let (_origin, size, root_b64) = (lines.next(), lines.next(), lines.next());
    if size != Some(proof.tree_size.to_string().as_str())
        || root_b64.and_then(|r| B64.decode(r).ok()).as_deref() != Some(proof.root_hash.as_slice())
    {
        return Err("the checkpoint names another tree than the inclusion proof".into());
    }
    // every signature line must be the log's (as Rekor's signed notes are verified)
    let signed = format!("{note}\n");
    let lines: Vec<&str> = signatures.lines().filter(|l| !l.is_empty()).collect();
    let verified = !lines.is_empty()
        && lines.iter().all(|l| {
            let sig = l
                .strip_prefix("\u{2014} ")
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|b| B64.decode(b).ok());
            sig.filter(|s| s.len() > 4).is_some_and(|s| {
                key.verify_signature(Signature::Raw(&s[4..]), signed.as_bytes())
                    .is_ok()
            })
        });
    if !verified {
        return Err("the checkpoint is not signed by the transparency log's key alone".into());
    }
    Ok(())
}

#[derive(Deserialize)]
struct CosignBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: CosignBundlePayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CosignBundlePayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

/// What a log's SET signs: the canonical JSON of these four fields (keys sorted).
#[derive(serde::Serialize)]
struct SetPayload<'a> {
    body: &'a str,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logID")]
    log_id: &'a str,
    #[serde(rename = "logIndex")]
    log_index: i64,
}

impl LogEntry {
    /// Parses the `dev.sigstore.cosign/bundle` annotation.
    pub fn from_cosign_bundle(json: &str) -> Result<LogEntry, String> {
        let b: CosignBundle = serde_json::from_str(json)
            .map_err(|e| format!("the Rekor bundle is not valid: {e}"))?;
        let set = B64
            .decode(&b.set)
            .map_err(|e| format!("the SET is not base64: {e}"))?;
        Ok(LogEntry {
            body: b.payload.body,
            integrated_time: b.payload.integrated_time,
            log_index: b.payload.log_index,
            log_id: b.payload.log_id,
            set,
            proof: None,
        })
    }

    /// The canonical bytes the SET signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let p = SetPayload {
            body: &self.body,
            integrated_time: self.integrated_time,
            log_id: &self.log_id,
            log_index: self.log_index,
        };
        serde_json::to_vec(&p).expect("serialising plain fields")
    }
}

/// A signer whose certificate has been verified.
#[derive(Debug)]
pub struct Certified {
    /// The certificate's key, for the signature itself.
    pub key: CosignVerificationKey,
    /// Its subject alternative names (emails, URIs, other names).
    pub subjects: Vec<String>,
    /// Its OIDC issuer.
    pub issuer: Option<String>,
    /// Its GitHub claims.
    pub github: Vec<(GithubClaim, String)>,
    /// The trust root that vouched for it.
    pub root: String,
    /// When the log integrated the signature.
    pub integrated_time: i64,
}

impl Certified {
    /// A name for verdicts: the first subject and the issuer.
    pub fn name(&self) -> String {
        format!(
            "{} ({})",
            self.subjects.first().map(String::as_str).unwrap_or("?"),
            self.issuer.as_deref().unwrap_or("no issuer")
        )
    }
}

/// The evidence a keyless signature comes with.
pub struct Evidence<'a> {
    /// The signing certificate (DER).
    pub certificate: CertificateDer<'a>,
    /// Extra intermediates it came with (DER); roots among them are not trusted.
    pub chain: Vec<CertificateDer<'a>>,
    /// Its transparency log entry, if any.
    pub entry: Option<LogEntry>,
}

/// Parses a PEM certificate annotation and an optional PEM chain annotation.
pub fn evidence_from_pem(
    cert: &str,
    chain: Option<&str>,
    bundle: Option<&str>,
) -> Result<Evidence<'static>, String> {
    let certificate = pem_certificates(cert.as_bytes())
        .map_err(|e| format!("certificate annotation: {e}"))?
        .into_iter()
        .next()
        .ok_or("the certificate annotation is empty")?;
    let chain = match chain {
        Some(c) => pem_certificates(c.as_bytes()).map_err(|e| format!("chain annotation: {e}"))?,
        None => Vec::new(),
    };
    let entry = bundle.map(LogEntry::from_cosign_bundle).transpose()?;
    Ok(Evidence {
        certificate,
        chain,
        entry,
    })
}

/// Verifies a keyless signer against the roots: log entry (SET), entry body binding
/// `signed_sha256` (hex SHA-256 of the signed bytes or payload) to the certificate, chain at the
/// integrated time. The signature itself is left to the caller (with `Certified::key`).
pub fn certify(
    e: &Evidence<'_>,
    roots: &[Arc<TrustRoot>],
    signed_sha256: &[String],
    signature_b64: &str,
) -> Result<Certified, String> {
    let entry = e
        .entry
        .as_ref()
        .ok_or("no transparency log entry: a keyless signature needs its Rekor bundle")?;
    if roots.is_empty() {
        return Err("no keyless trust root is configured for this requirement".into());
    }
    let mut why = Vec::new();
    for root in roots {
        match certify_with(e, entry, root, signed_sha256, signature_b64) {
            Ok(c) => return Ok(c),
            Err(reason) => why.push(if roots.len() > 1 {
                format!("{}: {reason}", root.name)
            } else {
                reason
            }),
        }
    }
    Err(why.join("; "))
}

fn certify_with(
    e: &Evidence<'_>,
    entry: &LogEntry,
    root: &TrustRoot,
    signed_sha256: &[String],
    signature_b64: &str,
) -> Result<Certified, String> {
    let log = root
        .logs
        .iter()
        .find(|l| l.id == entry.log_id)
        .ok_or_else(|| {
            format!(
                "log entry from an unknown transparency log ({})",
                entry.log_id
            )
        })?;
    if !log.window.contains(entry.integrated_time) {
        return Err("the transparency log key was not valid at the integrated time".into());
    }
    log.key
        .verify_signature(Signature::Raw(&entry.set), &entry.signed_bytes())
        .map_err(|_| {
            "the transparency log entry's SET does not verify with the log key".to_string()
        })?;
    if let Some(proof) = &entry.proof {
        check_inclusion(entry, proof, &log.key)?;
    }
    check_body(&entry.body, &e.certificate, signed_sha256, signature_b64)?;
    let cert = Certificate::from_der(&e.certificate)
        .map_err(|err| format!("the certificate does not parse: {err}"))?;
    check_validity(&cert, entry.integrated_time)?;
    check_chain(e, root, entry.integrated_time)?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|err| err.to_string())?;
    let key = CosignVerificationKey::try_from_der(&spki)
        .map_err(|err| format!("the certificate key is not usable: {err}"))?;
    Ok(Certified {
        key,
        subjects: subjects(&cert),
        issuer: issuer(&cert),
        github: github_claims(&cert),
        root: root.name.clone(),
        integrated_time: entry.integrated_time,
    })
}

fn check_validity(cert: &Certificate, t: i64) -> Result<(), String> {
    let v = cert.tbs_certificate().validity();
    let (from, to) = (
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    );
    if t < from || t > to {
        return Err(format!("the certificate was not valid when the log integrated the signature (integrated at {t}, valid {from}..{to})"));
    }
    Ok(())
}

fn check_chain(e: &Evidence<'_>, root: &TrustRoot, t: i64) -> Result<(), String> {
    let leaf = webpki::EndEntityCert::try_from(&e.certificate)
        .map_err(|err| format!("the certificate is not usable: {err:?}"))?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.max(0) as u64));
    let mut last = String::new();
    for ca in root.authorities.iter().filter(|a| a.window.contains(t)) {
        let anchor =
            webpki::anchor_from_trusted_cert(&ca.root).map_err(|err| format!("{err:?}"))?;
        let mut intermediates: Vec<CertificateDer<'_>> = ca.intermediates.to_vec();
        intermediates.extend(e.chain.iter().cloned());
        match leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            time,
            webpki::KeyUsage::required(EKU_CODE_SIGNING),
            None,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(err) => last = format!("{err:?}"),
        }
    }
    Err(format!(
        "the certificate does not chain to a trusted certificate authority ({last})"
    ))
}

/// Checks that a log entry body (hashedrekord, intoto or dsse) names one of `hashes`, the
/// signing certificate and (hashedrekord, dsse) the very signature being verified, as cosign
/// compares them: another valid signature by the same key, logged, does not stand for this one.
fn check_body(
    body_b64: &str,
    cert: &CertificateDer<'_>,
    hashes: &[String],
    signature_b64: &str,
) -> Result<(), String> {
    let body = B64
        .decode(body_b64)
        .map_err(|_| "the log entry body is not base64".to_string())?;
    let body: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| "the log entry body is not JSON".to_string())?;
    let spec = &body["spec"];
    let listed = |list: &serde_json::Value, field: &str| -> Vec<serde_json::Value> {
        list.as_array()
            .map(|a| a.iter().map(|s| s[field].clone()).collect())
            .unwrap_or_default()
    };
    // (hash, keys, logged signatures)
    let (hash, keys, logged) = match body["kind"].as_str() {
        Some("hashedrekord") => (
            spec["data"]["hash"]["value"].as_str(),
            vec![spec["signature"]["publicKey"]["content"].clone()],
            Some(vec![spec["signature"]["content"].clone()]),
        ),
        Some("intoto") => (
            spec["content"]["payloadHash"]["value"].as_str(),
            listed(&spec["content"]["envelope"]["signatures"], "publicKey"),
            // intoto v0.0.2 logs each signature base64-encoded twice (as sigstore-js reads it)
            Some(
                listed(&spec["content"]["envelope"]["signatures"], "sig")
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .and_then(|s| B64.decode(s).ok())
                            .and_then(|once| String::from_utf8(once).ok())
                            .map_or(serde_json::Value::Null, serde_json::Value::String)
                    })
                    .collect(),
            ),
        ),
        Some("dsse") => (
            spec["payloadHash"]["value"].as_str(),
            listed(&spec["signatures"], "verifier"),
            Some(listed(&spec["signatures"], "signature")),
        ),
        other => return Err(format!("unsupported log entry kind {other:?}")),
    };
    if !hash.is_some_and(|h| hashes.iter().any(|x| x == h)) {
        return Err("the log entry is for other content than this signature".into());
    }
    let names_cert = keys
        .iter()
        .filter_map(|k| k.as_str())
        .filter_map(|k| B64.decode(k).ok())
        .any(|pem| {
            pem_certificates(&pem)
                .is_ok_and(|c| c.first().is_some_and(|c| c.as_ref() == cert.as_ref()))
        });
    if !names_cert {
        return Err("the log entry names another certificate".into());
    }
    if let Some(logged) = logged {
        let ours = B64.decode(signature_b64).ok();
        let same = logged
            .iter()
            .filter_map(|s| s.as_str())
            .any(|s| ours.is_some() && B64.decode(s).ok() == ours);
        if !same {
            return Err("the log entry holds another signature than this one".into());
        }
    }
    Ok(())
}

fn subjects(cert: &Certificate) -> Vec<String> {
    let Ok(Some((_, san))) = cert.tbs_certificate().get_extension::<SubjectAltName>() else {
        return Vec::new();
    };
    san.0
        .iter()
        .filter_map(|n| match n {
            GeneralName::Rfc822Name(s) => Some(s.to_string()),
            GeneralName::UniformResourceIdentifier(s) => Some(s.to_string()),
            GeneralName::DnsName(s) => Some(s.to_string()),
            GeneralName::OtherName(o) => o
                .value
                .decode_as::<x509_cert::der::asn1::Utf8StringRef<'_>>()
                .ok()
                .map(|s| s.to_string()),
            _ => None,
        })
        .collect()
}

/// The raw value of an extension by dotted OID.
fn extension<'a>(cert: &'a Certificate, oid: &str) -> Option<&'a [u8]> {
    cert.tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn issuer(cert: &Certificate) -> Option<String> {
    if let Some(v) = extension(cert, OID_ISSUER_V2) {
        if let Ok(s) = x509_cert::der::asn1::Utf8StringRef::from_der(v) {
            return Some(s.to_string());
        }
    }
    extension(cert, OID_ISSUER_V1)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
}

fn github_claims(cert: &Certificate) -> Vec<(GithubClaim, String)> {
    use GithubClaim::*;
    [
        WorkflowTrigger,
        WorkflowSha,
        WorkflowName,
        WorkflowRepository,
        WorkflowRef,
    ]
    .into_iter()
    .filter_map(|c| {
        extension(cert, c.oid())
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| (c, v.to_string()))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162's tree hash of leaf hashes, and the inclusion path of leaf `m`.
    fn tree(leaves: &[[u8; 32]]) -> [u8; 32] {
        use sha2::Digest;
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = leaves.len().next_power_of_two() / 2;
        sha2::Sha256::new()
            .chain_update([1u8])
            .chain_update(tree(&leaves[..k]))
            .chain_update(tree(&leaves[k..]))
            .finalize()
            .into()
    }

    fn path(m: usize, leaves: &[[u8; 32]]) -> Vec<Vec<u8>> {
        if leaves.len() == 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        if m < k {
            [path(m, &leaves[..k]), vec![tree(&leaves[k..]).to_vec()]].concat()
        } else {
            [path(m - k, &leaves[k..]), vec![tree(&leaves[..k]).to_vec()]].concat()
        }
    }

    #[test]
    fn inclusion_proofs_lead_to_the_root_for_every_leaf_and_size() {
        for size in 1..=9usize {
            let leaves: Vec<[u8; 32]> = (0..size).map(|i| [i as u8; 32]).collect();
            let root = tree(&leaves);
            for m in 0..size {
                let proof = path(m, &leaves);
                let got = root_from_proof(m as u64, size as u64, leaves[m], &proof);
                assert_eq!(got, Some(root), "leaf {m} of {size}");
                let other = (m + 1) % size;
                if other != m {
                    assert_ne!(
                        root_from_proof(other as u64, size as u64, leaves[m], &proof),
                        Some(root)
                    );
                }
                assert_eq!(
                    root_from_proof(m as u64, m as u64, leaves[m], &proof),
                    None,
                    "index beyond the tree"
                );
            }
        }
    }

    #[test]
    fn set_payload_is_canonical_json() {
        let e = LogEntry {
            body: "Ym9keQ==".into(),
            integrated_time: 1700000000,
            log_index: 42,
            log_id: "abcd".into(),
            set: vec![],
            proof: None,
        };
        assert_eq!(
            String::from_utf8(e.signed_bytes()).unwrap(),
            r#"{"body":"Ym9keQ==","integratedTime":1700000000,"logID":"abcd","logIndex":42}"#
        );
    }

    #[test]
    fn identity_needs_issuer_and_subject() {
        assert!(Identity::new(None, None, Some("a@b".into()), None).is_err());
        assert!(Identity::new(Some("https://i".into()), None, None, None).is_err());
        assert!(Identity::new(Some("https://i".into()), None, None, Some("(")).is_err());
        assert!(Identity::new(None, Some("^https://"), None, Some("@example.com$")).is_ok());
    }

    #[test]
    fn identity_matching() {
        let signer = Certified {
            key: CosignVerificationKey::ED25519(vec![]),
            subjects: vec!["dev@example.com".into()],
            issuer: Some("https://issuer.example".into()),
            github: vec![(GithubClaim::WorkflowRef, "refs/heads/main".into())],
            root: "t".into(),
            integrated_time: 0,
        };
        let id =
            |i: &str, s: &str| Identity::new(Some(i.into()), None, Some(s.into()), None).unwrap();
        assert!(id("https://issuer.example", "dev@example.com")
            .accepts(&signer)
            .is_ok());
        assert!(id("https://other", "dev@example.com")
            .accepts(&signer)
            .unwrap_err()
            .contains("issuer"));
        assert!(id("https://issuer.example", "eve@example.com")
            .accepts(&signer)
            .unwrap_err()
            .contains("subject"));
        let re = Identity::new(
            None,
            Some(r"^https://issuer\."),
            None,
            Some(r"@example\.com$"),
        )
        .unwrap();
        assert!(re.accepts(&signer).is_ok());
        let mut gh = id("https://issuer.example", "dev@example.com");
        gh.github
            .push((GithubClaim::WorkflowRef, "refs/heads/dev".into()));
        assert!(gh
            .accepts(&signer)
            .unwrap_err()
            .contains("github-workflow-ref"));
    }
}
