//! The gate holds: attacks on the policy gate and on repository isolation, tried with the real
//! clients against a real upstream. Each test tries what an attacker would and checks that it
//! fails with the right error, and that the legitimate flows next to it keep working.

mod common;

use std::path::PathBuf;

use common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Setup {
    t: tempfile::TempDir,
    reg: Registry,
    proxy: Proxy,
    keys: PathBuf,
}

/// A proxy over one upstream `up` and a local namespace `internal`, user `ci` (may write),
/// `require-signature` (trust: a fresh cosign key) over `scope`.
fn setup(scope: &str) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    let dir = t.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(&dir.join("users.htpasswd"), &[("ci", "ci-pass")]);
    let module = policy_module("policies", "require-signature");
    let config = format!(
        "[storage]\npath = \"data\"\n[auth]\nhtpasswd = \"users.htpasswd\"\n[trust.release-keys]\nkeys = [\"{}\"]\n\
         [[policy]]\nname = \"require-signature\"\nmodule = \"{}\"\nscope = [{scope}]\n[policy.settings]\ntrust = \"release-keys\"\n\
         [[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        keys.join("cosign.pub").display(),
        module.display(),
        reg.url()
    );
    let proxy = Proxy::start(&dir, &config);
    Setup {
        t,
        reg,
        proxy,
        keys,
    }
}

impl Setup {
    /// Builds an image and pushes it upstream as `repo:tag`.
    fn image(&self, repo: &str, seed: &str, tag: &str) -> OciImage {
        let img = build_image(
            &self.t.path().join(seed),
            &ImageSpec {
                seed,
                layers: &[2000],
                tag,
            },
        );
        self.reg.push(&img, &format!("{repo}:{tag}"));
        img
    }

