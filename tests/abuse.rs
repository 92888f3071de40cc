//! Abuse does not take the proxy down: silent and idle connections, too many connections, no
//! descriptors left, upstream-driven fan-out, hostile sizes, panics. Each test tries it on
//! loopback, bounded in count and time, and checks that serving goes on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// How long after `limit` a close may come (the server checks idleness on timers).
const MARGIN: Duration = Duration::from_secs(3);

/// Waits for the server to close `s` (EOF or reset); the time that took, or None when it was
/// still open after `within`.
fn closed_within(s: &mut impl Read, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

#[test]
fn silent_and_idle_connections_are_closed_whatever_the_protocol() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let timeouts = "header_timeout = \"1s\"\nidle_timeout = \"2s\"\n";
    let config = format!(
        "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        reg.url()
    );
    let plain = Proxy::start_with_server(&t.path().join("plain"), timeouts, &config);
    let pki = tls::make_pki(&t.path().join("pki"));
    let tls_server = format!(
        "{timeouts}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    );
    let secure = Proxy::start_with_server(&t.path().join("tls"), &tls_server, &config);
    let header = Duration::from_secs(1);

    // HTTP/1 or anything else: not a byte
    let mut s = connect(&plain.addr);
    assert!(
        closed_within(&mut s, header + MARGIN).is_some(),
        "a connection that sends nothing is closed"
    );
    // TLS: no handshake
    let mut s = connect(&secure.addr);
    assert!(
        closed_within(&mut s, header + MARGIN).is_some(),
        "a TLS connection that never shakes hands is closed"
    );
    // HTTP/2 with prior knowledge: the preface and settings, then no request
    let mut s = connect(&plain.addr);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    assert!(
        closed_within(&mut s, header + MARGIN).is_some(),
        "an HTTP/2 connection that never asks is closed"
    );
    // HTTP/1 keep-alive: a request answered, then nothing
    let mut s = connect(&plain.addr);
    write!(s, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // (over HTTP/1 the wait for a next request's headers also falls under the header timeout)
    assert!(
        closed_within(&mut s, Duration::from_secs(2) + MARGIN).is_some(),
        "an idle keep-alive connection is closed"
    );
    // an HTTP/2 connection that made a request and then idles is closed after the idle timeout
    let mut s = connect(&plain.addr);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    // HEADERS, stream 1, END_STREAM|END_HEADERS: GET /v2/ over http, literal fields without indexing
    let mut block = vec![0x82, 0x86, 0x04, 0x04];
    block.extend_from_slice(b"/v2/");
    block.extend_from_slice(&[0x01, 0x01, b'x']);
    let mut frame = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    s.write_all(&frame).unwrap();
    let idle = closed_within(
        &mut s,
        Duration::from_secs(2) + Duration::from_secs(1) + MARGIN,
    )
    .expect("an idle HTTP/2 connection is closed");
    assert!(
        idle > Duration::from_millis(1500),
        "not before the idle timeout: {idle:?}"
    );

    // a download that takes longer than the idle timeout is not cut
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "long",
            layers: &[4 << 20],
            tag: "v1",
        },
    );
    reg.push(&img, "long/app:v1");
    let mut r = http()
        .get(format!(
            "{}/v2/up/long/app/blobs/{}",
            plain.url(),
            img.layers[0]
        ))
        .send()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let started = Instant::now();
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    assert_eq!(
        sha256(&got),
        img.layers[0],
        "a slow reader gets the whole blob"
    );
    assert_eq!(
        http()
            .get(format!("{}/v2/", plain.url()))
            .send()
            .unwrap()
            .status(),
        200,
        "serving goes on"
    );
}

#[test]
fn beyond_max_connections_new_connections_wait_and_the_log_says_so() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::start_with_server(
        &t.path().join("proxy"),
        "max_connections = 4\n",
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            reg.url()
        ),
    );
    let ask = |s: &mut TcpStream| {
        write!(s, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).map(|_| head)
    };
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect(&proxy.addr)).collect();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(&ask(s).unwrap(), b"HTTP/1.1 200");
    }
    let mut fifth = connect(&proxy.addr);
    fifth
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(
        ask(&mut fifth).is_err(),
        "a fifth connection is not served while four are open"
    );
    assert!(
        proxy.log().contains("max_connections reached"),
        "the log says why"
    );
    drop(held.pop());
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = [0u8; 12];
    fifth.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "served once a connection closed");
}

