//! Cosign attachments through the proxy, made and checked by the real cosign, pulled by podman
//! and skopeo, against a real upstream registry.

mod common;

use std::time::Duration;

use common::*;

struct Setup {
    t: tempfile::TempDir,
    reg: Registry,
    proxy: Proxy,
    keys: std::path::PathBuf,
}

fn setup(extra: &str) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), extra);
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
    fn image(&self, name: &str, seed: &str) -> OciImage {
        let img = build_image(
            &self.t.path().join(seed),
            &ImageSpec {
                seed,
                layers: &[3000],
                tag: "v1",
            },
        );
        self.reg.push(&img, &format!("{name}:v1"));
        img
    }

    fn upstream_ref(&self, name: &str, digest: &str) -> String {
        format!("{}/{name}@{digest}", self.reg.host())
    }

    fn proxy_ref(&self, name: &str, reference: &str) -> String {
        let sep = if reference.contains(':') { "@" } else { ":" };
        format!("{}/up/{name}{sep}{reference}", self.proxy.addr)
    }

    /// Pulls a manifest through the proxy and waits until its attachments are resolved.
    fn pull_and_settle(&self, name: &str, digest: &str) -> serde_json::Value {
        let r = http()
            .get(format!(
                "{}/v2/up/{name}/manifests/{digest}",
                self.proxy.url()
            ))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        referrers(&self.proxy, name, digest, None).1
    }
}