    fn get(&self, path: &str) -> (u16, String) {
        let r = http()
            .get(format!("{}/v2/{path}", self.proxy.url()))
            .header("accept", OCI_MANIFEST)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    fn put_as_ci(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
        let r = http()
            .put(format!("{}/v2/{path}", self.proxy.url()))
            .basic_auth("ci", Some("ci-pass"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// Uploads a blob through the proxy as `ci` (monolithic).
    fn upload_as_ci(&self, name: &str, bytes: &[u8]) {
        let r = http()
            .post(format!(
                "{}/v2/{name}/blobs/uploads/?digest={}",
                self.proxy.url(),
                sha256(bytes)
            ))
            .basic_auth("ci", Some("ci-pass"))
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    }
}

/// The manifest of `img` with a `subject` naming `subject` (an image it claims to attach to).
fn with_subject(img: &OciImage, subject: &OciImage) -> Vec<u8> {
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest.len()});
    serde_json::to_vec(&m).unwrap()
}

/// Asserts a refusal by the policy: 403 `DENIED` naming require-signature.
fn assert_refused_by_policy((status, body): (u16, String), what: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    assert_eq!(error_code(&body), "DENIED", "{what}: {body}");
    assert!(body.contains("policy require-signature"), "{what}: {body}");
}

fn sig_tag(hex_seed: &str) -> String {
    format!(
        "sha256-{}.sig",
        &sha256(hex_seed.as_bytes())["sha256:".len()..]
    )
}

#[test]
fn runnable_images_dressed_as_attachments_are_refused_and_real_attachments_pass() {
    let s = setup("\"up/*\", \"internal/*\"");
    let signed = s.image("demo/app", "signed", "v1");
    cosign_sign(
        &s.keys,
        &format!("{}/demo/app@{}", s.reg.host(), signed.digest),
    );
    // attested and given an SBOM too, before anything asks the proxy
    let target = format!("{}/demo/app@{}", s.reg.host(), signed.digest);
    std::fs::write(
        s.keys.join("predicate.json"),
        r#"{"builder":{"id":"https://ci.example/b"},"buildType":"t"}"#,
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
    attest.push(&target);
    cosign(&s.keys, &attest).success();
    std::fs::write(
        s.keys.join("sbom.json"),
        r#"{"spdxVersion":"SPDX-2.3","name":"x"}"#,
    )
    .unwrap();
    let mut sbom = vec!["attach", "sbom", "--sbom", "sbom.json", "--type", "spdx"];
    sbom.extend(COSIGN_LOCAL);
    sbom.push(&target);
    cosign(&s.keys, &sbom).success();
    let evil = s.image("demo/app", "evil", "unsigned");

    // (a) the unsigned image re-pushed upstream with a subject naming the signed image
    let dressed = with_subject(&evil, &signed);
    push_manifest(&s.reg, "demo/app", "dressed", OCI_MANIFEST, &dressed);
    assert_refused_by_policy(
        s.get("up/demo/app/manifests/dressed"),
        "a runnable image with a subject, by tag",
    );
    assert_refused_by_policy(
        s.get(&format!("up/demo/app/manifests/{}", sha256(&dressed))),
        "the same by digest",
    );
    let pulled = skopeo_pull(
        &format!("{}/up/demo/app:dressed", s.proxy.addr),
        &s.t.path().join("p1"),
    );
    assert!(
        !pulled.ok && pulled.stderr.contains("policy require-signature"),
        "{}",
        pulled.stderr
    );

    // (b) the unsigned image tagged upstream as if it were a signature
    let fake_sig = sig_tag("anything");
    s.reg.push(&evil, &format!("demo/app:{fake_sig}"));
    assert_refused_by_policy(
        s.get(&format!("up/demo/app/manifests/{fake_sig}")),
        "a runnable image under a .sig tag",
    );
    let pulled = skopeo_pull(
        &format!("{}/up/demo/app:{fake_sig}", s.proxy.addr),
        &s.t.path().join("p2"),
    );
    assert!(
        !pulled.ok && pulled.stderr.contains("policy require-signature"),
        "{}",
        pulled.stderr
    );

    // (c) pushed to the proxy either way
    for blob in evil.blobs() {
        s.upload_as_ci("internal/app", &evil.blob(&blob));
    }
    assert_refused_by_policy(
        s.put_as_ci("internal/app/manifests/v1", OCI_MANIFEST, dressed.clone()),
        "a pushed runnable image with a subject",
    );
    let pushed_sig = format!("internal/app/manifests/{}", sig_tag("pushed"));
    assert_refused_by_policy(
        s.put_as_ci(&pushed_sig, OCI_MANIFEST, evil.manifest.clone()),
        "a pushed runnable image under a .sig tag",
    );
    assert_eq!(
        s.get("internal/app/manifests/v1").0,
        404,
        "nothing of the refused pushes was stored"
    );

    // the real attachments still pass: cosign's signature, attestation and SBOM, and a bundle
    assert_eq!(
        s.get(&format!("up/demo/app/manifests/{}", signed.digest)).0,
        200,
        "the signed image is admitted"
    );
    let out = cosign_verify(
        &s.keys,
        "cosign.pub",
        &format!("{}/up/demo/app@{}", s.proxy.addr, signed.digest),
    );
    assert!(out.ok, "cosign verify through the proxy: {}", out.stderr);
    let prefix = signed.digest.replace(':', "-");
    for suffix in [".sig", ".att", ".sbom"] {
        let (status, body) = s.get(&format!("up/demo/app/manifests/{prefix}{suffix}"));
        assert_eq!(
            status, 200,
            "cosign's {suffix} attachment is admitted: {body}"
        );
    }
    let out = cosign(
        &s.keys,
        &[
            "verify-attestation",
            "--key",
            "cosign.pub",
            "--insecure-ignore-tlog",
            "--type",
            "slsaprovenance",
            "--allow-http-registry",
            "--allow-insecure-registry",
            &format!("{}/up/demo/app@{}", s.proxy.addr, signed.digest),
        ],
    );
    assert!(
        out.ok,
        "cosign verify-attestation through the proxy: {}",
        out.stderr
    );
    let bundle = push_bundle(&s.reg, "demo/app", &signed);
    assert_eq!(
        s.get(&format!("up/demo/app/manifests/{bundle}")).0,
        200,
        "a cosign v3 bundle referrer is admitted"
    );
}

#[test]
fn manifests_that_only_claim_to_be_attachments_are_decided_as_images() {
    let s = setup("\"up/*\"");
    let signed = s.image("demo/app", "signed2", "v1");
    let evil = s.image("demo/app", "evil2", "unsigned");
    let layer = &evil.layers[0];
    let size = evil.blob(layer).len();
    let config = serde_json::json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": evil.config_digest, "size": evil.blob(&evil.config_digest).len()});
    let subject = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": signed.digest, "size": signed.manifest.len()});
    // the image's tar+gzip layer declared as a cosign signature payload: podman unpacks by content
    let relabelled = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "subject": subject,
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": layer, "size": size}]}).to_string();
    push_manifest(
        &s.reg,
        "demo/app",
        "relabelled",
        OCI_MANIFEST,
        relabelled.as_bytes(),
    );
    assert_refused_by_policy(
        s.get("up/demo/app/manifests/relabelled"),
        "a filesystem layer labelled as a signature payload",
    );
    // a signature layer for this proxy, the real layer for Go clients (they match keys case-insensitively, the last wins)
    let sig = push_blob(&s.reg, "demo/app", br#"{"critical":{}}"#);
    let twofaced = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"subject":{subject},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{sig}","size":15}}],"Layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{size}}}]}}"#
    );
    push_manifest(
        &s.reg,
        "demo/app",
        "twofaced",
        OCI_MANIFEST,
        twofaced.as_bytes(),
    );
    let (status, body) = s.get("up/demo/app/manifests/twofaced");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (502, "UNAVAILABLE"),
        "a manifest Go clients read differently is never served: {body}"
    );
    assert!(body.contains("Layers"), "the reason names the key: {body}");
}

