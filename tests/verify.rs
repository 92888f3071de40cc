//! Native key-based verification (`portcullis verify`) of real cosign signatures and of
//! containers/image-format signatures, with the failures each must report.

mod common;

use std::path::Path;
use std::process::Command;

use common::sigs::{p256_key, push_cimage_signature, Spoil};
use common::*;

struct Setup {
    t: tempfile::TempDir,
    reg: Registry,
    proxy: Proxy,
    keys: std::path::PathBuf,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    Setup {
        t,
        reg,
        proxy,
        keys,
    }
}

impl Setup {
    fn image(&self, repo: &str, seed: &str) -> OciImage {
        let img = build_image(
            &self.t.path().join(seed),
            &ImageSpec {
                seed,
                layers: &[1000],
                tag: "v1",
            },
        );
        self.reg.push(&img, &format!("{repo}:v1"));
        img
    }

    /// Runs `portcullis verify` against the proxy's configuration and store.
    fn verify(&self, image: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("verify")
            .arg(image)
            .arg("--config")
            .arg(self.proxy.dir.join("proxy.toml"))
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

fn key(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn cosign_signatures_verify_natively_and_failures_say_why() {
    let s = setup();
    let img = s.image("demo/app", "app");
    cosign_sign(
        &s.keys,
        &format!("{}/demo/app@{}", s.reg.host(), img.digest),
    );
    let cosign_pub = key(&s.keys, "cosign.pub");

    let (ok, out) = s.verify(
        &format!("{}/up/demo/app:v1", s.proxy.addr),
        &["--key", &cosign_pub],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("verified: verified by") && out.contains(&img.digest),
        "{out}"
    );

    let other = s.t.path().join("other");
    cosign_keys(&other);
    let (ok, out) = s.verify("up/demo/app:v1", &["--key", &key(&other, "cosign.pub")]);
    assert!(!ok);
    assert!(
        out.contains("does not verify with any trusted key"),
        "{out}"
    );

    // cosign writes no tag in the identity: the containers/image default refuses a tagged pull
    let (ok, out) = s.verify(
        "up/demo/app:v1",
        &["--key", &cosign_pub, "--identity", "matchRepoDigestOrExact"],
    );
    assert!(!ok);
    assert!(out.contains("signature is for"), "{out}");
    let (ok, out) = s.verify(
        &format!("up/demo/app@{}", img.digest),
        &["--key", &cosign_pub, "--identity", "matchRepoDigestOrExact"],
    );
    assert!(ok, "by digest the repository suffices: {out}");

    let unsigned = s.image("demo/unsigned", "unsigned");
    let (ok, out) = s.verify("up/demo/unsigned:v1", &["--key", &cosign_pub]);
    assert!(!ok);
    assert!(out.contains("no signatures found"), "{out}");
    let _ = unsigned;

    // the verdict as JSON, for scripts
    let (ok, out) = s.verify(
        "up/demo/app:v1",
        &["--key", &cosign_pub, "--output", "json"],
    );
    assert!(ok, "{out}");
    let verdict: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(verdict["verified"], true);
    assert_eq!(verdict["image"], format!("up/demo/app@{}", img.digest));
    assert_eq!(verdict["signatures"][0]["verified"], true);
    assert!(verdict["reason"]
        .as_str()
        .unwrap()
        .starts_with("verified by"));
    let (ok, out) = s.verify(
        "up/demo/unsigned:v1",
        &["--key", &cosign_pub, "--output", "json"],
    );
    assert!(!ok);
    let verdict: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(verdict["verified"], false);
    assert_eq!(verdict["reason"], "no signatures found");
    // --identity takes only what it knows, and says which
    let (ok, out) = s.verify(
        "up/demo/app:v1",
        &["--key", &cosign_pub, "--identity", "matchAnything"],
    );
    assert!(!ok);
    assert!(
        out.contains("matchRepository") && out.contains("matchRepoDigestOrExact"),
        "{out}"
    );
}

#[test]
fn containers_image_signatures_tampering_and_thresholds() {
    let s = setup();
    let dir = s.t.path().join("p256");
    let (k1, k2, k3) = (
        p256_key(&dir, "k1", 1),
        p256_key(&dir, "k2", 2),
        p256_key(&dir, "k3", 3),
    );
    let keys = |names: &[&str]| {
        names
            .iter()
            .flat_map(|n| ["--key".to_string(), key(&dir, &format!("{n}.pub"))])
            .collect::<Vec<_>>()
    };

    let good = s.image("ci/good", "good");
    push_cimage_signature(
        &s.reg,
        "ci/good",
        &good.digest,
        &format!("{}/ci/good:v1", s.reg.host()),
        &[&k1, &k2],
        Spoil::None,
    );
    let args = keys(&["k1"]);
    let (ok, out) = s.verify(
        "up/ci/good:v1",
        &[&args[0], &args[1], "--identity", "matchRepoDigestOrExact"],
    );
    assert!(ok, "a containers/image signature carries the tag: {out}");

    // 2 of 3: k1 and k2 signed
    let all: Vec<String> = keys(&["k1", "k2", "k3"]);
    let mut two = all.iter().map(String::as_str).collect::<Vec<_>>();
    two.extend(["--threshold", "2"]);
    let (ok, out) = s.verify("up/ci/good:v1", &two);
    assert!(ok, "2 of 3 keys: {out}");
    let mut three = all.iter().map(String::as_str).collect::<Vec<_>>();
    three.extend(["--threshold", "3"]);
    let (ok, out) = s.verify("up/ci/good:v1", &three);
    assert!(!ok);
    assert!(out.contains("2 of 3 required signers verified"), "{out}");

    let tampered = s.image("ci/tampered", "tampered");
    push_cimage_signature(
        &s.reg,
        "ci/tampered",
        &tampered.digest,
        &format!("{}/ci/tampered:v1", s.reg.host()),
        &[&k1],
        Spoil::TamperedPayload,
    );
    let (ok, out) = s.verify("up/ci/tampered:v1", &[&args[0], &args[1]]);
    assert!(!ok);
    assert!(out.contains("does not verify"), "{out}");

    let elsewhere = s.image("ci/elsewhere", "elsewhere");
    push_cimage_signature(
        &s.reg,
        "ci/elsewhere",
        &elsewhere.digest,
        &format!("{}/ci/elsewhere:v1", s.reg.host()),
        &[&k1],
        Spoil::OtherDigest,
    );
    let (ok, out) = s.verify("up/ci/elsewhere:v1", &[&args[0], &args[1]]);
    assert!(!ok);
    assert!(out.contains("payload is for"), "{out}");

    let identity = s.image("ci/identity", "identity");
    push_cimage_signature(
        &s.reg,
        "ci/identity",
        &identity.digest,
        "registry.example/somebody/else:v1",
        &[&k3],
        Spoil::None,
    );
    let k3args = keys(&["k3"]);
    let (ok, out) = s.verify("up/ci/identity:v1", &[&k3args[0], &k3args[1]]);
    assert!(!ok);
    assert!(
        out.contains("signature is for registry.example/somebody/else:v1, not "),
        "{out}"
    );
    let _ = k2;
}

#[test]
fn attestations_verify_with_their_predicate_type() {
    let s = setup();
    let img = s.image("demo/att", "att");
    let up = format!("{}/demo/att@{}", s.reg.host(), img.digest);
    std::fs::write(
        s.keys.join("predicate.json"),
        r#"{"builder":{"id":"https://ci.example/builder"},"buildType":"t"}"#,
    )
    .unwrap();
    cosign_sign(&s.keys, &up);
    let mut attest = vec![
        "attest",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "--type",
        "slsaprovenance",
        "--predicate",
        "predicate.json",
    ];
    attest.extend(COSIGN_LOCAL);
    attest.push(&up);
    cosign(&s.keys, &attest).success();
    let cosign_pub = key(&s.keys, "cosign.pub");
    let (ok, out) = s.verify(
        "up/demo/att:v1",
        &["--key", &cosign_pub, "--attestation", "slsaprovenance"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("https://slsa.dev/provenance/v0.2 attested by"),
        "{out}"
    );
    let (ok, out) = s.verify(
        "up/demo/att:v1",
        &["--key", &cosign_pub, "--attestation", "cyclonedx"],
    );
    assert!(!ok);
    assert!(
        out.contains("no verified https://cyclonedx.org/bom attestation"),
        "{out}"
    );
}

#[test]
fn named_trust_from_the_configuration() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!(
            "[storage]\npath = \"data\"\n[trust.release-keys]\nkeys = [\"{}\"]\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            keys.join("cosign.pub").display(),
            reg.url()
        ),
    );
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "trust",
            layers: &[100],
            tag: "v1",
        },
    );
    reg.push(&img, "rel/app:v1");
    cosign_sign(&keys, &format!("{}/rel/app@{}", reg.host(), img.digest));
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "verify",
            "up/rel/app:v1",
            "--trust",
            "release-keys",
            "--config",
        ])
        .arg(proxy.dir.join("proxy.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["verify", "up/rel/app:v1", "--trust", "nope", "--config"])
        .arg(proxy.dir.join("proxy.toml"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no [trust.nope]"));
}

/// A proxy whose configuration trusts a private Sigstore twice (PEM files and a
/// trusted_root.json) and holds a second, unrelated one.
fn keyless_setup() -> (Setup, common::keyless::Sigstore, common::keyless::Sigstore) {
    use common::keyless::Sigstore;
    let t = tempfile::tempdir().unwrap();
    let ours = Sigstore::new(&t.path().join("sigstore"), "ours");
    let theirs = Sigstore::new(&t.path().join("elsewhere"), "theirs");
    let extra = format!(
        "[trust.ours-pem]\nca_certs = [{:?}]\nrekor_keys = [{:?}]\n[trust.ours-root]\ntrusted_root = {:?}\n[trust.theirs]\ntrusted_root = {:?}\n",
        ours.ca_file, ours.rekor_file, ours.trusted_root, theirs.trusted_root
    );
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), &extra);
    let keys = t.path().join("keys");
    (
        Setup {
            t,
            reg,
            proxy,
            keys,
        },
        ours,
        theirs,
    )
}

const ISSUER: &str = "https://issuer.sigstore.test";
const SUBJECT: &str = "dev@example.com";

#[test]
fn keyless_signatures_verify_against_the_configured_trust_root() {
    use common::keyless::{push_keyless_signature, Entry};
    let (s, ours, theirs) = keyless_setup();
    let signer = ours.issue(SUBJECT, ISSUER);
    let good = s.image("ci/keyless", "keyless");
    push_keyless_signature(
        &s.reg,
        "ci/keyless",
        &good.digest,
        &ours,
        &signer,
        Entry::Good,
    );
    let exact = [
        "--certificate-identity",
        SUBJECT,
        "--certificate-oidc-issuer",
        ISSUER,
    ];

    for trust in ["ours-pem", "ours-root"] {
        let (ok, out) = s.verify(
            "up/ci/keyless:v1",
            &[&["--trust", trust][..], &exact].concat(),
        );
        assert!(ok, "trust {trust}: {out}");
        assert!(
            out.contains(&format!("signed by {SUBJECT} ({ISSUER})")),
            "{out}"
        );
    }
    common::keyless::push_keyless_attestation(
        &s.reg,
        "ci/keyless",
        &good.digest,
        &ours,
        &signer,
        "https://slsa.dev/provenance/v1",
    );
    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[&exact[..], &["--attestation", "slsaprovenance1"]].concat(),
    );
    assert!(
        ok && out.contains(&format!(
            "https://slsa.dev/provenance/v1 attested by {SUBJECT} ({ISSUER})"
        )),
        "keyless attestation: {out}"
    );
    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[&exact[..], &["--attestation", "spdx"]].concat(),
    );
    assert!(
        !ok && out.contains("no verified https://spdx.dev/Document attestation"),
        "{out}"
    );
    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[
            "--certificate-identity-regexp",
            r"@example\.com$",
            "--certificate-oidc-issuer-regexp",
            r"^https://issuer\.",
        ],
    );
    assert!(ok, "regexps, every configured root: {out}");
    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[
            &exact[..],
            &["--certificate-github-workflow-ref", "refs/heads/main"],
        ]
        .concat(),
    );
    assert!(ok, "GitHub ref claim: {out}");
    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[
            &exact[..],
            &["--certificate-github-workflow-ref", "refs/heads/dev"],
        ]
        .concat(),
    );
    assert!(
        !ok && out.contains("github-workflow-ref is refs/heads/main, not refs/heads/dev"),
        "{out}"
    );

    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[
            "--trust",
            "ours-root",
            "--certificate-identity",
            SUBJECT,
            "--certificate-oidc-issuer",
            "https://accounts.example",
        ],
    );
    assert!(
        !ok && out.contains(&format!(
            "certificate issuer is {ISSUER}, not https://accounts.example"
        )),
        "wrong issuer: {out}"
    );
    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[
            "--trust",
            "ours-root",
            "--certificate-identity",
            "eve@example.com",
            "--certificate-oidc-issuer",
            ISSUER,
        ],
    );
    assert!(
        !ok && out.contains("certificate subject is dev@example.com, not eve@example.com"),
        "wrong subject: {out}"
    );
    let (ok, out) = s.verify(
        "up/ci/keyless:v1",
        &[&["--trust", "theirs"][..], &exact].concat(),
    );
    assert!(
        !ok && out.contains("unknown transparency log"),
        "another trust root: {out}"
    );

    let expired = s.image("ci/expired", "expired");
    push_keyless_signature(
        &s.reg,
        "ci/expired",
        &expired.digest,
        &ours,
        &signer,
        Entry::AfterExpiry,
    );
    let (ok, out) = s.verify(
        "up/ci/expired:v1",
        &[&["--trust", "ours-root"][..], &exact].concat(),
    );
    assert!(
        !ok && out.contains("not valid when the log integrated"),
        "expired certificate: {out}"
    );

    let early = s.image("ci/early", "early");
    push_keyless_signature(
        &s.reg,
        "ci/early",
        &early.digest,
        &ours,
        &signer,
        Entry::BeforeValidity,
    );
    let (ok, out) = s.verify(
        "up/ci/early:v1",
        &[&["--trust", "ours-root"][..], &exact].concat(),
    );
    assert!(
        !ok && out.contains("not valid when the log integrated"),
        "a certificate not yet valid: {out}"
    );

    // keyless thresholds count distinct subjects: one signer twice is one, two signers are two
    let second = ours.issue("ops@example.com", ISSUER);
    let regexps = [
        "--certificate-identity-regexp",
        r"@example\.com$",
        "--certificate-oidc-issuer",
        ISSUER,
        "--trust",
        "ours-root",
        "--threshold",
        "2",
    ];
    let twice = s.image("ci/twice", "twice");
    common::keyless::push_keyless_signatures(
        &s.reg,
        "ci/twice",
        &twice.digest,
        &ours,
        &[&signer, &signer],
        Entry::Good,
    );
    let (ok, out) = s.verify("up/ci/twice:v1", &regexps);
    assert!(
        !ok && out.contains("1 of 2 required signers verified"),
        "one subject twice: {out}"
    );
    let pair = s.image("ci/pair", "pair");
    common::keyless::push_keyless_signatures(
        &s.reg,
        "ci/pair",
        &pair.digest,
        &ours,
        &[&signer, &second],
        Entry::Good,
    );
    let (ok, out) = s.verify("up/ci/pair:v1", &regexps);
    assert!(ok, "two subjects: {out}");

    let bad_set = s.image("ci/badset", "badset");
    push_keyless_signature(
        &s.reg,
        "ci/badset",
        &bad_set.digest,
        &ours,
        &signer,
        Entry::BadSet,
    );
    let (ok, out) = s.verify(
        "up/ci/badset:v1",
        &[&["--trust", "ours-root"][..], &exact].concat(),
    );
    assert!(!ok && out.contains("SET does not verify"), "bad SET: {out}");

    // a certificate from another CA, logged in our log: the chain is what fails
    let stranger = theirs.issue(SUBJECT, ISSUER);
    let foreign = s.image("ci/foreign", "foreign");
    push_keyless_signature(
        &s.reg,
        "ci/foreign",
        &foreign.digest,
        &ours,
        &stranger,
        Entry::Good,
    );
    let (ok, out) = s.verify(
        "up/ci/foreign:v1",
        &[&["--trust", "ours-root"][..], &exact].concat(),
    );
    assert!(
        !ok && out.contains("does not chain to a trusted certificate authority"),
        "other CA: {out}"
    );

    // the fixture is what cosign itself accepts: cosign verifies the same signature offline
    std::fs::create_dir_all(s.t.path().join("cosign-home")).unwrap();
    let env = [
        ("SIGSTORE_ROOT_FILE", ours.ca_file.as_path()),
        ("SIGSTORE_REKOR_PUBLIC_KEY", ours.rekor_file.as_path()),
    ];
    let reference = format!("{}/ci/keyless@{}", s.reg.host(), good.digest);
    let out = cosign_with(
        &s.t.path().join("cosign-home"),
        &env,
        &[
            "verify",
            "--insecure-ignore-sct",
            "--certificate-identity",
            SUBJECT,
            "--certificate-oidc-issuer",
            ISSUER,
            "--allow-http-registry",
            &reference,
        ],
    );
    assert!(out.ok, "cosign accepts the keyless fixture: {}", out.stderr);
    let reference = format!("{}/ci/badset@{}", s.reg.host(), bad_set.digest);
    let out = cosign_with(
        &s.t.path().join("cosign-home"),
        &env,
        &[
            "verify",
            "--insecure-ignore-sct",
            "--certificate-identity",
            SUBJECT,
            "--certificate-oidc-issuer",
            ISSUER,
            "--allow-http-registry",
            &reference,
        ],
    );
    assert!(!out.ok, "cosign refuses the bad SET too");
}

