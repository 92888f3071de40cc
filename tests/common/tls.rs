//! A test CA and a server certificate for 127.0.0.1, made at test time.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// Files of a test PKI.
pub struct TestPki {
    /// The CA certificate (PEM), for clients to trust.
    pub ca: PathBuf,
    /// A directory holding `ca.crt`, as skopeo's and podman's `--cert-dir` want it.
    pub cert_dir: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
}

/// Makes a CA and a certificate for `127.0.0.1` and `localhost` signed by it, under `dir`.
pub fn make_pki(dir: &Path) -> TestPki {
    std::fs::create_dir_all(dir.join("certs.d")).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis Test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let pki = TestPki {
        ca: dir.join("ca.pem"),
        cert_dir: dir.join("certs.d"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(pki.cert_dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}