/// Pushes a cosign v3 style Sigstore bundle referrer of `img` upstream; its digest.
fn push_bundle(reg: &Registry, repo: &str, img: &OciImage) -> String {
    let empty = push_blob(reg, repo, b"{}");
    let bundle = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{},"messageSignature":{}}"#;
    let bundle_digest = push_blob(reg, repo, bundle);
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "digest": bundle_digest, "size": bundle.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len()},
    })
    .to_string();
    let digest = sha256(artifact.as_bytes());
    push_manifest(reg, repo, &digest, OCI_MANIFEST, artifact.as_bytes());
    digest
}

/// Starts a proxy in `dir` with users `ci` and `reader`, extra `[storage]` keys and the given
/// configuration.
fn proxy_in(dir: &std::path::Path, storage: &str, config: &str) -> Proxy {
    std::fs::create_dir_all(dir).unwrap();
    htpasswd(
        &dir.join("users.htpasswd"),
        &[("ci", "ci-pass"), ("reader", "reader-pass")],
    );
    Proxy::start(
        dir,
        &format!(
            "[storage]\npath = \"data\"\n{storage}[auth]\nhtpasswd = \"users.htpasswd\"\n{config}"
        ),
    )
}

/// `(status, OCI error code or "")` of an anonymous request.
fn anonymous(method: reqwest::Method, url: &str) -> (u16, String) {
    let r = http()
        .request(method.clone(), url)
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().unwrap();
    let code = if method == reqwest::Method::HEAD || status < 400 {
        String::new()
    } else {
        error_code(&body)
    };
    (status, code)
}

