//! Pull-through behaviour with the real clients against a real upstream registry.

mod common;

use std::time::Duration;

use common::*;

fn image(dir: &std::path::Path, seed: &str, layers: &[usize], tag: &str) -> OciImage {
    build_image(dir, &ImageSpec { seed, layers, tag })
}

/// The bytes of every blob skopeo wrote into an OCI layout.
fn pulled_blob(layout: &std::path::Path, digest: &str) -> Vec<u8> {
    std::fs::read(image::blob_path(layout, digest))
        .unwrap_or_else(|e| panic!("{digest} missing from pulled layout: {e}"))
}

#[test]
fn skopeo_pull_is_byte_identical_and_second_pull_is_served_from_cache() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(
        &t.path().join("img"),
        "skopeo",
        &[4096, 2 << 20, 100_000],
        "v1",
    );
    reg.push(&img, "demo/app:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");

    let out1 = t.path().join("pull1");
    skopeo_pull(&format!("{}/up/demo/app:v1", proxy.addr), &out1).success();
    for d in img.blobs() {
        assert_eq!(pulled_blob(&out1, &d), img.blob(&d), "blob {d} differs");
        assert!(proxy.cached(&d), "blob {d} cached");
    }
    assert_eq!(
        pulled_blob(&out1, &img.digest),
        img.manifest,
        "manifest differs"
    );
    let blob_gets = reg.count_settled("GET", "/blobs/", img.blobs().len());
    assert_eq!(
        blob_gets,
        img.blobs().len(),
        "one upstream GET per blob on the first pull"
    );

    let out2 = t.path().join("pull2");
    skopeo_pull(&format!("{}/up/demo/app:v1", proxy.addr), &out2).success();
    assert_eq!(pulled_blob(&out2, &img.layers[1]), img.blob(&img.layers[1]));
    assert_eq!(
        reg.count_settled("GET", "/blobs/", blob_gets),
        blob_gets,
        "the second pull makes no upstream blob request"
    );
    assert!(
        proxy.log().contains("cache=hit") || proxy.log().contains("cache=\"hit\""),
        "access log records hits"
    );
    // skopeo asks the proxy for atomic signatures (the proxy offers the extension); the
    // upstream does not say it offers them, so it is not asked for each image
    assert!(
        proxy
            .log()
            .contains("/extensions/v2/up/demo/app/signatures/"),
        "skopeo asked for atomic signatures"
    );
    assert!(
        !reg.log().contains("/extensions/v2/"),
        "the upstream was asked for an extension it does not offer"
    );
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
    podman(
        &root,
        &conf,
        &["pull", "-q", "registry.invalid/team/tool:v2"],
    )
    .success();
    let inspect = podman(
        &root,
        &conf,
        &[
            "image",
            "inspect",
            "--format",
            "{{.Digest}}",
            "registry.invalid/team/tool:v2",
        ],
    )
    .success();
    assert_eq!(
        inspect.stdout.trim(),
        img.digest,
        "podman stored the upstream's manifest digest"
    );
    assert!(proxy
        .log()
        .contains("/v2/registry.invalid/team/tool/manifests/v2"));
    for d in &img.layers {
        assert!(proxy.cached(d), "layer {d} cached by the proxy");
    }
    // by digest too
    let by_digest = format!("registry.invalid/team/tool@{}", img.digest);
    podman(
        &t.path().join("podman2"),
        &conf,
        &["pull", "-q", &by_digest],
    )
    .success();
}

