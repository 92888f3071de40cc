//! Hostile input: path and name tricks on every method (and no file touched outside the
//! storage directory), huge headers, slow clients, malformed manifests, every write path
//! without credentials, brute force in the log.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;

const CI: &str = "Y2k6Y2ktcGFzcw=="; // ci:ci-pass

fn setup(t: &Path) -> (Registry, Proxy) {
    let reg = Registry::start(&t.join("upstream"));
    let dir = t.join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(
        &dir.join("users.htpasswd"),
        &[("ci", "ci-pass"), ("reader", "reader-pass")],
    );
    let config = format!(
        "[storage]\npath = \"data\"\nallow_delete = true\n[auth]\nhtpasswd = \"users.htpasswd\"\n[[auth.rule]]\nscope = \"internal/*\"\nread = [\"*\"]\nwrite = [\"ci\"]\n[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        reg.url()
    );
    let proxy = Proxy::start_with_server(
        &dir,
        "header_timeout = \"1s\"\nbody_timeout = \"1s\"",
        &config,
    );
    (reg, proxy)
}

/// Sends bytes as they are and reads the answer until the server closes or `wait` passes:
/// (status, whole response text).
fn send_raw(addr: &str, request: &[u8], wait: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Every file outside `skip` under `root`, with size and modification time.
fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<String, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.display().to_string(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

#[test]
fn path_and_name_tricks_are_refused_on_every_method_and_touch_nothing_outside_the_store() {
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = setup(t.path());
    std::fs::write(t.path().join("secret.txt"), "TOP-SECRET").unwrap();
    std::fs::write(proxy.dir.join("secret.txt"), "TOP-SECRET").unwrap();
    let skip = [
        proxy.data(),
        proxy.dir.join("proxy.log"),
        t.path().join("upstream"),
    ];
    let skip: Vec<&Path> = skip.iter().map(|p| p.as_path()).collect();
    let before = snapshot(t.path(), &skip);

    let long = "a".repeat(300);
    let paths = [
        "/v2/up/../../secret.txt/manifests/v1".to_string(),
        "/v2/internal/../../secret.txt/blobs/uploads/".to_string(),
        "/v2/internal/%2e%2e/%2e%2e/secret.txt/manifests/v1".to_string(),
        "/v2/internal/app%2f..%2f..%2fsecret.txt/manifests/v1".to_string(),
        "/v2/internal//app/manifests/v1".to_string(),
        "/v2/internal/app%00x/manifests/v1".to_string(),
        "/v2/internal/App/manifests/v1".to_string(),
        format!("/v2/internal/{long}/manifests/v1"),
        format!("/v2/internal/app/manifests/{}", "t".repeat(200)),
        "/v2/internal/app/manifests/..%2f..%2fsecret.txt".to_string(),
        "/v2/internal/app/blobs/sha512:abcd".to_string(),
        "/v2/internal/app/blobs/sha256:abcd".to_string(),
        "/v2/internal/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
        "/v2/internal/app/blobs/sha256:../../../secret.txt".to_string(),
        "/v2/internal/app/blobs/uploads/../../../secret.txt".to_string(),
        "/v2/internal/app/blobs/uploads/%2e%2e%2f%2e%2e%2fsecret.txt".to_string(),
        "/v2/internal/app/blobs/uploads/?digest=sha256:../../secret.txt".to_string(),
        "/v2/internal/app/blobs/uploads/?mount=sha256:../../x&from=../../secret.txt".to_string(),
        "/extensions/v2/internal/../../secret.txt/signatures/sha256:abcd".to_string(),
    ];
    let mut tried = 0;
    for path in &paths {
        for method in ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"] {
            let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {CI}\r\nContent-Length: 10\r\nConnection: close\r\n\r\nTOP-SECRET");
            let (status, text) = send_raw(&proxy.addr, request.as_bytes(), Duration::from_secs(10));
            tried += 1;
            assert!(
                (400..500).contains(&status),
                "{method} {path}: {status}\n{text}"
            );
            assert!(
                !text.contains("TOP-SECRET"),
                "{method} {path} leaked the file"
            );
            if method != "HEAD" {
                let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
                assert!(
                    body.contains("\"errors\""),
                    "{method} {path}: OCI error JSON: {text}"
                );
            }
        }
    }
    assert_eq!(
        snapshot(t.path(), &skip),
        before,
        "no file outside the storage directory was written"
    );
    assert!(proxy.log().contains("listening"), "still alive");
    assert_eq!(
        http()
            .get(format!("{}/healthz", proxy.url()))
            .send()
            .unwrap()
            .status(),
        200
    );
    eprintln!("{tried} hostile requests refused");
}

#[test]
fn huge_headers_slow_clients_and_malformed_manifests_are_refused_and_serving_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = setup(t.path());
    let alive = || {
        assert_eq!(
            http()
                .get(format!("{}/healthz", proxy.url()))
                .send()
                .unwrap()
                .status(),
            200
        )
    };

    // a 1 MiB header and a thousand headers
    let huge = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (status, _) = send_raw(&proxy.addr, huge.as_bytes(), Duration::from_secs(10));
    assert!(status == 431 || status == 0, "huge header: {status}");
    let many: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = send_raw(
        &proxy.addr,
        format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(10),
    );
    assert!(status == 431 || status == 0, "many headers: {status}");
    alive();

    // slowloris: headers that never end are cut off after header_timeout
    let started = Instant::now();
    let (status, _) = send_raw(
        &proxy.addr,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(15),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after the header timeout: {:?}",
        started.elapsed()
    );
    assert!(status == 408 || status == 0, "{status}");

    // a body that stops arriving: the request fails after body_timeout, nothing is stored
    let r = http()
        .post(format!("{}/v2/internal/app/blobs/uploads/", proxy.url()))
        .basic_auth("ci", Some("ci-pass"))
        .send()
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let path = location.trim_start_matches(&proxy.url()).to_string();
    let started = Instant::now();
    let request = format!("PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {CI}\r\nContent-Length: 1048576\r\n\r\n0123456789");
    let (status, text) = send_raw(&proxy.addr, request.as_bytes(), Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the stalled body was given up: {:?}",
        started.elapsed()
    );
    assert!(status >= 400 || status == 0, "{status}: {text}");
    alive();
    assert_store_consistent(&proxy);

    // malformed manifests
    let put = |body: Vec<u8>| {
        let r = http()
            .put(format!("{}/v2/internal/app/manifests/v1", proxy.url()))
            .basic_auth("ci", Some("ci-pass"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for (what, body) in [
        ("deeply nested JSON", deep.into_bytes()),
        ("invalid UTF-8", b"{\"schemaVersion\":2,\"mediaType\":\"\xff\xfe\"}".to_vec()),
        ("not JSON", b"\x00\x01\x02".to_vec()),
        ("wrong schema version", br#"{"schemaVersion":1}"#.to_vec()),
        ("config not a descriptor", br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":"x","layers":[]}"#.to_vec()),
    ] {
        let (status, body) = put(body);
        assert_eq!((status, error_code(&body).as_str()), (400, "MANIFEST_INVALID"), "{what}: {body}");
    }
    alive();
}

#[test]
fn every_write_path_needs_credentials_and_brute_force_shows_in_the_log() {
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = setup(t.path());
    let digest = sha256(b"x");
    let writes = [
        ("POST", "/v2/internal/app/blobs/uploads/".to_string()),
        ("POST", format!("/v2/internal/app/blobs/uploads/?digest={digest}")),
        ("POST", format!("/v2/internal/app/blobs/uploads/?mount={digest}&from=internal/other")),
        ("PATCH", "/v2/internal/app/blobs/uploads/00000000-0000-0000-0000-000000000000".to_string()),
        ("PUT", format!("/v2/internal/app/blobs/uploads/00000000-0000-0000-0000-000000000000?digest={digest}")),
        ("DELETE", "/v2/internal/app/blobs/uploads/00000000-0000-0000-0000-000000000000".to_string()),
        ("PUT", "/v2/internal/app/manifests/v1".to_string()),
        ("DELETE", "/v2/internal/app/manifests/v1".to_string()),
        ("DELETE", format!("/v2/internal/app/manifests/{digest}")),
        ("DELETE", format!("/v2/internal/app/blobs/{digest}")),
        ("PUT", format!("/extensions/v2/internal/app/signatures/{digest}")),
        ("POST", "/v2/up/library/alpine/blobs/uploads/".to_string()),
        ("PUT", "/v2/up/library/alpine/manifests/latest".to_string()),
    ];
    for (method, path) in &writes {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = http()
            .request(m.clone(), format!("{}{path}", proxy.url()))
            .body("{}")
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without credentials");
        assert_eq!(error_code(&r.text().unwrap()), "UNAUTHORIZED");
        if path.contains("/internal/") {
            // the internal/* rule lets only ci write (without a rule any signed-in user may)
            let r = http()
                .request(m, format!("{}{path}", proxy.url()))
                .basic_auth("reader", Some("reader-pass"))
                .body("{}")
                .send()
                .unwrap();
            assert_eq!(r.status(), 403, "{method} {path} as a reader");
        }
    }
    // brute force: every wrong attempt is logged with the client, no password ever is; after
    // ten failures the address is answered 429 with Retry-After, without a bcrypt check
    let signed_in = http()
        .get(format!("{}/v2/", proxy.url()))
        .basic_auth("ci", Some("ci-pass"))
        .send()
        .unwrap();
    assert_eq!(signed_in.status(), 200);
    for i in 0..20 {
        let r = http()
            .post(format!("{}/v2/internal/app/blobs/uploads/", proxy.url()))
            .basic_auth("ci", Some(format!("guess-{i}")))
            .send()
            .unwrap();
        if i < 10 {
            assert_eq!(r.status(), 401, "attempt {i}");
        } else {
            assert_eq!(r.status(), 429, "attempt {i}");
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait), "{wait}");
            assert_eq!(error_code(&r.text().unwrap()), "TOOMANYREQUESTS");
        }
    }
    let r = http()
        .post(format!("{}/v2/internal/app/blobs/uploads/", proxy.url()))
        .basic_auth("ci", Some("ci-pass"))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "credentials known to be right still pass from that address"
    );
    // the scheme's case does not matter (RFC 9110)
    let r = http()
        .post(format!("{}/v2/internal/app/blobs/uploads/", proxy.url()))
        .header("authorization", format!("bAsIc {CI}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "bAsIc");
    let log = proxy.log();
    let failures = log
        .lines()
        .filter(|l| l.contains("failed sign-in") && l.contains("127.0.0.1") && l.contains("ci"))
        .count();
    assert_eq!(
        failures, 10,
        "each failed attempt is logged with its client, the refused ones are not checked"
    );
    assert!(
        !log.contains("guess-")
            && !log.contains("ci-pass")
            && !log.contains("reader-pass")
            && !log.contains(CI),
        "no secret in any log line"
    );
}

#[test]
fn unknown_users_cost_as_much_to_refuse_as_wrong_passwords() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let dir = t.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    // cost 10: each check takes tens of milliseconds, far above the request's own cost
    let line = format!("ci:{}\n", bcrypt::hash("ci-pass", 10).unwrap());
    std::fs::write(dir.join("users.htpasswd"), line).unwrap();
    let proxy = Proxy::start(&dir, &format!("[storage]\npath = \"data\"\n{}[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n", "[auth]\nhtpasswd = \"users.htpasswd\"\n", reg.url()));
    let url = format!("{}/v2/internal/app/blobs/uploads/", proxy.url());
    // distinct passwords (a repeated wrong one is refused from memory), fewer than the ten
    // failures an address may make
    let median = |user: &str| {
        let mut took: Vec<Duration> = (0..4)
            .map(|i| {
                let started = Instant::now();
                assert_eq!(
                    http()
                        .post(&url)
                        .basic_auth(user, Some(format!("nope-{i}")))
                        .send()
                        .unwrap()
                        .status(),
                    401
                );
                started.elapsed()
            })
            .collect();
        took.sort();
        took[1]
    };
    let (known, unknown) = (median("ci"), median("mallory"));
    assert!(
        unknown * 2 > known && known * 2 > unknown,
        "an unknown user is refused in the same time as a wrong password: {unknown:?} vs {known:?}"
    );
}