fn referrers(
    proxy: &Proxy,
    name: &str,
    digest: &str,
    filter: Option<&str>,
) -> (reqwest::header::HeaderMap, serde_json::Value) {
    let mut url = format!("{}/v2/up/{name}/referrers/{digest}", proxy.url());
    if let Some(f) = filter {
        url.push_str(&format!("?artifactType={}", f.replace('+', "%2B")));
    }
    let r = http().get(url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    (r.headers().clone(), r.json().unwrap())
}

fn artifact_types(index: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn cosign_verify_through_the_proxy_passes_only_for_the_right_key_and_a_signed_image() {
    let s = setup("");
    let signed = s.image("demo/signed", "signed");
    let unsigned = s.image("demo/unsigned", "unsigned");
    cosign_sign(&s.keys, &s.upstream_ref("demo/signed", &signed.digest));

    let ok = cosign_verify(&s.keys, "cosign.pub", &s.proxy_ref("demo/signed", "v1"));
    assert!(ok.ok, "verify through the proxy: {}", ok.stderr);
    assert!(ok.stdout.contains(&signed.digest), "{}", ok.stdout);

    let other = s.t.path().join("other-keys");
    cosign_keys(&other);
    let wrong = cosign_verify(&other, "cosign.pub", &s.proxy_ref("demo/signed", "v1"));
    assert!(!wrong.ok, "a wrong key must fail");
    assert!(
        wrong.stderr.contains("no matching signatures")
            || wrong.stderr.contains("invalid signature"),
        "{}",
        wrong.stderr
    );
    let none = cosign_verify(&s.keys, "cosign.pub", &s.proxy_ref("demo/unsigned", "v1"));
    assert!(!none.ok, "an unsigned image must fail");
    assert!(
        none.stderr.contains("no signatures found")
            || none.stderr.contains("no matching signatures"),
        "{}",
        none.stderr
    );
    let _ = unsigned;
}

#[test]
fn attestations_and_sboms_verify_and_tree_matches_the_upstream() {
    let s = setup("");
    let img = s.image("demo/att", "att");
    let up = s.upstream_ref("demo/att", &img.digest);
    std::fs::write(
        s.keys.join("predicate.json"),
        r#"{"builder":{"id":"https://ci.example/builder"},"buildType":"test"}"#,
    )
    .unwrap();
    std::fs::write(
        s.keys.join("sbom.spdx.json"),
        r#"{"spdxVersion":"SPDX-2.3","name":"att","SPDXID":"SPDXRef-DOCUMENT"}"#,
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
    let mut sbom = vec![
        "attach",
        "sbom",
        "--sbom",
        "sbom.spdx.json",
        "--type",
        "spdx",
    ];
    sbom.extend(COSIGN_LOCAL);
    sbom.push(&up);
    cosign(&s.keys, &sbom).success();

    let through = s.proxy_ref("demo/att", "v1");
    let mut va = vec![
        "verify-attestation",
        "--key",
        "cosign.pub",
        "--insecure-ignore-tlog",
        "--type",
        "slsaprovenance",
    ];
    va.extend(COSIGN_LOCAL);
    va.push(&through);
    let out = cosign(&s.keys, &va);
    assert!(
        out.ok,
        "verify-attestation through the proxy: {}",
        out.stderr
    );
    let mut wrong_type = va.clone();
    wrong_type[5] = "spdxjson";
    let other_type = cosign(&s.keys, &wrong_type);
    assert!(
        !other_type.ok,
        "an attestation of another type does not verify"
    );
    assert!(
        other_type
            .stderr
            .contains("none of the attestations matched the predicate type"),
        "{}",
        other_type.stderr
    );

    let tree = |reference: &str| {
        let mut args = vec!["tree"];
        args.extend(COSIGN_LOCAL);
        args.push(reference);
        let out = cosign(&s.keys, &args).success();
        let mut digests: Vec<String> = out
            .stdout
            .split_whitespace()
            .filter(|w| w.starts_with("sha256:"))
            .map(str::to_string)
            .collect();
        digests.sort();
        digests
    };
    let upstream_tree = tree(&up);
    assert!(upstream_tree.len() >= 3, "{upstream_tree:?}");
    assert_eq!(
        tree(&s.proxy_ref("demo/att", &img.digest)),
        upstream_tree,
        "cosign tree lists the same attachments"
    );

    let index = s.pull_and_settle("demo/att", &img.digest);
    assert_eq!(
        artifact_types(&index),
        [
            "application/vnd.dev.cosign.simplesigning.v1+json",
            "application/vnd.dsse.envelope.v1+json",
            "text/spdx+json"
        ]
    );
    let (headers, filtered) = referrers(
        &s.proxy,
        "demo/att",
        &img.digest,
        Some("application/vnd.dsse.envelope.v1+json"),
    );
    assert_eq!(headers["oci-filters-applied"], "artifactType");
    assert_eq!(
        artifact_types(&filtered),
        ["application/vnd.dsse.envelope.v1+json"]
    );
    let (_, none) = referrers(
        &s.proxy,
        "demo/att",
        &img.digest,
        Some("application/x-nothing"),
    );
    assert_eq!(none["manifests"], serde_json::json!([]));

    let bad = http()
        .get(format!(
            "{}/v2/up/demo/att/referrers/sha256:nothex",
            s.proxy.url()
        ))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    let zero = format!("sha256:{}", "0".repeat(64));
    let (_, empty) = referrers(&s.proxy, "demo/att", &zero, None);
    assert_eq!(
        empty["manifests"],
        serde_json::json!([]),
        "no referrers is an empty list, not 404"
    );
}

#[test]
fn attachments_fetched_on_pull_serve_verification_when_the_upstream_is_gone() {
    let mut s = setup("");
    let img = s.image("demo/offline", "offline");
    let up = s.upstream_ref("demo/offline", &img.digest);
    cosign_sign(&s.keys, &up);
    std::fs::write(
        s.keys.join("predicate.json"),
        r#"{"builder":{"id":"https://ci.example/b"},"buildType":"test"}"#,
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

    // an ordinary pull of the image: the proxy fetches the attachments alongside
    skopeo_pull(
        &s.proxy_ref("demo/offline", "v1"),
        &s.t.path().join("pulled"),
    )
    .success();
    let index = s.pull_and_settle("demo/offline", &img.digest);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    // byte-identical attachment manifests
    let sig_tag = format!("{}.sig", img.digest.replace(':', "-"));
    let from = |base: &str| {
        let r = http()
            .get(format!("{base}/manifests/{sig_tag}"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json");
        r.send().unwrap().bytes().unwrap()
    };
    let upstream_sig = from(&format!("{}/v2/demo/offline", s.reg.url()));
    assert_eq!(
        from(&format!("{}/v2/up/demo/offline", s.proxy.url())),
        upstream_sig
    );

    s.reg.stop();
    let out = cosign_verify(&s.keys, "cosign.pub", &s.proxy_ref("demo/offline", "v1"));
    assert!(out.ok, "verify with the upstream down: {}", out.stderr);
    let mut va = vec![
        "verify-attestation",
        "--key",
        "cosign.pub",
        "--insecure-ignore-tlog",
        "--type",
        "slsaprovenance",
    ];
    va.extend(COSIGN_LOCAL);
    let r = s.proxy_ref("demo/offline", &img.digest);
    va.push(&r);
    let out = cosign(&s.keys, &va);
    assert!(
        out.ok,
        "verify-attestation with the upstream down: {}",
        out.stderr
    );
}

#[test]
fn a_signature_added_upstream_later_shows_up_after_the_ttl() {
    let s = setup("[cache]\ntag_ttl = \"1s\"\nattachment_ttl = \"1s\"\n");
    let img = s.image("demo/later", "later");
    s.pull_and_settle("demo/later", &img.digest);
    let through = s.proxy_ref("demo/later", &img.digest);
    let before = cosign_verify(&s.keys, "cosign.pub", &through);
    assert!(
        !before.ok && before.stderr.contains("no signatures found"),
        "no signature yet: {}",
        before.stderr
    );
    let sig_gets = s.reg.count_settled("HEAD", ".sig", 0) + s.reg.count("GET", ".sig");
    let again = cosign_verify(&s.keys, "cosign.pub", &through);
    assert!(
        !again.ok && again.stderr.contains("no signatures found"),
        "{}",
        again.stderr
    );
    assert_eq!(
        s.reg.count_settled("HEAD", ".sig", 0) + s.reg.count("GET", ".sig"),
        sig_gets,
        "a missing signature is remembered"
    );

    cosign_sign(&s.keys, &s.upstream_ref("demo/later", &img.digest));
    std::thread::sleep(Duration::from_millis(1500));
    let out = cosign_verify(&s.keys, "cosign.pub", &through);
    assert!(
        out.ok,
        "after the TTL the new signature verifies: {}",
        out.stderr
    );
}

#[test]
fn a_multi_arch_index_signed_on_the_index_and_every_platform() {
    let s = setup("");
    let idx = image::build_index(
        &s.t.path().join("multi"),
        "multi",
        &["linux/amd64", "linux/arm64"],
        "v1",
    );
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", idx.dir.display()),
        &format!("docker://{}/demo/multi:v1", s.reg.host()),
    ])
    .success();
    let mut sign = vec![
        "sign",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "--recursive",
    ];
    sign.extend(COSIGN_LOCAL);
    let up = s.upstream_ref("demo/multi", &idx.digest);
    sign.push(&up);
    cosign(&s.keys, &sign).success();

    let out = cosign_verify(&s.keys, "cosign.pub", &s.proxy_ref("demo/multi", "v1"));
    assert!(out.ok, "index verifies: {}", out.stderr);
    for child in &idx.children {
        // a client pulling the platform manifest makes the proxy resolve its attachments too
        let index = s.pull_and_settle("demo/multi", child);
        assert_eq!(
            artifact_types(&index),
            ["application/vnd.dev.cosign.simplesigning.v1+json"],
            "child {child}"
        );
        let out = cosign_verify(&s.keys, "cosign.pub", &s.proxy_ref("demo/multi", child));
        assert!(out.ok, "child {child} verifies: {}", out.stderr);
    }
}

#[test]
fn sigstore_bundles_found_through_the_referrers_tag_schema_are_served() {
    let s = setup("");
    let img = s.image("demo/bundle", "bundle");
    let repo = "demo/bundle";
    let empty = push_blob(&s.reg, repo, b"{}");
    let bundle = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{},"messageSignature":{}}"#;
    let bundle_digest = push_blob(&s.reg, repo, bundle);
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "digest": bundle_digest, "size": bundle.len()}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": img.digest, "size": img.manifest.len()},
        "annotations": {"dev.sigstore.bundle.content": "message-signature", "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
    })
    .to_string();
    let artifact_digest = sha256(artifact.as_bytes());
    push_manifest(
        &s.reg,
        repo,
        &artifact_digest,
        "application/vnd.oci.image.manifest.v1+json",
        artifact.as_bytes(),
    );
    let fallback = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": artifact_digest, "size": artifact.len(),
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "annotations": {"dev.sigstore.bundle.content": "message-signature"},
        }],
    })
    .to_string();
    push_manifest(
        &s.reg,
        repo,
        &img.digest.replace(':', "-"),
        "application/vnd.oci.image.index.v1+json",
        fallback.as_bytes(),
    );
    cosign_sign(&s.keys, &s.upstream_ref(repo, &img.digest));

    let index = s.pull_and_settle(repo, &img.digest);
    assert_eq!(
        artifact_types(&index),
        [
            "application/vnd.dev.cosign.simplesigning.v1+json",
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        ]
    );
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == artifact_digest.as_str())
        .unwrap();
    assert_eq!(
        entry["annotations"]["dev.sigstore.bundle.content"],
        "message-signature"
    );
    assert!(s.proxy.cached(&bundle_digest), "the bundle blob is cached");
    assert!(
        s.proxy.cached(&artifact_digest),
        "the bundle manifest is cached"
    );
    let (_, filtered) = referrers(
        &s.proxy,
        repo,
        &img.digest,
        Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
    );
    assert_eq!(filtered["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn podman_and_skopeo_read_the_signature_attachment_from_the_proxy() {
    let s = setup("");
    let img = s.image("demo/clients", "clients");
    cosign_sign(&s.keys, &s.upstream_ref("demo/clients", &img.digest));
    let conf = s.t.path().join("conf");
    let regd = conf.join("home/.config/containers/registries.d");
    std::fs::create_dir_all(&regd).unwrap();
    std::fs::write(
        regd.join("proxy.yaml"),
        format!(
            "docker:\n  {}:\n    use-sigstore-attachments: true\n",
            s.proxy.addr
        ),
    )
    .unwrap();
    let policy = conf.join("policy.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}":[{{"type":"sigstoreSigned","keyPath":"{}","signedIdentity":{{"type":"matchRepository"}}}}]}}}}}}"#,
            s.proxy.addr,
            s.keys.join("cosign.pub").display()
        ),
    )
    .unwrap();
    let sig_path = format!(
        "/v2/up/demo/clients/manifests/{}.sig",
        img.digest.replace(':', "-")
    );
    let before = s.proxy.log().matches(&sig_path).count();

    let out = std::process::Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .arg("--registries.d")
        .arg(&regd)
        .args(["copy", "--src-tls-verify=false", "--remove-signatures"])
        .arg(format!("docker://{}", s.proxy_ref("demo/clients", "v1")))
        .arg(format!("oci:{}:x", s.t.path().join("skopeo-out").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Debian 12's build reads the attachment, then refuses ("sigstore disabled"); a build with
    // sigstore enabled verifies and succeeds. Either way it read the signature from the proxy.
    assert!(
        out.status.success() || stderr.contains("sigstore disabled"),
        "skopeo: {stderr}"
    );
    // the access log's line is written as the response ends, a moment after the client has it
    wait_for(
        "skopeo's GET of the .sig attachment in the proxy's access log",
        Duration::from_secs(10),
        || s.proxy.log().matches(&sig_path).count() > before,
    );
    let after_skopeo = s.proxy.log().matches(&sig_path).count();

    let registries = conf.join("registries.conf");
    std::fs::write(
        &registries,
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            s.proxy.addr
        ),
    )
    .unwrap();
    let root = s.t.path().join("podman");
    let out = std::process::Command::new("podman")
        .env("HOME", conf.join("home"))
        .env("CONTAINERS_REGISTRIES_CONF", &registries)
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
        ])
        .args(["pull", "--signature-policy"])
        .arg(&policy)
        .arg(s.proxy_ref("demo/clients", "v1"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("sigstore disabled"),
        "podman: {stderr}"
    );
    wait_for(
        "podman's GET of the .sig attachment in the proxy's access log",
        Duration::from_secs(10),
        || s.proxy.log().matches(&sig_path).count() > after_skopeo,
    );
    assert!(s
        .proxy
        .log()
        .lines()
        .any(|l| l.contains(&sig_path) && l.contains("status=200")));
}

