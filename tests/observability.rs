//! Metrics scraped by a real Prometheus server, checked by promtool; request ids followed
//! through the JSON logs, the policy audit log and the upstream; no secret in any of it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::liar::{Behaviour, Liar};
use common::*;

/// A Prometheus server on a loopback port scraping `target` every second, with the example
/// alerting rules loaded.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/alerts.yml");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: portcullis\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (tests/setup.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            http()
                .get(format!("{url}/-/ready"))
                .send()
                .is_ok_and(|r| r.status() == 200)
        });
        Prometheus { child, url }
    }

    /// The value of an instant query's single result (None: no result).
    fn value(&self, query: &str) -> Option<f64> {
        let r: serde_json::Value = http()
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC)
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["status"], "success", "{query}: {r}");
        let results = r["data"]["result"].as_array().unwrap();
        assert!(results.len() <= 1, "{query} has one series: {r}");
        results
            .first()
            .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// Waits until Prometheus has scraped `query` at `expected`.
    fn wait_value(&self, query: &str, expected: f64) {
        let mut last = None;
        wait_for(query, Duration::from_secs(20), || {
            last = self.value(query);
            last == Some(expected)
        });
        assert_eq!(last, Some(expected), "{query}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metrics_address(proxy: &Proxy) -> String {
    let log = proxy.log();
    log.lines()
        .find_map(|l| l.strip_prefix("portcullis metrics on "))
        .expect("the proxy names its metrics address")
        .to_string()
}

fn scrape(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut req = http().get(format!("http://{addr}/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    (kind, r.text().unwrap())
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_what_pulls_refusals_and_failures_did() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "metrics",
            layers: &[2048, 300_000],
            tag: "v1",
        },
    );
    reg.push(&img, "obs/app:v1");
    reg.push(&img, "obs/app:blocked");
    let deny = policy_module("policies", "deny-tags");
    let trap = policy_module("tests/policies", "trap");
    let proxy = Proxy::start(
        &t.path().join("proxy"),
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n\
             [[upstream]]\nname = \"up\"\nurl = \"{}\"\n\
             [[policy]]\nname = \"deny-tags\"\nmodule = \"{}\"\nscope = [\"up/obs/*\"]\nsettings = {{ tags = [\"blocked\"] }}\n\
             [[policy]]\nname = \"trap\"\nmodule = \"{}\"\nscope = [\"up/traps/*\"]\n\
             [[policy]]\nname = \"spin\"\nmodule = \"{}\"\nscope = [\"up/spins/*\"]\ntimeout = \"50ms\"\n\
             [[policy]]\nname = \"hog\"\nmodule = \"{}\"\nscope = [\"up/hogs/*\"]\nmemory = \"8MiB\"\n",
            reg.url(),
            deny.display(),
            trap.display(),
            policy_module("tests/policies", "spin").display(),
            policy_module("tests/policies", "hog").display(),
        ),
    );
    let metrics = metrics_address(&proxy);
    // the metrics are on their own listener only
    let on_api = http()
        .get(format!("{}/metrics", proxy.url()))
        .send()
        .unwrap();
    assert_eq!(
        on_api.status(),
        404,
        "the registry API does not serve /metrics"
    );
    let prometheus = Prometheus::start(&t.path().join("prometheus"), &metrics);
    prometheus.wait_value("up{job=\"portcullis\"}", 1.0);

    // one cold pull and two warm ones
    let image = format!("{}/up/obs/app:v1", proxy.addr);
    for i in 0..3 {
        skopeo_pull(&image, &t.path().join(format!("pull{i}"))).success();
    }
    let blobs = img.blobs().len() as f64;
    // the refused tag, and an image a trapping policy has to decide on
    let refused = skopeo_pull(
        &format!("{}/up/obs/app:blocked", proxy.addr),
        &t.path().join("refused"),
    );
    assert!(
        refused.stderr.contains("policy deny-tags"),
        "{}",
        refused.stderr
    );
    for (repo, policy) in [("traps", "trap"), ("spins", "spin"), ("hogs", "hog")] {
        reg.push(&img, &format!("{repo}/app:v1"));
        let failed = skopeo_pull(
            &format!("{}/up/{repo}/app:v1", proxy.addr),
            &t.path().join(repo),
        );
        assert!(
            failed.stderr.contains(&format!("policy {policy}")),
            "{}",
            failed.stderr
        );
    }

    let cache = |kind: &str, outcome: &str| {
        format!("portcullis_cache_requests_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}")
    };
    prometheus.wait_value(&cache("blob", "miss"), blobs);
    prometheus.wait_value(&cache("blob", "hit"), 2.0 * blobs);
    prometheus.wait_value(
        "sum(portcullis_http_requests_total{route=\"blob\",method=\"GET\",code=\"200\"})",
        3.0 * blobs,
    );
    prometheus.wait_value(
        "sum(portcullis_policy_evaluations_total{policy=\"deny-tags\",decision=\"reject\",mode=\"enforce\"})",
        1.0,
    );
    for (policy, kind) in [("trap", "trap"), ("spin", "timeout"), ("hog", "memory")] {
        prometheus.wait_value(
            &format!("portcullis_policy_failures_total{{policy=\"{policy}\",kind=\"{kind}\"}}"),
            1.0,
        );
    }
    let admitted = prometheus
        .value("sum(portcullis_policy_evaluations_total{policy=\"deny-tags\",decision=\"admit\"})")
        .unwrap();
    assert!(admitted >= 3.0, "three pulls admitted: {admitted}");
    let cached = prometheus
        .value("sum(portcullis_policy_evaluations_total{policy=\"deny-tags\",cached=\"true\"})")
        .unwrap();
    assert!(
        cached >= 2.0,
        "the warm pulls' decisions came from the cache: {cached}"
    );
    let from_upstream = prometheus
        .value("portcullis_upstream_requests_total{upstream=\"up\",outcome=\"ok\"}")
        .unwrap();
    assert!(
        from_upstream >= blobs,
        "the upstream answered: {from_upstream}"
    );
    let served = prometheus
        .value("portcullis_served_bytes_total{source=\"cache\"}")
        .unwrap();
    let layer_bytes: usize = img.layers.iter().map(|l| img.blob(l).len()).sum();
    assert!(
        served >= 2.0 * layer_bytes as f64,
        "warm bytes counted: {served}"
    );
    assert!(
        prometheus
            .value("portcullis_storage_stored_bytes{tier=\"local\"}")
            .unwrap()
            >= layer_bytes as f64
    );
    assert!(prometheus.value("process_resident_memory_bytes").unwrap() > 1e6);
    assert_eq!(
        prometheus.value("portcullis_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    assert_eq!(
        prometheus.value("portcullis_http_requests_in_flight"),
        Some(0.0)
    );
    // the example rules load and evaluate
    let rules: serde_json::Value = http()
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let rules = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .clone();
    assert!(rules.len() >= 5, "{rules:?}");
    wait_for("every rule evaluated", Duration::from_secs(10), || {
        let r: serde_json::Value = http()
            .get(format!("{}/api/v1/rules", prometheus.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|rule| rule["health"] == "ok")
    });

    // the Prometheus text format passes promtool; OpenMetrics when asked for
    let (kind, text) = scrape(&metrics, None);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    promtool_check(&text);
    let (kind, open) = scrape(
        &metrics,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# TYPE portcullis_http_requests counter"));
    // no label names a repository, a digest or a client
    for forbidden in ["obs/app", "sha256:", "127.0.0.1:"] {
        assert!(!text.contains(forbidden), "{forbidden} in the metrics");
    }
}

/// An upstream that answers 404 to everything and remembers each request's `X-Request-Id`.
fn spy_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let ids = Arc::clone(&ids);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut line = String::new();
                    let mut id = None;
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("x-request-id") {
                                id = Some(v.trim().to_string());
                            }
                        }
                    }
                    ids.lock().unwrap().push(id.unwrap_or_default());
                    let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}"#;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn request_ids_follow_a_request_through_json_logs_the_audit_log_and_the_upstream() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "ids",
            layers: &[1024],
            tag: "v1",
        },
    );
    reg.push(&img, "obs/app:v1");
    let (spy, seen) = spy_upstream();
    let allow = policy_module("policies", "allow-all");
    let dir = t.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(&dir.join("htpasswd"), &[("ci", "s3cret-Pa55word")]);
    let proxy = Proxy::start(
        &dir,
        &format!(
            "[log]\nformat = \"json\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"data\"\n\
             [auth]\nhtpasswd = \"htpasswd\"\n\
             [policies]\naudit = \"audit.log\"\n\
             [[upstream]]\nname = \"up\"\nurl = \"{}\"\n\
             [[upstream]]\nname = \"spy\"\nurl = \"{spy}\"\nretries = 0\n\
             [[policy]]\nname = \"allow-all\"\nmodule = \"{}\"\nscope = [\"up/*\"]\n",
            reg.url(),
            allow.display()
        ),
    );
    let get = |path: &str, id: Option<&str>, user: Option<(&str, &str)>| {
        let mut r = http()
            .get(format!("{}{path}", proxy.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json");
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        if let Some((u, p)) = user {
            r = r.basic_auth(u, Some(p));
        }
        r.send().unwrap()
    };
    // a client's id is kept and echoed, and names the audit record and the access line
    let r = get(
        "/v2/up/obs/app/manifests/v1",
        Some("ci-run-7.step:3"),
        Some(("ci", "s3cret-Pa55word")),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "ci-run-7.step:3");
    // a malformed one is replaced, never echoed
    let r = get(
        "/v2/up/obs/app/manifests/v1",
        Some("bad id\"with<stuff>"),
        None,
    );
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 16, "{made}");
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
    // without one, a fresh one each time
    let a = get("/v2/", None, None).headers()["x-request-id"].clone();
    let b = get("/v2/", None, None).headers()["x-request-id"].clone();
    assert_ne!(a, b);
    // the id goes to the upstream with the requests it causes
    let r = get(
        "/v2/spy/some/app/manifests/latest",
        Some("to-the-upstream-1"),
        None,
    );
    assert_eq!(r.status(), 404);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|id| id == "to-the-upstream-1"),
        "the upstream saw the id: {:?}",
        seen.lock().unwrap()
    );
    // a wrong password, for the secrets check below
    let r = get(
        "/v2/up/obs/app/manifests/v1",
        Some("wrong-password-1"),
        Some(("ci", "wrong-Pa55word")),
    );
    assert_eq!(r.status(), 401);

    // the audit record names the request
    let audit = dir.join("audit.log");
    wait_for("the audit record", Duration::from_secs(5), || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("ci-run-7.step:3")
    });
    let record: serde_json::Value = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["request_id"] == "ci-run-7.step:3")
        .unwrap();
    assert_eq!(record["user"], "ci");
    assert_eq!(record["digest"], img.digest.as_str());

    // every log line is one JSON object; the access line has the documented fields
    wait_for("the access lines", Duration::from_secs(5), || {
        proxy.log().contains("wrong-password-1")
    });
    let log = proxy.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = events
        .iter()
        .find(|e| e["target"] == "portcullis::access" && e["request_id"] == "ci-run-7.step:3")
        .expect("the access line of the first request");
    for (field, value) in [
        ("method", "GET"),
        ("route", "manifest"),
        ("namespace", "up"),
        ("repository", "obs/app"),
        ("reference", "v1"),
        ("user", "ci"),
        ("upstream", "up"),
        ("outcome", "done"),
    ] {
        assert_eq!(access[field], value, "{field} in {access}");
    }
    assert_eq!(access["status"], 200);
    for field in ["timestamp", "client", "user_agent", "bytes", "cache", "ms"] {
        assert!(!access[field].is_null(), "{field} in {access}");
    }
    // a line logged while answering names the request
    let warning = events
        .iter()
        .find(|e| e["message"] == "failed sign-in")
        .expect("the failed sign-in is logged");
    assert_eq!(warning["request_id"], "wrong-password-1", "{warning}");
    assert_eq!(warning["user"], "ci");

    // the failed sign-in is counted
    let metrics = events
        .iter()
        .find(|e| e["message"] == "metrics listening")
        .and_then(|e| e["addr"].as_str())
        .expect("the metrics address is logged")
        .to_string();
    let (_, scraped) = scrape(&metrics, None);
    assert_eq!(
        sample(&scraped, "portcullis_auth_failures_total"),
        Some(1.0)
    );

    // no secret anywhere: passwords, the credentials header, its base64
    let audit = std::fs::read_to_string(&audit).unwrap();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    for secret in [
        "s3cret-Pa55word".to_string(),
        "wrong-Pa55word".to_string(),
        b64("ci:s3cret-Pa55word"),
        b64("ci:wrong-Pa55word"),
        "Basic ".to_string(),
        "authorization".to_string(),
    ] {
        for (name, text) in [("log", &log), ("audit log", &audit), ("metrics", &scraped)] {
            assert!(
                !text.to_lowercase().contains(&secret.to_lowercase()),
                "{secret} in the {name}"
            );
        }
    }
}

