//! Validated names of the distribution API: repositories, tags, digests and references.

use std::fmt;
use std::str::FromStr;

use crate::error::{Code, RegistryError};

/// The longest repository name accepted (namespace included), as distribution does.
pub const MAX_NAME_LEN: usize = 255;

/// A content digest, `sha256:<64 hex>` or `sha512:<128 hex>`, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// The digest algorithms Portcullis can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the registry default.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as written in a digest.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl Digest {
    /// The algorithm of this digest.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex-encoded hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The SHA-256 digest of some bytes.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    /// Builds a digest from an algorithm and raw hash bytes.
    pub fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Digest {
        Digest {
            algorithm,
            hex: hex::encode(raw),
        }
    }

    /// The cosign tag-scheme prefix for attachments of this digest, `sha256-<hex>`.
    pub fn tag_prefix(&self) -> String {
        format!("{}-{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            RegistryError::of(
                Code::DigestInvalid,
                format!("invalid digest {:?}", truncate(s)),
            )
        };
        let (alg, hex) = s.split_once(':').ok_or_else(invalid)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => {
                return Err(RegistryError::of(
                    Code::DigestInvalid,
                    format!("unsupported digest algorithm {:?}", truncate(alg)),
                ))
            }
        };
        let hex_ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(invalid());
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: RegistryError| serde::de::Error::custom(e.message))
    }
}

/// A repository path component grammar check: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or one or more "-"
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A repository name inside a namespace (e.g. `library/alpine`), checked against the grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepoName {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(RegistryError::of(
                Code::NameInvalid,
                format!("invalid repository name {:?}", truncate(s)),
            ));
        }
        Ok(RepoName(s.to_string()))
    }
}

/// A tag, `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Tag {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !first_ok || !rest_ok || b.len() > 128 {
            return Err(RegistryError::of(
                Code::ManifestInvalid,
                format!("invalid tag {:?}", truncate(s)),
            ));
        }
        Ok(Tag(s.to_string()))
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable digest.
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

/// Shortens untrusted input before it goes into a message.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "my-app",
            "my__app",
            "a.b",
            "a---b",
            "0",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "Alpine", "a//b", "/a", "a/", "..", "a/../b", "a_-b", "a___b", "-a", "a-", "a.",
            "a b", "a%2fb",
        ] {
            assert_eq!(
                bad.parse::<RepoName>().unwrap_err().code,
                Code::NameInvalid,
                "{bad}"
            );
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0", "_x", "sha256-abc.sig", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129), "a\0b"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert_eq!(d.tag_prefix(), format!("sha256-{hex}"));
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("md5:{}", "a".repeat(32)),
            "sha256".to_string(),
            format!("sha256:{}g", "a".repeat(63)),
        ] {
            assert_eq!(
                bad.parse::<Digest>().unwrap_err().code,
                Code::DigestInvalid,
                "{bad}"
            );
        }
        assert!(format!("sha512:{}", "0".repeat(128))
            .parse::<Digest>()
            .is_ok());
    }

    #[test]
    fn references() {
        assert!(matches!(
            "v1".parse::<Reference>().unwrap(),
            Reference::Tag(_)
        ));
        let r: Reference = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        assert!(matches!(r, Reference::Digest(_)));
        assert_eq!(
            "sha256:xyz".parse::<Reference>().unwrap_err().code,
            Code::DigestInvalid
        );
    }

    #[test]
    fn sha256_of_matches_known_value() {
        assert_eq!(
            Digest::sha256_of(b"{}").to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
