//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json` and earlier), as cosign v3
//! stores them as OCI referrers: a message signature or a DSSE envelope, with the verification
//! material (a key hint, or a certificate and its transparency log entry).

use base64::Engine;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::keyless::{Evidence, InclusionProof, LogEntry};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a bundle signs.
#[derive(Debug, Clone)]
pub enum Content {
    /// A signature over an artifact whose SHA-256 is `digest` (hex).
    Message {
        /// Hex SHA-256 of the signed artifact.
        digest: String,
        /// The base64 signature.
        signature: String,
    },
    /// A DSSE envelope.
    Dsse {
        /// The envelope's payload type.
        payload_type: String,
        /// The decoded payload.
        payload: Vec<u8>,
        /// The base64 signatures.
        signatures: Vec<String>,
    },
}

/// A parsed Sigstore bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The signing certificate, for keyless bundles.
    pub certificate: Option<CertificateDer<'static>>,
    /// Further certificates of its chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The first transparency log entry with an inclusion promise.
    pub entry: Option<LogEntry>,
    /// What it signs.
    pub content: Content,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Json {
    media_type: String,
    verification_material: Material,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<Raw>,
    x509_certificate_chain: Option<Chain>,
    #[serde(default)]
    tlog_entries: Vec<TlogEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct Chain {
    certificates: Vec<Raw>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogEntry {
    log_index: Number,
    log_id: LogId,
    integrated_time: Number,
    inclusion_promise: Option<Promise>,
    inclusion_proof: Option<Proof>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Proof {
    log_index: Number,
    root_hash: String,
    tree_size: Number,
    #[serde(default)]
    hashes: Vec<String>,
    checkpoint: Checkpoint,
}

#[derive(Deserialize)]
struct Checkpoint {
    envelope: String,
}

fn proof(p: &Proof) -> Result<InclusionProof, String> {
    let b64 = |s: &String| {
        B64.decode(s)
            .map_err(|_| "an inclusion proof hash is not base64".to_string())
    };
    let unsigned =
        |n: &Number| u64::try_from(n.value()?).map_err(|_| "a negative number".to_string());
    Ok(InclusionProof {
        log_index: unsigned(&p.log_index)?,
        root_hash: b64(&p.root_hash)?,
        tree_size: unsigned(&p.tree_size)?,
        hashes: p.hashes.iter().map(b64).collect::<Result<_, _>>()?,
        checkpoint: p.checkpoint.envelope.clone(),
    })
}

/// Protobuf JSON writes 64-bit integers as strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Text(String),
    Int(i64),
}

impl Number {
    fn value(&self) -> Result<i64, String> {
        match self {
            Number::Int(i) => Ok(*i),
            Number::Text(s) => s.parse().map_err(|_| format!("{s:?} is not a number")),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Promise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: Option<MessageDigest>,
    signature: String,
}

#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

fn der(raw: &Raw) -> Result<CertificateDer<'static>, String> {
    B64.decode(&raw.raw_bytes)
        .map(CertificateDer::from)
        .map_err(|_| "a certificate is not base64".to_string())
}

/// A log entry with an inclusion promise; bundles after v0.1 must carry its inclusion proof too
/// (as sigstore-go requires: the proof is what a verifier checks against the log's checkpoint).
fn entry(t: &TlogEntry, needs_proof: bool) -> Result<Option<LogEntry>, String> {
    let Some(promise) = &t.inclusion_promise else {
        return Ok(None);
    };
    if needs_proof && t.inclusion_proof.is_none() {
        return Err(
            "the log entry's inclusion proof is missing (required after bundle v0.1)".into(),
        );
    }
    let log_id = B64
        .decode(&t.log_id.key_id)
        .map_err(|_| "the log ID is not base64".to_string())?;
    Ok(Some(LogEntry {
        body: t.canonicalized_body.clone(),
        integrated_time: t.integrated_time.value()?,
        log_index: t.log_index.value()?,
        log_id: hex::encode(log_id),
        set: B64
            .decode(&promise.signed_entry_timestamp)
            .map_err(|_| "the SET is not base64".to_string())?,
        proof: t.inclusion_proof.as_ref().map(proof).transpose()?,
    }))
}

impl Bundle {
    /// Parses a bundle; the error says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
        let json: Json =
            serde_json::from_slice(bytes).map_err(|e| format!("not a Sigstore bundle: {e}"))?;
        if !json
            .media_type
            .starts_with("application/vnd.dev.sigstore.bundle")
        {
            return Err(format!(
                "not a Sigstore bundle media type: {}",
                json.media_type
            ));
        }
        let m = &json.verification_material;
        if json.media_type.contains("0.3") && m.x509_certificate_chain.is_some() {
            // v0.3 carries the leaf alone (as sigstore-go requires); a chain is refused
            return Err("a v0.3 bundle carries a certificate, not a certificate chain".into());
        }
        let mut certs = match (&m.certificate, &m.x509_certificate_chain) {
            (Some(c), _) => vec![der(c)?],
            (None, Some(chain)) => chain
                .certificates
                .iter()
                .map(der)
                .collect::<Result<_, _>>()?,
            (None, None) => Vec::new(),
        };
        let certificate = if certs.is_empty() {
            None
        } else {
            Some(certs.remove(0))
        };
        let needs_proof = !json.media_type.contains("0.1");
        let mut log_entry = None;
        for t in &m.tlog_entries {
            if let Some(e) = entry(t, needs_proof)? {
                log_entry = Some(e);
                break;
            }
        }
        let content = match (json.message_signature, json.dsse_envelope) {
            (Some(ms), None) => {
                let d = ms
                    .message_digest
                    .ok_or("the message signature has no digest")?;
                if d.algorithm != "SHA2_256" {
                    return Err(format!(
                        "unsupported message digest algorithm {}",
                        d.algorithm
                    ));
                }
                let digest = hex::encode(
                    B64.decode(&d.digest)
                        .map_err(|_| "the message digest is not base64".to_string())?,
                );
                Content::Message {
                    digest,
                    signature: ms.signature,
                }
            }
            (None, Some(env)) => Content::Dsse {
                payload_type: env.payload_type,
                payload: B64
                    .decode(&env.payload)
                    .map_err(|_| "the envelope payload is not base64".to_string())?,
                signatures: env.signatures.into_iter().map(|s| s.sig).collect(),
            },
            _ => {
                return Err(
                    "a bundle holds exactly one of messageSignature and dsseEnvelope".into(),
                )
            }
        };
        Ok(Bundle {
            certificate,
            chain: certs,
            entry: log_entry,
            content,
        })
    }

    /// The keyless evidence, if the bundle has a certificate.
    pub fn evidence(&self) -> Option<Result<Evidence<'static>, String>> {
        let certificate = self.certificate.clone()?;
        Some(Ok(Evidence {
            certificate,
            chain: self.chain.clone(),
            entry: self.entry.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dsse_bundle_with_a_tlog_entry() {
        let json = r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json",
          "verificationMaterial":{"publicKey":{"hint":"abc"},"tlogEntries":[{"logIndex":"7","logId":{"keyId":"AAE="},
            "kindVersion":{"kind":"dsse","version":"0.0.1"},"integratedTime":"1700000000",
            "inclusionPromise":{"signedEntryTimestamp":"AQID"},"canonicalizedBody":"e30=",
            "inclusionProof":{"logIndex":"3","rootHash":"AQID","treeSize":"6","hashes":["AQID"],
              "checkpoint":{"envelope":"note"}}}]},
          "dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AQID","keyid":""}]}}"#;
        let b = Bundle::parse(json.as_bytes()).unwrap();
        let proof = b.entry.as_ref().unwrap().proof.as_ref().unwrap();
        assert_eq!((proof.log_index, proof.tree_size), (3, 6));
        // after v0.1 a promise alone is not enough; v0.1 bundles may carry it alone
        let start = json.find(",\n            \"inclusionProof\"").unwrap();
        let end = json.find("}}}]},").unwrap() + 2;
        let without = format!("{}{}", &json[..start], &json[end..]);
        let e = Bundle::parse(without.as_bytes()).unwrap_err();
        assert!(e.contains("inclusion proof is missing"), "{e}");
        let v01 = without.replace(
            "application/vnd.dev.sigstore.bundle.v0.3+json",
            "application/vnd.dev.sigstore.bundle+json;version=0.1",
        );
        assert!(Bundle::parse(v01.as_bytes()).is_ok());
        assert!(b.certificate.is_none());
        let e = b.entry.unwrap();
        assert_eq!(
            (e.log_index, e.integrated_time, e.log_id.as_str()),
            (7, 1700000000, "0001")
        );
        assert!(matches!(b.content, Content::Dsse { ref payload, .. } if payload == b"{}"));
    }

    #[test]
    fn rejects_what_is_not_a_bundle() {
        assert!(Bundle::parse(b"{}").is_err());
        let both = r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{}}"#;
        assert!(Bundle::parse(both.as_bytes())
            .unwrap_err()
            .contains("exactly one"));
        let md5 = r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{},
          "messageSignature":{"messageDigest":{"algorithm":"MD5","digest":"AA=="},"signature":"AA=="}}"#;
        assert!(Bundle::parse(md5.as_bytes()).unwrap_err().contains("MD5"));
        let chain = r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json",
          "verificationMaterial":{"x509CertificateChain":{"certificates":[{"rawBytes":"AQID"}]}},
          "messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"AA=="},"signature":"AA=="}}"#;
        assert!(Bundle::parse(chain.as_bytes())
            .unwrap_err()
            .contains("not a certificate chain"));
        let v02 = chain.replace(
            "application/vnd.dev.sigstore.bundle.v0.3+json",
            "application/vnd.dev.sigstore.bundle+json;version=0.2",
        );
        assert!(
            Bundle::parse(v02.as_bytes()).is_ok(),
            "v0.2 may carry a chain"
        );
    }
}