#[test]
fn atomic_signatures_extension_is_advertised_and_answers_a_list() {
    let s = setup("");
    let img = s.image("demo/atomic", "atomic");
    let r = http().get(format!("{}/v2/", s.proxy.url())).send().unwrap();
    assert_eq!(r.headers()["x-registry-supports-signatures"], "1");
    let r = http()
        .get(format!(
            "{}/extensions/v2/up/demo/atomic/signatures/{}",
            s.proxy.url(),
            img.digest
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap(),
        serde_json::json!({"signatures": []})
    );
}

#[test]
fn attachment_kinds_are_configurable_per_upstream() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!("[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\nattachments = []\n", reg.url()),
    );
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "off",
            layers: &[100],
            tag: "v1",
        },
    );
    reg.push(&img, "demo/off:v1");
    cosign_sign(&keys, &format!("{}/demo/off@{}", reg.host(), img.digest));
    let by_cosign = reg.count_settled("HEAD", ".sig", 0) + reg.count("GET", ".sig");
    let r = http()
        .get(format!("{}/v2/up/demo/off/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        reg.count_settled("HEAD", ".sig", 0) + reg.count("GET", ".sig"),
        by_cosign,
        "nothing is fetched when attachments are off"
    );
}

#[test]
fn signatures_in_the_containers_image_format_are_served_byte_identical_and_verify() {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;

    let s = setup("");
    let img = s.image("demo/cimage", "cimage");
    let key = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
    let pem = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    std::fs::write(s.keys.join("cimage.pub"), pem).unwrap();
    // what containers/image writes: the tag in the identity, a creator and timestamp
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{}/demo/cimage:v1"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":{{"creator":"containers/image test","timestamp":1795610943}}}}"#,
        s.reg.host(),
        img.digest
    );
    let signature: p256::ecdsa::Signature = key.sign(payload.as_bytes());
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let repo = "demo/cimage";
    let payload_digest = push_blob(&s.reg, repo, payload.as_bytes());
    let config = format!(
        r#"{{"architecture":"","os":"","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{payload_digest}"]}}}}"#
    );
    let config_digest = push_blob(&s.reg, repo, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{payload_digest}","size":{},"annotations":{{"dev.cosignproject.cosign/signature":"{sig_b64}"}}}}]}}"#,
        config.len(),
        payload.len()
    );
    let sig_tag = format!("{}.sig", img.digest.replace(':', "-"));
    push_manifest(
        &s.reg,
        repo,
        &sig_tag,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );

    s.pull_and_settle(repo, &img.digest);
    let r = http()
        .get(format!(
            "{}/v2/up/{repo}/manifests/{sig_tag}",
            s.proxy.url()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"],
        sha256(manifest.as_bytes()).as_str()
    );
    assert_eq!(
        r.bytes().unwrap().as_ref(),
        manifest.as_bytes(),
        "the .sig manifest is served byte for byte"
    );
    let blob = http()
        .get(format!(
            "{}/v2/up/{repo}/blobs/{payload_digest}",
            s.proxy.url()
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(
        blob.as_ref(),
        payload.as_bytes(),
        "the payload is served byte for byte"
    );
    let out = cosign_verify(&s.keys, "cimage.pub", &s.proxy_ref(repo, "v1"));
    assert!(
        out.ok,
        "cosign verifies the containers/image signature through the proxy: {}",
        out.stderr
    );
    let other = cosign_verify(&s.keys, "cosign.pub", &s.proxy_ref(repo, "v1"));
    assert!(!other.ok, "another key does not");
    assert!(
        other.stderr.contains("no matching signatures")
            || other.stderr.contains("invalid signature"),
        "{}",
        other.stderr
    );
}

#[test]
fn a_plain_pull_fetches_the_images_signature_for_later_without_the_upstream() {
    let mut s = setup("");
    let img = s.image("demo/plain", "plain");
    cosign_sign(&s.keys, &s.upstream_ref("demo/plain", &img.digest));
    let sig_tag = format!("{}.sig", img.digest.replace(':', "-"));
    // a pull as podman or skopeo makes it: the manifest and its blobs, no referrers call
    skopeo_pull(&s.proxy_ref("demo/plain", "v1"), &s.t.path().join("pulled")).success();
    assert!(
        !s.proxy.log().contains("/referrers/"),
        "nothing asked for the referrers"
    );
    // the proxy fetches the signature (manifest and payload) from the upstream on its own
    assert_eq!(
        s.reg
            .count_settled("GET", &format!("/manifests/{sig_tag}"), 1),
        1,
        "the signature fetched once, unasked"
    );
    let sig: serde_json::Value = serde_json::from_str(
        &http()
            .get(format!("{}/v2/demo/plain/manifests/{sig_tag}", s.reg.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    let payload = sig["layers"][0]["digest"].as_str().unwrap().to_string();
    assert!(s.proxy.cached(&payload), "its payload is cached");
    s.reg.stop();
    let out = cosign_verify(
        &s.keys,
        "cosign.pub",
        &s.proxy_ref("demo/plain", &img.digest),
    );
    assert!(
        out.ok,
        "cosign verify through the proxy with the upstream gone: {}",
        out.stderr
    );
}

#[test]
fn a_subset_of_attachment_kinds_fetches_only_those() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!("[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\nattachments = [\"sig\"]\n", reg.url()),
    );
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "subset",
            layers: &[100],
            tag: "v1",
        },
    );
    reg.push(&img, "demo/subset:v1");
    cosign_sign(&keys, &format!("{}/demo/subset@{}", reg.host(), img.digest));
    let prefix = img.digest.replace(':', "-");
    let r = http()
        .get(format!("{}/v2/up/demo/subset/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        reg.count_settled("GET", &format!("/manifests/{prefix}.sig"), 1),
        1,
        "signatures are fetched"
    );
    std::thread::sleep(Duration::from_millis(300));
    for other in [".att", ".sbom"] {
        assert_eq!(
            reg.count("GET", &format!("/manifests/{prefix}{other}"))
                + reg.count("HEAD", &format!("/manifests/{prefix}{other}")),
            0,
            "{other} is not"
        );
    }
    assert_eq!(
        reg.count("GET", &format!("/manifests/{prefix} HTTP")) + reg.count("GET", "/referrers/"),
        0,
        "nor the referrers"
    );
}

/// Writes a `policy.json` requiring a sigstore signature by `key` on the proxy's `up` images,
/// whose identity is the upstream's repository `name` (what cosign signed there), and a
/// registries.d entry telling containers/image to read sigstore attachments from the proxy.
fn sigstore_policy(
    s: &Setup,
    dir: &std::path::Path,
    key: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let regd = dir.join("registries.d");
    std::fs::create_dir_all(&regd).unwrap();
    std::fs::write(
        regd.join("proxy.yaml"),
        format!(
            "docker:\n  {}:\n    use-sigstore-attachments: true\n",
            s.proxy.addr
        ),
    )
    .unwrap();
    let policy = dir.join("policy.json");
    let rule = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {format!("{}/up", s.proxy.addr): [{
            "type": "sigstoreSigned",
            "keyPath": key,
            "signedIdentity": {"type": "exactRepository", "dockerRepository": format!("{}/{name}", s.reg.host())},
        }]}},
    });
    std::fs::write(&policy, rule.to_string()).unwrap();
    (policy, regd)
}

