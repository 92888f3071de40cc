// The proxy's attachment rule for a policy module's request; included by a policy crate after
// its `wit_bindgen::generate!` (the request type is the module's own generated one).

/// Whether the manifest decided on is an attachment: the proxy marks it as one (`attaches-to`)
/// and its content agrees (no index, no filesystem layer; signature, attestation or SBOM
/// payloads, or a non-image artifact type).
fn is_attachment(request: &Request) -> bool {
    let m = &request.manifest;
    let shape = portcullis_classify::Shape {
        media_type: &m.media_type,
        artifact_type: m.artifact_type.as_deref(),
        config: m.config.as_ref().map(|c| c.media_type.as_str()),
        has_manifests: !m.manifests.is_empty(),
    };
    request.attaches_to.is_some() && portcullis_classify::is_attachment(&shape, m.layers.iter().map(|l| l.media_type.as_str()))
}