#[test]
fn a_private_upstreams_content_is_not_readable_under_any_other_name() {
    let t = tempfile::tempdir().unwrap();
    let private_dir = t.path().join("private");
    std::fs::create_dir_all(&private_dir).unwrap();
    std::fs::write(
        private_dir.join("htpasswd"),
        format!("puller:{}\n", bcrypt::hash("pull-pw", 5).unwrap()),
    )
    .unwrap();
    let private = Registry::start_with(
        &private_dir,
        &format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            private_dir.join("htpasswd").display()
        ),
    );
    // the public upstream accepts foreign layers (as distribution does when told to allow their URLs)
    let public = Registry::start_with(
        &t.path().join("public"),
        "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n",
    );
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "private",
            layers: &[5000],
            tag: "v1",
        },
    );
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--dest-creds",
        "puller:pull-pw",
        &format!("oci:{}:v1", img.dir.display()),
        &format!("docker://{}/secret/app:v1", private.host()),
    ])
    .success();
    std::fs::write(t.path().join("pw"), "pull-pw\n").unwrap();
    let proxy = proxy_in(
        &t.path().join("proxy"),
        "",
        &format!(
            "[[auth.rule]]\nscope = \"private/*\"\nread = [\"ci\"]\n[[local]]\nname = \"internal\"\n\
             [[upstream]]\nname = \"private\"\nurl = \"{}\"\nusername = \"puller\"\npassword_file = \"{}\"\n\
             [[upstream]]\nname = \"public\"\nurl = \"{}\"\n",
            private.url(),
            t.path().join("pw").display(),
            public.url()
        ),
    );
    // an authorised user pulls the private image: its manifest and blobs are cached
    let pulled = t.path().join("pulled");
    let _ = std::fs::remove_dir_all(&pulled);
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "ci:ci-pass",
        &format!("docker://{}/private/secret/app:v1", proxy.addr),
        &format!("oci:{}:p", pulled.display()),
    ])
    .success();
    for d in img.blobs() {
        assert!(proxy.cached(&d), "{d} cached");
    }
    let base = proxy.url();
    assert_eq!(
        anonymous(
            reqwest::Method::GET,
            &format!("{base}/v2/private/secret/app/blobs/{}", img.layers[0])
        )
        .0,
        401,
        "the rule holds on its own name"
    );

    // an anonymous client asks for the same digests under every other name it can think of
    for name in [
        "public/library/alpine",
        "public/secret/app",
        "internal/secret/app",
        "internal/x",
    ] {
        for blob in img.blobs() {
            let url = format!("{base}/v2/{name}/blobs/{blob}");
            assert_eq!(
                anonymous(reqwest::Method::GET, &url),
                (404, "BLOB_UNKNOWN".into()),
                "GET {url}"
            );
            assert_eq!(anonymous(reqwest::Method::HEAD, &url).0, 404, "HEAD {url}");
        }
        let url = format!("{base}/v2/{name}/manifests/{}", img.digest);
        assert_eq!(
            anonymous(reqwest::Method::GET, &url),
            (404, "MANIFEST_UNKNOWN".into()),
            "GET {url}"
        );
        assert_eq!(anonymous(reqwest::Method::HEAD, &url).0, 404, "HEAD {url}");
    }
    // ...nor through a manifest of its own naming the digest as a foreign layer, which the
    // public upstream accepts without holding it
    let config_bytes =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config = push_blob(&public, "attacker/x", config_bytes);
    let foreign = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": img.layers[0], "size": 5000, "urls": ["https://example.invalid/layer"]}],
    })
    .to_string();
    push_manifest(
        &public,
        "attacker/x",
        "v1",
        "application/vnd.docker.distribution.manifest.v2+json",
        foreign.as_bytes(),
    );
    let r = http()
        .get(format!("{base}/v2/public/attacker/x/manifests/v1"))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "the attacker's manifest is served");
    let url = format!("{base}/v2/public/attacker/x/blobs/{}", img.layers[0]);
    assert_eq!(
        anonymous(reqwest::Method::GET, &url),
        (404, "BLOB_UNKNOWN".into()),
        "a manifest naming a digest does not make it readable"
    );
    // ...nor by mounting it into a repository of its own
    let r = http()
        .post(format!(
            "{base}/v2/internal/mine/blobs/uploads/?mount={}&from=public/secret/app",
            img.layers[0]
        ))
        .basic_auth("reader", Some("reader-pass"))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "no mount from a repository that does not hold the blob: an upload starts"
    );
    assert_eq!(
        anonymous(
            reqwest::Method::GET,
            &format!("{base}/v2/internal/mine/blobs/{}", img.layers[0])
        )
        .0,
        404
    );
}

