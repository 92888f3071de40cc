//! A private Sigstore for tests: a Fulcio-like CA (root and intermediate) issuing short-lived
//! code-signing certificates with Fulcio's OIDC extensions, and a Rekor-like log key that signs
//! entry timestamps (SETs). Signatures are pushed the way cosign writes them: `.sig` layers with
//! certificate, chain and bundle annotations, and Sigstore bundles as OCI referrers.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SigningKey, PKCS_ECDSA_P256_SHA256,
};

use super::{push_blob, push_manifest, sha256, Registry};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn time(t: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t).unwrap()
}

/// A test CA with its trust files.
pub struct Sigstore {
    root_params: CertificateParams,
    root_key: KeyPair,
    intermediate_params: CertificateParams,
    intermediate_key: KeyPair,
    /// The intermediate certificate (PEM), as the chain annotation carries it.
    pub intermediate_pem: String,
    rekor: KeyPair,
    /// `ca.pem`: intermediate and root, root last (for `ca_certs` and SIGSTORE_ROOT_FILE).
    pub ca_file: PathBuf,
    /// `rekor.pub`.
    pub rekor_file: PathBuf,
    /// `trusted_root.json` holding the same material.
    pub trusted_root: PathBuf,
}

/// A certificate issued to a signer, with its key.
pub struct Signer {
    /// The signing key.
    pub key: KeyPair,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
    /// The chain annotation (PEM).
    pub chain_pem: String,
    /// When the certificate starts to be valid.
    pub not_before: i64,
}

/// How a Rekor entry may be spoiled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A correct entry, integrated while the certificate was valid.
    Good,
    /// Integrated an hour after the certificate expired.
    AfterExpiry,
    /// The SET signed by another key.
    BadSet,
    /// Integrated an hour before the certificate became valid.
    BeforeValidity,
    /// The entry logs another valid signature by the same key (ECDSA signs anew each time).
    OtherSignature,
}

