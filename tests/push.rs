//! Pushing through the proxy: skopeo into a local namespace, cosign signatures on proxied
//! images merged with the upstream's, and the upload protocol's error cases.

mod common;

use common::*;

const AUTH: &str = "[auth]\nhtpasswd = \"users.htpasswd\"\n[[auth.rule]]\nscope = \"internal/*\"\nwrite = [\"ci\"]\n[[auth.rule]]\nscope = \"up/*\"\nwrite = [\"ci\"]\n";

/// A proxy with a local namespace, an upstream, users `ci` (may push) and `reader` (may not),
/// and optionally TLS.
fn start_proxy(t: &std::path::Path, reg: &Registry, server: &str) -> Proxy {
    let dir = t.join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(
        &dir.join("users.htpasswd"),
        &[("ci", "ci-pass"), ("reader", "reader-pass")],
    );
    Proxy::start_with_server(
        &dir,
        server,
        &format!("[storage]\npath = \"data\"\n{AUTH}[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n", reg.url()),
    )
}

/// A proxy with users `ci` and `reader`, extra `[storage]` keys and extra auth rules.
fn proxy_with(t: &std::path::Path, reg: &Registry, storage: &str, rules: &str) -> Proxy {
    let dir = t.join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(
        &dir.join("users.htpasswd"),
        &[("ci", "ci-pass"), ("reader", "reader-pass")],
    );
    Proxy::start(
        &dir,
        &format!("[storage]\npath = \"data\"\n{storage}[auth]\nhtpasswd = \"users.htpasswd\"\n{rules}[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n", reg.url()),
    )
}

fn setup() -> (tempfile::TempDir, Registry, Proxy) {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = start_proxy(t.path(), &reg, "");
    (t, reg, proxy)
}

fn ci() -> (&'static str, Option<&'static str>) {
    ("ci", Some("ci-pass"))
}