#[test]
fn a_manifest_refused_by_policy_is_not_served_under_another_name_and_links_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let module = policy_module("policies", "allowed-registries");
    let mut proxy = proxy_in(
        &t.path().join("proxy"),
        "",
        &format!(
            "[[policy]]\nname = \"allowed\"\nmodule = \"{}\"\nscope = [\"up/*\"]\n[policy.settings]\nallowed = [\"up/good/*\"]\n\
             [[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            module.display(),
            reg.url()
        ),
    );
    let base = proxy.url();
    let evil = build_image(
        &t.path().join("evil"),
        &ImageSpec {
            seed: "evil",
            layers: &[3000],
            tag: "v1",
        },
    );
    reg.push(&evil, "evil/x:v1");
    let (status, code) = anonymous(
        reqwest::Method::GET,
        &format!("{base}/v2/up/evil/x/manifests/v1"),
    );
    assert_eq!(
        (status, code.as_str()),
        (403, "DENIED"),
        "refused where the policy says so"
    );
    assert!(
        proxy.cached(&evil.digest),
        "the refused manifest is in the store"
    );
    for name in ["good/x", "good/evil/x"] {
        let url = format!("{base}/v2/up/{name}/manifests/{}", evil.digest);
        assert_eq!(
            anonymous(reqwest::Method::GET, &url),
            (404, "MANIFEST_UNKNOWN".into()),
            "the refused manifest by digest under {name}"
        );
    }

    // the same image in an allowed and a refused repository: only the admitted one links its blobs
    let shared = build_image(
        &t.path().join("shared"),
        &ImageSpec {
            seed: "shared",
            layers: &[3000],
            tag: "v1",
        },
    );
    reg.push(&shared, "good/app:v1");
    reg.push(&shared, "evil/app:v1");
    skopeo_pull(
        &format!("{}/up/good/app:v1", proxy.addr),
        &t.path().join("good"),
    )
    .success();
    assert_eq!(
        anonymous(
            reqwest::Method::GET,
            &format!("{base}/v2/up/evil/app/manifests/v1")
        )
        .0,
        403
    );
    reg.stop();
    proxy.restart();
    let base = proxy.url();
    for blob in shared.blobs() {
        let ok = http()
            .get(format!("{base}/v2/up/good/app/blobs/{blob}"))
            .send()
            .unwrap();
        assert_eq!(
            ok.status(),
            200,
            "linked where it was admitted, after a restart and with the upstream down"
        );
        assert_eq!(sha256(&ok.bytes().unwrap()), blob);
        let (status, code) = anonymous(
            reqwest::Method::GET,
            &format!("{base}/v2/up/evil/app/blobs/{blob}"),
        );
        assert_eq!(
            (status, code.as_str()),
            (502, "UNAVAILABLE"),
            "the refused manifest linked nothing: {blob} is unconfirmed while the upstream is down"
        );
    }
}

#[test]
fn a_request_under_the_wrong_repository_never_decides_a_concurrent_right_one() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let front = common::front::Front::start(&reg.url());
    front.fault(
        "GET",
        "/team/app/",
        common::front::Fault::Delay(std::time::Duration::from_millis(400)),
    );
    front.fault(
        "GET",
        "/other/repo/",
        common::front::Fault::Delay(std::time::Duration::from_millis(400)),
    );
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "race",
            layers: &[200_000],
            tag: "v1",
        },
    );
    reg.push(&img, "team/app:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &front.url(), "");
    let base = proxy.url();
    for (kind, digest) in [
        ("blobs", img.layers[0].clone()),
        ("manifests", img.digest.clone()),
    ] {
        let mut handles = Vec::new();
        for i in 0..40 {
            let name = if i % 2 == 0 { "team/app" } else { "other/repo" };
            let url = format!("{base}/v2/up/{name}/{kind}/{digest}");
            handles.push((
                name,
                std::thread::spawn(move || {
                    let r = http()
                        .get(url)
                        .header("accept", OCI_MANIFEST)
                        .send()
                        .unwrap();
                    let status = r.status().as_u16();
                    (status, r.bytes().map(|b| sha256(&b)).unwrap_or_default())
                }),
            ));
        }
        let mut failed = Vec::new();
        for (name, h) in handles {
            let (status, got) = h.join().unwrap();
            match name {
                "team/app" if status != 200 || got != digest => failed.push(format!("{status}")),
                "other/repo" => {
                    assert_eq!(status, 404, "{kind} under a repository the upstream lacks")
                }
                _ => {}
            }
        }
        assert!(
            failed.is_empty(),
            "legitimate cold {kind} GETs failed: {failed:?}"
        );
    }
}

