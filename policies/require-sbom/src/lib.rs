//! Admit images only when an SBOM is attached (cosign `.sbom`, or an SPDX / CycloneDX referrer).

use portcullis_policy::{is_attachment, Attachment, AttachmentKind, Decision, Policy, Request};

fn is_sbom(a: &Attachment) -> bool {
    let t = a.artifact_type.as_deref().unwrap_or("");
    a.kind == AttachmentKind::Sbom || t.starts_with("text/spdx") || t.starts_with("application/spdx") || t.contains("cyclonedx")
}

struct RequireSbom;

impl Policy for RequireSbom {
    const NAME: &'static str = "require-sbom";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Settings = serde::de::IgnoredAny;

    fn evaluate(request: &Request, _: &Self::Settings) -> Decision {
        if is_attachment(request) || request.attachments.iter().any(is_sbom) {
            Decision::Admit
        } else {
            Decision::Reject("no SBOM is attached to this image".into())
        }
    }
}

portcullis_policy::export!(RequireSbom);

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::testing::{attachment, image};

    fn decide(attachments: Vec<Attachment>) -> Decision {
        let mut request = image("v1");
        request.attachments = attachments;
        portcullis_policy::evaluate::<RequireSbom>(&request, "{}")
    }

    #[test]
    fn needs_an_sbom() {
        assert!(matches!(decide(vec![]), Decision::Reject(_)));
        assert!(matches!(decide(vec![attachment(AttachmentKind::Signature, Some("x"))]), Decision::Reject(_)));
        assert!(matches!(decide(vec![attachment(AttachmentKind::Sbom, Some("text/spdx+json"))]), Decision::Admit));
        assert!(matches!(decide(vec![attachment(AttachmentKind::Referrer, Some("application/vnd.cyclonedx+json"))]), Decision::Admit));
    }
}