#[test]
fn skopeo_copies_into_a_local_namespace_over_tls_and_podman_pulls_it_back_after_a_restart() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let pki = tls::make_pki(&t.path().join("pki"));
    let server = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    );
    let mut proxy = start_proxy(t.path(), &reg, &server);
    let certs = pki.cert_dir.to_str().unwrap();
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "local",
            layers: &[5000, 400_000],
            tag: "v1",
        },
    );
    let dest = format!("docker://{}/internal/team/app:v1", proxy.addr);
    let src = format!("oci:{}:v1", img.dir.display());
    let denied = skopeo(&[
        "copy",
        "-q",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        "reader:reader-pass",
        &src,
        &dest,
    ]);
    assert!(!denied.ok, "a read-only user cannot push");
    assert!(
        denied.stderr.contains("denied") || denied.stderr.contains("may not"),
        "{}",
        denied.stderr
    );
    skopeo(&[
        "copy",
        "-q",
        "--dest-cert-dir",
        certs,
        "--dest-creds",
        "ci:ci-pass",
        &src,
        &dest,
    ])
    .success();
    // mounting a blob the proxy has into another repository needs no upload
    let r = https(&pki.ca)
        .post(format!(
            "{}/v2/internal/other/blobs/uploads/?mount={}&from=internal/team/app",
            proxy.url(),
            img.layers[1]
        ))
        .basic_auth("ci", Some("ci-pass"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "cross-repository mount");
    assert_eq!(
        r.headers()["location"],
        format!("/v2/internal/other/blobs/{}", img.layers[1]).as_str()
    );
    proxy.restart();

    let conf = t.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{}\"\n", proxy.addr),
    )
    .unwrap();
    let root = t.path().join("podman");
    let name = format!("{}/internal/team/app:v1", proxy.addr);
    podman(&root, &conf, &["pull", "-q", "--cert-dir", certs, &name]).success();
    let digest = podman(
        &root,
        &conf,
        &["image", "inspect", "--format", "{{.Digest}}", &name],
    )
    .success();
    assert_eq!(digest.stdout.trim(), img.digest);
    // podman pushes too
    let pushed = format!("{}/internal/team/copy:v1", proxy.addr);
    podman(&root, &conf, &["tag", &name, &pushed]).success();
    podman(
        &root,
        &conf,
        &[
            "push",
            "-q",
            "--cert-dir",
            certs,
            "--creds",
            "ci:ci-pass",
            &pushed,
        ],
    )
    .success();
    let out = t.path().join("back");
    let _ = std::fs::remove_dir_all(&out);
    skopeo(&[
        "copy",
        "-q",
        "--src-cert-dir",
        certs,
        &format!("docker://{name}"),
        &format!("oci:{}:pulled", out.display()),
    ])
    .success();
    for d in img.blobs() {
        assert_eq!(
            std::fs::read(image::blob_path(&out, &d)).unwrap(),
            img.blob(&d),
            "{d} byte-identical"
        );
    }
    let tags = https(&pki.ca)
        .get(format!("{}/v2/internal/team/copy/tags/list", proxy.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(tags.contains("\"v1\""), "{tags}");
}

#[test]
fn skopeo_sign_by_sigstore_key_pushes_through_the_proxy() {
    let (t, _reg, proxy) = setup();
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    std::fs::write(keys.join("pass"), "test-passphrase").unwrap();
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "skosign",
            layers: &[1000],
            tag: "v1",
        },
    );
    let dest = format!("docker://{}/internal/signed/app:v1", proxy.addr);
    let accept = t.path().join("accept.json");
    std::fs::write(
        &accept,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let regd = t.path().join("registries.d");
    std::fs::create_dir_all(&regd).unwrap();
    std::fs::write(
        regd.join("proxy.yaml"),
        format!(
            "docker:\n  {}:\n    use-sigstore-attachments: true\n",
            proxy.addr
        ),
    )
    .unwrap();
    // Debian 13's skopeo: containers/image signs with the cosign key and pushes the signature
    let out = sigstore_skopeo(
        &accept,
        &[
            "--registries.d",
            regd.to_str().unwrap(),
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--dest-creds",
            "ci:ci-pass",
            "--sign-by-sigstore-private-key",
            keys.join("cosign.key").to_str().unwrap(),
            "--sign-passphrase-file",
            keys.join("pass").to_str().unwrap(),
            &format!("oci:{}:v1", img.dir.display()),
            &dest,
        ],
    );
    assert!(
        out.ok,
        "skopeo copy --sign-by-sigstore-private-key: {}",
        out.stderr
    );
    let sig = format!(
        "{}/v2/internal/signed/app/manifests/{}.sig",
        proxy.url(),
        img.digest.replace(':', "-")
    );
    let r = http()
        .get(&sig)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "the signature skopeo pushed is served");
    let v = cosign_verify(
        &keys,
        "cosign.pub",
        &format!("{}/internal/signed/app:v1", proxy.addr),
    );
    assert!(v.ok, "cosign verify of skopeo's signature: {}", v.stderr);
    let other = t.path().join("other-keys");
    cosign_keys(&other);
    let v = cosign_verify(
        &other,
        "cosign.pub",
        &format!("{}/internal/signed/app:v1", proxy.addr),
    );
    assert!(
        !v.ok && v.stderr.contains("no matching signatures"),
        "another key verified: {}",
        v.stderr
    );
    let r = http()
        .get(format!(
            "{}/v2/internal/signed/app/manifests/v1",
            proxy.url()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "the image itself was pushed");
    assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
}