#[test]
fn the_accept_loop_survives_running_out_of_file_descriptors() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let proxy = Proxy::start_under(
        &["prlimit", "--nofile=64:64"],
        &t.path().join("proxy"),
        "max_connections = 1000\n",
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            reg.url()
        ),
    );
    let mut flood: Vec<TcpStream> = Vec::new();
    for _ in 0..120 {
        let Ok(mut s) = TcpStream::connect(&proxy.addr) else {
            break;
        };
        let _ = write!(s, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
        flood.push(s);
    }
    wait_for(
        "accept to run out of descriptors",
        Duration::from_secs(10),
        || proxy.log().contains("accept failed"),
    );
    drop(flood);
    wait_for("the proxy to serve again", Duration::from_secs(10), || {
        http()
            .get(format!("{}/v2/", proxy.url()))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    assert!(
        proxy.log().contains("Too many open files"),
        "{}",
        proxy.log()
    );
}

#[test]
fn upstream_credentials_never_leave_the_upstreams_origin() {
    use common::liar::Liar;
    let t = tempfile::tempdir().unwrap();
    let (upstream, elsewhere) = (Liar::start(), Liar::start());
    upstream.require_basic();
    upstream.tags("team/app", vec!["v1".into(), "v2".into()]);
    upstream.tags_link(&format!(
        "{}/v2/team/app/tags/list?last=v2",
        elsewhere.url()
    ));
    elsewhere.require_basic();
    elsewhere.tags("team/app", vec!["planted".into()]);
    std::fs::write(t.path().join("pw"), "upstream-secret\n").unwrap();
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\nusername = \"puller\"\npassword_file = \"{}\"\n",
            upstream.url(),
            t.path().join("pw").display()
        ),
    );
    let r = http()
        .get(format!("{}/v2/up/team/app/tags/list", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: serde_json::Value = r.json().unwrap();
    assert_eq!(
        list["tags"],
        serde_json::json!(["v1", "v2"]),
        "nothing from the other host is merged"
    );
    assert!(
        upstream
            .authorizations("/tags/list")
            .iter()
            .any(|a| a.as_deref().is_some_and(|a| a.starts_with("Basic "))),
        "the upstream got its credentials"
    );
    assert!(
        elsewhere.authorizations("/v2/").is_empty(),
        "the other host was never asked, let alone given the credentials"
    );
    assert!(proxy.log().contains("on another host; not followed"));
}

#[test]
fn a_token_that_claims_to_live_for_ever_is_used_for_a_day_at_most() {
    use common::liar::Liar;
    let t = tempfile::tempdir().unwrap();
    let liar = Liar::start();
    liar.require_token();
    liar.token_expires_in("18446744073709551615");
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    liar.manifest(
        "team/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        manifest,
    );
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "liar", &liar.url(), "");
    for _ in 0..3 {
        let r = http()
            .get(format!("{}/v2/liar/team/app/manifests/v1", proxy.url()))
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "served (the overflowing lifetime saturates)"
        );
    }
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

#[test]
fn responses_are_never_sniffed_and_a_manifest_is_only_ever_served_as_a_manifest() {
    use common::liar::Liar;
    let t = tempfile::tempdir().unwrap();
    let liar = Liar::start();
    let html = br#"{"schemaVersion":2,"mediaType":"text/html","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[],"annotations":{"x":"<script>alert(1)</script>"}}"#;
    liar.manifest("team/page", "v1", "text/html", html);
    let dir = t.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(&dir.join("users.htpasswd"), &[("ci", "ci-pass")]);
    let proxy = Proxy::start(
        &dir,
        &format!("[storage]\npath = \"data\"\n[auth]\nhtpasswd = \"users.htpasswd\"\n[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"liar\"\nurl = \"{}\"\n", liar.url()),
    );
    let r = http()
        .get(format!("{}/v2/liar/team/page/manifests/v1", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json",
        "never text/html"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    // pushed: refused
    let config = b"{}";
    let up = http()
        .post(format!(
            "{}/v2/internal/page/blobs/uploads/?digest={}",
            proxy.url(),
            sha256(config)
        ))
        .basic_auth("ci", Some("ci-pass"))
        .body(config.to_vec())
        .send()
        .unwrap();
    assert_eq!(up.status(), 201);
    let r = http()
        .put(format!("{}/v2/internal/page/manifests/v1", proxy.url()))
        .basic_auth("ci", Some("ci-pass"))
        .header("content-type", "text/html")
        .body(html.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().unwrap()), "MANIFEST_INVALID");
    // every response, errors and the base endpoint included
    for path in [
        "/v2/",
        "/v2/liar/team/page/manifests/v404",
        "/v2/nowhere/x/tags/list",
        "/healthz",
    ] {
        let r = http().get(format!("{}{path}", proxy.url())).send().unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A memory figure of a process's /proc status (`VmRSS`, `RssAnon`), in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_warm_manifest_gets_leaves_nothing_behind_per_request() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "flood",
            layers: &[100],
            tag: "v1",
        },
    );
    reg.push(&img, "app/flood:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let url = format!("{}/v2/up/app/flood/manifests/v1", proxy.url());
    let get = |c: &reqwest::blocking::Client| {
        c.get(&url)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(get(&http()), 200);
    let before = status_kib(proxy.pid(), "RssAnon");
    // 16 keep-alive clients GET the same warm manifest by tag for 6 s (its attachments looked up
    // in the background meanwhile, and again when their resolution expires), anonymous memory
    // sampled
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (peak, served) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib(proxy.pid(), "RssAnon"));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        let clients: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let (c, mut n) = (http(), 0u64);
                    let end = Instant::now() + Duration::from_secs(6);
                    while Instant::now() < end {
                        assert_eq!(get(&c), 200);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let served: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (sampler.join().unwrap(), served)
    });
    let grown = peak.saturating_sub(before);
    assert!(grown < 16 << 10, "{served} GETs of one warm manifest grew anonymous memory by {grown} KiB (from {before} KiB)");
    eprintln!("{served} GETs, anonymous memory {before} KiB -> peak {peak} KiB");
}

#[test]
fn distinct_askers_and_chatty_modules_do_not_grow_the_proxy() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "askers",
            layers: &[100],
            tag: "v1",
        },
    );
    for repo in ["app/x", "chatty/x", "wordy/x"] {
        reg.push(&img, &format!("{repo}:v1"));
    }
    let (allow, chatty) = (
        policy_module("policies", "allow-all"),
        policy_module("tests/policies", "chatty"),
    );
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        &format!(
            "[[policy]]\nname = \"allow\"\nmodule = \"{0}\"\nscope = [\"up/app/*\"]\n\
             [[policy]]\nname = \"chatty\"\nmodule = \"{1}\"\nscope = [\"up/chatty/*\"]\n\
             [[policy]]\nname = \"wordy\"\nmodule = \"{1}\"\nscope = [\"up/wordy/*\"]\n[policy.settings]\nreason = true\n",
            allow.display(),
            chatty.display()
        ),
    );
    let url = |repo: &str| format!("{}/v2/up/{repo}/manifests/v1", proxy.url());
    assert_eq!(http().get(url("app/x")).send().unwrap().status(), 200);
    let before = rss_kib(proxy.pid());
    // every anonymous pull a different 60 KB User-Agent: one cached decision each
    let client = http();
    for i in 0..3000 {
        let agent = format!("{i:08}{}", "a".repeat(60_000));
        assert_eq!(
            client
                .get(url("app/x"))
                .header("user-agent", agent)
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    assert!(
        grown < 48 << 10,
        "3000 distinct askers grew the proxy by {grown} KiB"
    );

    // a module that logs 4 KiB lines until its time is up, and one with a 1 MiB reason
    let before = rss_kib(proxy.pid());
    for _ in 0..3 {
        let r = http().get(url("chatty/x")).send().unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.text().unwrap().contains("exceeded its timeout"));
    }
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    assert!(
        grown < 48 << 10,
        "logging modules grew the proxy by {grown} KiB"
    );
    let lines = proxy
        .log()
        .lines()
        .filter(|l| l.contains("portcullis::policy") && l.contains("xxxx"))
        .count();
    assert!(
        lines <= 3 * 100,
        "at most 100 lines an evaluation reach the log: {lines}"
    );
    assert!(proxy.log().contains("the rest are dropped"));
    let r = http().get(url("wordy/x")).send().unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().unwrap();
    assert!(
        body.len() < 2048 && body.contains("..."),
        "a module's reason is cut: {} bytes",
        body.len()
    );
}