impl Sigstore {
    /// Makes the CA, the log key and their files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Sigstore {
        std::fs::create_dir_all(dir).unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(DnType::OrganizationName, "sigstore.test");
        root_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} root"));
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root_params.not_before = time(now() - 86400 * 30);
        root_params.not_after = time(now() + 86400 * 365);
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root = root_params.self_signed(&root_key).unwrap();

        let mut intermediate_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        intermediate_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        intermediate_params
            .distinguished_name
            .push(DnType::OrganizationName, "sigstore.test");
        intermediate_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} intermediate"));
        intermediate_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        intermediate_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        intermediate_params.not_before = root_params.not_before;
        intermediate_params.not_after = root_params.not_after;
        let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root_issuer = Issuer::from_params(&root_params, &root_key);
        let intermediate = intermediate_params
            .signed_by(&intermediate_key, &root_issuer)
            .unwrap();

        let rekor = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let s = Sigstore {
            intermediate_pem: intermediate.pem(),
            ca_file: dir.join("ca.pem"),
            rekor_file: dir.join("rekor.pub"),
            trusted_root: dir.join("trusted_root.json"),
            root_params,
            root_key,
            intermediate_params,
            intermediate_key,
            rekor,
        };
        std::fs::write(&s.ca_file, format!("{}{}", intermediate.pem(), root.pem())).unwrap();
        std::fs::write(&s.rekor_file, s.rekor.public_key_pem()).unwrap();
        let trusted_root = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.sigstore.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": B64.encode(s.rekor.subject_public_key_info()), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": {"start": "2020-01-01T00:00:00Z"}},
                "logId": {"keyId": B64.encode(hex::decode(s.log_id()).unwrap())},
            }],
            "certificateAuthorities": [{
                "subject": {"organization": "sigstore.test", "commonName": name},
                "uri": "https://fulcio.sigstore.test",
                "certChain": {"certificates": [{"rawBytes": B64.encode(intermediate.der())}, {"rawBytes": B64.encode(root.der())}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            }],
            "ctlogs": [],
            "timestampAuthorities": [],
        });
        std::fs::write(
            &s.trusted_root,
            serde_json::to_vec_pretty(&trusted_root).unwrap(),
        )
        .unwrap();
        s
    }

    /// The log ID: hex SHA-256 of the log key's SubjectPublicKeyInfo.
    pub fn log_id(&self) -> String {
        sha256(&self.rekor.subject_public_key_info())
            .trim_start_matches("sha256:")
            .to_string()
    }

    /// Issues a ten-minute certificate for `email` from OIDC `issuer`, valid from an hour ago,
    /// with a GitHub workflow ref claim.
    pub fn issue(&self, email: &str, issuer: &str) -> Signer {
        let not_before = now() - 3600;
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::Rfc822Name(email.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.not_before = time(not_before);
        params.not_after = time(not_before + 600);
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 57264, 1, 1],
                issuer.as_bytes().to_vec(),
            ),
            CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 57264, 1, 6],
                b"refs/heads/main".to_vec(),
            ),
            CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 57264, 1, 8],
                utf8_string(issuer),
            ),
        ];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer_ca = Issuer::from_params(&self.intermediate_params, &self.intermediate_key);
        let cert = params.signed_by(&key, &issuer_ca).unwrap();
        let _ = (&self.root_params, &self.root_key);
        Signer {
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            chain_pem: self.intermediate_pem.clone(),
            not_before,
        }
    }

    /// A Rekor entry for `body`, integrated as `entry` says, as (integrated time, log index, SET).
    fn log(&self, body_b64: &str, signer: &Signer, entry: Entry) -> (i64, i64, String) {
        let integrated = match entry {
            Entry::AfterExpiry => signer.not_before + 600 + 3600,
            Entry::BeforeValidity => signer.not_before - 3600,
            _ => signer.not_before + 60,
        };
        let index = 1000 + (now() % 1000);
        let canonical = format!(
            r#"{{"body":"{body_b64}","integratedTime":{integrated},"logID":"{}","logIndex":{index}}}"#,
            self.log_id()
        );
        let set = if entry == Entry::BadSet {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .sign(canonical.as_bytes())
                .unwrap()
        } else {
            self.rekor.sign(canonical.as_bytes()).unwrap()
        };
        (integrated, index, B64.encode(set))
    }

    /// cosign's `dev.sigstore.cosign/bundle` annotation for a hashedrekord entry.
    pub fn cosign_bundle(
        &self,
        signer: &Signer,
        signed: &[u8],
        signature_b64: &str,
        entry: Entry,
    ) -> String {
        let body = B64.encode(hashedrekord(signer, &sha256_hex(signed), signature_b64));
        let (integrated, index, set) = self.log(&body, signer, entry);
        serde_json::json!({
            "SignedEntryTimestamp": set,
            "Payload": {"body": body, "integratedTime": integrated, "logIndex": index, "logID": self.log_id()},
        })
        .to_string()
    }

    /// A v0.3 Sigstore bundle holding a keyless DSSE envelope over `statement`, logged as a
    /// `dsse` entry.
    pub fn dsse_bundle(&self, signer: &Signer, statement: &[u8], entry: Entry) -> String {
        self.dsse_bundle_with(signer, statement, entry, Proof::Good)
    }

    /// An inclusion proof for the entry `body` (base64) at index 3 of a tree of 6, with the
    /// log's checkpoint, spoiled as `proof` says.
    fn inclusion_proof(&self, body_b64: &str, proof: Proof) -> serde_json::Value {
        let leaf = |bytes: &[u8]| -> [u8; 32] { sha256_bytes(&[&[0u8][..], bytes].concat()) };
        let mut leaves: Vec<[u8; 32]> = (0..6u8).map(|i| leaf(&[i; 8])).collect();
        leaves[3] = leaf(&B64.decode(body_b64).unwrap());
        if proof == Proof::ForAnotherEntry {
            leaves[3] = leaf(b"another entry");
        }
        let root = merkle_root(&leaves);
        let hashes: Vec<String> = merkle_path(3, &leaves)
            .iter()
            .map(|h| B64.encode(h))
            .collect();
        let origin = "rekor.sigstore.test - 1";
        let size = if proof == Proof::OtherTreeInCheckpoint {
            7
        } else {
            6
        };
        let note = format!("{origin}\n{size}\n{}\n", B64.encode(root));
        let sig = if proof == Proof::BadCheckpoint {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .sign(note.as_bytes())
                .unwrap()
        } else {
            self.rekor.sign(note.as_bytes()).unwrap()
        };
        let signed = B64.encode([&[0xab, 0xcd, 0xef, 0x01][..], &sig].concat());
        let extra = if proof == Proof::ExtraSignature {
            let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let sig = other.sign(note.as_bytes()).unwrap();
            let line = B64.encode([&[1, 2, 3, 4][..], &sig].concat());
            format!("\u{2014} witness.test {line}\n")
        } else {
            String::new()
        };
        serde_json::json!({
            "logIndex": "3",
            "rootHash": B64.encode(root),
            "treeSize": "6",
            "hashes": hashes,
            "checkpoint": {"envelope": format!("{note}\n\u{2014} rekor.sigstore.test {signed}\n{extra}")},
        })
    }

    /// [`Sigstore::dsse_bundle`] whose log entry carries an inclusion proof as `proof` says.
    pub fn dsse_bundle_with(
        &self,
        signer: &Signer,
        statement: &[u8],
        entry: Entry,
        proof: Proof,
    ) -> String {
        let payload_type = "application/vnd.in-toto+json";
        let pae = [
            format!(
                "DSSEv1 {} {} {} ",
                payload_type.len(),
                payload_type,
                statement.len()
            )
            .as_bytes(),
            statement,
        ]
        .concat();
        let sig = B64.encode(signer.key.sign(&pae).unwrap());
        let body = serde_json::json!({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": sha256_hex(b"envelope")},
                "payloadHash": {"algorithm": "sha256", "value": sha256_hex(statement)},
                "signatures": [{"signature": sig, "verifier": B64.encode(&signer.cert_pem)}],
            },
        });
        let body = B64.encode(body.to_string());
        let (integrated, index, set) = self.log(&body, signer, entry);
        let mut bundle = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": B64.encode(&signer.cert_der)},
                "tlogEntries": [{
                    "logIndex": index.to_string(),
                    "logId": {"keyId": B64.encode(hex::decode(self.log_id()).unwrap())},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": integrated.to_string(),
                    "inclusionPromise": {"signedEntryTimestamp": set},
                    "canonicalizedBody": body,
                }],
            },
            "dsseEnvelope": {"payload": B64.encode(statement), "payloadType": payload_type, "signatures": [{"sig": sig, "keyid": ""}]},
        });
        if proof != Proof::None {
            bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"] =
                self.inclusion_proof(&body, proof);
        }
        bundle.to_string()
    }
}

