//! `portcullis client-config`: every file it writes is used by its real client against the
//! running proxy: skopeo (Debian 13's, which verifies sigstore signatures) with the generated
//! registries.conf, registries.d and policy.json; podman with the location form; containerd
//! with the generated hosts.toml, over HTTP and over HTTPS with a private CA; Docker's daemon
//! with the generated daemon.json.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::containerd::Containerd;
use common::*;

/// Runs `portcullis client-config` on the proxy's configuration into `out`; returns stderr.
fn client_config(proxy: &Proxy, out: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("client-config")
        .arg("--config")
        .arg(proxy.dir.join("proxy.toml"))
        .args(["--proxy", &proxy.addr, "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "client-config failed: {stderr}");
    stderr
}

fn image(t: &Path, reg: &Registry, seed: &str, repo_tag: &str) -> OciImage {
    let img = build_image(
        &t.join(seed),
        &ImageSpec {
            seed,
            layers: &[5_000, 40_000],
            tag: "v1",
        },
    );
    reg.push(&img, repo_tag);
    img
}

/// Debian 13's skopeo copying `docker://<reference>` with the generated client files.
fn skopeo_with(conf: &Path, policy: &Path, reference: &str, dest: &Path) -> Outcome {
    sigstore_skopeo(
        policy,
        &[
            "--registries-conf",
            conf.join("registries.conf").to_str().unwrap(),
            "--registries.d",
            conf.join("registries.d").to_str().unwrap(),
            "copy",
            "--remove-signatures",
            &format!("docker://{reference}"),
            &format!("oci:{}:x", dest.display()),
        ],
    )
}

/// Whether the proxy answered a request whose path (with its query) begins with `path`
/// with `status`, as its access log says.
fn proxy_answered(proxy: &Proxy, path: &str, status: u16) -> bool {
    proxy
        .log()
        .lines()
        .any(|l| l.contains(&format!("path={path}")) && l.contains(&format!("status={status} ")))
}

#[test]
fn the_generated_policy_json_refuses_what_the_mirror_fallback_would_let_past_the_gate() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let signed = image(t.path(), &reg, "cc-signed", "signed/app:v1");
    image(t.path(), &reg, "cc-unsigned", "signed/unsigned:v1");
    let forged = image(t.path(), &reg, "cc-forged", "signed/forged:v1");
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    cosign_sign(
        &keys,
        &format!("{}/signed/app@{}", reg.host(), signed.digest),
    );
    let other = t.path().join("other-keys");
    cosign_keys(&other);
    cosign_sign(
        &other,
        &format!("{}/signed/forged@{}", reg.host(), forged.digest),
    );
    let module = policy_module("policies", "require-signature");
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        &format!(
            "[trust.release]\nkeys = [\"{}\"]\n\
             [[policy]]\nname = \"require-signature\"\nmodule = \"{}\"\nscope = [\"up/signed/*\"]\n\
             [policy.settings]\ntrust = \"release\"\n",
            keys.join("cosign.pub").display(),
            module.display()
        ),
    );
    let conf = t.path().join("client");
    let notes = client_config(&proxy, &conf, &[]);
    assert!(notes.contains("daemon.json: not written"), "{notes}");
    let policy = conf.join("policy.json");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text.contains(&format!("\"{}/signed\"", reg.host())),
        "{text}"
    );

    // a signed image passes the client's check, served by the proxy (the mirror)
    let out = skopeo_with(
        &conf,
        &policy,
        &format!("{}/signed/app:v1", reg.host()),
        &t.path().join("o1"),
    );
    assert!(out.ok, "the signed image was refused: {}", out.stderr);
    assert!(
        proxy_answered(&proxy, "/v2/up/signed/app/manifests/v1", 200),
        "not through the proxy"
    );

    // the gate refuses an unsigned image, and a mirror's client then asks the registry itself:
    // without a policy of its own it takes the image from there
    let accept = t.path().join("accept-anything.json");
    std::fs::write(
        &accept,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let unsigned = format!("{}/signed/unsigned:v1", reg.host());
    let out = skopeo_with(&conf, &accept, &unsigned, &t.path().join("o2"));
    assert!(
        proxy_answered(&proxy, "/v2/up/signed/unsigned/manifests/v1", 403),
        "the gate did not refuse"
    );
    assert!(
        out.ok,
        "the fallback to the registry is what this case is about: {}",
        out.stderr
    );

    // with the generated policy.json, the fallback is refused too
    let out = skopeo_with(&conf, &policy, &unsigned, &t.path().join("o3"));
    assert!(
        !out.ok,
        "an unsigned image passed the generated policy.json"
    );
    assert!(
        out.stderr
            .contains("A signature was required, but no signature exists"),
        "{}",
        out.stderr
    );
    let out = skopeo_with(
        &conf,
        &policy,
        &format!("{}/signed/forged:v1", reg.host()),
        &t.path().join("o4"),
    );
    assert!(
        !out.ok,
        "an image signed by another key passed the generated policy.json"
    );
    assert!(
        out.stderr
            .contains("cryptographic signature verification failed"),
        "{}",
        out.stderr
    );
}

