//! Process lifecycle: SIGTERM drains in-flight requests; SIGKILL at arbitrary points during
//! cold pulls, evictions, blob uploads and manifest pushes never leaves a wrong byte, a lost
//! acknowledged push or a leftover temporary file.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;

const USERS: &str = "[auth]\nhtpasswd = \"users.htpasswd\"\n";

fn proxy(t: &std::path::Path, reg: &Registry, server: &str, storage: &str) -> Proxy {
    let dir = t.join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(&dir.join("users.htpasswd"), &[("ci", "ci-pass")]);
    Proxy::start_with_server(
        &dir,
        server,
        &format!("[storage]\npath = \"data\"\n{storage}{USERS}[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n", reg.url()),
    )
}

/// Reads a blob over a raw connection, slowly, telling `started` after the first MiB; returns
/// the body's digest and length.
fn slow_read(addr: &str, path: &str, started: mpsc::Sender<()>) -> (String, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut length = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = Vec::with_capacity(length);
    let mut buf = vec![0; 256 << 10];
    let mut told = false;
    while body.len() < length {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        if !told && body.len() > 1 << 20 {
            told = true;
            started.send(()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    (sha256(&body), body.len())
}

/// A proxy with `shutdown_grace`, a cached 48 MiB blob, and a slow client a MiB into it.
struct InFlight {
    _t: tempfile::TempDir,
    _reg: Registry,
    p: Proxy,
    layer: String,
    reader: std::thread::JoinHandle<(String, usize)>,
}

fn slow_download_in_flight(grace: &str) -> InFlight {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let p = proxy(t.path(), &reg, &format!("shutdown_grace = \"{grace}\""), "");
    let img = build_image(
        &t.path().join("big"),
        &ImageSpec {
            seed: "big",
            layers: &[48 << 20],
            tag: "v1",
        },
    );
    reg.push(&img, "drain/big:v1");
    let layer = img.layers[0].clone();
    let path = format!("/v2/up/drain/big/blobs/{layer}");
    assert!(!http()
        .get(format!("{}{path}", p.url()))
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .is_empty());
    let (tx, rx) = mpsc::channel();
    let addr = p.addr.clone();
    let reader = std::thread::spawn(move || slow_read(&addr, &path, tx));
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the download started");
    InFlight {
        _t: t,
        _reg: reg,
        p,
        layer,
        reader,
    }
}

#[test]
fn sigterm_drains_in_flight_downloads_and_refuses_new_connections() {
    let InFlight {
        mut p,
        layer,
        reader,
        _t: _dir,
        _reg: _upstream,
    } = slow_download_in_flight("30s");
    p.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(&p.addr).is_err(),
        "no new connections once shutting down"
    );
    let (digest, _) = reader.join().unwrap();
    assert_eq!(
        digest, layer,
        "the in-flight download completed, byte for byte"
    );
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("the proxy exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(
        p.log().contains("draining in-flight requests"),
        "{}",
        p.log()
    );
}

#[test]
fn sigterm_keeps_what_was_just_served_cold() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let mut p = proxy(t.path(), &reg, "shutdown_grace = \"30s\"", "");
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "fresh",
            layers: &[16 << 20],
            tag: "v1",
        },
    );
    reg.push(&img, "fresh/img:v1");
    let manifest = http()
        .get(format!("{}/v2/up/fresh/img/manifests/v1", p.url()))
        .send()
        .unwrap();
    assert_eq!(manifest.status(), 200);
    let blob = http()
        .get(format!(
            "{}/v2/up/fresh/img/blobs/{}",
            p.url(),
            img.layers[0]
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&blob), img.layers[0]);
    p.sigterm();
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("the proxy exits");
    assert!(status.success(), "{status:?}");
    assert!(
        p.has_blob(&img.layers[0]),
        "a blob served cold just before SIGTERM is cached when the proxy has exited"
    );
    assert!(p.has_blob(&img.digest), "and so is its manifest");
    assert_eq!(p.spool_files(), 0, "no temporary file is left behind");
    assert_store_consistent(&p);
}

