//! Parsing request paths into typed routes. Repository names hold `/`, so paths are parsed
//! from the right-hand end.

use crate::error::{Code, RegistryError, Result};
use crate::names::{Digest, Reference, RepoName, MAX_NAME_LEN};

/// A repository as addressed by a client: the namespace (an upstream) and the repository in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The upstream or local namespace (first path segment, or containerd's `?ns=` host).
    pub namespace: String,
    /// The repository inside the namespace.
    pub repo: RepoName,
    /// The name as the client wrote it (what `tags/list` answers with).
    pub full: String,
}

/// Every endpoint Portcullis answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`: API version check.
    Base,
    /// `GET /healthz`: the process is alive.
    Health,
    /// `GET /readyz`: the store is writable.
    Ready,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest { name: Name, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: Name, digest: Digest },
    /// `/v2/<name>/blobs/uploads/[<id>]`.
    Upload { name: Name, id: Option<String> },
    /// `/v2/<name>/tags/list`.
    Tags { name: Name },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers { name: Name, digest: Digest },
    /// `/extensions/v2/<name>/signatures/<digest>`.
    Signatures { name: Name, digest: Digest },
}

impl Route {
    /// The route's index in [`crate::metrics::ROUTES`].
    pub fn index(&self) -> usize {
        let label = match self {
            Route::Base => "base",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Upload { .. } => "upload",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::Signatures { .. } => "signatures",
        };
        crate::metrics::ROUTES
            .iter()
            .position(|r| *r == label)
            .unwrap_or(crate::metrics::ROUTES.len() - 1)
    }

    /// The repository a route names, and the reference (tag, digest or upload id) within it.
    pub fn target(&self) -> Option<(&Name, String)> {
        match self {
            Route::Base | Route::Health | Route::Ready => None,
            Route::Manifest { name, reference } => Some((name, reference.to_string())),
            Route::Blob { name, digest }
            | Route::Referrers { name, digest }
            | Route::Signatures { name, digest } => Some((name, digest.to_string())),
            Route::Upload { name, id } => Some((name, id.clone().unwrap_or_default())),
            Route::Tags { name } => Some((name, String::new())),
        }
    }
}

fn name_invalid(msg: &str) -> RegistryError {
    RegistryError::of(Code::NameInvalid, msg.to_string())
}

fn not_found() -> RegistryError {
    RegistryError::of(Code::NameUnknown, "no such endpoint")
}

/// Parses a raw (still percent-encoded) path and the containerd `ns` query parameter.
pub fn parse(path: &str, ns: Option<&str>) -> Result<Route> {
    match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/healthz" => return Ok(Route::Health),
        "/readyz" => return Ok(Route::Ready),
        _ => {}
    }
    if path.contains('%') || path.contains('\0') || path.contains('\\') {
        return Err(name_invalid(
            "encoded or control characters are not allowed in registry paths",
        ));
    }
    if let Some(rest) = path.strip_prefix("/extensions/v2/") {
        let (name, tail) = split_tail(rest, 2).ok_or_else(not_found)?;
        return match tail.as_slice() {
            ["signatures", d] => Ok(Route::Signatures {
                name: parse_name(name, ns)?,
                digest: d.parse()?,
            }),
            _ => Err(not_found()),
        };
    }
    let rest = path.strip_prefix("/v2/").ok_or_else(not_found)?;
    // The longest tails first: uploads have up to three segments after the name.
    if let Some((name, tail)) = split_tail(rest, 3) {
        if let ["blobs", "uploads", id] = tail.as_slice() {
            let id = (!id.is_empty()).then(|| id.to_string());
            return Ok(Route::Upload {
                name: parse_name(name, ns)?,
                id,
            });
        }
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads") {
        return Ok(Route::Upload {
            name: parse_name(name, ns)?,
            id: None,
        });
    }
    let (name, tail) = split_tail(rest, 2).ok_or_else(not_found)?;
    match tail.as_slice() {
        ["manifests", r] => Ok(Route::Manifest {
            name: parse_name(name, ns)?,
            reference: r.parse()?,
        }),
        ["blobs", d] => Ok(Route::Blob {
            name: parse_name(name, ns)?,
            digest: d.parse()?,
        }),
        ["tags", "list"] => Ok(Route::Tags {
            name: parse_name(name, ns)?,
        }),
        ["referrers", d] => Ok(Route::Referrers {
            name: parse_name(name, ns)?,
            digest: d.parse()?,
        }),
        _ => Err(not_found()),
    }
}

/// Splits off the last `n` segments: `("a/b", ["manifests","v1"])` from `a/b/manifests/v1`.
fn split_tail(path: &str, n: usize) -> Option<(&str, Vec<&str>)> {
    let mut cut = path.len();
    for _ in 0..n {
        cut = path[..cut].rfind('/')?;
    }
    let name = &path[..cut];
    let tail = path[cut + 1..].split('/').collect();
    (!name.is_empty()).then_some((name, tail))
}

