//! Upstream faults injected by a front between the proxy and a real docker-registry: resets,
//! cut and stalled bodies, corrupt bytes, 5xx, 429 with Retry-After, a lying
//! Docker-Content-Digest. The client gets a clear error or the cached copy, nothing wrong is
//! cached, and the proxy recovers as soon as the upstream does.

mod common;

use std::time::Duration;

use common::front::{Fault, Front};
use common::*;

struct Setup {
    t: tempfile::TempDir,
    reg: Registry,
    front: Front,
    proxy: Proxy,
}

fn setup(extra: &str) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let front = Front::start(&reg.url());
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &front.url(), extra);
    Setup {
        t,
        reg,
        front,
        proxy,
    }
}

impl Setup {
    fn image(&self, repo: &str, seed: &str, layer: usize) -> OciImage {
        let img = build_image(
            &self.t.path().join(seed),
            &ImageSpec {
                seed,
                layers: &[layer],
                tag: "v1",
            },
        );
        self.reg.push(&img, &format!("{repo}:v1"));
        img
    }

    fn pull(&self, reference: &str, dest: &str) -> Outcome {
        skopeo_pull(
            &format!("{}/up/{reference}", self.proxy.addr),
            &self.t.path().join(dest),
        )
    }

    fn get(&self, path: &str) -> (u16, Vec<(String, String)>, String) {
        raw_request(&self.proxy.addr, "GET", path)
    }
}

/// A GET read to its end: (status, whether the body ended cleanly, bytes received).
fn read_whole(url: &str) -> (u16, bool, usize) {
    use std::io::Read;
    let Ok(mut r) = http().get(url).send() else {
        return (0, false, 0);
    };
    let mut body = Vec::new();
    let clean = r.read_to_end(&mut body).is_ok();
    (r.status().as_u16(), clean, body.len())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn blob_faults_fail_cleanly_cache_nothing_and_recover() {
    let s = setup("");
    let faults = [
        Fault::Reset,
        Fault::CutBody,
        Fault::Stall,
        Fault::CorruptBody,
        Fault::Status(500, None),
        Fault::Status(429, Some(7)),
    ];
    for (i, fault) in faults.iter().enumerate() {
        let repo = format!("faults/blob{i}");
        let img = s.image(&repo, &format!("blob{i}"), 2 << 20);
        let layer = img.layers[0].clone();
        let size = img.blob(&layer).len();
        s.front.fault("GET", &layer, fault.clone());
        // four raw clients joined to one bad download read their bodies: none gets a clean,
        // complete response (the client's own digest check is not what protects it)
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let url = format!("{}/v2/up/{repo}/blobs/{layer}", s.proxy.url());
                std::thread::spawn(move || read_whole(&url))
            })
            .collect();
        for c in clients {
            let (status, clean, got) = c.join().unwrap();
            assert!(
                status != 200 || !clean || got < size,
                "{fault:?}: a client got a clean {status} with {got} of {size} bytes"
            );
            if status == 200 && !clean {
                assert!(
                    got < size,
                    "{fault:?}: an aborted response still held every byte"
                );
            }
        }
        wait_for("fills to settle", Duration::from_secs(10), || {
            s.proxy.spool_files() == 0
        });
        let out = s.pull(&format!("{repo}:v1"), &format!("pull{i}a"));
        assert!(!out.ok, "{fault:?}: the pull must fail");
        if let Fault::Status(code, _) = fault {
            let (status, headers, body) = s.get(&format!("/v2/up/{repo}/blobs/{layer}"));
            if *code == 429 {
                assert_eq!(
                    (status, error_code(&body).as_str()),
                    (429, "TOOMANYREQUESTS"),
                    "{body}"
                );
                assert_eq!(
                    header(&headers, "retry-after"),
                    Some("7"),
                    "Retry-After passed on: {headers:?}"
                );
            } else {
                assert_eq!(
                    (status, error_code(&body).as_str()),
                    (502, "UNAVAILABLE"),
                    "{body}"
                );
            }
        }
        wait_for("fills to settle", Duration::from_secs(10), || {
            s.proxy.spool_files() == 0
        });
        assert!(!s.proxy.has_blob(&layer), "{fault:?}: nothing cached");
        assert_store_consistent(&s.proxy);

        s.front.clear();
        s.pull(&format!("{repo}:v1"), &format!("pull{i}b"))
            .success();
        assert!(
            s.proxy.cached(&layer),
            "{fault:?}: cached once the upstream recovered"
        );
        assert_store_consistent(&s.proxy);
    }
    assert!(s.front.injected() >= faults.len());
}

