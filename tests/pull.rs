//! Pull-through behaviour with the real clients against a real upstream registry.

mod common;

use std::time::Duration;

use common::*;

fn image(dir: &std::path::Path, seed: &str, layers: &[usize], tag: &str) -> OciImage {
    build_image(dir, &ImageSpec { seed, layers, tag })
}

/// The bytes of every blob skopeo wrote into an OCI layout.
fn pulled_blob(layout: &std::path::Path, digest: &str) -> Vec<u8> {
    std::fs::read(image::blob_path(layout, digest)).unwrap_or_else(|e| panic!("{digest} missing from pulled layout: {e}"))
}

#[test]
fn skopeo_pull_is_byte_identical_and_second_pull_is_served_from_cache() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "skopeo", &[4096, 2 << 20, 100_000], "v1");
    reg.push(&img, "demo/app:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");

    let out1 = t.path().join("pull1");
    skopeo_pull(&format!("{}/up/demo/app:v1", proxy.addr), &out1).success();
    for d in img.blobs() {
        assert_eq!(pulled_blob(&out1, &d), img.blob(&d), "blob {d} differs");
        assert!(proxy.cached(&d), "blob {d} cached");
    }
    assert_eq!(pulled_blob(&out1, &img.digest), img.manifest, "manifest differs");
    let blob_gets = reg.count_settled("GET", "/blobs/", img.blobs().len());
    assert_eq!(blob_gets, img.blobs().len(), "one upstream GET per blob on the first pull");

    let out2 = t.path().join("pull2");
    skopeo_pull(&format!("{}/up/demo/app:v1", proxy.addr), &out2).success();
    assert_eq!(pulled_blob(&out2, &img.layers[1]), img.blob(&img.layers[1]));
    assert_eq!(reg.count_settled("GET", "/blobs/", blob_gets), blob_gets, "the second pull makes no upstream blob request");
    assert!(proxy.log().contains("cache=hit") || proxy.log().contains("cache=\"hit\""), "access log records hits");
    // skopeo asks the proxy for atomic signatures (the proxy offers the extension); the
    // upstream does not say it offers them, so it is not asked for each image
    assert!(proxy.log().contains("/extensions/v2/up/demo/app/signatures/"), "skopeo asked for atomic signatures");
    assert!(!reg.log().contains("/extensions/v2/"), "the upstream was asked for an extension it does not offer");
}

#[test]
fn podman_pulls_through_a_registries_conf_mirror() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "podman", &[8192, 300_000], "v2");
    reg.push(&img, "team/tool:v2");
    // The mirror stands in for a registry name that does not resolve: if podman fell back to
    // it, the pull would fail, so success proves the proxy served it.
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "registry.invalid", &reg.url(), "");
    let conf = t.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = []\n[[registry]]\nprefix = \"registry.invalid\"\nlocation = \"registry.invalid\"\n[[registry.mirror]]\nlocation = \"{}/registry.invalid\"\ninsecure = true\n",
            proxy.addr
        ),
    )
    .unwrap();
    let root = t.path().join("podman");
    podman(&root, &conf, &["pull", "-q", "registry.invalid/team/tool:v2"]).success();
    let inspect = podman(&root, &conf, &["image", "inspect", "--format", "{{.Digest}}", "registry.invalid/team/tool:v2"]).success();
    assert_eq!(inspect.stdout.trim(), img.digest, "podman stored the upstream's manifest digest");
    assert!(proxy.log().contains("/v2/registry.invalid/team/tool/manifests/v2"));
    for d in &img.layers {
        assert!(proxy.cached(d), "layer {d} cached by the proxy");
    }
    // by digest too
    let by_digest = format!("registry.invalid/team/tool@{}", img.digest);
    podman(&t.path().join("podman2"), &conf, &["pull", "-q", &by_digest]).success();
}