#[test]
fn sigterm_after_the_grace_period_closes_what_is_left() {
    let InFlight {
        mut p,
        reader,
        _t: _dir,
        _reg: _upstream,
        ..
    } = slow_download_in_flight("1s");
    let started = std::time::Instant::now();
    p.sigterm();
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits once the grace period is over");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by shutdown_grace: {:?}",
        started.elapsed()
    );
    assert!(status.success());
    let (_, len) = reader.join().unwrap();
    assert!(len < 48 << 20, "the slow client was cut off");
    assert!(p.log().contains("grace period over"), "{}", p.log());
}

/// A workload of cold pulls (with constant eviction), blob uploads and manifest pushes that
/// records what the proxy acknowledged.
struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    chunked: (Arc<AtomicBool>, std::thread::JoinHandle<()>),
}

#[derive(Default)]
struct Acknowledged {
    blobs: Vec<(String, Vec<u8>)>,
    manifests: Vec<(String, String)>,
    /// Chunked upload sessions (path, bytes acknowledged so far, digest of the whole) not
    /// finished when last seen.
    sessions: Vec<(String, u64, String)>,
}

/// What was under way when a kill landed.
#[derive(Default, Debug)]
struct UnderWay {
    fills: usize,
    evictions: usize,
    uploads: usize,
}

/// Looks at the proxy's storage and log at the moment of a kill: a blob download in its spool,
/// an eviction pass logging within the last 300 ms, a chunked upload holding data.
fn under_way(p: &Proxy, evicted_before: usize) -> (bool, bool, bool) {
    let fill = std::fs::read_dir(p.data().join("tmp"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("blob-"))
        })
        .unwrap_or(false);
    let eviction = p.log().matches("evicted").count() > evicted_before;
    let upload = std::fs::read_dir(p.data().join("uploads"))
        .map(|d| {
            d.flatten()
                .any(|e| std::fs::metadata(e.path().join("data")).is_ok_and(|m| m.len() > 0))
        })
        .unwrap_or(false);
    (fill, eviction, upload)
}

/// Every metadata record and upload session is whole after a kill: tag records are JSON with
/// a digest, pushed tags and pins name digests, links are empty records, sessions have their
/// record and data, and no temporary file is left in them.
fn assert_metadata_sound(p: &Proxy) {
    let meta = p.data().join("meta");
    let mut stack = vec![meta.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&meta).unwrap().display().to_string();
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            if rel.starts_with("tags/") {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("tag record {rel} torn: {e}"));
                assert!(
                    v["digest"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("sha256:")),
                    "{rel}: {text}"
                );
            } else if rel.starts_with("pushed/") && rel.contains("/_tags/") {
                assert!(
                    text.trim().starts_with("sha256:") && text.trim().len() == 71,
                    "pushed tag {rel} torn: {text:?}"
                );
            } else if rel.starts_with("links/")
                || rel.starts_with("pinned/")
                || rel.contains("/_manifests/")
                || rel.contains("/_blobs/")
            {
                assert!(bytes.is_empty(), "{rel} holds {text:?}");
                assert!(
                    path.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("sha256-"),
                    "{rel}"
                );
            }
        }
    }
    for e in std::fs::read_dir(p.data().join("uploads"))
        .unwrap()
        .flatten()
    {
        let session = std::fs::read(e.path().join("session.json"))
            .unwrap_or_else(|_| panic!("session {:?} without its record", e.file_name()));
        let v: serde_json::Value =
            serde_json::from_slice(&session).expect("a whole session record");
        assert_eq!(v["ns"], "internal");
        assert!(
            e.path().join("data").exists(),
            "session {:?} without its data",
            e.file_name()
        );
    }
}

