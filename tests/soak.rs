//! A bounded soak: a few hundred concurrent connections of mixed traffic (warm and cold pulls,
//! pushes, referrers, tag lists, policy decisions) for `PORTCULLIS_SOAK_SECS` (20 s by default):
//! zero failed requests, flat memory, no file-descriptor leak.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 256;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn mixed_traffic_at_hundreds_of_connections_fails_nothing_and_leaks_nothing() {
    let secs: u64 = std::env::var("PORTCULLIS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let dir = t.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(&dir.join("users.htpasswd"), &[("ci", "ci-pass")]);
    let module = policy_module("policies", "deny-tags");
    let config = format!(
        "[storage]\npath = \"data\"\n[auth]\nhtpasswd = \"users.htpasswd\"\n[[policy]]\nname = \"deny-tags\"\nmodule = \"{}\"\nscope = [\"up/*\"]\n[policy.settings]\ntags = [\"nightly\"]\n[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        module.display(),
        reg.url()
    );
    let proxy = Proxy::start(&dir, &config);

    // warm images, and cold ones that each client pulls once
    let warm: Vec<OciImage> = (0..4)
        .map(|i| {
            let seed = format!("warm{i}");
            let img = build_image(
                &t.path().join(&seed),
                &ImageSpec {
                    seed: &seed,
                    layers: &[256 << 10, 64 << 10],
                    tag: "v1",
                },
            );
            reg.push(&img, &format!("soak/warm{i}:v1"));
            img
        })
        .collect();
    let cold: Vec<OciImage> = (0..24)
        .map(|i| {
            let seed = format!("cold{i}");
            let img = build_image(
                &t.path().join(&seed),
                &ImageSpec {
                    seed: &seed,
                    layers: &[512 << 10],
                    tag: "v1",
                },
            );
            reg.push(&img, &format!("soak/cold{i}:v1"));
            img
        })
        .collect();
    for (i, img) in warm.iter().enumerate() {
        for l in &img.layers {
            http()
                .get(format!("{}/v2/up/soak/warm{i}/blobs/{l}", proxy.url()))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
        }
    }
    let pid = proxy.pid();
    std::thread::sleep(Duration::from_millis(500));
    let fds_before = open_fds(pid);

    let (warm, cold) = (Arc::new(warm), Arc::new(cold));
    let stop = Arc::new(AtomicBool::new(false));
    // fresh images keep arriving upstream throughout: their pulls are cold, blobs and manifests
    let fresh: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let feeder = {
        let (stop, fresh, reg_url) = (stop.clone(), fresh.clone(), reg.url());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let repo = format!("soak/fresh{n}");
                let (manifest, layer) = push_tiny_image(&reg_url, &repo, &format!("fresh-{n}"));
                fresh.lock().unwrap().push((repo, manifest, layer));
            }
            n
        })
    };
    let requests = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let next_cold = Arc::new(AtomicUsize::new(0));
    let base = proxy.url();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (warm, cold, fresh, stop, requests, failures, next_cold, base) = (
                warm.clone(),
                cold.clone(),
                fresh.clone(),
                stop.clone(),
                requests.clone(),
                failures.clone(),
                next_cold.clone(),
                base.clone(),
            );
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let w = (c + n) % warm.len();
                    let img = &warm[w];
                    let (what, result) = match (c + n) % 9 {
                        // every asker a new one: each of these is an uncached policy decision
                        0 | 1 => (
                            "manifest (policy)",
                            client
                                .get(format!("{base}/v2/up/soak/warm{w}/manifests/v1"))
                                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                                .header("user-agent", format!("soak-client-{c}-{n}"))
                                .send(),
                        ),
                        8 => match fresh.lock().unwrap().pop() {
                            Some((repo, _, layer)) if n % 2 == 0 => (
                                "fresh blob",
                                client
                                    .get(format!("{base}/v2/up/{repo}/blobs/{layer}"))
                                    .send(),
                            ),
                            Some((repo, manifest, _)) => (
                                "fresh manifest",
                                client
                                    .get(format!("{base}/v2/up/{repo}/manifests/{manifest}"))
                                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                                    .send(),
                            ),
                            None => (
                                "manifest (policy)",
                                client
                                    .get(format!("{base}/v2/up/soak/warm{w}/manifests/v1"))
                                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                                    .send(),
                            ),
                        },
                        2 | 3 => (
                            "warm blob",
                            client
                                .get(format!(
                                    "{base}/v2/up/soak/warm{w}/blobs/{}",
                                    img.layers[n % img.layers.len()]
                                ))
                                .send(),
                        ),
                        4 => {
                            let k = next_cold.fetch_add(1, Ordering::Relaxed) % cold.len();
                            (
                                "cold blob",
                                client
                                    .get(format!(
                                        "{base}/v2/up/soak/cold{k}/blobs/{}",
                                        cold[k].layers[0]
                                    ))
                                    .send(),
                            )
                        }
                        5 => (
                            "referrers",
                            client
                                .get(format!(
                                    "{base}/v2/up/soak/warm{w}/referrers/{}",
                                    img.digest
                                ))
                                .send(),
                        ),
                        6 => (
                            "tags",
                            client
                                .get(format!("{base}/v2/up/soak/warm{w}/tags/list"))
                                .send(),
                        ),
                        _ => {
                            let body = format!("{c}-{n}").into_bytes();
                            let url = format!(
                                "{base}/v2/internal/soak/c{c}/blobs/uploads/?digest={}",
                                sha256(&body)
                            );
                            (
                                "push",
                                client
                                    .post(url)
                                    .basic_auth("ci", Some("ci-pass"))
                                    .body(body)
                                    .send(),
                            )
                        }
                    };
                    requests.fetch_add(1, Ordering::Relaxed);
                    match result.and_then(|r| {
                        let status = r.status();
                        r.bytes().map(|_| status)
                    }) {
                        Ok(s) if s.is_success() => {}
                        Ok(s) => failures.lock().unwrap().push(format!("{what}: {s}")),
                        Err(e) => failures.lock().unwrap().push(format!("{what}: {e}")),
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kib(pid));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let fed = feeder.join().unwrap();
    assert!(fed >= 10, "fresh images kept arriving: {fed}");
    let total = requests.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // memory: the second half of the run holds no more than the first half's peak, with slack
    let half = rss.len() / 2;
    let first_peak = rss[..half.max(1)].iter().max().copied().unwrap_or(0);
    let last_peak = rss[half..].iter().max().copied().unwrap_or(0);
    assert!(
        last_peak <= first_peak + first_peak / 4 + 16 * 1024,
        "memory keeps growing: {rss:?} KiB"
    );
    // descriptors: back to where they were once the clients are gone, plus at most the
    // upstream connection pool (16 idle connections per upstream host)
    let limit = fds_before + 16 + 4;
    wait_for(
        "descriptors to be released",
        Duration::from_secs(15),
        || open_fds(pid) <= limit,
    );
    let fds_after = open_fds(pid);
    let summary = format!(
        "{CLIENTS} connections, {secs} s (debug build), {total} requests ({:.0}/s) of warm and cold pulls, {fed} fresh images, uncached policy decisions, pushes, referrers and tag lists: 0 failed; RSS {}..{} MiB; descriptors {fds_before} -> {fds_after}",
        total as f64 / secs as f64,
        rss.iter().min().unwrap() / 1024,
        rss.iter().max().unwrap() / 1024
    );
    eprintln!("soak: {summary}");
    // the long run (tests/run.sh --extended) is what the README quotes: it writes its figures
    if std::env::var("PORTCULLIS_SOAK_SECS").is_err() {
        return;
    }
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results-soak.md");
    let date = String::from_utf8(
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::write(results, format!("# Soak results\n\n{}: {summary}. Reproduce: `PORTCULLIS_SOAK_SECS={secs} cargo test --test soak`.\n", date.trim())).unwrap();
}

/// Pushes a one-layer image (64 KiB of fresh bytes) to the registry at `url` as `repo:v1`; its
/// manifest and layer digests.
fn push_tiny_image(url: &str, repo: &str, seed: &str) -> (String, String) {
    let client = reqwest::blocking::Client::new();
    let upload = |bytes: Vec<u8>| {
        let digest = sha256(&bytes);
        let r = client
            .post(format!("{url}/v2/{repo}/blobs/uploads/"))
            .send()
            .unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{url}{loc}")
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = client
            .put(format!("{loc}{sep}digest={digest}"))
            .body(bytes)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        digest
    };
    let layer_bytes = image::noise(seed, 64 << 10);
    let layer_size = layer_bytes.len();
    let layer = upload(layer_bytes);
    let config_bytes = format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":"{seed}"}}"#).into_bytes();
    let config_size = config_bytes.len();
    let config = upload(config_bytes);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{layer_size}}}]}}"#
    );
    let r = client
        .put(format!("{url}/v2/{repo}/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    (sha256(manifest.as_bytes()), layer)
}