#[test]
fn the_example_prometheus_configuration_and_rules_pass_promtool() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&examples)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One sample's value in a scrape (None: no such line).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn upstream_outcomes_tokens_and_sign_in_failures_are_counted_and_no_token_is_logged() {
    let t = tempfile::tempdir().unwrap();
    let liar = Liar::start();
    liar.require_token();
    let good = image::noise("counted", 5000);
    liar.blob(&sha256(&good), Behaviour::Good(good.clone()));
    let real = image::noise("real", 5000);
    liar.blob(
        &sha256(&real),
        Behaviour::Wrong(image::noise("forged", 5000)),
    );
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "liar",
        &liar.url(),
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let blob = |digest: &str| {
        http()
            .get(format!("{}/v2/liar/r/blobs/{digest}", proxy.url()))
            .send()
            .unwrap()
    };
    let r = blob(&sha256(&good));
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), good.as_slice());
    // counted before the forged blob, whose answer may or may not begin before its mismatch shows
    let (_, before) = scrape(&metrics_address(&proxy), None);
    assert_eq!(
        sample(
            &before,
            "portcullis_cache_requests_total{kind=\"blob\",outcome=\"miss\"}"
        ),
        Some(1.0),
        "the good blob, fetched fresh from the upstream"
    );
    let _ = blob(&sha256(&real)).bytes();
    assert_eq!(blob(&sha256(b"absent")).status(), 404);
    let (_, text) = scrape(&metrics_address(&proxy), None);
    let upstream = |outcome: &str| {
        sample(
            &text,
            &format!(
                "portcullis_upstream_requests_total{{upstream=\"liar\",outcome=\"{outcome}\"}}"
            ),
        )
        .unwrap_or_else(|| panic!("{outcome} counted: {text}"))
    };
    assert_eq!(upstream("digest_mismatch"), 1.0);
    assert!(
        upstream("ok") >= 2.0,
        "the good blob and the forged one's answer"
    );
    assert!(upstream("not_found") >= 1.0);
    assert_eq!(upstream("denied"), 1.0, "the one token challenge");
    assert_eq!(
        sample(
            &text,
            "portcullis_upstream_token_fetches_total{upstream=\"liar\"}"
        ),
        Some(1.0)
    );
    assert_eq!(liar.hits("/token"), 1);
    for (name, text) in [("log", proxy.log()), ("metrics", text)] {
        assert!(
            !text.contains("good-token"),
            "the upstream's token in the {name}"
        );
    }
}