#[test]
fn containers_image_format_signatures_pushed_are_served_back_byte_identical() {
    let (_t, _reg, proxy) = setup();
    let image_digest = push_small_image(&proxy, "cimg", "v1", b"{\"os\":\"linux\"}");
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{}/internal/cimg:v1"}},"image":{{"docker-manifest-digest":"{image_digest}"}},"type":"cosign container image signature"}},"optional":{{"creator":"containers/image test","timestamp":1795610943}}}}"#,
        proxy.addr
    );
    let payload_digest = sha256(payload.as_bytes());
    let config = format!(
        r#"{{"architecture":"","os":"","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{payload_digest}"]}}}}"#
    );
    for blob in [payload.as_bytes(), config.as_bytes()] {
        let r = authed(
            http()
                .post(format!(
                    "{}/v2/internal/cimg/blobs/uploads/?digest={}",
                    proxy.url(),
                    sha256(blob)
                ))
                .body(blob.to_vec()),
        );
        assert_eq!(r.status(), 201);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{payload_digest}","size":{},"annotations":{{"dev.cosignproject.cosign/signature":"MEUCIQCuRpf/y6M8oCscK0y4wD26Lm0SihKjBNERFtV2C4vttQIgd8pxm0PM4lsFCnzKVcropu6vAcYF7K8VIftsyqXM0F8="}}}}]}}"#,
        sha256(config.as_bytes()),
        config.len(),
        payload.len()
    );
    let tag = format!("{}.sig", image_digest.replace(':', "-"));
    let url = format!("{}/v2/internal/cimg/manifests/{tag}", proxy.url());
    let r = authed(
        http()
            .put(&url)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone()),
    );
    assert_eq!(r.status(), 201);
    let back = http()
        .get(&url)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(back.as_ref(), manifest.as_bytes());
    let blob = http()
        .get(format!(
            "{}/v2/internal/cimg/blobs/{payload_digest}",
            proxy.url()
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(blob.as_ref(), payload.as_bytes());
    // and it is listed as the image's signature
    let r: serde_json::Value = http()
        .get(format!(
            "{}/v2/internal/cimg/referrers/{image_digest}",
            proxy.url()
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        r["manifests"][0]["artifactType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
}

#[test]
fn abandoned_uploads_expire() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = proxy_with(t.path(), &reg, "upload_ttl = \"1s\"\n", "");
    let url = post_upload(&proxy, "gone");
    assert_eq!(
        authed(
            http()
                .patch(&url)
                .header("content-range", "0-3")
                .body("abcd")
        )
        .status(),
        202
    );
    // the sweep removes the session's record first, then its directory
    wait_for(
        "the abandoned upload to expire",
        std::time::Duration::from_secs(10),
        || {
            authed(http().get(&url)).status() == 404
                && std::fs::read_dir(proxy.data().join("uploads"))
                    .unwrap()
                    .count()
                    == 0
        },
    );
}

#[test]
fn cosign_signs_a_proxied_image_over_tls_with_credentials_keeping_the_upstream_signature() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let pki = tls::make_pki(&t.path().join("pki"));
    let server = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    );
    let proxy = start_proxy(t.path(), &reg, &server);
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "sign",
            layers: &[3000],
            tag: "v1",
        },
    );
    reg.push(&img, "demo/app:v1");
    let upstream_keys = t.path().join("upstream-keys");
    let our_keys = t.path().join("our-keys");
    cosign_keys(&upstream_keys);
    cosign_keys(&our_keys);
    cosign_sign(
        &upstream_keys,
        &format!("{}/demo/app@{}", reg.host(), img.digest),
    );

    let env: [(&str, &std::path::Path); 1] = [("SSL_CERT_FILE", &pki.ca)];
    let through = format!("{}/up/demo/app@{}", proxy.addr, img.digest);
    let run = |args: &[&str]| cosign_with(&our_keys, &env, args);
    let sign = [
        "sign",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        through.as_str(),
    ];
    let anonymous = run(&sign);
    assert!(!anonymous.ok, "signing without credentials is refused");
    assert!(
        anonymous.stderr.contains("UNAUTHORIZED") || anonymous.stderr.contains("401"),
        "{}",
        anonymous.stderr
    );
    run(&["login", &proxy.addr, "-u", "ci", "-p", "ci-pass"]).success();
    run(&sign).success();

    let verify = |keys: &std::path::Path| {
        cosign_with(
            keys,
            &env,
            &[
                "verify",
                "--key",
                "cosign.pub",
                "--insecure-ignore-tlog",
                &through,
            ],
        )
    };
    let ours = verify(&our_keys);
    assert!(
        ours.ok,
        "the signature pushed through the proxy verifies: {}",
        ours.stderr
    );
    let theirs = verify(&upstream_keys);
    assert!(
        theirs.ok,
        "the upstream's signature is still there: {}",
        theirs.stderr
    );
    // the upstream was not written to
    let upstream_only = cosign_verify(
        &our_keys,
        "cosign.pub",
        &format!("{}/demo/app@{}", reg.host(), img.digest),
    );
    assert!(
        !upstream_only.ok && upstream_only.stderr.contains("no matching signatures"),
        "{}",
        upstream_only.stderr
    );

    // attestations and SBOMs pushed through the proxy read back
    std::fs::write(
        our_keys.join("predicate.json"),
        r#"{"builder":{"id":"https://ci.example/b"},"buildType":"t"}"#,
    )
    .unwrap();
    run(&[
        "attest",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "--type",
        "slsaprovenance",
        "--predicate",
        "predicate.json",
        &through,
    ])
    .success();
    let out = run(&[
        "verify-attestation",
        "--key",
        "cosign.pub",
        "--insecure-ignore-tlog",
        "--type",
        "slsaprovenance",
        &through,
    ]);
    assert!(out.ok, "{}", out.stderr);
    std::fs::write(
        our_keys.join("sbom.json"),
        r#"{"spdxVersion":"SPDX-2.3","name":"x"}"#,
    )
    .unwrap();
    run(&[
        "attach",
        "sbom",
        "--sbom",
        "sbom.json",
        "--type",
        "spdx",
        &through,
    ])
    .success();
    let out = run(&["download", "sbom", &through]).success();
    assert!(out.stdout.contains("SPDX-2.3"), "{}", out.stdout);
    assert!(!proxy.log().contains("ci-pass"), "no password in the log");
}

