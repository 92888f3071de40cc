//! Native key-based verification (`portcullis verify`) of real cosign signatures and of
//! containers/image-format signatures, with the failures each must report.

mod common;

use std::path::Path;
use std::process::Command;

use common::sigs::{p256_key, push_cimage_signature, push_payload_signature, Encoding, Spoil};
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

/// One signed payload naming two images: `critical` names one, `Critical` the other. Go's JSON
/// reader (cosign's, containers/image's) matches keys without regard to case and keeps the last;
/// a strict reader keeps the exact one. Whichever the order, the proxy refuses the payload.
#[test]
fn a_payload_with_case_variant_keys_is_refused_in_either_order() {
    let s = setup();
    let dir = s.t.path().join("p256");
    let k = p256_key(&dir, "k", 7);
    let claim = |name: &str, digest: &str| {
        format!(
            r#"{{"identity":{{"docker-reference":"{}/{name}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}}"#,
            s.reg.host()
        )
    };
    for (order, a, b) in [(1, "ci/one-a", "ci/one-b"), (2, "ci/two-a", "ci/two-b")] {
        let (img_a, img_b) = (
            s.image(a, &format!("{a}-img")),
            s.image(b, &format!("{b}-img")),
        );
        let (ca, cb) = (claim(a, &img_a.digest), claim(b, &img_b.digest));
        // order 1: Go reads the last, `Critical` (b); order 2: Go reads `critical` (a), last
        let payload = if order == 1 {
            format!(r#"{{"critical":{ca},"Critical":{cb},"optional":null}}"#)
        } else {
            format!(r#"{{"Critical":{cb},"critical":{ca},"optional":null}}"#)
        };
        push_payload_signature(&s.reg, a, &img_a.digest, &payload, &k, Encoding::Der);
        push_payload_signature(&s.reg, b, &img_b.digest, &payload, &k, Encoding::Der);

        // what cosign makes of it: a signature for b in order 1, for a in order 2
        let cosign_reads = |name: &str, digest: &str| {
            let mut args = vec!["verify", "--key", "p256/k.pub", "--insecure-ignore-tlog"];
            args.extend(COSIGN_LOCAL);
            let reference = format!("{}/{name}@{digest}", s.reg.host());
            args.push(&reference);
            cosign(s.t.path(), &args).ok
        };
        let go_reads = if order == 1 { (b, &img_b) } else { (a, &img_a) };
        let go_ignores = if order == 1 { (a, &img_a) } else { (b, &img_b) };
        assert!(
            cosign_reads(go_reads.0, &go_reads.1.digest),
            "order {order}: cosign reads {}",
            go_reads.0
        );
        assert!(
            !cosign_reads(go_ignores.0, &go_ignores.1.digest),
            "order {order}: cosign ignores {}",
            go_ignores.0
        );

        // the proxy takes neither reading
        for (name, img) in [(a, &img_a), (b, &img_b)] {
            let (ok, out) = s.verify(
                &format!("up/{name}@{}", img.digest),
                &["--key", &key(&dir, "k.pub")],
            );
            assert!(
                !ok,
                "order {order}: {name} verified from an ambiguous payload: {out}"
            );
            assert!(out.contains("appears twice"), "order {order}: {out}");
        }
    }
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

/// A signature written as `r||s` (as some KMS and HSM signers give it) verifies as cosign
/// verifies it; the same bytes over another payload do not.
#[test]
fn p1363_encoded_signatures_verify_as_cosign_verifies_them() {
    let s = setup();
    let dir = s.t.path().join("p256");
    let k = p256_key(&dir, "k", 9);
    let img = s.image("ci/kms", "kms");
    let reference = format!("{}/ci/kms", s.reg.host());
    let payload = common::keyless::payload(&reference, &img.digest);
    push_payload_signature(&s.reg, "ci/kms", &img.digest, &payload, &k, Encoding::P1363);
    let mut args = vec!["verify", "--key", "p256/k.pub", "--insecure-ignore-tlog"];
    args.extend(COSIGN_LOCAL);
    let at = format!("{reference}@{}", img.digest);
    args.push(&at);
    let cosign_says = cosign(s.t.path(), &args);
    assert!(
        cosign_says.ok,
        "cosign accepts r||s: {}",
        cosign_says.stderr
    );
    let (ok, out) = s.verify("up/ci/kms:v1", &["--key", &key(&dir, "k.pub")]);
    assert!(ok, "r||s: {out}");

    // the same encoding by another key: refused by both
    let other = p256_key(&dir, "other", 10);
    let img2 = s.image("ci/kms2", "kms2");
    let reference2 = format!("{}/ci/kms2", s.reg.host());
    let payload2 = common::keyless::payload(&reference2, &img2.digest);
    push_payload_signature(
        &s.reg,
        "ci/kms2",
        &img2.digest,
        &payload2,
        &other,
        Encoding::P1363,
    );
    let (ok, out) = s.verify("up/ci/kms2:v1", &["--key", &key(&dir, "k.pub")]);
    assert!(!ok, "another key's r||s signature verified: {out}");
}

/// Attested and not signed: what cosign verify-attestation accepts, an attestation requirement
/// accepts; a signature requirement still refuses it.
#[test]
fn an_attestation_requirement_does_not_also_want_a_signature() {
    let s = setup();
    let img = s.image("demo/attested", "attested");
    let up = format!("{}/demo/attested@{}", s.reg.host(), img.digest);
    std::fs::write(
        s.keys.join("predicate.json"),
        r#"{"builder":{"id":"https://ci.example/builder"},"buildType":"t"}"#,
    )
    .unwrap();
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
    let mut check = vec![
        "verify-attestation",
        "--key",
        "cosign.pub",
        "--insecure-ignore-tlog",
        "--type",
        "slsaprovenance",
    ];
    check.extend(COSIGN_LOCAL);
    check.push(&up);
    assert!(cosign(&s.keys, &check).ok, "cosign accepts the attestation");
    assert!(
        !cosign_verify(&s.keys, "cosign.pub", &up).ok,
        "cosign finds no signature"
    );

    let cosign_pub = key(&s.keys, "cosign.pub");
    let (ok, out) = s.verify(
        "up/demo/attested:v1",
        &["--key", &cosign_pub, "--attestation", "slsaprovenance"],
    );
    assert!(ok, "an attested, unsigned image: {out}");
    assert!(
        out.contains(&format!("verified by {cosign_pub}")),
        "names its attester: {out}"
    );
    let (ok, out) = s.verify("up/demo/attested:v1", &["--key", &cosign_pub]);
    assert!(
        !ok,
        "a signature requirement passed without a signature: {out}"
    );
    assert!(out.contains("no signatures found"), "{out}");
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
        Entry::Good,
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
    // an attestation whose intoto log entry holds another signature of the same statement by
    // the same certificate (valid, but not this one): refused, as for hashedrekord and dsse
    let relogged = s.image("ci/relogged", "relogged");
    common::keyless::push_keyless_attestation(
        &s.reg,
        "ci/relogged",
        &relogged.digest,
        &ours,
        &signer,
        "https://slsa.dev/provenance/v1",
        Entry::OtherSignature,
    );
    let (ok, out) = s.verify(
        "up/ci/relogged:v1",
        &[&exact[..], &["--attestation", "slsaprovenance1"]].concat(),
    );
    assert!(
        !ok && out.contains("the log entry holds another signature than this one"),
        "{out}"
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

    // the log entry holds another valid signature by the same certificate: cosign compares the
    // logged signature with the layer's, and so does the proxy
    let relogged = s.image("ci/relogged", "relogged");
    push_keyless_signature(
        &s.reg,
        "ci/relogged",
        &relogged.digest,
        &ours,
        &signer,
        Entry::OtherSignature,
    );
    let (ok, out) = s.verify(
        "up/ci/relogged:v1",
        &[&["--trust", "ours-root"][..], &exact].concat(),
    );
    assert!(
        !ok && out.contains("the log entry holds another signature"),
        "another logged signature: {out}"
    );
    let reference = format!("{}/ci/relogged@{}", s.reg.host(), relogged.digest);
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
    assert!(!out.ok, "cosign refuses another logged signature too");
}

#[test]
fn sigstore_bundle_referrers_verify_keyless_and_with_keys() {
    use base64::Engine;
    use common::keyless::{push_bundle_referrers, statement, BundleSpec, Entry, Proof};
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

    // a log entry with an inclusion proof: checked against the log's signed checkpoint
    for (name, proof, refusal) in [
        ("ci/proof-good", Proof::Good, None),
        (
            "ci/proof-badsig",
            Proof::BadCheckpoint,
            Some("checkpoint is not signed by the transparency log"),
        ),
        (
            "ci/proof-other",
            Proof::ForAnotherEntry,
            Some("does not lead to its root hash"),
        ),
        (
            "ci/proof-size",
            Proof::OtherTreeInCheckpoint,
            Some("checkpoint names another tree"),
        ),
        (
            "ci/proof-extra",
            Proof::ExtraSignature,
            Some("not signed by the transparency log's key alone"),
        ),
        (
            "ci/proof-none",
            Proof::None,
            Some("inclusion proof is missing"),
        ),
    ] {
        let img = s.image(name, name);
        let bundle = ours.dsse_bundle_with(
            &signer,
            statement(&img.digest, "https://sigstore.dev/cosign/sign/v1").as_bytes(),
            Entry::Good,
            proof,
        );
        push_bundle_referrers(
            &s.reg,
            name,
            &img.digest,
            img.manifest.len(),
            &[BundleSpec {
                json: &bundle,
                content: "dsse-envelope",
                predicate: "https://sigstore.dev/cosign/sign/v1",
            }],
        );
        let (ok, out) = s.verify(&format!("up/{name}:v1"), &exact);
        match refusal {
            None => assert!(ok, "{name}: {out}"),
            Some(why) => assert!(!ok && out.contains(why), "{name}: {out}"),
        }
    }

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
