//! Manifest media types and the few manifest fields the proxy reads.

use serde::Deserialize;

use crate::error::{Code, RegistryError};
use crate::names::Digest;

/// The largest manifest accepted, from upstreams and from clients.
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type the proxy serves, as sent in `Accept` to upstreams.
pub const ALL_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Whether a media type is an index (a list of manifests).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: i64,
    /// The artifact type, for referrers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// The platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct Platform {
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU variant, e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The fields of an image manifest or index the proxy uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 2 for every supported format.
    pub schema_version: i64,
    /// The declared media type (optional in OCI).
    #[serde(default)]
    pub media_type: Option<String>,
    /// Config descriptor (image manifests).
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Layers (image manifests).
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Child manifests (indexes).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default)]
    pub subject: Option<Descriptor>,
    /// The artifact type.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Manifest {
    /// Parses manifest bytes, rejecting what is not a schema 2 manifest or index, and what other
    /// clients would read differently (see [`check_keys`]).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, RegistryError> {
        let invalid = |e: serde_json::Error| {
            RegistryError::of(Code::ManifestInvalid, format!("manifest is not valid: {e}"))
        };
        check_keys(bytes).map_err(invalid)?;
        let m: Manifest = serde_json::from_slice(bytes).map_err(invalid)?;
        if m.schema_version != 2 {
            return Err(RegistryError::of(
                Code::ManifestInvalid,
                "only schemaVersion 2 manifests are supported",
            ));
        }
        Ok(m)
    }

    /// Whether this manifest is an attachment (a signature, attestation, SBOM or other artifact
    /// referring to an image) by its content alone; see [`portcullis_classify`] for the rule.
    pub fn is_attachment(&self) -> bool {
        let shape = portcullis_classify::Shape {
            media_type: self.media_type(),
            artifact_type: self.artifact_type.as_deref(),
            config: self.config.as_ref().map(|c| c.media_type.as_str()),
            has_manifests: !self.manifests.is_empty(),
        };
        portcullis_classify::is_attachment(
            &shape,
            self.layers.iter().map(|l| l.media_type.as_str()),
        )
    }

    /// The image this manifest attaches to, when it is an attachment by its content: its
    /// `subject`, else the digest named by the attachment tag it was asked for by
    /// (`sha256-<hex>.sig` and the like). `None` for anything runnable, whatever its tag or subject.
    pub fn attaches_to(&self, tag: Option<&str>) -> Option<Digest> {
        if !self.is_attachment() {
            return None;
        }
        self.subject
            .as_ref()
            .map(|s| s.digest.clone())
            .or_else(|| tag.and_then(attachment_subject))
    }

    /// The media type: the declared one, else inferred from the structure.
    /// A declared type that is not a manifest media type is ignored (never served as such).
    pub fn media_type(&self) -> &str {
        match &self.media_type {
            Some(t) if ALL_TYPES.contains(&t.as_str()) => t,
            _ if !self.manifests.is_empty() || self.config.is_none() => OCI_INDEX,
            _ => OCI_MANIFEST,
        }
    }
}

/// Field names of manifests, descriptors and platforms.
const FIELDS: [&str; 19] = [
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "subject",
    "artifactType",
    "annotations",
    "digest",
    "size",
    "platform",
    "urls",
    "data",
    "architecture",
    "os",
    "variant",
    "os.version",
    "os.features",
    "features",
];

/// A key as Go's `encoding/json` matches it to a field: case-insensitively, `ſ` as `s` and the
/// Kelvin sign as `k`.
fn fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Refuses JSON that Go clients (containerd, Docker, podman) would read differently from this
/// proxy: two keys of one object that fold to the same name (Go takes the last, whatever its
/// case), or a key that folds to a field name without being it (`"Layers"`, `"layerſ"`), at any
/// depth but inside annotations.
pub fn check_keys(bytes: &[u8]) -> Result<(), serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Keys;
    impl<'de> DeserializeSeed<'de> for Keys {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Keys)
        }
    }
    impl<'de> Visitor<'de> for Keys {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen: Vec<String> = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let folded = fold(&key);
                if seen.contains(&folded) {
                    return Err(serde::de::Error::custom(format!(
                        "key {key:?} appears twice (in some spelling)"
                    )));
                }
                if let Some(field) = FIELDS.iter().find(|f| fold(f) == folded && **f != key) {
                    return Err(serde::de::Error::custom(format!(
                        "key {key:?} is not {field:?}"
                    )));
                }
                seen.push(folded);
                if key == "annotations" {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    map.next_value_seed(Keys)?;
                }
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Keys)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Keys.deserialize(&mut de)?;
    de.end()
}

/// Whether a tag names a cosign attachment or a referrers fallback index: `sha256-<hex>[.kind]`.
pub fn is_attachment_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let (hex, suffix) = rest.split_at(rest.len().min(64));
    hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && matches!(suffix, "" | ".sig" | ".att" | ".sbom")
}

/// The image digest an attachment tag (`sha256-<hex>.sig`, ...) names.
pub fn attachment_subject(tag: &str) -> Option<Digest> {
    if !is_attachment_tag(tag) {
        return None;
    }
    let hex = &tag["sha256-".len().."sha256-".len() + 64];
    format!("sha256:{hex}").parse().ok()
}

