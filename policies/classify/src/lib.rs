//! What an OCI manifest is, judged by its content alone: never by the tag it was found under,
//! nor by a `subject` field (an image manifest with a `subject` is still a runnable image).
//!
//! The one rule, shared by the proxy and the example policies:
//! 1. An index (OCI image index, Docker manifest list) is never an attachment.
//! 2. A manifest with any filesystem layer (a media type under `application/vnd.oci.image.layer.`
//!    or `application/vnd.docker.image.rootfs.`, or any other `tar` archive) is never an
//!    attachment, whatever else it says.
//! 3. Otherwise it is an attachment when every layer (at least one) is an attachment payload
//!    (cosign simple signing, DSSE envelope, in-toto, Sigstore bundle, SPDX, CycloneDX, Syft),
//!    or when its `artifactType` or config media type names something other than a runnable
//!    image config (an OCI 1.1 artifact such as a cosign v3 bundle or a Notation signature).

/// Media types of manifests that list other manifests.
const INDEX_TYPES: [&str; 2] = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// Config media types of runnable images.
const IMAGE_CONFIG_TYPES: [&str; 2] = ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// Layer media type prefixes of signatures, attestations and SBOMs.
const PAYLOAD_PREFIXES: [&str; 8] = [
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.in-toto+json",
    "application/vnd.dev.sigstore.bundle",
    "text/spdx",
    "application/spdx",
    "application/vnd.cyclonedx",
    "application/vnd.syft",
];

/// The content of a manifest that decides what it is: its media types only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape<'a> {
    /// The manifest's own media type.
    pub media_type: &'a str,
    /// Its `artifactType`, if any.
    pub artifact_type: Option<&'a str>,
    /// Its config's media type, if it has a config.
    pub config: Option<&'a str>,
    /// Whether it lists child manifests (an index).
    pub has_manifests: bool,
}

/// Whether a layer media type is a filesystem layer a container runtime would unpack.
pub fn is_filesystem_layer(media_type: &str) -> bool {
    let t = media_type.to_ascii_lowercase();
    t.starts_with("application/vnd.oci.image.layer.")
        || t.starts_with("application/vnd.docker.image.rootfs.")
        || t.split(['.', '/', '+', '-', ';']).any(|word| word.trim() == "tar")
}

/// Whether a layer media type is a signature, attestation or SBOM payload.
pub fn is_attachment_payload(media_type: &str) -> bool {
    PAYLOAD_PREFIXES.iter().any(|p| media_type.starts_with(p))
}

/// Whether a manifest is an attachment (rules 1-3 above), from its shape and its layers' media
/// types.
pub fn is_attachment<'a>(shape: &Shape<'_>, layers: impl IntoIterator<Item = &'a str>) -> bool {
    if shape.has_manifests || INDEX_TYPES.contains(&shape.media_type) {
        return false;
    }
    let mut count = 0;
    let mut all_payloads = true;
    for layer in layers {
        if is_filesystem_layer(layer) {
            return false;
        }
        count += 1;
        all_payloads &= is_attachment_payload(layer);
    }
    let artifact = shape.artifact_type.is_some_and(|t| !t.is_empty() && !IMAGE_CONFIG_TYPES.contains(&t))
        || shape.config.is_some_and(|c| !IMAGE_CONFIG_TYPES.contains(&c));
    (count > 0 && all_payloads) || artifact
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

    fn image(config: &str) -> Shape<'_> {
        Shape { media_type: OCI_MANIFEST, config: Some(config), ..Shape::default() }
    }

    #[test]
    fn cosign_signatures_attestations_and_sboms_are_attachments() {
        assert!(is_attachment(&image(IMAGE_CONFIG), ["application/vnd.dev.cosign.simplesigning.v1+json"; 3]));
        assert!(is_attachment(&image(IMAGE_CONFIG), ["application/vnd.dsse.envelope.v1+json"]));
        for sbom in ["text/spdx+json", "text/spdx", "application/vnd.cyclonedx+xml", "application/vnd.syft+json"] {
            assert!(is_attachment(&image(IMAGE_CONFIG), [sbom]), "{sbom}");
        }
        // older cosign wrote signatures as Docker schema 2 manifests
        let docker = Shape { media_type: DOCKER_MANIFEST, config: Some(IMAGE_CONFIG), ..Shape::default() };
        assert!(is_attachment(&docker, ["application/vnd.dev.cosign.simplesigning.v1+json"]));
    }

    #[test]
    fn artifacts_are_attachments() {
        let bundle = Shape {
            media_type: OCI_MANIFEST,
            artifact_type: Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
            config: Some("application/vnd.oci.empty.v1+json"),
            has_manifests: false,
        };
        assert!(is_attachment(&bundle, ["application/vnd.dev.sigstore.bundle.v0.3+json"]));
        let notation = Shape { artifact_type: Some("application/vnd.cncf.notary.signature"), ..bundle };
        assert!(is_attachment(&notation, ["application/jose+json"]));
        let config_only = image("application/vnd.example.report.v1+json");
        assert!(is_attachment(&config_only, ["application/json"]));
    }

    #[test]
    fn runnable_images_never_are_whatever_else_they_say() {
        for fs in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/x-tar",
            "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        ] {
            assert!(!is_attachment(&image(IMAGE_CONFIG), [fs]), "{fs}");
            // an artifact type or a signature layer next to a filesystem layer changes nothing
            let dressed = Shape { artifact_type: Some("application/vnd.dev.sigstore.bundle.v0.3+json"), ..image("application/vnd.oci.empty.v1+json") };
            assert!(!is_attachment(&dressed, ["application/vnd.dev.cosign.simplesigning.v1+json", fs]), "{fs}");
        }
        assert!(!is_attachment(&image(IMAGE_CONFIG), []), "a config-only image");
        assert!(!is_filesystem_layer("application/vnd.example.startrek+json"), "tar as a word, not a substring");
        assert!(!is_attachment(&image("application/vnd.docker.container.image.v1+json"), ["application/octet-stream"]));
    }

    #[test]
    fn indexes_never_are() {
        let index = Shape { media_type: "application/vnd.oci.image.index.v1+json", artifact_type: Some("application/vnd.example"), ..Shape::default() };
        assert!(!is_attachment(&index, ["text/spdx+json"]));
        let list = Shape { media_type: "application/vnd.docker.distribution.manifest.list.v2+json", ..Shape::default() };
        assert!(!is_attachment(&list, []));
        let inferred = Shape { media_type: OCI_MANIFEST, has_manifests: true, config: Some("application/vnd.example"), ..Shape::default() };
        assert!(!is_attachment(&inferred, []));
    }
}
