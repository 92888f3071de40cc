//! A lying upstream: wrong bytes, truncated bodies, stalls, token auth. The client gets an
//! error, nothing is cached, and the next request tries the upstream again.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::liar::{Behaviour, Liar};
use common::*;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Reads a whole response body; Err when the transfer was cut short.
fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
    let mut r = http().get(url).send().map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let mut body = Vec::new();
    r.read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn setup() -> (tempfile::TempDir, Liar, Proxy) {
    let t = tempfile::tempdir().unwrap();
    let liar = Liar::start();
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "liar", &liar.url(), "");
    (t, liar, proxy)
}

fn assert_fails_and_caches_nothing(behaviour: fn(Vec<u8>) -> Behaviour, size: usize) {
    let (_t, liar, proxy) = setup();
    let good = image::noise("real", size);
    let digest = sha256(&good);
    liar.blob(&digest, behaviour(good.clone()));
    let url = format!("{}/v2/liar/r/blobs/{digest}", proxy.url());
    let started = Instant::now();
    // an error is the response being aborted: the client saw the failure
    if let Ok((status, body)) = fetch(&url) {
        assert!(
            status >= 500 || body != good,
            "a bad upstream body must never reach the client whole"
        );
        assert_ne!(sha256(&body), digest);
        assert!(
            status != 200 || body.len() < good.len(),
            "status {status}, {} bytes",
            body.len()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the failure is reported promptly"
    );
    wait_for(
        "the failed fill to clean up",
        Duration::from_secs(10),
        || proxy.spool_files() == 0,
    );
    assert!(!proxy.has_blob(&digest), "nothing is cached");

    // the next request retries the upstream, which now tells the truth
    liar.blob(&digest, Behaviour::Good(good.clone()));
    let (status, body) = fetch(&url).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, good);
    assert_eq!(liar.hits(&format!("GET /v2/r/blobs/{digest}")), 2);
    assert!(proxy.cached(&digest));
}

#[test]
fn wrong_bytes_are_never_cached() {
    assert_fails_and_caches_nothing(
        |mut v| {
            v[1000] ^= 0xff;
            Behaviour::Wrong(v)
        },
        3 << 20,
    );
}

#[test]
fn small_wrong_blob_is_refused() {
    assert_fails_and_caches_nothing(
        |mut v| {
            v[0] ^= 1;
            Behaviour::Wrong(v)
        },
        100,
    );
}

#[test]
fn truncated_bodies_are_never_cached() {
    assert_fails_and_caches_nothing(Behaviour::Truncated, 2 << 20);
}

#[test]
fn stalled_bodies_time_out_and_are_never_cached() {
    assert_fails_and_caches_nothing(Behaviour::Stall, 2 << 20);
}

#[test]
fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let (_t, liar, proxy) = setup();
    let real = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let claimed = sha256(b"something else");
    liar.manifest("r", &claimed, MANIFEST_TYPE, real);
    let r = http()
        .get(format!("{}/v2/liar/r/manifests/{claimed}", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(&r.text().unwrap()), "DIGEST_INVALID");
    assert!(!proxy.has_blob(&claimed));
    assert!(!proxy.has_blob(&sha256(real)));
}

#[test]
fn manifests_over_four_mib_are_refused() {
    let (_t, liar, proxy) = setup();
    let pad = "x".repeat(5 << 20);
    let huge = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","annotations":{{"pad":"{pad}"}},"layers":[]}}"#
    );
    liar.manifest("r", "huge", MANIFEST_TYPE, huge.as_bytes());
    let r = http()
        .get(format!("{}/v2/liar/r/manifests/huge", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(&r.text().unwrap()), "MANIFEST_INVALID");
}

#[test]
fn bearer_token_challenges_are_answered_and_tokens_reused() {
    let (_t, liar, proxy) = setup();
    liar.require_token();
    let data = image::noise("tok", 5000);
    let digest = sha256(&data);
    liar.blob(&digest, Behaviour::Good(data.clone()));
    let (status, body) = fetch(&format!("{}/v2/liar/r/blobs/{digest}", proxy.url())).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, data);
    let r = http()
        .get(format!(
            "{}/v2/liar/r/blobs/{}",
            proxy.url(),
            sha256(b"nope")
        ))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), error_code(&r.text().unwrap()).as_str()),
        (404, "BLOB_UNKNOWN")
    );
    assert_eq!(liar.hits("/token"), 1, "the token is cached and reused");
}