/// Parses `<namespace>/<repo>`, or the whole name as the repo when `ns` is given (containerd's
/// mirror form); a first segment equal to `ns` is the namespace written out again (containerd's
/// `override_path` form: `/v2/docker.io/library/alpine/...?ns=docker.io`).
fn parse_name(name: &str, ns: Option<&str>) -> Result<Name> {
    if name.len() > MAX_NAME_LEN {
        return Err(name_invalid("repository name too long"));
    }
    let (namespace, repo) = match ns {
        Some(host) => match name.split_once('/') {
            Some((first, rest)) if first == host => (host, rest),
            _ => (host, name),
        },
        None => name.split_once('/').ok_or_else(|| {
            RegistryError::of(
                Code::NameUnknown,
                format!("{name:?} names no repository: use /v2/<upstream>/<repository>"),
            )
        })?,
    };
    if namespace.is_empty() || namespace.contains(['/', '%']) || namespace.len() > MAX_NAME_LEN {
        return Err(name_invalid("invalid namespace"));
    }
    Ok(Name {
        namespace: namespace.to_string(),
        repo: repo.parse()?,
        full: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2ea0dac098f62fc0da932e532218e1ae21fd3956320c69225acff8c1e9ac0622";

    fn name(ns: &str, repo: &str) -> Name {
        let full = format!("{ns}/{repo}");
        Name {
            namespace: ns.into(),
            repo: repo.parse().unwrap(),
            full,
        }
    }

    #[test]
    fn good_routes() {
        assert_eq!(parse("/v2/", None).unwrap(), Route::Base);
        assert_eq!(parse("/v2", None).unwrap(), Route::Base);
        assert_eq!(
            parse("/v2/docker.io/library/alpine/manifests/3.19", None).unwrap(),
            Route::Manifest {
                name: name("docker.io", "library/alpine"),
                reference: "3.19".parse().unwrap()
            }
        );
        assert_eq!(
            parse(&format!("/v2/up/a/b/c/blobs/{D}"), None).unwrap(),
            Route::Blob {
                name: name("up", "a/b/c"),
                digest: D.parse().unwrap()
            }
        );
        assert_eq!(
            parse("/v2/up/r/tags/list", None).unwrap(),
            Route::Tags {
                name: name("up", "r")
            }
        );
        assert_eq!(
            parse("/v2/up/r/blobs/uploads/", None).unwrap(),
            Route::Upload {
                name: name("up", "r"),
                id: None
            }
        );
        assert_eq!(
            parse("/v2/up/r/blobs/uploads", None).unwrap(),
            Route::Upload {
                name: name("up", "r"),
                id: None
            }
        );
        assert_eq!(
            parse("/v2/up/r/blobs/uploads/abc-123", None).unwrap(),
            Route::Upload {
                name: name("up", "r"),
                id: Some("abc-123".into())
            }
        );
        assert_eq!(
            parse(&format!("/v2/up/r/referrers/{D}"), None).unwrap(),
            Route::Referrers {
                name: name("up", "r"),
                digest: D.parse().unwrap()
            }
        );
        assert_eq!(
            parse(&format!("/extensions/v2/up/r/signatures/{D}"), None).unwrap(),
            Route::Signatures {
                name: name("up", "r"),
                digest: D.parse().unwrap()
            }
        );
    }

    #[test]
    fn names_that_look_like_endpoints() {
        // a repository called "manifests" or "blobs" still parses from the right
        assert_eq!(
            parse("/v2/up/manifests/manifests/v1", None).unwrap(),
            Route::Manifest {
                name: name("up", "manifests"),
                reference: "v1".parse().unwrap()
            }
        );
        assert_eq!(
            parse("/v2/up/blobs/tags/list", None).unwrap(),
            Route::Tags {
                name: name("up", "blobs")
            }
        );
    }

    #[test]
    fn containerd_ns() {
        let r = parse("/v2/library/alpine/manifests/latest", Some("docker.io")).unwrap();
        let Route::Manifest { name, .. } = r else {
            panic!()
        };
        assert_eq!(
            (
                name.namespace.as_str(),
                name.repo.as_str(),
                name.full.as_str()
            ),
            ("docker.io", "library/alpine", "library/alpine")
        );
        // override_path: the namespace is written out in the path as well
        let r = parse(
            "/v2/docker.io/library/alpine/manifests/latest",
            Some("docker.io"),
        )
        .unwrap();
        let Route::Manifest { name, .. } = r else {
            panic!()
        };
        assert_eq!(
            (name.namespace.as_str(), name.repo.as_str()),
            ("docker.io", "library/alpine")
        );
        // another first segment stays part of the repository
        let r = parse("/v2/quay.io/x/manifests/latest", Some("docker.io")).unwrap();
        let Route::Manifest { name, .. } = r else {
            panic!()
        };
        assert_eq!(name.repo.as_str(), "quay.io/x");
    }

    #[test]
    fn nasty_paths() {
        let cases: &[(&str, Code)] = &[
            ("/v2/up/../etc/manifests/x", Code::NameInvalid),
            ("/v2/up/%2e%2e/manifests/x", Code::NameInvalid),
            ("/v2/up/a%2fb/manifests/x", Code::NameInvalid),
            ("/v2/up//a/manifests/x", Code::NameInvalid),
            ("/v2/up/A/manifests/x", Code::NameInvalid),
            ("/v2/up/a\0/manifests/x", Code::NameInvalid),
            ("/v2/up/a/manifests/..", Code::ManifestInvalid),
            ("/v2/up/a/manifests/sha256:abc", Code::DigestInvalid),
            ("/v2/up/a/blobs/md5:0123", Code::DigestInvalid),
            ("/v2/up/a/blobs/latest", Code::DigestInvalid),
            ("/v2/alpine/manifests/x", Code::NameUnknown),
            ("/v2/up/a/nothing/here", Code::NameUnknown),
            ("/etc/passwd", Code::NameUnknown),
            ("/v2/manifests/x", Code::NameUnknown),
        ];
        for (path, code) in cases {
            assert_eq!(parse(path, None).unwrap_err().code, *code, "{path}");
        }
        let long = format!("/v2/up/{}/manifests/x", "a".repeat(300));
        assert_eq!(parse(&long, None).unwrap_err().code, Code::NameInvalid);
        let long_tag = format!("/v2/up/a/manifests/{}", "t".repeat(129));
        assert_eq!(
            parse(&long_tag, None).unwrap_err().code,
            Code::ManifestInvalid
        );
    }
}
