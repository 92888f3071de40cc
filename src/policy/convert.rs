//! Conversions between the proxy's types and the WIT types.

use super::portcullis::policy::types::{
    self as wit, Attachment, AttachmentKind, Client, Descriptor, ManifestInfo, Operation, Platform,
    Request, Requirements,
};
use super::Subject;
use crate::attachments::{AttachmentSet, Kind};
use crate::manifest::{self, Manifest};
use crate::verify::keyless::GithubClaim;
use crate::verify::{Identity, Requirement, SignedIdentity, TrustStore, TrustedKey};

fn annotations(a: &Option<serde_json::Map<String, serde_json::Value>>) -> Vec<(String, String)> {
    a.iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

/// A descriptor as the WIT world writes it.
pub fn descriptor(d: &manifest::Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size.max(0) as u64,
        artifact_type: d.artifact_type.clone(),
        annotations: annotations(&d.annotations),
    }
}

fn manifest_info(m: &Manifest) -> ManifestInfo {
    ManifestInfo {
        media_type: m.media_type().to_string(),
        config: m.config.as_ref().map(descriptor),
        layers: m.layers.iter().map(descriptor).collect(),
        manifests: m
            .manifests
            .iter()
            .map(|d| {
                let p = d.platform.as_ref().map(|p| Platform {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                });
                (descriptor(d), p)
            })
            .collect(),
        annotations: annotations(&m.annotations),
        subject: m.subject.as_ref().map(descriptor),
        artifact_type: m.artifact_type.clone(),
    }
}

/// The request a policy sees for a subject and its attachments.
pub fn request(s: &Subject, attachments: &AttachmentSet) -> Request {
    let parsed = Manifest::parse(&s.manifest).ok();
    let empty = ManifestInfo {
        media_type: s.media_type.clone(),
        config: None,
        layers: Vec::new(),
        manifests: Vec::new(),
        annotations: Vec::new(),
        subject: None,
        artifact_type: None,
    };
    Request {
        operation: if s.push {
            Operation::Push
        } else {
            Operation::Pull
        },
        namespace: s.namespace.clone(),
        repository: s.repository.clone(),
        reference: s.reference.clone(),
        digest: s.digest.clone(),
        media_type: s.media_type.clone(),
        size: s.manifest.len() as u64,
        manifest: parsed.as_ref().map(manifest_info).unwrap_or(empty),
        attachments: attachments
            .items
            .iter()
            .map(|a| Attachment {
                kind: match a.kind {
                    Kind::Signature => AttachmentKind::Signature,
                    Kind::Attestation => AttachmentKind::Attestation,
                    Kind::Sbom => AttachmentKind::Sbom,
                    Kind::Referrer => AttachmentKind::Referrer,
                },
                digest: a.descriptor.digest.to_string(),
                artifact_type: a.descriptor.artifact_type.clone(),
                annotations: annotations(&a.descriptor.annotations),
            })
            .collect(),
        attaches_to: s.attaches_to.clone(),
        client: Client {
            address: s.client.clone(),
            user: s.user.clone(),
            user_agent: s.user_agent.clone(),
        },
    }
}

/// A keyless identity as the verifier checks it (regexps compiled, GitHub claims exact).
fn identity(i: &wit::Identity) -> Result<Identity, String> {
    let mut id = Identity::new(
        i.issuer.clone(),
        i.issuer_regexp.as_deref(),
        i.subject.clone(),
        i.subject_regexp.as_deref(),
    )?;
    let claims = [
        (GithubClaim::WorkflowTrigger, &i.github_workflow_trigger),
        (GithubClaim::WorkflowSha, &i.github_workflow_sha),
        (GithubClaim::WorkflowName, &i.github_workflow_name),
        (
            GithubClaim::WorkflowRepository,
            &i.github_workflow_repository,
        ),
        (GithubClaim::WorkflowRef, &i.github_workflow_ref),
    ];
    for (claim, value) in claims {
        if let Some(value) = value {
            id.github.push((claim, value.clone()));
        }
    }
    Ok(id)
}

/// containers-policy.json's `signedIdentity` for the WIT's.
fn signed_identity(s: &wit::SignedIdentity) -> SignedIdentity {
    match s {
        wit::SignedIdentity::MatchRepoDigestOrExact => SignedIdentity::MatchRepoDigestOrExact,
        wit::SignedIdentity::MatchRepository => SignedIdentity::MatchRepository,
        wit::SignedIdentity::ExactReference(r) => SignedIdentity::ExactReference {
            docker_reference: r.clone(),
        },
        wit::SignedIdentity::ExactRepository(r) => SignedIdentity::ExactRepository {
            docker_repository: r.clone(),
        },
        wit::SignedIdentity::RemapIdentity(m) => SignedIdentity::RemapIdentity {
            prefix: m.prefix.clone(),
            signed_prefix: m.signed_prefix.clone(),
        },
    }
}

/// The host requirement for a policy's `verify(requirements)`: trust names, inline keys and
/// keyless identities (checked against the named trust entries' roots, or every configured root
/// when none is named).
pub fn requirement(r: &Requirements, trust: &TrustStore) -> Result<Requirement, String> {
    let (mut keys, mut roots) = trust.named(&r.trust)?;
    for (i, pem) in r.keys.iter().enumerate() {
        keys.push(TrustedKey::from_pem(
            &format!("inline key {i}"),
            pem.as_bytes(),
        )?);
    }
    let identities = r
        .identities
        .iter()
        .map(identity)
        .collect::<Result<Vec<_>, _>>()?;
    if !identities.is_empty() && roots.is_empty() {
        roots = trust.all_roots();
        if roots.is_empty() {
            return Err(
                "keyless identities need a [trust.<name>] with a trusted_root or ca_certs".into(),
            );
        }
    }
    if keys.is_empty() && identities.is_empty() {
        return Err(
            "the policy asked for verification without naming any key, trust or identity".into(),
        );
    }
    Ok(Requirement {
        keys,
        identities,
        roots,
        threshold: r.threshold as usize,
        identity: r
            .signed_identity
            .as_ref()
            .map(signed_identity)
            .unwrap_or(SignedIdentity::MatchRepository),
        attestations: r.attestations.clone(),
    })
}