/// A Docker daemon (Debian's dockerd) with its own root, sockets and the given daemon.json,
/// without iptables or a bridge; it runs its own containerd, stopped with it.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    config_dir: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path, daemon_json: &Path) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(daemon_json)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd runs (tests/setup.sh installs docker.io)");
        let d = Dockerd {
            child,
            socket,
            config_dir: dir.join("client"),
        };
        wait_for("dockerd to serve", Duration::from_secs(30), || {
            d.docker(&["version"]).ok
        });
        d
    }

    fn docker(&self, args: &[&str]) -> Outcome {
        let out = Command::new("docker")
            .env("DOCKER_CONFIG", &self.config_dir)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("the docker client runs");
        Outcome {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops the containerd it started
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn podman_containerd_and_docker_pull_with_the_generated_files_from_the_cache_alone() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = image(t.path(), &reg, "cc-plain", "library/plain:v1");
    reg.push(&img, "library/plain:blocked");
    let deny = policy_module("policies", "deny-tags");
    let proxy = Proxy::start_with_server(
        &t.path().join("proxy"),
        "default_upstream = \"up\"\n",
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\naliases = [\"{}\"]\n\
             timeout = \"2s\"\nconnect_timeout = \"1s\"\nretries = 1\n\
             [[policy]]\nname = \"deny-tags\"\nmodule = \"{}\"\nscope = [\"up/*\"]\n\
             settings = {{ tags = [\"blocked\"] }}\n",
            reg.url(),
            reg.host(),
            deny.display()
        ),
    );
    let conf = t.path().join("client");
    let notes = client_config(&proxy, &conf, &["--form", "location"]);
    assert!(notes.contains("daemon.json: Docker will get"), "{notes}");
    let reference = format!("{}/library/plain:v1", reg.host());

    // a refused image: containerd's mirror form falls back to the registry and takes it; the
    // location form has nothing to fall back to
    let blocked = format!("{}/library/plain:blocked", reg.host());
    let mirror_conf = t.path().join("client-mirror");
    client_config(&proxy, &mirror_conf, &[]);
    let containerd = Containerd::start(&t.path().join("containerd-fallback"));
    containerd
        .pull("mirror", &mirror_conf.join("containerd"), &blocked)
        .expect("the mirror form falls back to the registry past the proxy's refusal");
    assert!(proxy_answered(
        &proxy,
        "/v2/up/library/plain/manifests/blocked?ns=",
        403
    ));
    drop(containerd);
    let containerd = Containerd::start(&t.path().join("containerd-location"));
    let refused = containerd.pull("location", &conf.join("containerd"), &blocked);
    assert!(refused.is_err(), "the location form took a refused image");
    assert!(
        proxy_answered(
            &proxy,
            &format!(
                "/v2/library/plain/manifests/blocked?ns={}",
                reg.host().replace(':', "%3A")
            ),
            403
        ),
        "containerd asked the proxy again, at its root, and was refused again"
    );
    drop(containerd);

    // podman with the location form fills the cache
    let registries = conf.join("registries.conf");
    let out = podman(&t.path().join("podman"), &registries, &["pull", &reference]);
    assert!(out.ok, "podman pull: {}", out.stderr);
    assert!(proxy_answered(
        &proxy,
        "/v2/up/library/plain/manifests/v1",
        200
    ));

    // from here on, only the proxy has the image
    reg.stop();
    let out = podman(
        &t.path().join("podman2"),
        &registries,
        &["pull", &reference],
    );
    assert!(out.ok, "podman pull with the upstream gone: {}", out.stderr);

    let containerd = Containerd::start(&t.path().join("containerd"));
    containerd
        .pull("cc", &conf.join("containerd"), &reference)
        .unwrap_or_else(|e| panic!("containerd with the generated hosts.toml: {e}"));
    assert!(
        proxy_answered(&proxy, "/v2/up/library/plain/manifests/v1?ns=", 200),
        "containerd did not come through the proxy's prefixed path"
    );
    drop(containerd);

    // Docker asks its mirror for Docker Hub names at the root; Docker Hub itself is not
    // reachable from here, so only the proxy can answer
    let docker = Dockerd::start(&t.path().join("docker"), &conf.join("daemon.json"));
    let out = docker.docker(&["pull", "library/plain:v1"]);
    assert!(
        out.ok,
        "docker pull through the mirror: {}{}",
        out.stdout, out.stderr
    );
    assert!(
        proxy_answered(&proxy, "/v2/library/plain/manifests/v1", 200),
        "not through the proxy"
    );
    let inspect = docker.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        "plain:v1",
    ]);
    assert!(
        inspect.stdout.contains(&img.digest),
        "docker has another image: {}",
        inspect.stdout
    );
}

