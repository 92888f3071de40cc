//! Pushing through the proxy: skopeo into a local namespace, cosign signatures on proxied
//! images merged with the upstream's, and the upload protocol's error cases.

mod common;

use common::*;

fn setup() -> (tempfile::TempDir, Registry, Proxy) {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!("[storage]\npath = \"data\"\n[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n", reg.url()),
    );
    (t, reg, proxy)
}

#[test]
fn skopeo_copies_into_a_local_namespace_and_podman_pulls_it_back_after_a_restart() {
    let (t, _reg, mut proxy) = setup();
    let img = build_image(&t.path().join("img"), &ImageSpec { seed: "local", layers: &[5000, 400_000], tag: "v1" });
    skopeo(&[
        "copy", "-q", "--dest-tls-verify=false",
        &format!("oci:{}:v1", img.dir.display()), &format!("docker://{}/internal/team/app:v1", proxy.addr),
    ])
    .success();
    proxy.restart();
    let conf = t.path().join("registries.conf");
    std::fs::write(&conf, format!("[[registry]]\nlocation = \"{}\"\ninsecure = true\n", proxy.addr)).unwrap();
    let root = t.path().join("podman");
    let name = format!("{}/internal/team/app:v1", proxy.addr);
    podman(&root, &conf, &["pull", "-q", &name]).success();
    let digest = podman(&root, &conf, &["image", "inspect", "--format", "{{.Digest}}", &name]).success();
    assert_eq!(digest.stdout.trim(), img.digest);
    let out = t.path().join("back");
    skopeo_pull(&name, &out).success();
    for d in img.blobs() {
        assert_eq!(std::fs::read(image::blob_path(&out, &d)).unwrap(), img.blob(&d), "{d} byte-identical");
    }
    let tags = http().get(format!("{}/v2/internal/team/app/tags/list", proxy.url())).send().unwrap().text().unwrap();
    assert!(tags.contains("\"v1\""), "{tags}");
}

#[test]
fn cosign_signs_a_proxied_image_through_the_proxy_keeping_the_upstream_signature() {
    let (t, reg, proxy) = setup();
    let img = build_image(&t.path().join("img"), &ImageSpec { seed: "sign", layers: &[3000], tag: "v1" });
    reg.push(&img, "demo/app:v1");
    let upstream_keys = t.path().join("upstream-keys");
    let our_keys = t.path().join("our-keys");
    cosign_keys(&upstream_keys);
    cosign_keys(&our_keys);
    cosign_sign(&upstream_keys, &format!("{}/demo/app@{}", reg.host(), img.digest));
    let through = format!("{}/up/demo/app@{}", proxy.addr, img.digest);
    cosign_sign(&our_keys, &through);

    let ours = cosign_verify(&our_keys, "cosign.pub", &through);
    assert!(ours.ok, "the signature pushed through the proxy verifies: {}", ours.stderr);
    let theirs = cosign_verify(&upstream_keys, "cosign.pub", &through);
    assert!(theirs.ok, "the upstream's signature is still there: {}", theirs.stderr);
    // the upstream was not written to
    assert!(!cosign_verify(&our_keys, "cosign.pub", &format!("{}/demo/app@{}", reg.host(), img.digest)).ok);

    // attestations and SBOMs pushed through the proxy read back
    std::fs::write(our_keys.join("predicate.json"), r#"{"builder":{"id":"https://ci.example/b"},"buildType":"t"}"#).unwrap();
    let mut attest = vec!["attest", "--key", "cosign.key", "--tlog-upload=false", "--type", "slsaprovenance", "--predicate", "predicate.json"];
    attest.extend(COSIGN_LOCAL);
    attest.push(&through);
    cosign(&our_keys, &attest).success();
    let mut va = vec!["verify-attestation", "--key", "cosign.pub", "--insecure-ignore-tlog", "--type", "slsaprovenance"];
    va.extend(COSIGN_LOCAL);
    va.push(&through);
    let out = cosign(&our_keys, &va);
    assert!(out.ok, "{}", out.stderr);
    std::fs::write(our_keys.join("sbom.json"), r#"{"spdxVersion":"SPDX-2.3","name":"x"}"#).unwrap();
    let mut sbom = vec!["attach", "sbom", "--sbom", "sbom.json", "--type", "spdx"];
    sbom.extend(COSIGN_LOCAL);
    sbom.push(&through);
    cosign(&our_keys, &sbom).success();
    let mut dl = vec!["download", "sbom"];
    dl.extend(COSIGN_LOCAL);
    dl.push(&through);
    let out = cosign(&our_keys, &dl).success();
    assert!(out.stdout.contains("SPDX-2.3"), "{}", out.stdout);
}

fn post_upload(proxy: &Proxy, repo: &str) -> String {
    let r = http().post(format!("{}/v2/internal/{repo}/blobs/uploads/", proxy.url())).send().unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    format!("{}{loc}", proxy.url())
}

#[test]
fn upload_protocol_errors() {
    let (_t, _reg, proxy) = setup();
    // chunked upload, chunk out of order -> 416
    let url = post_upload(&proxy, "chunks");
    let r = http().patch(&url).header("content-range", "0-3").body("abcd").send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-3");
    let r = http().patch(&url).header("content-range", "10-13").body("wxyz").send().unwrap();
    assert_eq!(r.status(), 416);
    let r = http().get(&url).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-3");
    let r = http().patch(&url).header("content-range", "4-7").body("efgh").send().unwrap();
    assert_eq!(r.status(), 202);
    // wrong digest -> DIGEST_INVALID, nothing stored
    let wrong = sha256(b"something else");
    let r = http().put(format!("{url}?digest={wrong}")).send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().unwrap()), "DIGEST_INVALID");
    assert!(!proxy.has_blob(&wrong));
    assert!(!proxy.has_blob(&sha256(b"abcdefgh")));

    // a good chunked upload
    let url = post_upload(&proxy, "chunks");
    http().patch(&url).header("content-range", "0-3").body("abcd").send().unwrap();
    let good = sha256(b"abcdefgh");
    let r = http().put(format!("{url}?digest={good}")).body("efgh").send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], good.as_str());
    assert!(proxy.has_blob(&good));
    let r = http().get(format!("{}/v2/internal/chunks/blobs/{good}", proxy.url())).send().unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), b"abcdefgh");

    // manifest naming a missing blob -> MANIFEST_BLOB_UNKNOWN
    let missing = sha256(b"never uploaded");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{good}","size":8}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{missing}","size":14}}]}}"#
    );
    let r = http()
        .put(format!("{}/v2/internal/chunks/manifests/v1", proxy.url()))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().unwrap()), "MANIFEST_BLOB_UNKNOWN");
    let r = http().get(format!("{}/v2/internal/chunks/manifests/v1", proxy.url())).send().unwrap();
    assert_eq!(r.status(), 404);

    // unknown session, cancelled session
    let url = post_upload(&proxy, "chunks");
    assert_eq!(http().delete(&url).send().unwrap().status(), 204);
    let r = http().get(&url).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().unwrap()), "BLOB_UPLOAD_UNKNOWN");
}