#[test]
fn writes_need_credentials_and_permission() {
    let (_t, _reg, proxy) = setup();
    let uploads = format!("{}/v2/internal/app/blobs/uploads/", proxy.url());
    let r = http().post(&uploads).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"portcullis\""
    );
    assert_eq!(error_code(&r.text().unwrap()), "UNAUTHORIZED");
    let r = http()
        .post(&uploads)
        .basic_auth("ci", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .post(&uploads)
        .basic_auth("nobody", Some("ci-pass"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .post(&uploads)
        .basic_auth("reader", Some("reader-pass"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&r.text().unwrap()), "DENIED");
    let r = http()
        .put(format!("{}/v2/up/x/manifests/v1", proxy.url()))
        .basic_auth("reader", Some("reader-pass"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http()
        .post(&uploads)
        .basic_auth("ci", Some("ci-pass"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    // /v2/ challenges clients without credentials, so they know to sign in
    assert_eq!(
        http()
            .get(format!("{}/v2/", proxy.url()))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http()
            .get(format!("{}/v2/", proxy.url()))
            .basic_auth("ci", Some("ci-pass"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // reads stay anonymous
    let r = http()
        .get(format!("{}/v2/internal/app/tags/list", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "anonymous read reaches the handler");
    let log = proxy.log();
    assert!(log.contains("failed sign-in"), "failed sign-ins are logged");
    assert!(
        !log.contains("ci-pass") && !log.contains("wrong") && !log.contains("reader-pass"),
        "no password in the log"
    );
}

fn post_upload(proxy: &Proxy, repo: &str) -> String {
    let r = http()
        .post(format!("{}/v2/internal/{repo}/blobs/uploads/", proxy.url()))
        .basic_auth(ci().0, ci().1)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    format!("{}{loc}", proxy.url())
}

#[test]
fn upload_protocol_errors() {
    let (_t, _reg, proxy) = setup();
    // chunked upload, chunk out of order -> 416
    let url = post_upload(&proxy, "chunks");
    let r = http()
        .patch(&url)
        .basic_auth(ci().0, ci().1)
        .header("content-range", "0-3")
        .body("abcd")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-3");
    let r = http()
        .patch(&url)
        .basic_auth(ci().0, ci().1)
        .header("content-range", "10-13")
        .body("wxyz")
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = http().get(&url).basic_auth(ci().0, ci().1).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-3");
    let r = http()
        .patch(&url)
        .basic_auth(ci().0, ci().1)
        .header("content-range", "4-7")
        .body("efgh")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    // wrong digest -> DIGEST_INVALID, nothing stored
    let wrong = sha256(b"something else");
    let r = http()
        .put(format!("{url}?digest={wrong}"))
        .basic_auth(ci().0, ci().1)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().unwrap()), "DIGEST_INVALID");
    assert!(!proxy.has_blob(&wrong));
    assert!(!proxy.has_blob(&sha256(b"abcdefgh")));

    // a good chunked upload
    let url = post_upload(&proxy, "chunks");
    http()
        .patch(&url)
        .basic_auth(ci().0, ci().1)
        .header("content-range", "0-3")
        .body("abcd")
        .send()
        .unwrap();
    let good = sha256(b"abcdefgh");
    let r = http()
        .put(format!("{url}?digest={good}"))
        .basic_auth(ci().0, ci().1)
        .body("efgh")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], good.as_str());
    assert!(proxy.has_blob(&good));
    let r = http()
        .get(format!("{}/v2/internal/chunks/blobs/{good}", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), b"abcdefgh");

    // manifest naming a missing blob -> MANIFEST_BLOB_UNKNOWN
    let missing = sha256(b"never uploaded");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{good}","size":8}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{missing}","size":14}}]}}"#
    );
    let r = http()
        .put(format!("{}/v2/internal/chunks/manifests/v1", proxy.url()))
        .basic_auth(ci().0, ci().1)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().unwrap()), "MANIFEST_BLOB_UNKNOWN");
    let r = http()
        .get(format!("{}/v2/internal/chunks/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    // unknown session, cancelled session
    let url = post_upload(&proxy, "chunks");
    assert_eq!(
        http()
            .delete(&url)
            .basic_auth(ci().0, ci().1)
            .send()
            .unwrap()
            .status(),
        204
    );
    let r = http().get(&url).basic_auth(ci().0, ci().1).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().unwrap()), "BLOB_UPLOAD_UNKNOWN");
}