#[test]
fn manifest_faults_give_a_clear_error_cold_and_the_cached_copy_warm() {
    let s = setup("[cache]\ntag_ttl = \"1s\"\n");
    let img = s.image("faults/manifest", "manifest", 1000);

    // cold: a lying digest header is refused and nothing is cached
    s.front
        .fault("GET", "/manifests/v1", Fault::WrongDigestHeader);
    let (status, _, body) = s.get("/v2/up/faults/manifest/manifests/v1");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (502, "DIGEST_INVALID"),
        "{body}"
    );
    s.front.clear();
    s.front
        .fault("GET", "/manifests/", Fault::Status(429, Some(30)));
    let (status, headers, body) = s.get("/v2/up/faults/manifest/manifests/v1");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (429, "TOOMANYREQUESTS"),
        "nothing cached: {body}"
    );
    assert_eq!(header(&headers, "retry-after"), Some("30"));
    s.front.clear();
    s.pull("faults/manifest:v1", "warm").success();

    // warm: every manifest fault, by tag after the TTL and by digest, serves the cached copy
    let faults = [
        Fault::Status(500, None),
        Fault::Status(429, Some(5)),
        Fault::Reset,
        Fault::WrongDigestHeader,
        Fault::CorruptBody,
        Fault::Stall,
    ];
    for fault in faults {
        for method in ["GET", "HEAD"] {
            s.front.fault(method, "/manifests/", fault.clone());
        }
        std::thread::sleep(Duration::from_millis(1100));
        let (status, headers, body) = s.get("/v2/up/faults/manifest/manifests/v1");
        assert_eq!(status, 200, "{fault:?}: stale copy served: {body}");
        assert_eq!(
            header(&headers, "docker-content-digest"),
            Some(img.digest.as_str()),
            "{fault:?}"
        );
        let (status, _, _) = s.get(&format!("/v2/up/faults/manifest/manifests/{}", img.digest));
        assert_eq!(status, 200, "{fault:?}: by digest");
        s.front.clear();
    }
    s.pull("faults/manifest:v1", "still").success();

    // recovery: the tag moves upstream and the proxy follows once the faults are gone
    let newer = build_image(
        &s.t.path().join("newer"),
        &ImageSpec {
            seed: "newer",
            layers: &[1000],
            tag: "v1",
        },
    );
    s.front
        .fault("HEAD", "/manifests/", Fault::Status(503, None));
    s.front
        .fault("GET", "/manifests/", Fault::Status(503, None));
    s.reg.push(&newer, "faults/manifest:v1");
    std::thread::sleep(Duration::from_millis(1100));
    let (_, headers, _) = s.get("/v2/up/faults/manifest/manifests/v1");
    assert_eq!(
        header(&headers, "docker-content-digest"),
        Some(img.digest.as_str()),
        "old copy while the upstream fails"
    );
    s.front.clear();
    std::thread::sleep(Duration::from_millis(1100));
    let (status, headers, _) = s.get("/v2/up/faults/manifest/manifests/v1");
    assert_eq!(
        (status, header(&headers, "docker-content-digest")),
        (200, Some(newer.digest.as_str())),
        "follows the upstream again"
    );
}