#[test]
fn upstream_fan_out_is_capped_and_huge_payloads_are_never_read_into_memory() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "fan-out",
            layers: &[1000],
            tag: "v1",
        },
    );
    reg.push(&img, "demo/app:v1");
    let config = push_blob(&reg, "demo/app", b"{}");
    // a .sig listing one 64 MiB blob eight times (declaring it small), then a hundred tiny layers
    let huge = push_blob(&reg, "demo/app", &image::noise("huge payload", 64 << 20));
    let tiny = push_blob(&reg, "demo/app", br#"{"critical":{}}"#);
    let layer = |digest: &str, size: usize| {
        serde_json::json!({"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": digest, "size": size,
            "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}})
    };
    let layers: Vec<serde_json::Value> = std::iter::repeat_n(layer(&huge, 1000), 8)
        .chain(std::iter::repeat_n(layer(&tiny, 15), 100))
        .collect();
    let sig = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2}, "layers": layers}).to_string();
    push_manifest(
        &reg,
        "demo/app",
        &format!("{}.sig", img.digest.replace(':', "-")),
        "application/vnd.oci.image.manifest.v1+json",
        sig.as_bytes(),
    );
    // and a referrers index (the tag schema) listing a hundred artifacts
    let artifacts: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            let blob = push_blob(&reg, "demo/app", format!("{{\"n\":{i}}}").as_bytes());
            let m = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": "application/vnd.example.note",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
                "layers": [{"mediaType": "application/json", "digest": blob, "size": format!("{{\"n\":{i}}}").len()}],
                "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": img.digest, "size": img.manifest.len()}}).to_string();
            let d = sha256(m.as_bytes());
            push_manifest(&reg, "demo/app", &d, "application/vnd.oci.image.manifest.v1+json", m.as_bytes());
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": m.len(), "artifactType": "application/vnd.example.note"})
        })
        .collect();
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": artifacts}).to_string();
    push_manifest(
        &reg,
        "demo/app",
        &img.digest.replace(':', "-"),
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
    );

    let module = policy_module("policies", "require-signature");
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        &format!(
            "[trust.release-keys]\nkeys = [\"{}\"]\n[[policy]]\nname = \"require-signature\"\nmodule = \"{}\"\nscope = [\"up/*\"]\n[policy.settings]\ntrust = \"release-keys\"\n",
            keys.join("cosign.pub").display(),
            module.display()
        ),
    );
    let before = rss_kib(proxy.pid());
    let refusals: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/v2/up/demo/app/manifests/v1", proxy.url());
            std::thread::spawn(move || {
                let r = http().get(url).send().unwrap();
                (r.status().as_u16(), r.text().unwrap())
            })
        })
        .collect();
    for r in refusals {
        let (status, body) = r.join().unwrap();
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("over the 4 MiB limit"),
            "the reason names the cap: {body}"
        );
        assert!(
            body.contains("at most 64 layers"),
            "and the layer count's: {body}"
        );
    }
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    assert!(grown < 48 << 10, "verifying grew the proxy by {grown} KiB");
    let r = http()
        .get(format!(
            "{}/v2/up/demo/app/referrers/{}",
            proxy.url(),
            img.digest
        ))
        .send()
        .unwrap();
    let listed: serde_json::Value = r.json().unwrap();
    assert!(
        listed["manifests"].as_array().unwrap().len() <= 64 + 1,
        "attachments per image are capped: {}",
        listed["manifests"].as_array().unwrap().len()
    );
    assert!(proxy.log().contains("the rest are ignored"));
}