/// Whether and how a bundle's log entry carries an inclusion proof.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// No proof (the SET alone), which bundles after v0.1 may not do.
    None,
    /// A correct proof and checkpoint.
    Good,
    /// The checkpoint signed by another key.
    BadCheckpoint,
    /// A proof computed for another entry at the same index.
    ForAnotherEntry,
    /// The checkpoint names a tree of another size.
    OtherTreeInCheckpoint,
    /// A correct checkpoint with a second signature line by another key.
    ExtraSignature,
}

fn sha256_bytes(bytes: &[u8]) -> [u8; 32] {
    hex::decode(sha256_hex(bytes)).unwrap().try_into().unwrap()
}

/// RFC 9162's tree hash over leaf hashes.
fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = leaves.len().next_power_of_two() / 2;
    sha256_bytes(
        &[
            &[1u8][..],
            &merkle_root(&leaves[..k]),
            &merkle_root(&leaves[k..]),
        ]
        .concat(),
    )
}

/// RFC 9162's inclusion path of leaf `m`.
fn merkle_path(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
    if leaves.len() == 1 {
        return Vec::new();
    }
    let k = leaves.len().next_power_of_two() / 2;
    if m < k {
        [
            merkle_path(m, &leaves[..k]),
            vec![merkle_root(&leaves[k..])],
        ]
        .concat()
    } else {
        [
            merkle_path(m - k, &leaves[k..]),
            vec![merkle_root(&leaves[..k])],
        ]
        .concat()
    }
}