#[test]
fn upstream_down_pulls_by_digest_and_recent_tag_still_work_also_after_restart() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "offline", &[5000, 50_000], "v1");
    reg.push(&img, "lib/off:v1");
    let mut proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        "[cache]\ntag_ttl = \"1s\"\n",
    );
    skopeo_pull(
        &format!("{}/up/lib/off:v1", proxy.addr),
        &t.path().join("p1"),
    )
    .success();

    reg.stop();
    std::thread::sleep(Duration::from_millis(1200)); // past tag_ttl: revalidation fails, stale is served
    let p2 = t.path().join("p2");
    skopeo_pull(&format!("{}/up/lib/off:v1", proxy.addr), &p2).success();
    assert_eq!(pulled_blob(&p2, &img.layers[1]), img.blob(&img.layers[1]));
    skopeo_pull(
        &format!("{}/up/lib/off@{}", proxy.addr, img.digest),
        &t.path().join("p3"),
    )
    .success();
    assert!(
        proxy.log().contains("serving stale tag"),
        "the stale answer is logged"
    );

    proxy.restart();
    skopeo_pull(
        &format!("{}/up/lib/off:v1", proxy.addr),
        &t.path().join("p4"),
    )
    .success();
    skopeo_pull(
        &format!("{}/up/lib/off@{}", proxy.addr, img.digest),
        &t.path().join("p5"),
    )
    .success();
    // something never cached is an error, not a hang
    let missing = skopeo_pull(
        &format!("{}/up/lib/off:never", proxy.addr),
        &t.path().join("p6"),
    );
    assert!(
        !missing.ok,
        "a tag never resolved cannot be served with the upstream down"
    );
    assert!(
        missing.stderr.contains("502")
            || missing.stderr.contains("unreachable")
            || missing.stderr.contains("UNAVAILABLE"),
        "{}",
        missing.stderr
    );
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
    assert_eq!(
        reg.count_settled("GET", &format!("/blobs/{layer}"), 1),
        1,
        "exactly one upstream fetch"
    );
    assert!(proxy.cached(&layer));
}