#[test]
fn upstream_down_pulls_by_digest_and_recent_tag_still_work_also_after_restart() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "offline", &[5000, 50_000], "v1");
    reg.push(&img, "lib/off:v1");
    let mut proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "[cache]\ntag_ttl = \"1s\"\n");
    skopeo_pull(&format!("{}/up/lib/off:v1", proxy.addr), &t.path().join("p1")).success();

    reg.stop();
    std::thread::sleep(Duration::from_millis(1200)); // past tag_ttl: revalidation fails, stale is served
    let p2 = t.path().join("p2");
    skopeo_pull(&format!("{}/up/lib/off:v1", proxy.addr), &p2).success();
    assert_eq!(pulled_blob(&p2, &img.layers[1]), img.blob(&img.layers[1]));
    skopeo_pull(&format!("{}/up/lib/off@{}", proxy.addr, img.digest), &t.path().join("p3")).success();
    assert!(proxy.log().contains("serving stale tag"), "the stale answer is logged");

    proxy.restart();
    skopeo_pull(&format!("{}/up/lib/off:v1", proxy.addr), &t.path().join("p4")).success();
    skopeo_pull(&format!("{}/up/lib/off@{}", proxy.addr, img.digest), &t.path().join("p5")).success();
    // something never cached is an error, not a hang
    let missing = skopeo_pull(&format!("{}/up/lib/off:never", proxy.addr), &t.path().join("p6"));
    assert!(!missing.ok);
}

/// GETs `url` from `n` threads released at once; the digests of the bodies.
fn concurrent_gets(url: &str, n: usize) -> Vec<String> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (url, barrier) = (url.to_string(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let r = http().get(&url).send().unwrap();
                assert_eq!(r.status(), 200);
                sha256(&r.bytes().unwrap())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn fifty_concurrent_gets_of_a_missing_blob_make_one_upstream_fetch() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "herd", &[8 << 20], "v1");
    reg.push(&img, "herd/app:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let layer = img.layers[0].clone();
    let url = format!("{}/v2/up/herd/app/blobs/{layer}", proxy.url());
    for got in concurrent_gets(&url, 50) {
        assert_eq!(got, layer, "every client got the right bytes");
    }
    assert_eq!(reg.count_settled("GET", &format!("/blobs/{layer}"), 1), 1, "exactly one upstream fetch");
    assert!(proxy.cached(&layer));
}

#[test]
fn tags_move_after_the_ttl_and_not_before() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let a = image(&t.path().join("a"), "first", &[1000], "v1");
    let b = image(&t.path().join("b"), "second", &[1000], "v1");
    reg.push(&a, "moving/tag:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "[cache]\ntag_ttl = \"2s\"\n");
    let url = format!("{}/v2/up/moving/tag/manifests/v1", proxy.url());
    let digest = |url: &str| {
        let r = http().get(url).send().unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["docker-content-digest"].to_str().unwrap().to_string()
    };
    let (heads0, gets0) = (reg.count("HEAD", "/moving/tag/manifests/v1"), reg.count("GET", "/moving/tag/manifests/v1"));
    assert_eq!(digest(&url), a.digest);
    assert_eq!(reg.count_settled("GET", "/moving/tag/manifests/v1", gets0 + 1), gets0 + 1, "a new tag is fetched with one GET");
    assert_eq!(reg.count("HEAD", "/moving/tag/manifests/v1"), heads0, "and no HEAD before it");
    reg.push(&b, "moving/tag:v1");
    assert_eq!(digest(&url), a.digest, "within the TTL the cached resolution is served");
    let heads_before = reg.count("HEAD", "/manifests/v1");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(digest(&url), b.digest, "after the TTL the new digest is served");
    assert_eq!(reg.count_settled("HEAD", "/manifests/v1", heads_before + 1), heads_before + 1, "revalidated with one HEAD");
    // unchanged tag: a HEAD, no GET
    std::thread::sleep(Duration::from_millis(2200));
    let gets = reg.count("GET", "/manifests/v1");
    assert_eq!(digest(&url), b.digest);
    assert_eq!(reg.count_settled("GET", "/manifests/v1", gets), gets, "an unchanged tag is revalidated without a GET");
}

#[test]
fn tags_list_paginates_with_link_headers() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "tags", &[100], "v1");
    for tag in ["a", "b", "c", "d", "e"] {
        reg.push(&img, &format!("many/tags:{tag}"));
    }
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let r = http().get(format!("{}/v2/up/many/tags/tags/list", proxy.url())).send().unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["name"], "up/many/tags");
    assert_eq!(v["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));

    let mut url = format!("{}/v2/up/many/tags/tags/list?n=2", proxy.url());
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = http().get(&url).send().unwrap();
        let link = r.headers().get("link").map(|l| l.to_str().unwrap().to_string());
        let v: serde_json::Value = r.json().unwrap();
        seen.extend(v["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()));
        match link {
            Some(l) => {
                let path = l.trim_start_matches('<').split('>').next().unwrap().to_string();
                assert!(l.ends_with("rel=\"next\""), "{l}");
                url = format!("{}{path}", proxy.url());
            }
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    // skopeo reads the same list
    let out = skopeo(&["list-tags", "--tls-verify=false", &format!("docker://{}/up/many/tags", proxy.addr)]).success();
    assert!(out.stdout.contains("\"e\""), "{}", out.stdout);
}

#[test]
fn containerd_ns_parameter_maps_hosts_and_aliases_to_upstreams() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "ns", &[100], "v1");
    reg.push(&img, "library/thing:v1");
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!("[storage]\npath = \"data\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\naliases = [\"registry-1.docker.io\"]\n", reg.url()),
    );
    for host in ["docker.io", "registry-1.docker.io"] {
        let r = http().get(format!("{}/v2/library/thing/manifests/v1?ns={host}", proxy.url())).send().unwrap();
        assert_eq!(r.status(), 200, "ns={host}");
        assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    }
    let r = http().get(format!("{}/v2/library/thing/manifests/v1?ns=quay.io", proxy.url())).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().unwrap()), "NAME_UNKNOWN");
}