fn authed(rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::Response {
    rb.basic_auth("ci", Some("ci-pass")).send().unwrap()
}

/// Pushes a config-only image manifest to `internal/<repo>:<tag>`; its digest.
fn push_small_image(proxy: &Proxy, repo: &str, tag: &str, content: &[u8]) -> String {
    let blob = sha256(content);
    let r = authed(
        http()
            .post(format!(
                "{}/v2/internal/{repo}/blobs/uploads/?digest={blob}",
                proxy.url()
            ))
            .body(content.to_vec()),
    );
    assert_eq!(r.status(), 201);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{blob}","size":{}}},"layers":[]}}"#,
        content.len()
    );
    let r = authed(
        http()
            .put(format!(
                "{}/v2/internal/{repo}/manifests/{tag}",
                proxy.url()
            ))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone()),
    );
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["docker-content-digest"],
        sha256(manifest.as_bytes()).as_str()
    );
    sha256(manifest.as_bytes())
}

#[test]
fn sigkill_loses_no_acknowledged_push_and_shows_no_partial_blob() {
    let (_t, _reg, mut proxy) = setup();
    // an acknowledged chunk survives a kill; the session can be finished afterwards
    let url = post_upload(&proxy, "crash");
    let path = url.trim_start_matches(&proxy.url()).to_string();
    assert_eq!(
        authed(
            http()
                .patch(&url)
                .header("content-range", "0-3")
                .body("abcd")
        )
        .status(),
        202
    );
    let digest = push_small_image(
        &proxy,
        "crash",
        "v1",
        br#"{"architecture":"amd64","os":"linux"}"#,
    );
    proxy.kill();
    proxy.restart();
    let url = format!("{}{path}", proxy.url());
    let r = authed(http().get(&url));
    assert_eq!(
        (r.status().as_u16(), r.headers()["range"].to_str().unwrap()),
        (204, "0-3")
    );
    let r = authed(
        http()
            .get(format!("{}/v2/internal/crash/manifests/v1", proxy.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json"),
    );
    assert_eq!(
        r.status(),
        200,
        "an acknowledged manifest push survives SIGKILL"
    );
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());

    // kill while a chunk is still arriving: nothing of it becomes a blob
    let big = image::noise("partial", 1 << 20);
    let mut s = std::net::TcpStream::connect(&proxy.addr).unwrap();
    use std::io::Write;
    let id_path = url.trim_start_matches(&proxy.url());
    write!(
        s,
        "PATCH {id_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Y2k6Y2ktcGFzcw==\r\nContent-Range: 4-{}\r\nContent-Length: {}\r\n\r\n",
        4 + big.len() - 1,
        big.len()
    )
    .unwrap();
    s.write_all(&big[..big.len() / 2]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    proxy.kill();
    drop(s);
    proxy.restart();
    assert!(!proxy.has_blob(&sha256(&big)));
    let whole: Vec<u8> = b"abcd".iter().copied().chain(big.iter().copied()).collect();
    assert!(
        !proxy.has_blob(&sha256(&whole)),
        "a partial upload is never a blob"
    );
    assert_store_consistent(&proxy);
    // the session goes on from what was written; a wrong finish stores nothing
    // the session goes on from what reached the disk (the status says how much): finishing
    // it with the digest of the acknowledged bytes works only if nothing more arrived
    let range = authed(http().get(format!("{}{id_path}", proxy.url()))).headers()["range"]
        .to_str()
        .unwrap()
        .to_string();
    let end: usize = range.trim_start_matches("0-").parse().unwrap();
    assert!((3..4 + big.len() / 2).contains(&end), "{range}");
    let r = authed(http().put(format!(
        "{}{id_path}?digest={}",
        proxy.url(),
        sha256(b"abcd")
    )));
    assert_eq!(r.status(), if end == 3 { 201 } else { 400 }, "{range}");
    assert_store_consistent(&proxy);
}

#[test]
fn deleting_pushed_manifests_and_tags_when_allowed() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = proxy_with(t.path(), &reg, "allow_delete = true\n", "");
    let a = push_small_image(&proxy, "del", "a", b"{\"a\":1}");
    push_small_image(&proxy, "del", "b", b"{\"b\":2}");
    let m = |r: &str| format!("{}/v2/internal/del/manifests/{r}", proxy.url());
    assert_eq!(authed(http().delete(m("b"))).status(), 202, "tag deletion");
    assert_eq!(http().get(m("b")).send().unwrap().status(), 404);
    assert_eq!(
        authed(http().delete(m(&a))).status(),
        202,
        "manifest deletion by digest"
    );
    assert_eq!(
        http().get(m("a")).send().unwrap().status(),
        404,
        "its tags go with it"
    );
    assert_eq!(http().get(m(&a)).send().unwrap().status(), 404);
    let r = authed(http().delete(m(&a)));
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().unwrap()), "MANIFEST_UNKNOWN");

    // with deletes off (the default) the answer is UNSUPPORTED
    let (_t2, _reg2, other) = setup();
    let r = authed(http().delete(format!("{}/v2/internal/x/manifests/v1", other.url())));
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(&r.text().unwrap()), "UNSUPPORTED");
}

