//! containerd (Debian's, on a socket and root of its own) pulling through the proxy with the
//! `hosts.toml` examples, the mirror form and the path-prefixed `override_path` form.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::containerd::Containerd;
use common::*;

/// An example `hosts.toml` as shipped, its proxy address replaced by `addr`, under
/// `<dir>/<host>/hosts.toml`.
fn hosts_dir_for(dir: &Path, host: &str, example: &str, addr: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(example))
        .unwrap()
        .replace("127.0.0.1:5000", addr);
    std::fs::create_dir_all(dir.join(host)).unwrap();
    std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
    dir.to_path_buf()
}

fn hosts_dir(dir: &Path, example: &str, addr: &str) -> PathBuf {
    hosts_dir_for(dir, "docker.io", example, addr)
}

/// How many blob GETs under `path` (with `query` in them) the proxy answered with 200, as its
/// access log says.
fn blobs_served_with(proxy: &Proxy, path: &str, query: &str) -> usize {
    proxy
        .log()
        .lines()
        .filter(|l| {
            l.contains(&format!("path={path}/blobs/"))
                && l.contains(query)
                && l.contains("status=200")
        })
        .count()
}

fn blobs_served(proxy: &Proxy, path: &str) -> usize {
    blobs_served_with(proxy, path, "")
}

#[test]
fn containerd_pulls_through_both_hosts_toml_forms_and_the_prefixed_one_from_cache_alone() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "containerd",
            layers: &[4096, 200_000],
            tag: "v1",
        },
    );
    reg.push(&img, "library/demo:v1");
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "docker.io", &reg.url(), "");
    let containerd = Containerd::start(&t.path().join("containerd"));
    let image = "docker.io/library/demo:v1";
    let blobs = img.blobs().len();

    // the mirror form: /v2/library/demo/...?ns=docker.io
    let mirror = hosts_dir(
        &t.path().join("hosts-mirror"),
        "examples/containerd/docker.io/hosts.toml",
        &proxy.addr,
    );
    containerd.pull("mirror", &mirror, image).unwrap();
    assert_eq!(
        blobs_served(&proxy, "/v2/library/demo"),
        blobs,
        "the proxy served every blob"
    );

    // the path-prefixed form: /v2/docker.io/library/demo/...?ns=docker.io, with the upstream
    // stopped: containerd's silent fallback to Docker Hub cannot make this pass
    reg.stop();
    let prefixed = hosts_dir(
        &t.path().join("hosts-prefixed"),
        "examples/containerd/override-path/docker.io/hosts.toml",
        &proxy.addr,
    );
    // a second containerd: its content store is empty, so it fetches every blob
    let containerd = Containerd::start(&t.path().join("containerd2"));
    containerd
        .pull("prefixed", &prefixed, image)
        .unwrap_or_else(|e| panic!("pull with override_path from the cache alone: {e}"));
    assert_eq!(
        blobs_served(&proxy, "/v2/docker.io/library/demo"),
        blobs,
        "the proxy served every blob again, under the prefixed path"
    );
    let listed = containerd.ctr(&["--namespace", "prefixed", "images", "ls", "-q"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(image),
        "containerd has the image"
    );
}

#[test]
fn containerd_sends_every_registry_through_the_proxy_with_the_default_hosts_toml() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "containerd-default",
            layers: &[10_000],
            tag: "v1",
        },
    );
    reg.push(&img, "team/demo:v1");
    // quay.io stands for any registry: the proxy's upstream of that name is the test registry
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "quay.io", &reg.url(), "");
    let containerd = Containerd::start(&t.path().join("containerd"));
    let hosts = hosts_dir_for(
        &t.path().join("hosts"),
        "_default",
        "examples/containerd/_default/hosts.toml",
        &proxy.addr,
    );
    containerd
        .pull("default", &hosts, "quay.io/team/demo:v1")
        .unwrap_or_else(|e| panic!("pull through _default: {e}"));
    assert_eq!(
        blobs_served_with(&proxy, "/v2/team/demo", "ns=quay.io"),
        img.blobs().len(),
        "the proxy served every blob"
    );
}

#[test]
fn containerd_pulls_over_https_trusting_the_proxy_s_private_ca() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "containerd-tls",
            layers: &[10_000],
            tag: "v1",
        },
    );
    reg.push(&img, "library/secure:v1");
    let pki = tls::make_pki(&t.path().join("pki"));
    let proxy = Proxy::start_with_server(
        &t.path().join("proxy"),
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        ),
        &format!(
            "[storage]\npath = \"data\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n",
            reg.url()
        ),
    );
    let containerd = Containerd::start(&t.path().join("containerd"));
    let dir = t.path().join("certs.d");
    let hosts = hosts_dir(
        &dir,
        "examples/containerd/tls/docker.io/hosts.toml",
        &proxy.addr,
    );
    let file = hosts.join("docker.io/hosts.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("/etc/containerd/certs.d", &dir.display().to_string());
    std::fs::write(&file, text).unwrap();
    std::fs::copy(&pki.ca, dir.join("docker.io/ca.pem")).unwrap();
    containerd
        .pull("tls", &hosts, "docker.io/library/secure:v1")
        .unwrap_or_else(|e| panic!("pull over https: {e}"));
    assert_eq!(
        blobs_served(&proxy, "/v2/library/secure"),
        img.blobs().len(),
        "the proxy served every blob over https"
    );
}

#[test]
fn a_containerd_pull_leaves_the_signature_for_cosign_with_the_upstream_gone() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "containerd-signed",
            layers: &[10_000],
            tag: "v1",
        },
    );
    reg.push(&img, "library/signed:v1");
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    cosign_sign(
        &keys,
        &format!("{}/library/signed@{}", reg.host(), img.digest),
    );
    let proxy = Proxy::for_upstream(&t.path().join("proxy"), "docker.io", &reg.url(), "");
    let containerd = Containerd::start(&t.path().join("containerd"));
    let hosts = hosts_dir(
        &t.path().join("hosts"),
        "examples/containerd/docker.io/hosts.toml",
        &proxy.addr,
    );
    containerd
        .pull("signed", &hosts, "docker.io/library/signed:v1")
        .unwrap();
    // the proxy fetches the signature on its own: its manifest, then its payload
    let sig_tag = format!("{}.sig", img.digest.replace(':', "-"));
    reg.count_settled("GET", &format!("/manifests/{sig_tag}"), 1);
    let sig: serde_json::Value = http()
        .get(format!(
            "{}/v2/library/signed/manifests/{sig_tag}",
            reg.url()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let payload = sig["layers"][0]["digest"].as_str().unwrap().to_string();
    wait_for(
        "the signature's payload cached",
        Duration::from_secs(10),
        || proxy.cached(&payload),
    );
    reg.stop();
    let out = cosign_verify(
        &keys,
        "cosign.pub",
        &format!("{}/docker.io/library/signed@{}", proxy.addr, img.digest),
    );
    assert!(
        out.ok,
        "cosign verify through the proxy with the upstream gone: {}",
        out.stderr
    );
}