fn workload(
    addr: String,
    images: Arc<Vec<OciImage>>,
    acked: Arc<Mutex<Acknowledged>>,
    round: usize,
) -> Workload {
    let chunked = chunked_uploads(addr.clone(), acked.clone(), round);
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut threads = Vec::new();
    {
        let (stop, client, addr, images) =
            (stop.clone(), client.clone(), addr.clone(), images.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = round;
            while !stop.load(Ordering::Relaxed) {
                let img = &images[i % images.len()];
                let tag = format!(
                    "http://{addr}/v2/up/crash/img{}/manifests/v1",
                    i % images.len()
                );
                let _ = client
                    .get(tag)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .and_then(|r| r.bytes());
                for layer in &img.layers {
                    let _ = client
                        .get(format!(
                            "http://{addr}/v2/up/crash/img{}/blobs/{layer}",
                            i % images.len()
                        ))
                        .send()
                        .and_then(|r| r.bytes());
                }
                i += 1;
            }
        }));
    }
    {
        let (stop, addr) = (stop.clone(), addr.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let content = image::noise(&format!("push-{round}-{n}"), 256 << 10);
                let digest = sha256(&content);
                let url = format!("http://{addr}/v2/internal/crash/blobs/uploads/?digest={digest}");
                let Ok(r) = client.post(url).basic_auth("ci", Some("ci-pass")).body(content.clone()).send() else { continue };
                if r.status() != 201 {
                    continue;
                }
                acked.lock().unwrap().blobs.push((digest.clone(), content.clone()));
                let manifest = format!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":{}}},"layers":[]}}"#,
                    content.len()
                );
                let tag = format!("r{round}-{n}");
                let r = client
                    .put(format!("http://{addr}/v2/internal/crash/manifests/{tag}"))
                    .basic_auth("ci", Some("ci-pass"))
                    .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                    .body(manifest.clone())
                    .send();
                if r.is_ok_and(|r| r.status() == 201) {
                    acked.lock().unwrap().manifests.push((tag, sha256(manifest.as_bytes())));
                }
            }
        }));
    }
    Workload {
        stop,
        threads,
        chunked,
    }
}

/// Chunked uploads, a chunk at a time with pauses: sessions are under way most of the time.
fn chunked_uploads(
    addr: String,
    acked: Arc<Mutex<Acknowledged>>,
    round: usize,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let content = image::noise(&format!("chunked-{round}-{n}"), 192 << 10);
                let digest = sha256(&content);
                let Ok(r) = client
                    .post(format!("http://{addr}/v2/internal/crash/blobs/uploads/"))
                    .basic_auth("ci", Some("ci-pass"))
                    .send()
                else {
                    return;
                };
                let Some(path) = r
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_string)
                else {
                    return;
                };
                let mut sent = 0u64;
                for chunk in content.chunks(64 << 10) {
                    let end = sent + chunk.len() as u64 - 1;
                    let r = client
                        .patch(format!("http://{addr}{path}"))
                        .basic_auth("ci", Some("ci-pass"))
                        .header("content-range", format!("{sent}-{end}"))
                        .body(chunk.to_vec())
                        .send();
                    if !r.is_ok_and(|r| r.status() == 202) {
                        return;
                    }
                    sent = end + 1;
                    let mut a = acked.lock().unwrap();
                    a.sessions.retain(|(p, ..)| p != &path);
                    a.sessions.push((path.clone(), sent, digest.clone()));
                    drop(a);
                    std::thread::sleep(Duration::from_millis(20));
                }
                let r = client
                    .put(format!("http://{addr}{path}?digest={digest}"))
                    .basic_auth("ci", Some("ci-pass"))
                    .send();
                if r.is_ok_and(|r| r.status() == 201) {
                    let mut a = acked.lock().unwrap();
                    a.sessions.retain(|(p, ..)| p != &path);
                    a.blobs.push((digest, content));
                }
            }
        })
    };
    (stop, handle)
}

impl Workload {
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.chunked.0.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.chunked.1.join().unwrap();
    }
}