#[test]
fn pushing_a_copy_into_a_local_namespace_changes_nothing_for_the_proxied_image() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "base",
            layers: &[4000, 3000],
            tag: "v1",
        },
    );
    reg.push(&img, "base/img:v1");
    let proxy = proxy_in(
        &t.path().join("proxy"),
        "",
        &format!(
            "[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            reg.url()
        ),
    );
    skopeo_pull(
        &format!("{}/up/base/img:v1", proxy.addr),
        &t.path().join("pull1"),
    )
    .success();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-creds",
        "ci:ci-pass",
        &format!("docker://{}/up/base/img:v1", proxy.addr),
        &format!("docker://{}/internal/copy/img:v1", proxy.addr),
    ])
    .success();
    // a mount is refused from a repository that does not hold the blob, granted from one that does
    let mount = |from: &str| {
        let url = format!(
            "{}/v2/internal/mounted/blobs/uploads/?mount={}&from={from}",
            proxy.url(),
            img.layers[1]
        );
        http()
            .post(url)
            .basic_auth("ci", Some("ci-pass"))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        mount("up/other/repo"),
        202,
        "no mount from a repository the upstream says lacks it"
    );
    assert_eq!(mount("up/base/img"), 201);

    reg.stop();
    skopeo_pull(
        &format!("{}/up/base/img:v1", proxy.addr),
        &t.path().join("pull2"),
    )
    .success();
    let r = http()
        .get(format!(
            "{}/v2/up/base/img/manifests/{}",
            proxy.url(),
            img.digest
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the proxied image by digest, upstream down, after a copy was pushed"
    );
    skopeo_pull(
        &format!("{}/internal/copy/img:v1", proxy.addr),
        &t.path().join("pull3"),
    )
    .success();
}