/// DER UTF8String.
fn utf8_string(s: &str) -> Vec<u8> {
    assert!(s.len() < 128);
    [vec![0x0c, s.len() as u8], s.as_bytes().to_vec()].concat()
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes).trim_start_matches("sha256:").to_string()
}

fn hashedrekord(signer: &Signer, hash_hex: &str, signature_b64: &str) -> String {
    serde_json::json!({
        "apiVersion": "0.0.1", "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hash_hex}},
            "signature": {"content": signature_b64, "publicKey": {"content": B64.encode(&signer.cert_pem)}},
        },
    })
    .to_string()
}

/// cosign's simple-signing payload for `digest`, claiming `reference` (no tag, as cosign writes).
pub fn payload(reference: &str, digest: &str) -> String {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
}

/// Pushes a keyless `.sig` for `image_digest` the way cosign does, with the entry spoiled as
/// `entry` says; returns the signature manifest's digest.
pub fn push_keyless_signature(
    reg: &Registry,
    repo: &str,
    image_digest: &str,
    sigstore: &Sigstore,
    signer: &Signer,
    entry: Entry,
) {
    push_keyless_signatures(reg, repo, image_digest, sigstore, &[signer], entry);
}

/// Pushes a keyless `.sig` with one layer per signer (as `cosign sign` run by each of them).
pub fn push_keyless_signatures(
    reg: &Registry,
    repo: &str,
    image_digest: &str,
    sigstore: &Sigstore,
    signers: &[&Signer],
    entry: Entry,
) {
    let payload = payload(&format!("{}/{repo}", reg.host()), image_digest);
    let d = push_blob(reg, repo, payload.as_bytes());
    let layers: Vec<serde_json::Value> = signers
        .iter()
        .map(|signer| {
            let sig = B64.encode(signer.key.sign(payload.as_bytes()).unwrap());
            let logged = if entry == Entry::OtherSignature {
                B64.encode(signer.key.sign(payload.as_bytes()).unwrap())
            } else {
                sig.clone()
            };
            assert!(entry != Entry::OtherSignature || logged != sig, "ECDSA signs anew");
            let bundle = sigstore.cosign_bundle(signer, payload.as_bytes(), &logged, entry);
            serde_json::json!({
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": d, "size": payload.len(),
                "annotations": {
                    "dev.cosignproject.cosign/signature": sig,
                    "dev.sigstore.cosign/certificate": signer.cert_pem,
                    "dev.sigstore.cosign/chain": signer.chain_pem,
                    "dev.sigstore.cosign/bundle": bundle,
                },
            })
        })
        .collect();
    push_attachment_layers(
        reg,
        repo,
        &format!("{}.sig", image_digest.replace(':', "-")),
        &d,
        layers,
    );
}

/// One Sigstore bundle to attach: its JSON, `dev.sigstore.bundle.content` and predicate type.
pub struct BundleSpec<'a> {
    /// The bundle JSON.
    pub json: &'a str,
    /// `message-signature` or `dsse-envelope`.
    pub content: &'a str,
    /// `dev.sigstore.bundle.predicateType`.
    pub predicate: &'a str,
}

/// Pushes Sigstore bundles as referrers of `image_digest`, listed under the referrers tag
/// schema (`sha256-<hex>`) since the upstream has no referrers API.
pub fn push_bundle_referrers(
    reg: &Registry,
    repo: &str,
    image_digest: &str,
    image_manifest_len: usize,
    bundles: &[BundleSpec<'_>],
) {
    let empty = push_blob(reg, repo, b"{}");
    let bundle_type = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let mut entries = Vec::new();
    for b in bundles {
        let bundle_digest = push_blob(reg, repo, b.json.as_bytes());
        let annotations = serde_json::json!({"dev.sigstore.bundle.content": b.content, "dev.sigstore.bundle.predicateType": b.predicate});
        let artifact = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": bundle_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": bundle_type, "digest": bundle_digest, "size": b.json.len()}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image_digest, "size": image_manifest_len},
            "annotations": annotations,
        })
        .to_string();
        let artifact_digest = sha256(artifact.as_bytes());
        push_manifest(
            reg,
            repo,
            &artifact_digest,
            "application/vnd.oci.image.manifest.v1+json",
            artifact.as_bytes(),
        );
        entries.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": artifact_digest, "size": artifact.len(), "artifactType": bundle_type, "annotations": annotations}));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}).to_string();
    push_manifest(
        reg,
        repo,
        &image_digest.replace(':', "-"),
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
    );
}