#[test]
fn unreachable_upstream_is_a_gateway_error() {
    let t = tempfile::tempdir().unwrap();
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "gone",
        &format!("http://127.0.0.1:{}", free_port()),
        "",
    );
    let r = http()
        .get(format!("{}/v2/gone/r/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(&r.text().unwrap()), "UNAVAILABLE");
}

#[test]
fn server_errors_are_retried_for_idempotent_requests() {
    let (_t, liar, proxy) = setup();
    let data = image::noise("retry", 4000);
    let digest = sha256(&data);
    liar.blob(&digest, Behaviour::FailFirst(1, data.clone()));
    let (status, body) = fetch(&format!("{}/v2/liar/r/blobs/{digest}", proxy.url())).unwrap();
    assert_eq!((status, body == data), (200, true));
    assert_eq!(
        liar.hits(&format!("GET /v2/r/blobs/{digest}")),
        2,
        "one failure, one retry"
    );
}

#[test]
fn redirects_to_object_storage_do_not_carry_the_registry_token() {
    let (_t, registry, proxy) = setup();
    registry.require_token();
    let storage = Liar::start();
    let data = image::noise("redirected", 70_000);
    let digest = sha256(&data);
    storage.blob("object-1", Behaviour::Good(data.clone()));
    registry.blob(
        &digest,
        Behaviour::Redirect(format!("{}/objects/object-1", storage.url())),
    );
    let (status, body) = fetch(&format!("{}/v2/liar/r/blobs/{digest}", proxy.url())).unwrap();
    assert_eq!((status, body == data), (200, true));
    let at_registry = registry.authorizations(&format!("/blobs/{digest}"));
    assert!(
        at_registry.contains(&Some("Bearer good-token".into())),
        "the registry got its token: {at_registry:?}"
    );
    assert_eq!(
        storage.authorizations("/objects/"),
        vec![None],
        "object storage got no Authorization"
    );
    assert!(proxy.cached(&digest));
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn memory_does_not_grow_with_blob_size() {
    let (_t, liar, proxy) = setup();
    let data = image::noise("big", 160 << 20);
    let digest = sha256(&data);
    liar.blob(&digest, Behaviour::Good(data));
    let url = format!("{}/v2/liar/r/blobs/{digest}", proxy.url());
    for _ in 0..2 {
        // cold (teed from the download), then warm (from disk)
        let mut r = http().get(&url).send().unwrap();
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        std::io::copy(&mut r, &mut HashWriter(&mut hasher)).unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
            digest
        );
    }
    let peak = peak_rss(proxy.pid());
    assert!(
        peak < 100 << 20,
        "peak RSS {} MiB while streaming a 160 MiB blob twice",
        peak >> 20
    );
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn atomic_signatures_are_mirrored_and_served_when_the_upstream_fails() {
    let (_t, liar, proxy) = setup();
    let digest = sha256(b"an image manifest");
    let list = r#"{"signatures":[{"version":2,"type":"atomic","name":"sha256:x@abc","content":"c2lnbmVk"}]}"#;
    liar.signatures(200, list);
    let url = format!("{}/extensions/v2/liar/r/signatures/{digest}", proxy.url());
    let r = http().get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap(),
        serde_json::from_str::<serde_json::Value>(list).unwrap()
    );
    liar.signatures(503, "down");
    let r = http().get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap()["signatures"][0]["content"],
        "c2lnbmVk",
        "the mirrored copy is served"
    );
    let other = format!(
        "{}/extensions/v2/liar/r/signatures/{}",
        proxy.url(),
        sha256(b"other")
    );
    assert_eq!(
        http()
            .get(other)
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap(),
        serde_json::json!({"signatures": []})
    );
}