#[test]
fn a_cached_layer_asked_for_as_a_manifest_is_never_read_into_memory() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let layer = push_blob(&reg, "team/app", &image::noise("a big layer", 96 << 20));
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "up", &reg.url(), "");
    let r = http()
        .get(format!("{}/v2/up/team/app/blobs/{layer}", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(sha256(&r.bytes().unwrap()), layer);
    assert!(proxy.cached(&layer));
    let before = rss_kib(proxy.pid());
    let askers: Vec<_> = ["never/existed", "team/app"]
        .iter()
        .flat_map(|name| std::iter::repeat_n(*name, 4))
        .flat_map(|name| ["GET", "HEAD"].map(|m| (m, name)))
        .map(|(method, name)| {
            let url = format!("{}/v2/up/{name}/manifests/{layer}", proxy.url());
            std::thread::spawn(move || {
                let r = http()
                    .request(
                        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                        &url,
                    )
                    .send()
                    .unwrap();
                (
                    r.status().as_u16(),
                    format!("{method} {url}: {}", r.text().unwrap_or_default()),
                )
            })
        })
        .collect();
    for a in askers {
        let (status, what) = a.join().unwrap();
        // under its own repository the real upstream itself fails on a layer asked for as a
        // manifest (500), which the proxy relays as 502; elsewhere it does not exist at all
        let expected: &[u16] = if what.contains("/team/app/") {
            &[404, 502]
        } else {
            &[404]
        };
        assert!(expected.contains(&status), "{status}: {what}");
    }
    let grown = rss_kib(proxy.pid()).saturating_sub(before);
    assert!(
        grown < 48 << 10,
        "asking for a layer as a manifest grew the proxy by {grown} KiB"
    );
}

#[test]
fn a_flood_of_tag_list_requests_asks_the_upstream_once_per_tag_ttl() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "tags",
            layers: &[100],
            tag: "v1",
        },
    );
    reg.push(&img, "team/app:v1");
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        "[cache]\ntag_ttl = \"1h\"\n",
    );
    let askers: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{}/v2/up/team/app/tags/list", proxy.url());
            std::thread::spawn(move || {
                http()
                    .get(url)
                    .send()
                    .unwrap()
                    .json::<serde_json::Value>()
                    .unwrap()
            })
        })
        .collect();
    for a in askers {
        assert_eq!(a.join().unwrap()["tags"], serde_json::json!(["v1"]));
    }
    assert_eq!(
        reg.count_settled("GET", "/team/app/tags/list", 1),
        1,
        "one upstream request for twenty clients"
    );
}

