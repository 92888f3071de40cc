//! What each fuzz target does with its input; shared with the regression test that replays
//! every input once found to crash (`fuzz/regressions/<target>/`).

#![allow(dead_code)] // each fuzz target uses one of these

use portcullis::names::{Digest, Reference, RepoName, Tag};
use portcullis::verify::{bundle::Bundle, keyless, ImageRef};

/// The request router: a path, then optionally a newline and containerd's `ns`.
pub fn route(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, ns) = match text.split_once('\n') {
        Some((p, n)) => (p, Some(n)),
        None => (text, None),
    };
    let _ = portcullis::http::route::parse(path, ns);
}

/// Digests (which must print back to themselves), tags, references, repository names, image
/// references.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = text.parse::<Digest>() {
        assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
    }
    let _ = text.parse::<Tag>();
    let _ = text.parse::<Reference>();
    if let Ok(r) = text.parse::<RepoName>() {
        assert_eq!(r.as_str(), text);
    }
    let _ = ImageRef::parse(text);
}

/// Manifest and index parsing.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = portcullis::manifest::Manifest::parse(data) {
        let _ = m.media_type();
    }
}

/// Sigstore bundles, cosign's Rekor bundle annotation, certificate and chain annotations
/// (NUL-separated).
pub fn attachments(data: &[u8]) {
    let _ = Bundle::parse(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(entry) = keyless::LogEntry::from_cosign_bundle(text) {
        let _ = entry.signed_bytes();
    }
    let mut parts = text.splitn(3, '\u{0}');
    let cert = parts.next().unwrap_or("");
    let _ = keyless::evidence_from_pem(cert, parts.next(), parts.next());
}