#[test]
fn skopeo_with_sigstore_verifies_through_the_proxy_and_refuses_what_is_not_signed_by_its_key() {
    let mut s = setup("");
    let img = s.image("demo/verified", "verified");
    cosign_sign(&s.keys, &s.upstream_ref("demo/verified", &img.digest));
    let unsigned = s.image("demo/unsigned", "unsigned");
    let other_keys = s.t.path().join("other-keys");
    cosign_keys(&other_keys);
    let copy = |policy: &std::path::Path, regd: &std::path::Path, name: &str, out: &str| {
        sigstore_skopeo(
            policy,
            &[
                "--registries.d",
                regd.to_str().unwrap(),
                "copy",
                "--src-tls-verify=false",
                "--remove-signatures",
                &format!("docker://{}", s.proxy_ref(name, "v1")),
                &format!("oci:{}:x", s.t.path().join(out).display()),
            ],
        )
    };

    // containers/image verifies cosign's signature as the proxy serves it
    let (policy, regd) = sigstore_policy(
        &s,
        &s.t.path().join("conf"),
        &s.keys.join("cosign.pub"),
        "demo/verified",
    );
    let sig_path = format!(
        "/v2/up/demo/verified/manifests/{}.sig",
        img.digest.replace(':', "-")
    );
    let out = copy(&policy, &regd, "demo/verified", "verified-out");
    assert!(out.ok, "skopeo refused the signed image: {}", out.stderr);
    let index = std::fs::read_to_string(s.t.path().join("verified-out/index.json")).unwrap();
    assert!(
        index.contains(&img.digest),
        "skopeo stored another image: {index}"
    );
    wait_for("the .sig served to skopeo", Duration::from_secs(10), || {
        s.proxy
            .log()
            .lines()
            .any(|l| l.contains(&sig_path) && l.contains("status=200"))
    });

    // the same image under another key's policy: the signature is read and does not verify
    let (policy, regd) = sigstore_policy(
        &s,
        &s.t.path().join("conf-other"),
        &other_keys.join("cosign.pub"),
        "demo/verified",
    );
    let out = copy(&policy, &regd, "demo/verified", "other-out");
    assert!(!out.ok, "a signature by another key was accepted");
    assert!(
        out.stderr
            .contains("cryptographic signature verification failed"),
        "{}",
        out.stderr
    );

    // an image nobody signed: no signature to show
    let (policy, regd) = sigstore_policy(
        &s,
        &s.t.path().join("conf-unsigned"),
        &s.keys.join("cosign.pub"),
        "demo/unsigned",
    );
    let out = copy(&policy, &regd, "demo/unsigned", "unsigned-out");
    assert!(
        !out.ok,
        "an unsigned image was accepted ({})",
        unsigned.digest
    );
    assert!(
        out.stderr
            .contains("A signature was required, but no signature exists"),
        "{}",
        out.stderr
    );

    // signed, but for another repository than the policy names: the identity is refused
    let (policy, regd) = sigstore_policy(
        &s,
        &s.t.path().join("conf-identity"),
        &s.keys.join("cosign.pub"),
        "demo/elsewhere",
    );
    let out = copy(&policy, &regd, "demo/verified", "identity-out");
    assert!(!out.ok, "a signature for another repository was accepted");
    assert!(out.stderr.contains("is not accepted"), "{}", out.stderr);

    // as platform teams configure it: the upstream's name, the proxy as its mirror in
    // registries.conf, the policy on the upstream's name; with the upstream gone, so that
    // containers/image cannot fall back to it, verification still passes through the proxy
    s.reg.stop();
    let conf = s.t.path().join("conf-mirror");
    let regd = conf.join("registries.d");
    std::fs::create_dir_all(&regd).unwrap();
    std::fs::write(
        regd.join("proxy.yaml"),
        format!(
            "docker:\n  {}:\n    use-sigstore-attachments: true\n",
            s.proxy.addr
        ),
    )
    .unwrap();
    let registries = conf.join("registries.conf");
    std::fs::write(
        &registries,
        format!("[[registry]]\nlocation = \"{}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}/up\"\ninsecure = true\n", s.reg.host(), s.proxy.addr),
    )
    .unwrap();
    let policy = conf.join("policy.json");
    let rule = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {s.reg.host(): [{
            "type": "sigstoreSigned",
            "keyPath": s.keys.join("cosign.pub"),
            "signedIdentity": {"type": "matchRepository"},
        }]}},
    });
    std::fs::write(&policy, rule.to_string()).unwrap();
    let pull = |name: &str, out: &str| {
        sigstore_skopeo(
            &policy,
            &[
                "--registries-conf",
                registries.to_str().unwrap(),
                "--registries.d",
                regd.to_str().unwrap(),
                "copy",
                "--remove-signatures",
                &format!("docker://{}/{name}:v1", s.reg.host()),
                &format!("oci:{}:x", s.t.path().join(out).display()),
            ],
        )
    };
    let out = pull("demo/verified", "mirror-out");
    assert!(out.ok, "skopeo through the mirror: {}", out.stderr);
    let out = pull("demo/unsigned", "mirror-unsigned-out");
    assert!(
        !out.ok
            && out
                .stderr
                .contains("A signature was required, but no signature exists"),
        "{}",
        out.stderr
    );
}
