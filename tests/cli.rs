//! The command line: `check` on every shipped configuration and on broken ones, `--version`.

mod common;

use std::path::Path;
use std::process::Command;

fn portcullis(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_shipped_proxy_config_checks_out() {
    let mut files = vec![root().join("proxy.toml")];
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("proxy")
            && p.extension().is_some_and(|e| e == "toml")
        {
            files.push(p);
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let (ok, stdout, stderr) = portcullis(&["check", "--config", f.to_str().unwrap()], root());
        assert!(ok, "{}: {stderr}", f.display());
        assert!(stdout.contains("configuration OK"), "{stdout}");
    }
}

#[test]
fn client_configs_point_at_the_proxy() {
    let conf: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("examples/registries.conf")).unwrap())
            .unwrap();
    let mirror = &conf["registry"][0]["mirror"][0]["location"];
    assert_eq!(mirror.as_str(), Some("127.0.0.1:5000/docker.io"));
    let conf: toml::Value = toml::from_str(
        &std::fs::read_to_string(root().join("examples/registries-location.conf")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        conf["registry"][0]["location"].as_str(),
        Some("127.0.0.1:5000/docker.io")
    );
    let hosts: toml::Value = toml::from_str(
        &std::fs::read_to_string(root().join("examples/containerd/docker.io/hosts.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        hosts["host"]["http://127.0.0.1:5000"]["capabilities"][0].as_str(),
        Some("pull")
    );
}

#[test]
fn embedded_defaults_are_used_without_a_config_file() {
    let t = tempfile::tempdir().unwrap();
    let (ok, stdout, _) = portcullis(&["check"], t.path());
    assert!(ok);
    assert!(stdout.contains("4 upstream(s)"), "{stdout}");
}

#[test]
fn broken_configs_name_the_file_the_key_and_the_problem() {
    let t = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nlisten = \"localhost\"\n",
            "server.listen",
            "invalid socket address",
        ),
        (
            "[storage]\nmax_size = \"big\"\n",
            "storage.max_size",
            "invalid size",
        ),
        (
            "[cache]\ntag_ttl = \"forever\"\n",
            "cache.tag_ttl",
            "invalid duration",
        ),
        ("[cache]\nttl = \"5m\"\n", "cache", "unknown field `ttl`"),
        (
            "[[upstream]]\nname = \"hub\"\n",
            "upstream",
            "missing field `url`",
        ),
        (
            "[[upstream]]\nname = \"hub\"\nurl = \"https://x\"\nca_file = \"nope.pem\"\n",
            "upstream[0].ca_file",
            "cannot read",
        ),
        ("[server\nlisten=1", "-", "unclosed table"),
        (
            "[server]\ndefault_upstream = \"docker.io\"\n[[upstream]]\nname = \"quay.io\"\nurl = \"https://quay.io\"\n",
            "server.default_upstream",
            "names no [[upstream]]",
        ),
        (
            "[metrics]\nlisten = \"everywhere\"\n",
            "metrics.listen",
            "invalid socket address",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            "log.format",
            "unknown variant",
        ),
        (
            "[trust.none]\n",
            "trust.none",
            "names no keys, no trusted_root and no ca_certs",
        ),
        (
            "[trust.half]\nca_certs = [\"junk.pem\"]\n",
            "trust.half.rekor_keys",
            "ca_certs need the transparency log's rekor_keys",
        ),
        (
            "[trust.root]\ntrusted_root = \"junk.pem\"\n",
            "trust.root.trusted_root",
            "junk.pem: not a trusted_root.json",
        ),
        (
            "[trust.pem]\nca_certs = [\"junk.pem\"]\nrekor_keys = [\"junk.pem\"]\n",
            "trust.pem.ca_certs",
            "junk.pem: not PEM certificates",
        ),
        (
            "[trust.keys]\nkeys = [\"missing.pub\"]\n",
            "trust.keys.keys",
            "cannot read",
        ),
    ];
    std::fs::write(t.path().join("junk.pem"), "not a certificate").unwrap();
    for (i, (text, key, problem)) in cases.iter().enumerate() {
        let file = t.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (ok, _, stderr) = portcullis(&["check", "--config", file.to_str().unwrap()], t.path());
        assert!(!ok, "{text}");
        assert!(
            stderr.contains(&format!("bad{i}.toml")),
            "names the file: {stderr}"
        );
        assert!(stderr.contains(key), "names the key {key}: {stderr}");
        assert!(stderr.contains(problem), "says {problem}: {stderr}");
    }
    // a problem with a place in the text: line and column, and toml's caret under it
    std::fs::write(t.path().join("caret.toml"), "[cache]\ntag_ttl = \"soon\"\n").unwrap();
    let (ok, _, stderr) = portcullis(&["check", "--config", "caret.toml"], t.path());
    assert!(!ok);
    assert!(
        stderr.contains("caret.toml:2:11: cache.tag_ttl: invalid duration \"soon\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 | tag_ttl = \"soon\"\n  |           ^^^^^^"),
        "{stderr}"
    );
    let (ok, _, stderr) = portcullis(&["check", "--config", "/nonexistent/proxy.toml"], t.path());
    assert!(
        !ok && stderr.contains("/nonexistent/proxy.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
    // a CA file that exists but holds no certificate is caught by check, naming the upstream
    std::fs::write(
        t.path().join("ca.toml"),
        "[[upstream]]\nname = \"hub\"\nurl = \"https://x\"\nca_file = \"junk.pem\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = portcullis(&["check", "--config", "ca.toml"], t.path());
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("upstream[0]"), "{stderr}");
}

#[test]
fn version_and_help() {
    let (ok, stdout, _) = portcullis(&["--version"], root());
    assert!(ok && stdout.starts_with("portcullis "), "{stdout}");
    for sub in ["serve", "check"] {
        let (ok, stdout, _) = portcullis(&[sub, "--help"], root());
        assert!(ok && stdout.contains("--config"), "{stdout}");
    }
}

#[test]
fn signature_client_configs_name_the_proxy() {
    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/policy.json")).unwrap(),
    )
    .unwrap();
    let scope = &policy["transports"]["docker"]["docker.io/myorg"][0];
    assert_eq!(scope["type"], "sigstoreSigned");
    assert_eq!(policy["default"][0]["type"], "reject");
    let regd =
        std::fs::read_to_string(root().join("examples/registries.d/portcullis.yaml")).unwrap();
    assert!(
        regd.contains("  127.0.0.1:5000:\n    use-sigstore-attachments: true"),
        "{regd}"
    );
}

#[test]
fn htpasswd_prints_a_bcrypt_line_the_proxy_accepts() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["htpasswd", "ci", "--cost", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let (user, hash) = line.trim().split_once(':').unwrap();
    assert_eq!(user, "ci");
    assert!(bcrypt::verify("s3cret", hash).unwrap());
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users"), &line).unwrap();
    // users over plain HTTP are refused unless TLS is terminated in front (and said so)
    std::fs::write(t.path().join("p.toml"), "[auth]\nhtpasswd = \"users\"\n").unwrap();
    let (ok, _, stderr) = portcullis(&["check", "--config", "p.toml"], t.path());
    assert!(
        !ok && stderr.contains(
            "p.toml: auth.htpasswd: users are configured but the proxy serves plain HTTP"
        ),
        "{stderr}"
    );
    let (ok, _, stderr) = portcullis(&["serve", "--config", "p.toml"], t.path());
    assert!(
        !ok && stderr.contains("server.insecure_auth = true"),
        "serve refuses to start too: {stderr}"
    );
    std::fs::write(
        t.path().join("p.toml"),
        "[server]\ninsecure_auth = true\n[auth]\nhtpasswd = \"users\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = portcullis(&["check", "--config", "p.toml"], t.path());
    assert!(ok, "{stderr}");
    // an entry that is not bcrypt is refused with the line number
    std::fs::write(
        t.path().join("users"),
        "ci:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
    )
    .unwrap();
    let (ok, _, stderr) = portcullis(&["check", "--config", "p.toml"], t.path());
    assert!(
        !ok && stderr.contains("auth.htpasswd") && stderr.contains("line 1"),
        "{stderr}"
    );
    // TLS needs both files
    std::fs::write(t.path().join("t.toml"), "[server]\ntls_cert = \"c.pem\"\n").unwrap();
    let (ok, _, stderr) = portcullis(&["check", "--config", "t.toml"], t.path());
    assert!(!ok && stderr.contains("server.tls_key"), "{stderr}");
}

#[test]
fn htpasswd_does_not_echo_a_password_typed_at_a_terminal() {
    // `script` runs the command on a terminal of its own and copies what it shows
    let mut child = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!("{} htpasswd ci", env!("CARGO_BIN_EXE_portcullis")))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    // typed once the prompt is up, as a person would
    std::thread::sleep(std::time::Duration::from_millis(500));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"typed-Pa55word\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("ci:$2"), "the htpasswd line: {shown}");
    assert!(
        !shown.contains("typed-Pa55word"),
        "the password was echoed: {shown}"
    );
}
