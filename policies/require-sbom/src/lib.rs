//! Admit images only when an SBOM is attached (cosign `.sbom`, or an SPDX / CycloneDX referrer).

wit_bindgen::generate!({ world: "policy", path: "../../wit" });
include!("../../classify/src/guest.rs");

use portcullis::policy::types::{Attachment, AttachmentKind};

fn is_sbom(a: &Attachment) -> bool {
    let t = a.artifact_type.as_deref().unwrap_or("");
    a.kind == AttachmentKind::Sbom || t.starts_with("text/spdx") || t.starts_with("application/spdx") || t.contains("cyclonedx")
}

fn decide(request: &Request) -> Decision {
    if is_attachment(request) || request.attachments.iter().any(is_sbom) {
        Decision::Admit
    } else {
        Decision::Reject("no SBOM is attached to this image".into())
    }
}

struct RequireSbom;

impl Guest for RequireSbom {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "require-sbom".into(), version: env!("CARGO_PKG_VERSION").into(), capabilities: vec![] }
    }

    fn validate_settings(_text: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(request: Request, _text: String) -> Decision {
        decide(&request)
    }
}

export!(RequireSbom);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis::policy::types::{Client, ManifestInfo, Operation};

    fn request(attachments: Vec<Attachment>) -> Request {
        Request {
            operation: Operation::Pull,
            namespace: "up".into(),
            repository: "r".into(),
            reference: "v1".into(),
            digest: "sha256:00".into(),
            media_type: String::new(),
            size: 0,
            manifest: ManifestInfo { media_type: String::new(), config: None, layers: vec![], manifests: vec![], annotations: vec![], subject: None, artifact_type: None },
            attachments,
            attaches_to: None,
            client: Client { address: String::new(), user: None, user_agent: None },
        }
    }

    fn attachment(kind: AttachmentKind, t: &str) -> Attachment {
        Attachment { kind, digest: "sha256:1".into(), artifact_type: Some(t.into()), annotations: vec![] }
    }

    #[test]
    fn needs_an_sbom() {
        assert!(matches!(decide(&request(vec![])), Decision::Reject(_)));
        assert!(matches!(decide(&request(vec![attachment(AttachmentKind::Signature, "x")])), Decision::Reject(_)));
        assert!(matches!(decide(&request(vec![attachment(AttachmentKind::Sbom, "text/spdx+json")])), Decision::Admit));
        assert!(matches!(decide(&request(vec![attachment(AttachmentKind::Referrer, "application/vnd.cyclonedx+json")])), Decision::Admit));
    }
}
