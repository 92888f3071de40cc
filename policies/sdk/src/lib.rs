//! Write a Portcullis admission policy in Rust: a type, its settings (any serde type) and one
//! `evaluate` function. The SDK generates the bindings of the `portcullis:policy` world,
//! parses and validates the settings, exports the module and offers the proxy's own rule for
//! what counts as an attachment.
//!
//! ```ignore
//! use portcullis_policy::{Decision, Policy, Request};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Settings { tags: Vec<String> }
//!
//! struct DenyTags;
//!
//! impl Policy for DenyTags {
//!     const NAME: &'static str = "deny-tags";
//!     type Settings = Settings;
//!     fn evaluate(request: &Request, settings: &Settings) -> Decision {
//!         match settings.tags.contains(&request.reference) {
//!             true => Decision::Reject(format!("the tag {} is mutable", request.reference)),
//!             false => Decision::Admit,
//!         }
//!     }
//! }
//!
//! portcullis_policy::export!(DenyTags);
//! ```
//!
//! Build for the proxy with `cargo build --release --target wasm32-wasip2`; test the logic
//! natively with `cargo test` (the [`testing`] module builds requests).

/// The generated bindings of the `portcullis:policy` world.
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "portcullis_policy::bindings",
    });
}

pub use bindings::portcullis::policy::host;
pub use bindings::portcullis::policy::types::*;
pub use portcullis_classify as classify;
pub use serde;

/// A policy: its name, its settings and its decision.
pub trait Policy {
    /// The name the module reports (in the proxy's log and `policy test`).
    const NAME: &'static str;
    /// The module's version.
    const VERSION: &'static str = "0.1.0";
    /// The host calls it uses: any of "verify", "config", "attestation", "referrers".
    const CAPABILITIES: &'static [&'static str] = &[];
    /// Its settings: the `[policy.settings]` table of `proxy.toml`, read as JSON.
    type Settings: serde::de::DeserializeOwned;

    /// Checks settings beyond their shape; an error keeps the module from loading.
    fn check(settings: &Self::Settings) -> Result<(), String> {
        let _ = settings;
        Ok(())
    }

    /// Decides on one manifest.
    fn evaluate(request: &Request, settings: &Self::Settings) -> Decision;
}

/// Parses and checks settings for `P` (empty text is `{}`).
pub fn settings<P: Policy>(text: &str) -> Result<P::Settings, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let settings: P::Settings = serde_json::from_str(text).map_err(|e| format!("settings: {e}"))?;
    P::check(&settings).map_err(|e| format!("settings: {e}"))?;
    Ok(settings)
}

/// What `P` reports about itself.
pub fn metadata<P: Policy>() -> PolicyMetadata {
    PolicyMetadata {
        name: P::NAME.into(),
        version: P::VERSION.into(),
        capabilities: P::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
    }
}

/// `P`'s decision, or a rejection naming what is wrong with the settings.
pub fn evaluate<P: Policy>(request: &Request, text: &str) -> Decision {
    match settings::<P>(text) {
        Ok(s) => P::evaluate(request, &s),
        Err(e) => Decision::Reject(e),
    }
}

/// Exports a [`Policy`] as the module's `metadata`, `validate-settings` and `evaluate`.
#[macro_export]
macro_rules! export {
    ($policy:ty) => {
        #[doc(hidden)]
        pub struct PortcullisExport;

        impl $crate::bindings::Guest for PortcullisExport {
            fn metadata() -> $crate::PolicyMetadata {
                $crate::metadata::<$policy>()
            }
            fn validate_settings(text: String) -> Result<(), String> {
                $crate::settings::<$policy>(&text).map(|_| ())
            }
            fn evaluate(request: $crate::Request, text: String) -> $crate::Decision {
                $crate::evaluate::<$policy>(&request, &text)
            }
        }

        $crate::bindings::export_world!(PortcullisExport with_types_in $crate::bindings);
    };
}

/// Whether the manifest decided on is an attachment: the proxy marks it as one (`attaches-to`)
/// and its content agrees (no index, no filesystem layer; signature, attestation or SBOM
/// payloads, or a non-image artifact type). The proxy applies the same rule, and checks the
/// payload bytes as well.
pub fn is_attachment(request: &Request) -> bool {
    let m = &request.manifest;
    let shape = classify::Shape {
        media_type: &m.media_type,
        artifact_type: m.artifact_type.as_deref(),
        config: m.config.as_ref().map(|c| c.media_type.as_str()),
        has_manifests: !m.manifests.is_empty(),
    };
    request.attaches_to.is_some()
        && classify::is_attachment(&shape, m.layers.iter().map(|l| l.media_type.as_str()))
}

impl Requirements {
    /// Verification with the keys and roots of one `[trust.<name>]` of `proxy.toml`.
    pub fn trust(name: &str) -> Requirements {
        Requirements { trust: vec![name.into()], ..Requirements::default() }
    }
}

impl Default for Requirements {
    fn default() -> Requirements {
        Requirements {
            trust: vec![],
            keys: vec![],
            identities: vec![],
            attestations: vec![],
            threshold: 0,
            signed_identity: None,
        }
    }
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            issuer: None,
            issuer_regexp: None,
            subject: None,
            subject_regexp: None,
            github_workflow_trigger: None,
            github_workflow_sha: None,
            github_workflow_name: None,
            github_workflow_repository: None,
            github_workflow_ref: None,
        }
    }
}

/// Requests for a policy's native tests.
pub mod testing {
    use super::*;

    /// A filesystem layer of an image.
    pub const FILESYSTEM: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// A cosign signature payload.
    pub const SIGNATURE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    /// An in-toto attestation (DSSE envelope).
    pub const ATTESTATION: &str = "application/vnd.dsse.envelope.v1+json";

    fn descriptor(media_type: &str, digest: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            size: 2,
            artifact_type: None,
            annotations: vec![],
        }
    }

    /// A pull of `namespace/repository:reference`, an image with one layer of `layer_type`.
    pub fn request(namespace: &str, repository: &str, reference: &str, layer_type: &str) -> Request {
        let manifest_type = "application/vnd.oci.image.manifest.v1+json";
        Request {
            operation: Operation::Pull,
            namespace: namespace.into(),
            repository: repository.into(),
            reference: reference.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            media_type: manifest_type.into(),
            size: 2,
            manifest: ManifestInfo {
                media_type: manifest_type.into(),
                config: Some(descriptor("application/vnd.oci.image.config.v1+json", "sha256:11")),
                layers: vec![descriptor(layer_type, "sha256:22")],
                manifests: vec![],
                annotations: vec![],
                subject: None,
                artifact_type: None,
            },
            attachments: vec![],
            attaches_to: None,
            client: Client { address: "127.0.0.1".into(), user: None, user_agent: None },
        }
    }

    /// A pull of an image, `docker.io/library/app:<reference>`.
    pub fn image(reference: &str) -> Request {
        request("docker.io", "library/app", reference, FILESYSTEM)
    }

    /// A pull of a cosign signature (tagged `sha256-<hex>.sig`) of an image.
    pub fn signature() -> Request {
        let image = format!("sha256:{}", "0".repeat(64));
        let mut r = request("docker.io", "library/app", &format!("{}.sig", image.replace(':', "-")), SIGNATURE);
        r.attaches_to = Some(image);
        r
    }

    /// An attachment of `kind` found next to the image.
    pub fn attachment(kind: AttachmentKind, artifact_type: Option<&str>) -> Attachment {
        Attachment {
            kind,
            digest: "sha256:33".into(),
            artifact_type: artifact_type.map(String::from),
            annotations: vec![],
        }
    }
}