#[test]
fn tags_move_after_the_ttl_and_not_before() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let a = image(&t.path().join("a"), "first", &[1000], "v1");
    let b = image(&t.path().join("b"), "second", &[1000], "v1");
    reg.push(&a, "moving/tag:v1");
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        "[cache]\ntag_ttl = \"2s\"\n",
    );
    let url = format!("{}/v2/up/moving/tag/manifests/v1", proxy.url());
    let digest = |url: &str| {
        let r = http().get(url).send().unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let (heads0, gets0) = (
        reg.count("HEAD", "/moving/tag/manifests/v1"),
        reg.count("GET", "/moving/tag/manifests/v1"),
    );
    assert_eq!(digest(&url), a.digest);
    assert_eq!(
        reg.count_settled("GET", "/moving/tag/manifests/v1", gets0 + 1),
        gets0 + 1,
        "a new tag is fetched with one GET"
    );
    assert_eq!(
        reg.count("HEAD", "/moving/tag/manifests/v1"),
        heads0,
        "and no HEAD before it"
    );
    reg.push(&b, "moving/tag:v1");
    assert_eq!(
        digest(&url),
        a.digest,
        "within the TTL the cached resolution is served"
    );
    let heads_before = reg.count("HEAD", "/manifests/v1");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        digest(&url),
        b.digest,
        "after the TTL the new digest is served"
    );
    assert_eq!(
        reg.count_settled("HEAD", "/manifests/v1", heads_before + 1),
        heads_before + 1,
        "revalidated with one HEAD"
    );
    // unchanged tag: a HEAD, no GET
    std::thread::sleep(Duration::from_millis(2200));
    let gets = reg.count("GET", "/manifests/v1");
    assert_eq!(digest(&url), b.digest);
    assert_eq!(
        reg.count_settled("GET", "/manifests/v1", gets),
        gets,
        "an unchanged tag is revalidated without a GET"
    );
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
    let r = http()
        .get(format!("{}/v2/up/many/tags/tags/list", proxy.url()))
        .send()
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["name"], "up/many/tags");
    assert_eq!(v["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));

    let mut url = format!("{}/v2/up/many/tags/tags/list?n=2", proxy.url());
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = http().get(&url).send().unwrap();
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string());
        let v: serde_json::Value = r.json().unwrap();
        seen.extend(
            v["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string()),
        );
        match link {
            Some(l) => {
                let path = l
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string();
                assert!(l.ends_with("rel=\"next\""), "{l}");
                url = format!("{}{path}", proxy.url());
            }
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    // skopeo reads the same list
    let out = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/up/many/tags", proxy.addr),
    ])
    .success();
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
        let r = http()
            .get(format!(
                "{}/v2/library/thing/manifests/v1?ns={host}",
                proxy.url()
            ))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "ns={host}");
        assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    }
    let r = http()
        .get(format!(
            "{}/v2/library/thing/manifests/v1?ns=quay.io",
            proxy.url()
        ))
        .send()
        .unwrap();
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
    let r = http()
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{}", bytes.len()).as_str()
    );
    assert_eq!(r.bytes().unwrap().as_ref(), &bytes[10..20]);
    let r = http()
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len() - 5))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), &bytes[bytes.len() - 5..]);
    let r = http()
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(error_code(&r.text().unwrap()), "RANGE_INVALID");
    // a suffix range: the last bytes
    let r = http().get(&url).header("range", "bytes=-7").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!(
            "bytes {}-{}/{}",
            bytes.len() - 7,
            bytes.len() - 1,
            bytes.len()
        )
        .as_str()
    );
    assert_eq!(r.bytes().unwrap().as_ref(), &bytes[bytes.len() - 7..]);
    let r = http().get(&url).header("range", "bytes=-0").send().unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(&r.text().unwrap()).as_str()),
        (416, "RANGE_INVALID")
    );

    let r = http().head(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(r.headers()["docker-content-digest"], layer.as_str());

    let murl = format!("{}/v2/up/r/ange/manifests/v1", proxy.url());
    let r = http().head(&murl).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        img.manifest.len().to_string().as_str()
    );
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    let r = http()
        .get(&murl)
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a media type the client does not accept is not served"
    );
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
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        "max_size = \"2MiB\"\n",
    );
    let get = |repo: &str, d: &str| {
        let r = http()
            .get(format!("{}/v2/up/{repo}/blobs/{d}", proxy.url()))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sha256(&r.bytes().unwrap()), d);
    };
    get("ev/a", &a.layers[0]);
    assert!(proxy.cached(&a.layers[0]));
    get("ev/b", &b.layers[0]);
    wait_for(
        "eviction of the older blob",
        Duration::from_secs(10),
        || !proxy.has_blob(&a.layers[0]),
    );
    assert!(proxy.cached(&b.layers[0]), "the newer blob stays");
    get("ev/a", &a.layers[0]);
    assert_eq!(
        reg.count_settled("GET", &format!("/blobs/{}", a.layers[0]), 2),
        2,
        "an evicted blob is fetched again"
    );
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
        (
            "/v2/up/ok/../../etc/manifests/v1".into(),
            400,
            "NAME_INVALID",
        ),
        ("/v2/up/ok%2frepo/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/up/%2e%2e/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/up/ok//repo/manifests/v1".into(), 400, "NAME_INVALID"),
        (
            format!("/v2/up/{}/manifests/v1", "a".repeat(300)),
            400,
            "NAME_INVALID",
        ),
        // a reference that is no valid tag names no manifest (the conformance suite's view)
        (
            format!("/v2/up/ok/repo/manifests/{}", "t".repeat(200)),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/up/ok/repo/manifests/.INVALID".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/up/ok/repo/manifests/sha256:1234".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/up/ok/repo/blobs/sha256:XYZ".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/up/ok/repo/blobs/md5:{}", "0".repeat(32)),
            400,
            "DIGEST_INVALID",
        ),
        (
            "/v2/up/ok/repo/manifests/nope".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/up/ok/repo/manifests/{zero}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (format!("/v2/up/ok/repo/blobs/{zero}"), 404, "BLOB_UNKNOWN"),
        (
            "/v2/nowhere/ok/repo/manifests/v1".into(),
            404,
            "NAME_UNKNOWN",
        ),
        ("/v2/up/no/such/repo/tags/list".into(), 404, "NAME_UNKNOWN"),
        ("/v2/justone/manifests/v1".into(), 404, "NAME_UNKNOWN"),
    ];
    for (path, status, code) in &cases {
        let (got, headers, body) = raw_request(&proxy.addr, "GET", path);
        assert_eq!(got, *status, "{path}: {body}");
        assert!(
            headers.contains(&("content-type".into(), "application/json".into())),
            "{path}"
        );
        assert_eq!(&error_code(&body), code, "{path}");
    }
    let r = http()
        .delete(format!("{}/v2/up/ok/repo/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401, "no write path without credentials");
    assert_eq!(error_code(&r.text().unwrap()), "UNAUTHORIZED");
    let r = http()
        .patch(format!("{}/v2/up/ok/repo/blobs/{zero}", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!("{}/v2/up/ok/repo/tags/list?n=lots", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    // still serving afterwards, and nothing written outside the storage directory
    assert_eq!(
        http()
            .get(format!("{}/v2/up/ok/repo/manifests/v1", proxy.url()))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert!(!proxy.log().contains("panicked"));
    let r = http()
        .get(format!("{}/readyz", proxy.url()))
        .send()
        .unwrap();
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
        &format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            up.join("htpasswd").display()
        ),
    );
    let img = image(&t.path().join("img"), "auth", &[2000], "v1");
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--dest-creds",
        "puller:s3cret-pw",
        &format!("oci:{}:v1", img.dir.display()),
        &format!("docker://{}/locked/app:v1", reg.host()),
    ])
    .success();

    std::fs::write(t.path().join("pw"), "s3cret-pw\n").unwrap();
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let anonymous = http()
        .get(format!("{}/v2/up/locked/app/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    // the upstream refuses the proxy: not a 401 (the client's credentials would not help),
    // not a 404 (the repository may well exist), but a refusal naming the upstream
    assert_eq!(
        anonymous.status(),
        403,
        "without credentials the upstream refuses"
    );
    let body = anonymous.text().unwrap();
    assert_eq!(error_code(&body), "DENIED");
    assert!(
        body.contains("upstream up requires credentials the proxy was not given"),
        "{body}"
    );
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
    assert_eq!(
        std::fs::read(image::blob_path(&out, &img.layers[0])).unwrap(),
        img.blob(&img.layers[0])
    );
    assert!(
        !proxy.log().contains("s3cret-pw"),
        "the password is never logged"
    );
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
    for (reference, expected) in [
        ("v1".to_string(), &img.digest),
        (img2.digest.clone(), &img2.digest),
    ] {
        let url = format!("{}/v2/up/herd/m/manifests/{reference}", proxy.url());
        for got in concurrent_gets(&url, 30) {
            assert_eq!(&got, expected);
        }
        assert_eq!(
            reg.count_settled("GET", &format!("/manifests/{reference}"), 1),
            1,
            "one upstream GET for {reference}"
        );
    }
}

#[test]
fn docker_schema2_manifest_lists_fall_back_to_linux_amd64_for_clients_without_indexes() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let index = image::build_index(
        &t.path().join("idx"),
        "docker-list",
        &["linux/arm64", "linux/amd64"],
        "v1",
    );
    // converted to Docker's formats on the way up: a manifest list over schema 2 manifests
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", index.dir.display()),
        &format!("docker://{}/multi/app:v1", reg.host()),
    ])
    .success();
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let url = format!("{}/v2/up/multi/app/manifests/v1", proxy.url());
    let list = http()
        .get(&url)
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .unwrap();
    assert_eq!(list.status(), 200);
    assert_eq!(
        list.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let body: serde_json::Value = list.json().unwrap();
    let amd64 = body["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // a client that accepts schema 2 manifests only gets the linux/amd64 image
    let single = http()
        .get(&url)
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .unwrap();
    assert_eq!(single.status(), 200);
    assert_eq!(
        single.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(single.headers()["docker-content-digest"], amd64.as_str());
    let m: serde_json::Value = single.json().unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    skopeo_pull(
        &format!("{}/up/multi/app:v1", proxy.addr),
        &t.path().join("pulled"),
    )
    .success();
}

#[test]
fn an_https_upstream_is_trusted_through_its_ca_file_only() {
    let t = tempfile::tempdir().unwrap();
    let pki = tls::make_pki(&t.path().join("pki"));
    let tls_yaml = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        pki.cert.display(),
        pki.key.display()
    );
    let reg = Registry::start_tls(&t.path().join("upstream"), &tls_yaml);
    let img = image(&t.path().join("img"), "tls-upstream", &[2000], "v1");
    skopeo(&[
        "copy",
        "-q",
        "--dest-cert-dir",
        &pki.cert_dir.display().to_string(),
        &format!("oci:{}:v1", img.dir.display()),
        &format!("docker://{}/secure/app:v1", reg.host()),
    ])
    .success();
    let url = format!("https://{}", reg.host());
    let trusting = Proxy::start(&t.path().join("trusting"), &format!("[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{url}\"\nca_file = \"{}\"\n", pki.ca.display()));
    skopeo_pull(
        &format!("{}/up/secure/app:v1", trusting.addr),
        &t.path().join("pulled"),
    )
    .success();
    let doubting = Proxy::for_upstream(&t.path().join("doubting"), "up", &url, "");
    let r = http()
        .get(format!("{}/v2/up/secure/app/manifests/v1", doubting.url()))
        .send()
        .unwrap();
    let (status, body) = (r.status().as_u16(), r.text().unwrap());
    assert_eq!(
        (status, error_code(&body).as_str()),
        (502, "UNAVAILABLE"),
        "an unknown CA is refused: {body}"
    );
    assert!(body.contains("unreachable"), "{body}");
}

#[test]
fn an_upstream_that_does_not_start_answering_in_time_is_a_504() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "slow", &[100], "v1");
    reg.push(&img, "slow/app:v1");
    let front = common::front::Front::start(&reg.url());
    front.fault(
        "GET",
        "/manifests/",
        common::front::Fault::Delay(Duration::from_secs(5)),
    );
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &front.url(), "");
    let r = http()
        .get(format!("{}/v2/up/slow/app/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(
        (status, error_code(&r.text().unwrap()).as_str()),
        (504, "UNAVAILABLE")
    );
}