#[test]
fn a_signed_in_user_cannot_replace_what_everyone_pulls() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let real = build_image(
        &t.path().join("real"),
        &ImageSpec {
            seed: "real alpine",
            layers: &[3000],
            tag: "latest",
        },
    );
    reg.push(&real, "library/alpine:latest");
    let evil = build_image(
        &t.path().join("evil"),
        &ImageSpec {
            seed: "poison",
            layers: &[3000],
            tag: "latest",
        },
    );
    let proxy = proxy_in(
        &t.path().join("proxy"),
        "",
        &format!(
            "[[auth.rule]]\nscope = \"up/ours/*\"\nwrite = [\"ci\"]\noverride = true\n[policies]\naudit = \"audit.log\"\n\
             [[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            reg.url()
        ),
    );
    let push = |dest: &str| {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "ci:ci-pass",
            &format!("oci:{}:latest", evil.dir.display()),
            &format!("docker://{}/up/{dest}", proxy.addr),
        ])
    };
    let served = |name: &str| {
        let r = http()
            .get(format!("{}/v2/up/{name}/manifests/latest", proxy.url()))
            .header("accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    };

    // any signed-in account, no rule at all: the poisoning is refused and the upstream's tag stays
    let out = push("library/alpine:latest");
    assert!(!out.ok && out.stderr.contains("denied"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("limited to signatures, attestations, SBOMs and referrers"),
        "{}",
        out.stderr
    );
    assert_eq!(
        served("library/alpine"),
        real.digest,
        "every client still gets the upstream's image"
    );
    let put_as_ci = |reference: &str, body: Vec<u8>| {
        let r = http()
            .put(format!(
                "{}/v2/up/library/alpine/manifests/{reference}",
                proxy.url()
            ))
            .basic_auth("ci", Some("ci-pass"))
            .header("content-type", OCI_MANIFEST)
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let upload_as_ci = |digest: &str, bytes: Vec<u8>| {
        let r = http()
            .post(format!(
                "{}/v2/up/library/alpine/blobs/uploads/?digest={digest}",
                proxy.url()
            ))
            .basic_auth("ci", Some("ci-pass"))
            .body(bytes)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    };
    for reference in ["latest", evil.digest.as_str()] {
        let (status, body) = put_as_ci(reference, evil.manifest.clone());
        assert_eq!(status, 403, "{reference}");
        assert_eq!(error_code(&body), "DENIED");
    }

    // the same image dressed as a signature of the upstream's image (its tar layer labelled
    // as a cosign payload, pushed under the signature tag or by digest): an image by its bytes,
    // so not a write the default allows, with no policy in scope either
    let layer = &evil.layers[0];
    let bytes = evil.blob(layer);
    upload_as_ci(layer, bytes.clone());
    let config_bytes = evil.blob(&evil.config_digest);
    upload_as_ci(&evil.config_digest, config_bytes.clone());
    let dressed = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": evil.config_digest, "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": layer, "size": bytes.len()}]})
    .to_string();
    let sig_tag = format!("sha256-{}.sig", &real.digest["sha256:".len()..]);
    let dressed_digest = sha256(dressed.as_bytes());
    for reference in [sig_tag.as_str(), dressed_digest.as_str()] {
        let (status, body) = put_as_ci(reference, dressed.clone().into_bytes());
        assert_eq!(
            status, 403,
            "an image dressed as a signature, as {reference}"
        );
        assert_eq!(error_code(&body), "DENIED", "{body}");
    }

    // signing a proxied image through the proxy keeps working by default
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    cosign(&keys, &["login", &proxy.addr, "-u", "ci", "-p", "ci-pass"]).success();
    let through = format!("{}/up/library/alpine@{}", proxy.addr, real.digest);
    cosign_sign(&keys, &through);
    let out = cosign_verify(&keys, "cosign.pub", &through);
    assert!(out.ok, "{}", out.stderr);

    // a rule that says so lets its writers override, logged and audited as such
    reg.push(&real, "ours/app:latest");
    push("ours/app:latest").success();
    assert_eq!(
        served("ours/app"),
        evil.digest,
        "the override is what clients get"
    );
    wait_for(
        "the override in the audit log",
        std::time::Duration::from_secs(5),
        || {
            std::fs::read_to_string(proxy.dir.join("audit.log"))
                .unwrap_or_default()
                .contains("\"decision\":\"override\"")
        },
    );
    assert!(proxy.log().contains("upstream overridden"), "logged");
}

#[test]
fn pushes_of_cached_blobs_racing_an_eviction_pass_lose_nothing_acknowledged() {
    use std::sync::{Arc, Mutex};
    const CACHED: usize = 1000;
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let blobs: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..CACHED + 2)
            .map(|i| {
                let content = image::noise(&format!("churn-{i}"), 1 << 10);
                (push_blob(&reg, "pool/blobs", &content), content)
            })
            .collect(),
    );
    let config = |max: &str| format!("max_size = \"{max}\"\n");
    let rest = format!(
        "[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        reg.url()
    );
    let mut proxy = proxy_in(&t.path().join("proxy"), &config("64MiB"), &rest);
    let set_cap = |proxy: &Proxy, from: &str, to: &str| {
        let toml = std::fs::read_to_string(proxy.dir.join("proxy.toml"))
            .unwrap()
            .replace(&config(from), &config(to));
        std::fs::write(proxy.dir.join("proxy.toml"), toml).unwrap();
    };
    let acked: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    for round in 0..2 {
        // a thousand blobs cached, oldest first; then a cap of a few: the next fill starts one
        // long eviction pass, oldest first, while pushes of the newest (its last victims) run
        for (digest, _) in &blobs[..CACHED] {
            assert_eq!(
                http()
                    .get(format!("{}/v2/up/pool/blobs/blobs/{digest}", proxy.url()))
                    .send()
                    .unwrap()
                    .status(),
                200
            );
        }
        set_cap(&proxy, "64MiB", "8KiB");
        proxy.restart();
        let before = proxy.log().matches("evicted").count();
        let pushers: Vec<_> = (0..2)
            .map(|k| {
                let (acked, blobs, addr) = (acked.clone(), blobs.clone(), proxy.addr.clone());
                std::thread::spawn(move || {
                    for n in (CACHED - 40..CACHED).rev().skip(k).step_by(2) {
                        let (digest, content) = &blobs[n];
                        let url = format!(
                            "http://{addr}/v2/internal/keep{round}/blobs/uploads/?digest={digest}"
                        );
                        let r = http()
                            .post(url)
                            .basic_auth("ci", Some("ci-pass"))
                            .body(content.clone())
                            .send();
                        if r.is_ok_and(|r| r.status() == 201) {
                            acked.lock().unwrap().push((round, n));
                        }
                    }
                })
            })
            .collect();
        let fresh = &blobs[CACHED + round].0;
        assert_eq!(
            http()
                .get(format!("{}/v2/up/pool/blobs/blobs/{fresh}", proxy.url()))
                .send()
                .unwrap()
                .status(),
            200
        );
        for p in pushers {
            p.join().unwrap();
        }
        // the pass has ended when it evicted most of them and then nothing more for a while
        let mut last = 0;
        wait_for(
            "the eviction pass to end",
            std::time::Duration::from_secs(30),
            || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                let now = proxy.log().matches("evicted").count();
                std::mem::replace(&mut last, now) == now && now >= before + CACHED / 2
            },
        );
        proxy.kill();
        set_cap(&proxy, "8KiB", "64MiB");
        proxy.restart();
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "round {round}: no push was acknowledged");
        for (r, n) in acked {
            let (digest, content) = &blobs[n];
            let got = http()
                .get(format!(
                    "{}/v2/internal/keep{r}/blobs/{digest}",
                    proxy.url()
                ))
                .send()
                .unwrap();
            assert_eq!(
                got.status(),
                200,
                "round {round}: an acknowledged push of {digest} was lost"
            );
            assert_eq!(&got.bytes().unwrap()[..], &content[..]);
        }
        assert_store_consistent(&proxy);
    }
}