#[test]
fn range_requests_and_head_answer_exact_bytes_and_headers() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "range", &[200_000], "v1");
    reg.push(&img, "r/ange:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let layer = &img.layers[0];
    let bytes = img.blob(layer);
    let url = format!("{}/v2/up/r/ange/blobs/{layer}", proxy.url());

    // a range on a missing blob fills the cache and answers the range
    let r = http().get(&url).header("range", "bytes=10-19").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 10-19/{}", bytes.len()).as_str());
    assert_eq!(r.bytes().unwrap().as_ref(), &bytes[10..20]);
    let r = http().get(&url).header("range", format!("bytes={}-", bytes.len() - 5)).send().unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), &bytes[bytes.len() - 5..]);
    let r = http().get(&url).header("range", format!("bytes={}-", bytes.len())).send().unwrap();
    assert_eq!(r.status(), 416);

    let r = http().head(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], bytes.len().to_string().as_str());
    assert_eq!(r.headers()["docker-content-digest"], layer.as_str());

    let murl = format!("{}/v2/up/r/ange/manifests/v1", proxy.url());
    let r = http().head(&murl).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], img.manifest.len().to_string().as_str());
    assert_eq!(r.headers()["content-type"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    let r = http().get(&murl).header("accept", "application/vnd.docker.distribution.manifest.v2+json").send().unwrap();
    assert_eq!(r.status(), 404, "a media type the client does not accept is not served");
    assert_eq!(error_code(&r.text().unwrap()), "MANIFEST_UNKNOWN");
}

#[test]
fn cache_beyond_max_size_evicts_least_recently_used() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let a = image(&t.path().join("a"), "evict-a", &[1_500_000], "v1");
    let b = image(&t.path().join("b"), "evict-b", &[1_500_000], "v1");
    reg.push(&a, "ev/a:v1");
    reg.push(&b, "ev/b:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "max_size = \"2MiB\"\n");
    let get = |repo: &str, d: &str| {
        let r = http().get(format!("{}/v2/up/{repo}/blobs/{d}", proxy.url())).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&r.bytes().unwrap()), d);
    };
    get("ev/a", &a.layers[0]);
    assert!(proxy.cached(&a.layers[0]));
    get("ev/b", &b.layers[0]);
    wait_for("eviction of the older blob", Duration::from_secs(10), || !proxy.has_blob(&a.layers[0]));
    assert!(proxy.cached(&b.layers[0]), "the newer blob stays");
    get("ev/a", &a.layers[0]);
    assert_eq!(reg.count_settled("GET", &format!("/blobs/{}", a.layers[0]), 2), 2, "an evicted blob is fetched again");
}