#[test]
fn sigkill_at_arbitrary_points_keeps_the_store_consistent() {
    let kills: usize = std::env::var("PORTCULLIS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let images: Vec<OciImage> = (0..6)
        .map(|i| {
            let seed = format!("crash{i}");
            let img = build_image(
                &t.path().join(&seed),
                &ImageSpec {
                    seed: &seed,
                    layers: &[3 << 20, 1 << 20],
                    tag: "v1",
                },
            );
            reg.push(&img, &format!("crash/img{i}:v1"));
            img
        })
        .collect();
    let images = Arc::new(images);
    // the cached images need ~24 MiB: a 10 MiB cache evicts all the time
    let mut p = proxy(t.path(), &reg, "", "max_size = \"10MiB\"\n");
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut checked = (0, 0);
    let mut under = UnderWay::default();
    for round in 0..=kills {
        if round == kills {
            checked = (0, 0); // at the end, everything once more
        } else {
            let w = workload(p.addr.clone(), images.clone(), acked.clone(), round);
            std::thread::sleep(Duration::from_millis(50 + (round as u64 * 7919) % 400));
            let evicted = p.log().matches("evicted").count();
            std::thread::sleep(Duration::from_millis(300));
            let (fill, eviction, upload) = under_way(&p, evicted);
            p.kill();
            under.fills += fill as usize;
            under.evictions += eviction as usize;
            under.uploads += upload as usize;
            w.finish();
            p.restart();
        }
        assert_store_consistent(&p);
        assert_metadata_sound(&p);
        // every chunked upload under way goes on from where its last acknowledged chunk ended,
        // unless its final PUT landed and only the answer was lost: then its blob is there
        for (path, sent, digest) in acked.lock().unwrap().sessions.drain(..) {
            let r = http()
                .get(format!("{}{path}", p.url()))
                .basic_auth("ci", Some("ci-pass"))
                .send()
                .unwrap();
            if r.status() == 404 {
                let blob = http()
                    .head(format!("{}/v2/internal/crash/blobs/{digest}", p.url()))
                    .basic_auth("ci", Some("ci-pass"))
                    .send()
                    .unwrap();
                assert_eq!(
                    blob.status(),
                    200,
                    "round {round}: the upload session {path} was lost without its blob"
                );
                continue;
            }
            assert_eq!(
                r.status(),
                204,
                "round {round}: the upload session {path} survives"
            );
            let range = r.headers()["range"].to_str().unwrap().to_string();
            let end: u64 = range.trim_start_matches("0-").parse().unwrap();
            assert!(
                end + 1 >= sent,
                "round {round}: {path} lost acknowledged chunks: {range}, {sent} acknowledged"
            );
        }
        let acked = acked.lock().unwrap();
        let (blobs, manifests) = (&acked.blobs[checked.0..], &acked.manifests[checked.1..]);
        checked = (acked.blobs.len(), acked.manifests.len());
        for (digest, content) in blobs {
            let r = http()
                .get(format!("{}/v2/internal/crash/blobs/{digest}", p.url()))
                .send()
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "round {round}: acknowledged blob {digest} survives"
            );
            assert_eq!(r.bytes().unwrap().as_ref(), content.as_slice());
        }
        for (tag, digest) in manifests {
            let r = http()
                .get(format!("{}/v2/internal/crash/manifests/{tag}", p.url()))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "round {round}: acknowledged manifest {tag} survives"
            );
            assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        }
    }
    let acked = acked.lock().unwrap();
    assert!(
        !acked.blobs.is_empty() && !acked.manifests.is_empty(),
        "the workload got pushes through"
    );
    // after all that, pulls still work and are byte-identical
    for (i, img) in images.iter().enumerate() {
        for layer in &img.layers {
            let bytes = http()
                .get(format!("{}/v2/up/crash/img{i}/blobs/{layer}", p.url()))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            assert_eq!(sha256(&bytes), *layer);
        }
    }
    // the kills landed in the middle of what they were meant to interrupt
    let enough = (kills / 8).max(2);
    assert!(
        under.fills >= enough && under.evictions >= enough && under.uploads >= enough,
        "kills under way: {under:?} of {kills}"
    );
    eprintln!("{kills} kills survived ({under:?} under way); {} blobs and {} manifests acknowledged and kept", acked.blobs.len(), acked.manifests.len());
}