#[test]
fn atomic_signatures_pushed_are_served_back_byte_identical() {
    let (_t, _reg, proxy) = setup();
    let digest = push_small_image(&proxy, "atomic", "v1", b"{\"x\":1}");
    let sig = format!(
        r#"{{"version":2,"type":"atomic","name":"{digest}@0123456789abcdef0123456789abcdef","content":"c2lnbmF0dXJl"}}"#
    );
    let url = format!(
        "{}/extensions/v2/internal/atomic/signatures/{digest}",
        proxy.url()
    );
    assert_eq!(
        http().put(&url).body(sig.clone()).send().unwrap().status(),
        401
    );
    assert_eq!(authed(http().put(&url).body(sig.clone())).status(), 201);
    assert_eq!(
        authed(http().put(&url).body("{\"version\":1}")).status(),
        400
    );
    let list: serde_json::Value = http().get(&url).send().unwrap().json().unwrap();
    assert_eq!(
        list["signatures"][0],
        serde_json::from_str::<serde_json::Value>(&sig).unwrap()
    );
}

#[test]
fn pushed_content_is_readable_only_where_it_was_pushed_and_never_evicted() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let rules = "[[auth.rule]]\nscope = \"internal/secret/*\"\nread = [\"ci\"]\nwrite = [\"ci\"]\n";
    let proxy = proxy_with(t.path(), &reg, "max_size = \"1MiB\"\n", rules);
    let secret = image::noise("secret layer", 700_000);
    let d = sha256(&secret);
    let r = authed(
        http()
            .post(format!(
                "{}/v2/internal/secret/app/blobs/uploads/?digest={d}",
                proxy.url()
            ))
            .body(secret.clone()),
    );
    assert_eq!(r.status(), 201);
    assert_eq!(
        http()
            .get(format!("{}/v2/internal/secret/app/blobs/{d}", proxy.url()))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        authed(http().get(format!("{}/v2/internal/secret/app/blobs/{d}", proxy.url()))).status(),
        200
    );
    for other in ["internal/public/app", "up/any/repo"] {
        let r = http()
            .get(format!("{}/v2/{other}/blobs/{d}", proxy.url()))
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "pushed content is not readable through {other}"
        );
        assert_eq!(error_code(&r.text().unwrap()), "BLOB_UNKNOWN");
    }
    // a mount from a repository the user may not read becomes an ordinary upload
    let mount = format!(
        "{}/v2/internal/public/app/blobs/uploads/?mount={d}&from=internal/secret/app",
        proxy.url()
    );
    let r = http()
        .post(&mount)
        .basic_auth("reader", Some("reader-pass"))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "no mount without read access to the source"
    );
    assert_eq!(
        http()
            .get(format!("{}/v2/internal/public/app/blobs/{d}", proxy.url()))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(authed(http().post(&mount)).status(), 201, "ci may mount");
    assert_eq!(
        http()
            .get(format!("{}/v2/internal/public/app/blobs/{d}", proxy.url()))
            .send()
            .unwrap()
            .status(),
        200
    );

    // fill the cache past max_size with proxied content: the pushed blob stays
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "filler",
            layers: &[900_000, 900_000],
            tag: "v1",
        },
    );
    reg.push(&img, "fill/er:v1");
    skopeo_pull(
        &format!("{}/up/fill/er:v1", proxy.addr),
        &t.path().join("pulled"),
    )
    .success();
    wait_for(
        "eviction of cached content",
        std::time::Duration::from_secs(10),
        || !img.layers.iter().all(|l| proxy.has_blob(l)),
    );
    assert!(proxy.has_blob(&d), "pushed content is never evicted");
}

