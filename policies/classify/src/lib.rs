//! What an OCI manifest is, judged by its content alone: never by the tag it was found under,
//! nor by a `subject` field (an image manifest with a `subject` is still a runnable image).
//!
//! The one rule, shared by the proxy and the example policies:
//! 1. An index (OCI image index, Docker manifest list) is never an attachment.
//! 2. A manifest with any layer a container runtime could unpack or run (a media type under
//!    `application/vnd.oci.image.layer.` or `application/vnd.docker.image.rootfs.`, any other
//!    `tar` archive, `application/octet-stream`, WebAssembly) is never an attachment, whatever
//!    else it says.
//! 3. Otherwise it is an attachment when it has layers and every one is an attachment payload
//!    (cosign simple signing, DSSE envelope, in-toto, Sigstore bundle, SPDX, CycloneDX, Syft),
//!    or when its config is something other than a runnable image config (an OCI 1.1 artifact
//!    such as a cosign v3 bundle or a Notation signature; an `artifactType` alone does not
//!    count).
//!
//! Media types are what a manifest claims; the proxy also looks at the payload bytes
//! ([`looks_like_archive`]) before it treats a manifest as an attachment.

/// Media types of manifests that list other manifests.
const INDEX_TYPES: [&str; 2] = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// Config media types a runtime runs: OCI and Docker image configs, the untyped config some
/// clients accept, WebAssembly module configs.
fn is_runnable_config(media_type: &str) -> bool {
    let t = media_type.to_ascii_lowercase();
    matches!(t.as_str(), "application/vnd.oci.image.config.v1+json" | "application/vnd.docker.container.image.v1+json" | "application/octet-stream")
        || t.starts_with("application/vnd.wasm.config.")
}

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

/// Whether a layer media type is something a container runtime could unpack or run.
pub fn is_filesystem_layer(media_type: &str) -> bool {
    let t = media_type.to_ascii_lowercase();
    t.starts_with("application/vnd.oci.image.layer.")
        || t.starts_with("application/vnd.docker.image.rootfs.")
        || t.starts_with("application/octet-stream")
        || t.starts_with("application/wasm")
        || t.starts_with("application/vnd.wasm.")
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
    let artifact = shape.config.is_some_and(|c| !c.is_empty() && !is_runnable_config(c));
    (count > 0 && all_payloads) || artifact
}

/// Whether the first bytes of a blob are an archive, compressed data or an executable (gzip,
/// zstd, xz, bzip2, zip, tar, WebAssembly, ELF): never a signature, attestation or SBOM
/// payload, whatever its media type says. Give it the blob's first 512 bytes (or all of a
/// shorter blob).
pub fn looks_like_archive(head: &[u8]) -> bool {
    const MAGIC: [&[u8]; 8] = [b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh", b"PK\x03\x04", b"\x00asm", b"\x7fELF", b"\x04\x22\x4d\x18"];
    MAGIC.iter().any(|m| head.starts_with(m)) || head.get(257..262) == Some(b"ustar")
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
    fn an_artifact_type_next_to_a_runnable_config_is_no_attachment() {
        let dressed = Shape { artifact_type: Some("application/vnd.example.note"), ..image(IMAGE_CONFIG) };
        assert!(!is_attachment(&dressed, ["application/json"]));
        for runnable in ["application/octet-stream", "application/vnd.wasm.config.v0+json", "application/vnd.docker.container.image.v1+json"] {
            assert!(!is_attachment(&image(runnable), ["application/json"]), "{runnable}");
        }
        for layer in ["application/octet-stream", "application/wasm", "application/vnd.wasm.content.layer.v1+wasm"] {
            assert!(!is_attachment(&image("application/vnd.example.report.v1+json"), [layer]), "{layer}");
        }
    }

    #[test]
    fn archives_and_executables_are_recognised_by_their_bytes() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        for blob in [&b"\x1f\x8b\x08\x00"[..], b"\x28\xb5\x2f\xfd\x00", b"PK\x03\x04xx", b"\x00asm\x01\x00\x00\x00", b"\x7fELF\x02", &tar] {
            assert!(looks_like_archive(blob), "{:?}", &blob[..4]);
        }
        for payload in [&br#"{"critical":{"identity":{}}}"#[..], b"SPDXVersion: SPDX-2.3", b"", b"{}"] {
            assert!(!looks_like_archive(payload));
        }
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