/// Whether a client `Accept` header admits a media type (no header: everything).
pub fn accepts(accept: &[String], media_type: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    accept.iter().flat_map(|h| h.split(',')).any(|item| {
        let t = item.split(';').next().unwrap_or("").trim();
        t == media_type || t == "*/*" || t == "application/*"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_inference() {
        let m = Manifest::parse(br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#).unwrap();
        assert_eq!(m.media_type(), OCI_MANIFEST);
        let m = Manifest::parse(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        assert_eq!(m.media_type(), OCI_INDEX);
        let m = Manifest::parse(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#).unwrap();
        assert!(is_index(m.media_type()));
        assert!(Manifest::parse(br#"{"schemaVersion":1}"#).is_err());
        let html = Manifest::parse(br#"{"schemaVersion":2,"mediaType":"text/html","config":{"mediaType":"x","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}}"#).unwrap();
        assert_eq!(
            html.media_type(),
            OCI_MANIFEST,
            "a declared type that is no manifest type is never served"
        );
        assert!(Manifest::parse(b"[[[").is_err());
    }

    #[test]
    fn attachment_tags() {
        let hex = "a".repeat(64);
        for ok in ["", ".sig", ".att", ".sbom"] {
            assert!(is_attachment_tag(&format!("sha256-{hex}{ok}")));
        }
        assert!(!is_attachment_tag(&format!("sha256-{hex}.foo")));
        assert!(!is_attachment_tag("sha256-abc.sig"));
        assert!(!is_attachment_tag("latest"));
    }

    #[test]
    fn attachment_status_comes_from_content_not_tag_or_subject() {
        let hex = "b".repeat(64);
        let tag = format!("sha256-{hex}.sig");
        let subject = format!(
            r#""subject":{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":2}}"#,
            "c".repeat(64)
        );
        let layer = |t: &str| {
            format!(
                r#"{{"mediaType":"{t}","digest":"sha256:{}","size":2}}"#,
                "d".repeat(64)
            )
        };
        let manifest = |layers: &str, extra: &str| {
            Manifest::parse(format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[{layers}]{extra}}}"#, "e".repeat(64)).as_bytes()).unwrap()
        };
        let runnable = manifest(
            &layer("application/vnd.oci.image.layer.v1.tar+gzip"),
            &format!(",{subject}"),
        );
        assert_eq!(
            runnable.attaches_to(Some(&tag)),
            None,
            "a runnable image with a subject under a .sig tag"
        );
        let signature = manifest(
            &layer("application/vnd.dev.cosign.simplesigning.v1+json"),
            "",
        );
        assert_eq!(
            signature.attaches_to(Some(&tag)).unwrap().hex(),
            hex,
            "a signature under its tag"
        );
        assert_eq!(
            signature.attaches_to(Some("latest")),
            None,
            "a signature nothing names"
        );
        let referrer = manifest(
            &layer("application/vnd.dev.sigstore.bundle.v0.3+json"),
            &format!(",{subject}"),
        );
        assert_eq!(
            referrer.attaches_to(None).unwrap().hex(),
            "c".repeat(64),
            "a bundle referring to its subject"
        );
    }

    #[test]
    fn json_that_go_clients_read_otherwise_is_refused() {
        let layer = |t: &str| {
            format!(
                r#"{{"mediaType":"{t}","digest":"sha256:{}","size":2}}"#,
                "d".repeat(64)
            )
        };
        let sig = layer("application/vnd.dev.cosign.simplesigning.v1+json");
        let tar = layer("application/vnd.oci.image.layer.v1.tar+gzip");
        let config = format!(
            r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}}"#,
            "e".repeat(64)
        );
        let ok = format!(
            r#"{{"schemaVersion":2,{config},"layers":[{sig}],"annotations":{{"Layers":"x","layers":"y"}}}}"#
        );
        assert!(
            Manifest::parse(ok.as_bytes()).is_ok(),
            "annotations may hold any keys"
        );
        for bad in [
            format!(r#"{{"schemaVersion":2,{config},"layers":[{sig}],"Layers":[{tar}]}}"#),
            format!(r#"{{"schemaVersion":2,{config},"layer\u017f":[{tar}],"layers":[{sig}]}}"#),
            format!(
                r#"{{"schemaVersion":2,{config},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","MediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":2}}]}}"#,
                "d".repeat(64)
            ),
            format!(r#"{{"schemaVersion":2,{config},"layers":[{sig}],"layers":[{tar}]}}"#),
            format!(r#"{{"schemaVersion":2,{config},"layers":[{sig}],"\u212aind":1,"kind":2}}"#),
        ] {
            assert_eq!(
                Manifest::parse(bad.as_bytes()).unwrap_err().code,
                Code::ManifestInvalid,
                "{bad}"
            );
        }
    }

    #[test]
    fn accept_header() {
        let a = vec![format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9")];
        assert!(accepts(&a, OCI_MANIFEST));
        assert!(!accepts(&a, OCI_INDEX));
        assert!(accepts(&[], OCI_INDEX));
        assert!(accepts(&["*/*".into()], OCI_INDEX));
    }
}