#[test]
fn two_finishes_of_one_upload_session_get_one_success_and_one_unknown_upload() {
    let (_t, _reg, proxy) = setup();
    for round in 0..8 {
        let content = image::noise(&format!("twice-{round}"), 2 << 20);
        let digest = sha256(&content);
        let url = post_upload(&proxy, "twice");
        let finishes: Vec<_> = (0..2)
            .map(|_| {
                let (url, content, digest) = (url.clone(), content.clone(), digest.clone());
                std::thread::spawn(move || {
                    let r = authed(http().put(format!("{url}?digest={digest}")).body(content));
                    let status = r.status().as_u16();
                    (
                        status,
                        if status >= 400 {
                            error_code(&r.text().unwrap())
                        } else {
                            String::new()
                        },
                    )
                })
            })
            .collect();
        let mut outcomes: Vec<(u16, String)> =
            finishes.into_iter().map(|h| h.join().unwrap()).collect();
        outcomes.sort();
        assert_eq!(
            outcomes,
            vec![(201, String::new()), (404, "BLOB_UPLOAD_UNKNOWN".into())],
            "round {round}"
        );
        assert_eq!(
            http()
                .get(format!("{}/v2/internal/twice/blobs/{digest}", proxy.url()))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
}

#[test]
fn a_pushed_manifest_with_a_subject_answers_oci_subject_and_is_listed_as_a_referrer() {
    let (_t, _reg, proxy) = setup();
    let image = push_small_image(&proxy, "refs", "v1", b"{\"image\":1}");
    let empty = sha256(b"{}");
    assert_eq!(
        authed(
            http()
                .post(format!(
                    "{}/v2/internal/refs/blobs/uploads/?digest={empty}",
                    proxy.url()
                ))
                .body("{}")
        )
        .status(),
        201
    );
    let note = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.note","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}}],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{image}","size":300}},"annotations":{{"note":"hello"}}}}"#
    );
    let digest = sha256(note.as_bytes());
    let r = authed(
        http()
            .put(format!(
                "{}/v2/internal/refs/manifests/{digest}",
                proxy.url()
            ))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(note.clone()),
    );
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["oci-subject"],
        image.as_str(),
        "the push answers the subject it was filed under"
    );
    let list: serde_json::Value = http()
        .get(format!(
            "{}/v2/internal/refs/referrers/{image}",
            proxy.url()
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let entries = list["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["digest"], digest.as_str());
    assert_eq!(entries[0]["artifactType"], "application/vnd.example.note");
    assert_eq!(entries[0]["annotations"]["note"], "hello");
}

#[test]
fn a_pushed_manifest_over_four_mib_is_413() {
    let (_t, _reg, proxy) = setup();
    let config = sha256(b"{}");
    assert_eq!(
        authed(
            http()
                .post(format!(
                    "{}/v2/internal/big/blobs/uploads/?digest={config}",
                    proxy.url()
                ))
                .body("{}")
        )
        .status(),
        201
    );
    let padding = "x".repeat((4 << 20) + 1);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[],"annotations":{{"pad":"{padding}"}}}}"#
    );
    let r = authed(
        http()
            .put(format!("{}/v2/internal/big/manifests/v1", proxy.url()))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest),
    );
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&r.text().unwrap()), "MANIFEST_INVALID");
    assert_eq!(
        http()
            .get(format!("{}/v2/internal/big/manifests/v1", proxy.url()))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn blobs_of_local_repositories_are_deleted_unless_a_manifest_names_them() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = proxy_with(t.path(), &reg, "allow_delete = true\n", "");
    let free = image::noise("free blob", 1000);
    let d = sha256(&free);
    assert_eq!(
        authed(
            http()
                .post(format!(
                    "{}/v2/internal/del/blobs/uploads/?digest={d}",
                    proxy.url()
                ))
                .body(free)
        )
        .status(),
        201
    );
    let url = format!("{}/v2/internal/del/blobs/{d}", proxy.url());
    assert_eq!(http().get(&url).send().unwrap().status(), 200);
    assert_eq!(authed(http().delete(&url)).status(), 202);
    let r = http().get(&url).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(&r.text().unwrap()).as_str()),
        (404, "BLOB_UNKNOWN")
    );
    let r = authed(http().delete(&url));
    assert_eq!(
        (r.status().as_u16(), error_code(&r.text().unwrap()).as_str()),
        (404, "BLOB_UNKNOWN"),
        "deleted once"
    );
    // a blob a pushed manifest of the repository names stays
    let content = b"{\"named\":1}";
    let manifest = push_small_image(&proxy, "del", "v1", content);
    let named = format!("{}/v2/internal/del/blobs/{}", proxy.url(), sha256(content));
    let r = authed(http().delete(&named));
    let body = r.text().unwrap();
    assert_eq!(error_code(&body), "DENIED", "{body}");
    assert!(
        body.contains(&manifest),
        "the refusal names the manifest: {body}"
    );
    assert_eq!(http().get(&named).send().unwrap().status(), 200);
    // proxied repositories' blobs are never deleted
    let r = authed(http().delete(format!("{}/v2/up/some/repo/blobs/{d}", proxy.url())));
    assert_eq!(
        (r.status().as_u16(), error_code(&r.text().unwrap()).as_str()),
        (405, "UNSUPPORTED")
    );
}