#[test]
fn readiness_fails_while_the_store_cannot_be_written() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let ready = || {
        http()
            .get(format!("{}/readyz", proxy.url()))
            .send()
            .unwrap()
    };
    assert_eq!(ready().status(), 200);
    // the spool directory replaced by a file: nothing can be written
    let spool = proxy.data().join("tmp");
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();
    let r = ready();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().unwrap(), r#"{"ready":false}"#);
    assert_eq!(
        http()
            .get(format!("{}/healthz", proxy.url()))
            .send()
            .unwrap()
            .status(),
        200,
        "alive all the same"
    );
    std::fs::remove_file(&spool).unwrap();
    std::fs::create_dir(&spool).unwrap();
    assert_eq!(ready().status(), 200);
}

#[test]
fn closed_reads_need_a_user_end_to_end() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "closed", &[1000], "v1");
    reg.push(&img, "team/app:v1");
    let dir = t.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(&dir.join("users.htpasswd"), &[("puller", "pull-pass")]);
    let proxy = Proxy::start(&dir, &format!("[storage]\npath = \"data\"\n[auth]\nhtpasswd = \"users.htpasswd\"\nanonymous_read = false\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n", reg.url()));
    let anonymous = skopeo_pull(
        &format!("{}/up/team/app:v1", proxy.addr),
        &t.path().join("a"),
    );
    assert!(
        !anonymous.ok && anonymous.stderr.contains("unauthorized"),
        "{}",
        anonymous.stderr
    );
    let r = http()
        .get(format!(
            "{}/v2/up/team/app/blobs/{}",
            proxy.url(),
            img.layers[0]
        ))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(&r.text().unwrap()).as_str()),
        (401, "UNAUTHORIZED")
    );
    let out = t.path().join("b");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "puller:pull-pass",
        &format!("docker://{}/up/team/app:v1", proxy.addr),
        &format!("oci:{}:p", out.display()),
    ])
    .success();
    assert_eq!(pulled_blob(&out, &img.layers[0]), img.blob(&img.layers[0]));
}