#[test]
fn containerd_and_skopeo_trust_the_private_ca_the_generated_files_name() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    image(t.path(), &reg, "cc-tls", "team/secure:v1");
    let pki = tls::make_pki(&t.path().join("pki"));
    let proxy = Proxy::start_with_server(
        &t.path().join("proxy"),
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        ),
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\naliases = [\"{}\"]\n",
            reg.url(),
            reg.host()
        ),
    );
    let conf = t.path().join("client");
    client_config(
        &proxy,
        &conf,
        &["--ca", pki.ca.to_str().unwrap(), "--form", "location"],
    );
    let reference = format!("{}/team/secure:v1", reg.host());

    // containers/image reads <certs.d>/<host:port>/ca.crt, as from /etc/containers/certs.d
    let policy = t.path().join("accept-anything.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let certs = conf.join("certs.d").join(&proxy.addr);
    let out = sigstore_skopeo(
        &policy,
        &[
            "--registries-conf",
            conf.join("registries.conf").to_str().unwrap(),
            "copy",
            "--src-cert-dir",
            certs.to_str().unwrap(),
            &format!("docker://{reference}"),
            &format!("oci:{}:x", t.path().join("o").display()),
        ],
    );
    assert!(
        out.ok,
        "skopeo over https with the generated certs.d: {}",
        out.stderr
    );

    // containerd falls back to the registry itself when a host fails: with it gone, only the
    // proxy, over https with the generated ca.crt, can answer
    reg.stop();
    let containerd = Containerd::start(&t.path().join("containerd"));
    containerd
        .pull("tls", &conf.join("containerd"), &reference)
        .unwrap_or_else(|e| panic!("containerd over https with the generated ca.crt: {e}"));

    // and without the CA, the same pull is refused: the certificate is what made it work
    let out = sigstore_skopeo(
        &policy,
        &[
            "--registries-conf",
            conf.join("registries.conf").to_str().unwrap(),
            "copy",
            &format!("docker://{reference}"),
            &format!("oci:{}:x", t.path().join("o2").display()),
        ],
    );
    assert!(!out.ok, "an unknown CA was trusted");
    assert!(
        out.stderr
            .contains("certificate signed by unknown authority"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_keyless_policy_becomes_a_fulcio_requirement_that_skopeo_enforces() {
    use common::keyless::{push_keyless_signature, Entry, Sigstore};
    const ISSUER: &str = "https://issuer.sigstore.test";
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let ours = Sigstore::new(&t.path().join("sigstore"), "ours");
    let good = image(t.path(), &reg, "cc-keyless", "ci/app:v1");
    let stranger = image(t.path(), &reg, "cc-stranger", "ci/stranger:v1");
    push_keyless_signature(
        &reg,
        "ci/app",
        &good.digest,
        &ours,
        &ours.issue("dev@example.com", ISSUER),
        Entry::Good,
    );
    push_keyless_signature(
        &reg,
        "ci/stranger",
        &stranger.digest,
        &ours,
        &ours.issue("someone@example.com", ISSUER),
        Entry::Good,
    );
    let module = policy_module("policies", "keyless-identity");
    let proxy = Proxy::for_upstream(
        &t.path().join("proxy"),
        "up",
        &reg.url(),
        &format!(
            "[trust.ours]\ntrusted_root = \"{}\"\n\
             [[policy]]\nname = \"keyless-identity\"\nmodule = \"{}\"\nscope = [\"up/ci/*\"]\n\
             [policy.settings]\nissuer = \"{ISSUER}\"\nsubject = \"dev@example.com\"\ntrust = \"ours\"\n",
            ours.trusted_root.display(),
            module.display()
        ),
    );
    let conf = t.path().join("client");
    client_config(&proxy, &conf, &[]);
    let policy = conf.join("policy.json");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text.contains("\"subjectEmail\": \"dev@example.com\""),
        "{text}"
    );

    let out = skopeo_with(
        &conf,
        &policy,
        &format!("{}/ci/app:v1", reg.host()),
        &t.path().join("o1"),
    );
    assert!(
        out.ok,
        "the keyless-signed image was refused: {}",
        out.stderr
    );
    assert!(
        proxy_answered(&proxy, "/v2/up/ci/app/manifests/v1", 200),
        "not through the proxy"
    );

    // signed by someone else under the same CA: the gate refuses, the fallback is refused too
    let out = skopeo_with(
        &conf,
        &policy,
        &format!("{}/ci/stranger:v1", reg.host()),
        &t.path().join("o2"),
    );
    assert!(
        proxy_answered(&proxy, "/v2/up/ci/stranger/manifests/v1", 403),
        "the gate did not refuse"
    );
    assert!(!out.ok, "another signer passed the generated policy.json");
    assert!(out.stderr.contains("someone@example.com"), "{}", out.stderr);
}