#[test]
fn a_request_refused_before_its_body_was_read_is_answered_not_reset() {
    use std::io::{Read, Write};
    let (_t, _reg, proxy) = setup();
    let url = post_upload(&proxy, "drain");
    let path = url.trim_start_matches(&proxy.url()).to_string();
    let chunk = image::noise("a megabyte", 1 << 20);
    // 200 unauthenticated 1 MiB chunks on kept-alive connections: each gets its 401
    let mut answered = 0;
    for round in 0..20 {
        let mut s = std::net::TcpStream::connect(&proxy.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        for i in 0..10 {
            let last = i == 9;
            write!(
                s,
                "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
                chunk.len(),
                if last { "Connection: close\r\n" } else { "" }
            )
            .unwrap();
            s.write_all(&chunk).unwrap_or_else(|e| {
                panic!("round {round}, request {i}: the connection broke while sending: {e}")
            });
            let mut head = [0u8; 12];
            s.read_exact(&mut head)
                .unwrap_or_else(|e| panic!("round {round}, request {i}: no answer: {e}"));
            assert_eq!(&head, b"HTTP/1.1 401", "round {round}, request {i}");
            // read the rest of this answer (headers and the small JSON body)
            let mut rest = Vec::new();
            let mut byte = [0u8; 1];
            while !rest.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                rest.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&rest).to_ascii_lowercase();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).unwrap();
            assert_eq!(error_code(&String::from_utf8_lossy(&body)), "UNAUTHORIZED");
            answered += 1;
        }
    }
    assert_eq!(answered, 200);
    // and the retry with credentials goes through
    let r = authed(
        http()
            .patch(&url)
            .header("content-range", "0-1048575")
            .body(chunk),
    );
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-1048575");
}

#[test]
fn a_mount_without_from_starts_an_upload() {
    let (_t, _reg, proxy) = setup();
    let content = image::noise("mountable", 1000);
    let d = sha256(&content);
    assert_eq!(
        authed(
            http()
                .post(format!(
                    "{}/v2/internal/src/blobs/uploads/?digest={d}",
                    proxy.url()
                ))
                .body(content)
        )
        .status(),
        201
    );
    // no automatic cross-repository mount: without `from`, the client uploads
    let r = authed(http().post(format!(
        "{}/v2/internal/dst/blobs/uploads/?mount={d}",
        proxy.url()
    )));
    assert_eq!(r.status(), 202);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/v2/internal/dst/blobs/uploads/"));
    assert_eq!(
        http()
            .get(format!("{}/v2/internal/dst/blobs/{d}", proxy.url()))
            .send()
            .unwrap()
            .status(),
        404
    );
}