#[test]
fn sigstore_bundle_referrers_verify_keyless_and_with_keys() {
    use base64::Engine;
    use common::keyless::{push_bundle_referrers, statement, BundleSpec, Entry};
    use p256::ecdsa::signature::Signer as _;
    let (s, ours, _) = keyless_setup();
    let signer = ours.issue(SUBJECT, ISSUER);
    let exact = [
        "--trust",
        "ours-root",
        "--certificate-identity",
        SUBJECT,
        "--certificate-oidc-issuer",
        ISSUER,
    ];

    // keyless: a cosign signature statement and a SLSA attestation, both DSSE bundles
    let img = s.image("ci/bundled", "bundled");
    let signed = ours.dsse_bundle(
        &signer,
        statement(&img.digest, "https://sigstore.dev/cosign/sign/v1").as_bytes(),
        Entry::Good,
    );
    let attested = ours.dsse_bundle(
        &signer,
        statement(&img.digest, "https://slsa.dev/provenance/v1").as_bytes(),
        Entry::Good,
    );
    push_bundle_referrers(
        &s.reg,
        "ci/bundled",
        &img.digest,
        img.manifest.len(),
        &[
            BundleSpec {
                json: &signed,
                content: "dsse-envelope",
                predicate: "https://sigstore.dev/cosign/sign/v1",
            },
            BundleSpec {
                json: &attested,
                content: "dsse-envelope",
                predicate: "https://slsa.dev/provenance/v1",
            },
        ],
    );
    let (ok, out) = s.verify(
        "up/ci/bundled:v1",
        &[&exact[..], &["--attestation", "slsaprovenance1"]].concat(),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "https://slsa.dev/provenance/v1 attested by {SUBJECT}"
        )),
        "{out}"
    );
    let (ok, out) = s.verify(
        "up/ci/bundled:v1",
        &[&exact[..], &["--attestation", "spdx"]].concat(),
    );
    assert!(
        !ok && out.contains("no verified https://spdx.dev/Document attestation"),
        "{out}"
    );

    // keyless with a spoiled log promise
    let bad = s.image("ci/bundled-bad", "bundled-bad");
    let spoiled = ours.dsse_bundle(
        &signer,
        statement(&bad.digest, "https://sigstore.dev/cosign/sign/v1").as_bytes(),
        Entry::BadSet,
    );
    push_bundle_referrers(
        &s.reg,
        "ci/bundled-bad",
        &bad.digest,
        bad.manifest.len(),
        &[BundleSpec {
            json: &spoiled,
            content: "dsse-envelope",
            predicate: "https://sigstore.dev/cosign/sign/v1",
        }],
    );
    let (ok, out) = s.verify("up/ci/bundled-bad:v1", &exact);
    assert!(!ok && out.contains("SET does not verify"), "{out}");

    // key-based: a message signature over the image manifest
    let dir = s.t.path().join("p256");
    let key = p256_key(&dir, "k1", 7);
    p256_key(&dir, "k2", 8);
    let keyed = s.image("ci/keyed", "keyed");
    let sig: p256::ecdsa::Signature = key.sign(&keyed.manifest);
    let b64 = base64::engine::general_purpose::STANDARD;
    let manifest_sha = hex::decode(keyed.digest.trim_start_matches("sha256:")).unwrap();
    let bundle = serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "k1"}, "tlogEntries": []},
        "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(manifest_sha)}, "signature": b64.encode(sig.to_der().as_bytes())},
    })
    .to_string();
    push_bundle_referrers(
        &s.reg,
        "ci/keyed",
        &keyed.digest,
        keyed.manifest.len(),
        &[BundleSpec {
            json: &bundle,
            content: "message-signature",
            predicate: "",
        }],
    );
    let (ok, out) = s.verify("up/ci/keyed:v1", &["--key", &key_path(&dir, "k1.pub")]);
    assert!(ok, "{out}");
    let (ok, out) = s.verify("up/ci/keyed:v1", &["--key", &key_path(&dir, "k2.pub")]);
    assert!(
        !ok && out.contains("does not verify with any trusted key"),
        "{out}"
    );
}

fn key_path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}