#[test]
fn ten_thousand_tags_are_gathered_from_upstream_pages_and_paginated_for_clients() {
    let (_t, liar, proxy) = setup();
    let mut tags: Vec<String> = (0..10_000).map(|i| format!("v{i:05}")).collect();
    tags.sort();
    liar.tags("big/app", tags.clone());
    let r = http()
        .get(format!("{}/v2/liar/big/app/tags/list", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let all: serde_json::Value = r.json().unwrap();
    assert_eq!(
        all["tags"].as_array().unwrap().len(),
        10_000,
        "every upstream page followed"
    );
    // clients page through with n and last, following Link
    let mut seen = Vec::new();
    let mut next = Some("/v2/liar/big/app/tags/list?n=700".to_string());
    while let Some(path) = next {
        let r = http().get(format!("{}{path}", proxy.url())).send().unwrap();
        assert_eq!(r.status(), 200);
        next = r.headers().get("link").map(|l| {
            l.to_str()
                .unwrap()
                .split(['<', '>'])
                .nth(1)
                .unwrap()
                .to_string()
        });
        let page: serde_json::Value = r.json().unwrap();
        let page = page["tags"].as_array().unwrap();
        assert!(page.len() <= 700);
        seen.extend(page.iter().map(|t| t.as_str().unwrap().to_string()));
    }
    assert_eq!(seen, tags, "all 10k tags, in order, once each");
}

#[test]
fn an_expired_token_is_fetched_again() {
    let (_t, liar, proxy) = setup();
    liar.require_token();
    liar.token_expires_in("1");
    let data = image::noise("expiring", 3000);
    let digest = sha256(&data);
    liar.blob(&digest, Behaviour::Good(data));
    let head = |d: &str| {
        http()
            .head(format!("{}/v2/liar/r/blobs/{d}", proxy.url()))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(head(&digest), 200);
    assert_eq!(head(&sha256(b"another")), 404);
    assert_eq!(liar.hits("/token"), 1, "reused while valid");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(head(&sha256(b"a third")), 404);
    assert_eq!(liar.hits("/token"), 2, "fetched again once expired");
    assert!(liar
        .authorizations("/v2/r/blobs/")
        .iter()
        .all(|a| a.as_deref().is_none_or(|a| a == "Bearer good-token")));
}

#[test]
fn the_upstreams_referrers_api_is_used_where_offered() {
    let (_t, liar, proxy) = setup();
    let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let subject = sha256(image);
    liar.manifest("r", "v1", MANIFEST_TYPE, image);
    liar.blob(
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        Behaviour::Good(b"{}".to_vec()),
    );
    let note_blob = br#"{"note":"built on Tuesday"}"#;
    liar.blob(&sha256(note_blob), Behaviour::Good(note_blob.to_vec()));
    let note = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","artifactType":"application/vnd.example.note","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[{{"mediaType":"application/json","digest":"{}","size":{}}}],"subject":{{"mediaType":"{MANIFEST_TYPE}","digest":"{subject}","size":{}}}}}"#,
        sha256(note_blob),
        note_blob.len(),
        image.len()
    );
    let note_digest = sha256(note.as_bytes());
    liar.manifest("r", &note_digest, MANIFEST_TYPE, note.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{MANIFEST_TYPE}","digest":"{note_digest}","size":{},"artifactType":"application/vnd.example.note"}}]}}"#,
        note.len()
    );
    liar.referrers(&subject, &index);
    let list: serde_json::Value = http()
        .get(format!("{}/v2/liar/r/referrers/{subject}", proxy.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let entries = list["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["digest"], note_digest.as_str());
    assert_eq!(entries[0]["artifactType"], "application/vnd.example.note");
    assert_eq!(
        liar.hits(&format!("GET /v2/r/referrers/{subject}")),
        1,
        "the upstream's referrers API was asked"
    );
    assert!(
        proxy.cached(&note_digest),
        "the referrer's manifest is cached"
    );
    assert!(proxy.cached(&sha256(note_blob)), "and its blob");
}

#[test]
fn whether_the_upstream_offers_atomic_signatures_is_asked_again_every_tag_ttl() {
    let t = tempfile::tempdir().unwrap();
    let liar = Liar::start();
    liar.offer_signatures(false);
    let list = r#"{"signatures":[{"version":2,"type":"atomic","name":"sha256:x@abc","content":"c2lnbmVk"}]}"#;
    liar.signatures(200, list);
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "liar",
        &liar.url(),
        "[cache]\ntag_ttl = \"1s\"\n",
    );
    let url = format!(
        "{}/extensions/v2/liar/r/signatures/{}",
        proxy.url(),
        sha256(b"image")
    );
    let got = || {
        http()
            .get(&url)
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap()
    };
    assert_eq!(
        got(),
        serde_json::json!({"signatures": []}),
        "not offered: not asked for"
    );
    assert_eq!(liar.hits("/extensions/v2/"), 0);
    liar.offer_signatures(true);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        got()["signatures"][0]["content"],
        "c2lnbmVk",
        "offered now: mirrored"
    );
    assert_eq!(
        liar.hits("GET /v2/"),
        2,
        "the upstream's /v2/ asked once per tag_ttl"
    );
}