#[test]
fn clients_that_never_read_their_downloads_are_dropped_after_body_timeout() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let layer = push_blob(&reg, "team/app", &image::noise("never read", 64 << 20));
    let proxy = Proxy::start_with_server(
        &t.path().join("proxy"),
        "body_timeout = \"2s\"\nmax_connections = 2\n",
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            reg.url()
        ),
    );
    let url = format!("{}/v2/up/team/app/blobs/{layer}", proxy.url());
    assert_eq!(
        sha256(&http().get(&url).send().unwrap().bytes().unwrap()),
        layer,
        "cached"
    );
    // two connections take every slot, ask for the blob, read its first bytes and stop
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&proxy.addr);
            write!(
                s,
                "GET /v2/up/team/app/blobs/{layer} HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
            s
        })
        .collect();
    let started = Instant::now();
    let r = http().get(format!("{}/v2/", proxy.url())).send().unwrap();
    assert_eq!(
        r.status(),
        200,
        "served once a stalled connection was dropped"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2) + MARGIN,
        "{:?}",
        started.elapsed()
    );
    wait_for(
        "both stalled connections dropped, as the log says",
        MARGIN,
        || proxy.log().matches("the client does not read").count() == 2,
    );
    // the stalled clients find their connections closed before the whole blob arrived
    for s in &mut stalled {
        let mut got = 12usize;
        let mut buf = vec![0u8; 1 << 20];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
        assert!(got < 64 << 20, "{got} bytes");
    }
}