#[test]
fn below_min_free_a_lying_upstreams_same_length_wrong_bytes_never_arrive_whole() {
    use common::liar::{Behaviour, Liar};
    use std::io::Read;
    let t = tempfile::tempdir().unwrap();
    let liar = Liar::start();
    // more free space than any disk has: every blob streams uncached
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "liar",
        &liar.url(),
        "min_free = \"1000TiB\"",
    );
    for size in [100, 3 << 20] {
        let good = image::noise(&format!("pass-through-{size}"), size);
        let digest = sha256(&good);
        let mut wrong = good.clone();
        wrong[size - 1] ^= 0xff;
        liar.blob(&digest, Behaviour::Wrong(wrong));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let url = format!("{}/v2/liar/r/blobs/{digest}", proxy.url());
                std::thread::spawn(move || {
                    // a small blob is one chunk, held back whole: the response ends before its body
                    let Ok(mut r) = http().get(url).send() else {
                        return (0, false, Vec::new());
                    };
                    let mut body = Vec::new();
                    let read = r.read_to_end(&mut body);
                    (r.status().as_u16(), read.is_ok(), body)
                })
            })
            .collect();
        for c in clients {
            let (status, clean, body) = c.join().unwrap();
            assert!(
                status == 200 || status == 0,
                "the headers went out before the last byte was known: {status}"
            );
            assert!(
                !clean,
                "the response must end in an error, not cleanly ({} bytes)",
                body.len()
            );
            assert!(
                body.len() < size,
                "never the whole blob: {} of {size} bytes",
                body.len()
            );
        }
        assert!(proxy.log().contains("without caching"), "streamed uncached");
        assert!(!proxy.has_blob(&digest));
    }
}