#[test]
fn manifests_are_kept_in_memory_up_to_the_configured_size() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "memory", &[100], "v1");
    reg.push(&img, "team/app:v1");
    let roomy = Proxy::for_upstream(
        &t.path().join("roomy"),
        "up",
        &reg.url(),
        "[cache]\nmemory = \"1MiB\"\n",
    );
    let tight = Proxy::for_upstream(
        &t.path().join("tight"),
        "up",
        &reg.url(),
        "[cache]\nmemory = \"1\"\n",
    );
    let by_digest = |p: &Proxy| {
        http()
            .get(format!(
                "{}/v2/up/team/app/manifests/{}",
                p.url(),
                img.digest
            ))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for p in [&roomy, &tight] {
        assert_eq!(by_digest(p), 200);
        assert!(p.cached(&img.digest));
    }
    // the manifest's file removed and the upstream gone: only memory can answer
    reg.stop();
    for p in [&roomy, &tight] {
        let (alg, hex) = img.digest.split_once(':').unwrap();
        std::fs::remove_file(p.data().join("blobs").join(alg).join(hex)).unwrap();
    }
    assert_eq!(
        by_digest(&roomy),
        200,
        "within [cache] memory: served from memory"
    );
    assert_eq!(
        by_digest(&tight),
        502,
        "a 1-byte memory keeps nothing: the upstream, down, would be asked"
    );
}