#[test]
fn bad_input_gets_oci_errors_and_never_a_server_error() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "bad", &[100], "v1");
    reg.push(&img, "ok/repo:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let zero = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(String, u16, &str)> = vec![
        ("/v2/up/Bad/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/up/ok/../../etc/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/up/ok%2frepo/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/up/%2e%2e/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/up/ok//repo/manifests/v1".into(), 400, "NAME_INVALID"),
        (format!("/v2/up/{}/manifests/v1", "a".repeat(300)), 400, "NAME_INVALID"),
        (format!("/v2/up/ok/repo/manifests/{}", "t".repeat(200)), 400, "MANIFEST_INVALID"),
        ("/v2/up/ok/repo/manifests/sha256:1234".into(), 400, "DIGEST_INVALID"),
        ("/v2/up/ok/repo/blobs/sha256:XYZ".into(), 400, "DIGEST_INVALID"),
        (format!("/v2/up/ok/repo/blobs/md5:{}", "0".repeat(32)), 400, "DIGEST_INVALID"),
        ("/v2/up/ok/repo/manifests/nope".into(), 404, "MANIFEST_UNKNOWN"),
        (format!("/v2/up/ok/repo/manifests/{zero}"), 404, "MANIFEST_UNKNOWN"),
        (format!("/v2/up/ok/repo/blobs/{zero}"), 404, "BLOB_UNKNOWN"),
        ("/v2/nowhere/ok/repo/manifests/v1".into(), 404, "NAME_UNKNOWN"),
        ("/v2/up/no/such/repo/tags/list".into(), 404, "NAME_UNKNOWN"),
        ("/v2/justone/manifests/v1".into(), 404, "NAME_UNKNOWN"),
    ];
    for (path, status, code) in &cases {
        let (got, headers, body) = raw_request(&proxy.addr, "GET", path);
        assert_eq!(got, *status, "{path}: {body}");
        assert!(headers.contains(&("content-type".into(), "application/json".into())), "{path}");
        assert_eq!(&error_code(&body), code, "{path}");
    }
    let r = http().delete(format!("{}/v2/up/ok/repo/manifests/v1", proxy.url())).send().unwrap();
    assert_eq!(r.status(), 401, "no write path without credentials");
    assert_eq!(error_code(&r.text().unwrap()), "UNAUTHORIZED");
    let r = http().patch(format!("{}/v2/up/ok/repo/blobs/{zero}", proxy.url())).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = http().get(format!("{}/v2/up/ok/repo/tags/list?n=lots", proxy.url())).send().unwrap();
    assert_eq!(r.status(), 400);
    // still serving afterwards, and nothing written outside the storage directory
    assert_eq!(http().get(format!("{}/v2/up/ok/repo/manifests/v1", proxy.url())).send().unwrap().status(), 200);
    assert!(!proxy.log().contains("panicked"));
    let r = http().get(format!("{}/readyz", proxy.url())).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn upstream_basic_auth_uses_the_configured_credentials() {
    let t = tempfile::tempdir().unwrap();
    let up = t.path().join("upstream");
    std::fs::create_dir_all(&up).unwrap();
    let hash = bcrypt::hash("s3cret-pw", 5).unwrap();
    std::fs::write(up.join("htpasswd"), format!("puller:{hash}\n")).unwrap();
    let reg = Registry::start_with(
        &up,
        &format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", up.join("htpasswd").display()),
    );
    let img = image(&t.path().join("img"), "auth", &[2000], "v1");
    skopeo(&[
        "copy", "-q", "--dest-tls-verify=false", "--dest-creds", "puller:s3cret-pw",
        &format!("oci:{}:v1", img.dir.display()), &format!("docker://{}/locked/app:v1", reg.host()),
    ])
    .success();

    std::fs::write(t.path().join("pw"), "s3cret-pw\n").unwrap();
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"), "up", &reg.url(), "",
    );
    let anonymous = http().get(format!("{}/v2/up/locked/app/manifests/v1", proxy.url())).send().unwrap();
    assert_eq!(anonymous.status(), 404, "without credentials the upstream refuses");
    assert_eq!(error_code(&anonymous.text().unwrap()), "NAME_UNKNOWN");
    drop(proxy);

    let proxy = Proxy::start(
        &t.path().join("proxy2"),
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\nusername = \"puller\"\npassword_file = \"{}\"\n",
            reg.url(),
            t.path().join("pw").display()
        ),
    );
    let out = t.path().join("pulled");
    skopeo_pull(&format!("{}/up/locked/app:v1", proxy.addr), &out).success();
    assert_eq!(std::fs::read(image::blob_path(&out, &img.layers[0])).unwrap(), img.blob(&img.layers[0]));
    assert!(!proxy.log().contains("s3cret-pw"), "the password is never logged");
}

#[test]
fn concurrent_gets_of_a_missing_manifest_and_tag_make_one_upstream_fetch() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "herd-m", &[100], "v1");
    let img2 = image(&t.path().join("img2"), "herd-m2", &[100], "v2");
    reg.push(&img, "herd/m:v1");
    reg.push(&img2, "herd/m:v2");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    for (reference, expected) in [("v1".to_string(), &img.digest), (img2.digest.clone(), &img2.digest)] {
        let url = format!("{}/v2/up/herd/m/manifests/{reference}", proxy.url());
        for got in concurrent_gets(&url, 30) {
            assert_eq!(&got, expected);
        }
        assert_eq!(reg.count_settled("GET", &format!("/manifests/{reference}"), 1), 1, "one upstream GET for {reference}");
    }
}