/// An in-toto statement about `digest` with `predicate_type`.
pub fn statement(digest: &str, predicate_type: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "image", "digest": {"sha256": hex}}],
        "predicateType": predicate_type,
        "predicate": {},
    })
    .to_string()
}

/// Pushes a keyless `.att` for `image_digest` as cosign does: a DSSE envelope layer with the
/// certificate, chain and a Rekor bundle of an `intoto` entry (v0.0.2: signatures base64-encoded
/// twice); with [`Entry::OtherSignature`] the entry logs another signature of the same statement.
pub fn push_keyless_attestation(
    reg: &Registry,
    repo: &str,
    image_digest: &str,
    sigstore: &Sigstore,
    signer: &Signer,
    predicate_type: &str,
    entry: Entry,
) {
    let payload_type = "application/vnd.in-toto+json";
    let st = statement(image_digest, predicate_type);
    let pae = [
        format!(
            "DSSEv1 {} {} {} ",
            payload_type.len(),
            payload_type,
            st.len()
        )
        .as_bytes(),
        st.as_bytes(),
    ]
    .concat();
    let sig = B64.encode(signer.key.sign(&pae).unwrap());
    let envelope = serde_json::json!({"payloadType": payload_type, "payload": B64.encode(&st), "signatures": [{"keyid": "", "sig": sig}]}).to_string();
    let logged = match entry {
        Entry::OtherSignature => B64.encode(signer.key.sign(&pae).unwrap()),
        _ => sig.clone(),
    };
    let body = serde_json::json!({
        "apiVersion": "0.0.2", "kind": "intoto",
        "spec": {"content": {
            "envelope": {"payloadType": payload_type, "signatures": [{"sig": B64.encode(&logged), "publicKey": B64.encode(&signer.cert_pem)}]},
            "hash": {"algorithm": "sha256", "value": sha256_hex(envelope.as_bytes())},
            "payloadHash": {"algorithm": "sha256", "value": sha256_hex(st.as_bytes())},
        }},
    });
    let body = B64.encode(body.to_string());
    let timing = if entry == Entry::OtherSignature {
        Entry::Good
    } else {
        entry
    };
    let (integrated, index, set) = sigstore.log(&body, signer, timing);
    let bundle = serde_json::json!({"SignedEntryTimestamp": set, "Payload": {"body": body, "integratedTime": integrated, "logIndex": index, "logID": sigstore.log_id()}}).to_string();
    let d = push_blob(reg, repo, envelope.as_bytes());
    let layer = serde_json::json!({
        "mediaType": "application/vnd.dsse.envelope.v1+json", "digest": d, "size": envelope.len(),
        "annotations": {
            "predicateType": predicate_type,
            "dev.cosignproject.cosign/signature": "",
            "dev.sigstore.cosign/certificate": signer.cert_pem,
            "dev.sigstore.cosign/chain": signer.chain_pem,
            "dev.sigstore.cosign/bundle": bundle,
        },
    });
    push_attachment(
        reg,
        repo,
        &format!("{}.att", image_digest.replace(':', "-")),
        &d,
        layer,
    );
}

/// Pushes a one-layer attachment manifest (as cosign writes `.sig` and `.att`) under `tag`.
fn push_attachment(
    reg: &Registry,
    repo: &str,
    tag: &str,
    layer_digest: &str,
    layer: serde_json::Value,
) {
    push_attachment_layers(reg, repo, tag, layer_digest, vec![layer]);
}

fn push_attachment_layers(
    reg: &Registry,
    repo: &str,
    tag: &str,
    layer_digest: &str,
    layers: Vec<serde_json::Value>,
) {
    let config = format!(
        r#"{{"architecture":"","os":"","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = push_blob(reg, repo, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    })
    .to_string();
    push_manifest(
        reg,
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );
}
