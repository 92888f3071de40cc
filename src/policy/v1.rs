//! Modules built for `portcullis:policy@0.1.0` (`wit/0.1.0/`): the same host behind the older
//! types. Their requests and decisions are converted to and from the current world's; what
//! 0.2.0 added (GitHub claims, the signed-identity rule) is absent, as it was.

use super::portcullis::policy::{host as now_host, types as now};
use super::State;

wasmtime::component::bindgen!({ world: "policy", path: "wit/0.1.0" });

use portcullis::policy::{host as old_host, types as old};

/// The package name modules of this version import.
pub const PACKAGE: &str = "portcullis:policy/";

/// The version suffix of their imports.
pub const VERSION: &str = "@0.1.0";

fn descriptor(d: now::Descriptor) -> old::Descriptor {
    old::Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        artifact_type: d.artifact_type,
        annotations: d.annotations,
    }
}

fn platform(p: now::Platform) -> old::Platform {
    old::Platform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant,
    }
}

fn manifest(m: now::ManifestInfo) -> old::ManifestInfo {
    old::ManifestInfo {
        media_type: m.media_type,
        config: m.config.map(descriptor),
        layers: m.layers.into_iter().map(descriptor).collect(),
        manifests: m
            .manifests
            .into_iter()
            .map(|(d, p)| (descriptor(d), p.map(platform)))
            .collect(),
        annotations: m.annotations,
        subject: m.subject.map(descriptor),
        artifact_type: m.artifact_type,
    }
}

fn attachment(a: now::Attachment) -> old::Attachment {
    old::Attachment {
        kind: match a.kind {
            now::AttachmentKind::Signature => old::AttachmentKind::Signature,
            now::AttachmentKind::Attestation => old::AttachmentKind::Attestation,
            now::AttachmentKind::Sbom => old::AttachmentKind::Sbom,
            now::AttachmentKind::Referrer => old::AttachmentKind::Referrer,
        },
        digest: a.digest,
        artifact_type: a.artifact_type,
        annotations: a.annotations,
    }
}

/// The request as a 0.1.0 module reads it.
pub fn request(r: &now::Request) -> old::Request {
    let r = r.clone();
    old::Request {
        operation: match r.operation {
            now::Operation::Pull => old::Operation::Pull,
            now::Operation::Push => old::Operation::Push,
        },
        namespace: r.namespace,
        repository: r.repository,
        reference: r.reference,
        digest: r.digest,
        media_type: r.media_type,
        size: r.size,
        manifest: manifest(r.manifest),
        attachments: r.attachments.into_iter().map(attachment).collect(),
        attaches_to: r.attaches_to,
        client: old::Client {
            address: r.client.address,
            user: r.client.user,
            user_agent: r.client.user_agent,
        },
    }
}

fn requirements(r: old::Requirements) -> now::Requirements {
    now::Requirements {
        trust: r.trust,
        keys: r.keys,
        identities: r
            .identities
            .into_iter()
            .map(|i| now::Identity {
                issuer: i.issuer,
                issuer_regexp: i.issuer_regexp,
                subject: i.subject,
                subject_regexp: i.subject_regexp,
                github_workflow_trigger: None,
                github_workflow_sha: None,
                github_workflow_name: None,
                github_workflow_repository: None,
                github_workflow_ref: None,
            })
            .collect(),
        attestations: r.attestations,
        threshold: r.threshold,
        signed_identity: None,
    }
}

/// A 0.1.0 module's decision in the current types.
pub fn decision(d: old::Decision) -> now::Decision {
    match d {
        old::Decision::Admit => now::Decision::Admit,
        old::Decision::Reject(reason) => now::Decision::Reject(reason),
        old::Decision::Verify(r) => now::Decision::Verify(requirements(r)),
    }
}

/// A 0.1.0 module's metadata in the current types.
pub fn metadata(m: old::PolicyMetadata) -> now::PolicyMetadata {
    now::PolicyMetadata {
        name: m.name,
        version: m.version,
        capabilities: m.capabilities,
    }
}

impl old::Host for State {}

impl old_host::Host for State {
    fn log(&mut self, level: old_host::Level, message: String) {
        let level = match level {
            old_host::Level::Debug => now_host::Level::Debug,
            old_host::Level::Info => now_host::Level::Info,
            old_host::Level::Warn => now_host::Level::Warn,
            old_host::Level::Error => now_host::Level::Error,
        };
        now_host::Host::log(self, level, message)
    }

    fn verify(&mut self, r: old::Requirements) -> Result<Vec<old::SignerResult>, String> {
        let results = now_host::Host::verify(self, requirements(r))?;
        Ok(results
            .into_iter()
            .map(|s| old::SignerResult {
                signer: s.signer,
                verified: s.verified,
                reason: s.reason,
            })
            .collect())
    }

    fn image_config(&mut self) -> Result<String, String> {
        now_host::Host::image_config(self)
    }

    fn attestation(
        &mut self,
        predicate_type: String,
        r: old::Requirements,
    ) -> Result<Option<String>, String> {
        now_host::Host::attestation(self, predicate_type, requirements(r))
    }

    fn referrers(&mut self, artifact_type: Option<String>) -> Result<Vec<old::Descriptor>, String> {
        let found = now_host::Host::referrers(self, artifact_type)?;
        Ok(found.into_iter().map(descriptor).collect())
    }
}