#[test]
fn access_times_kept_on_disk_order_evictions_after_a_restart() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let blobs: Vec<String> = (0..3)
        .map(|i| push_blob(&reg, "lru/app", &image::noise(&format!("lru-{i}"), 400_000)))
        .collect();
    let mut proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        "max_size = \"1MiB\"\n",
    );
    let get = |p: &Proxy, d: &str| {
        assert_eq!(
            http()
                .get(format!("{}/v2/up/lru/app/blobs/{d}", p.url()))
                .send()
                .unwrap()
                .status(),
            200
        )
    };
    get(&proxy, &blobs[0]);
    get(&proxy, &blobs[1]);
    assert!(proxy.cached(&blobs[0]) && proxy.cached(&blobs[1]));
    // as if blob 0 was last read an hour ago and blob 1 two hours ago
    let data = proxy.data();
    let path = |d: &str| data.join("blobs/sha256").join(&d["sha256:".len()..]);
    let ago = |secs: u64| {
        filetime::FileTime::from_system_time(
            std::time::SystemTime::now() - Duration::from_secs(secs),
        )
    };
    filetime::set_file_mtime(path(&blobs[0]), ago(3600)).unwrap();
    filetime::set_file_mtime(path(&blobs[1]), ago(7200)).unwrap();
    proxy.restart();
    // reading blob 1 after the restart refreshes its time on disk (it was last touched long ago)
    get(&proxy, &blobs[1]);
    wait_for("the access time written", Duration::from_secs(10), || {
        std::fs::metadata(path(&blobs[1]))
            .unwrap()
            .modified()
            .unwrap()
            > std::time::SystemTime::now() - Duration::from_secs(60)
    });
    proxy.restart();
    get(&proxy, &blobs[2]);
    wait_for("an eviction", Duration::from_secs(10), || {
        !proxy.has_blob(&blobs[0])
    });
    assert!(
        proxy.has_blob(&blobs[1]),
        "the blob read after the first restart is kept: its access time survived the second"
    );
}

#[test]
fn docker_mirror_paths_without_a_namespace_go_to_the_default_upstream() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "mirror", &[5000, 70_000], "v1");
    reg.push(&img, "library/demo:v1");
    let proxy = Proxy::start_with_server(
        &t.path().join("proxy"),
        "default_upstream = \"docker.io\"\n",
        &format!(
            "[storage]\npath = \"data\"\n[[local]]\nname = \"internal\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n",
            reg.url()
        ),
    );
    // as Docker's registry-mirrors ask: /v2/library/demo/..., no namespace segment
    let out = t.path().join("pulled");
    skopeo_pull(&format!("{}/library/demo:v1", proxy.addr), &out).success();
    for d in img.blobs() {
        assert_eq!(pulled_blob(&out, &d), img.blob(&d), "blob {d} differs");
    }
    assert!(
        proxy.log().contains("path=/v2/library/demo/manifests/v1"),
        "asked at the root"
    );
    // the namespaced form still works, and a known namespace stays itself
    let named = t.path().join("named");
    skopeo_pull(&format!("{}/docker.io/library/demo:v1", proxy.addr), &named).success();
    let r = http()
        .get(format!(
            "{}/v2/internal/library/demo/manifests/v1",
            proxy.url()
        ))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(&r.text().unwrap()).as_str()),
        (404, "MANIFEST_UNKNOWN"),
        "internal/... is the local namespace, not the default upstream's"
    );
}

#[test]
fn containerd_prefixed_paths_may_write_the_namespace_under_an_alias() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = image(&t.path().join("img"), "alias", &[3000], "v1");
    reg.push(&img, "library/demo:v1");
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\naliases = [\"index.docker.io\"]\n",
            reg.url()
        ),
    );
    for path in [
        "/v2/docker.io/library/demo/manifests/v1?ns=docker.io",
        "/v2/index.docker.io/library/demo/manifests/v1?ns=docker.io",
        "/v2/docker.io/library/demo/manifests/v1?ns=index.docker.io",
        "/v2/library/demo/manifests/v1?ns=index.docker.io",
    ] {
        let r = http()
            .get(format!("{}{path}", proxy.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["docker-content-digest"],
            img.digest.as_str(),
            "{path}"
        );
    }
}
