//! WebAssembly admission policies with the real clients: signed images admitted, unsigned
//! refused with the policy's reason, push-time refusals, misbehaving modules failing closed,
//! reloads without failed requests.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::front::{Fault, Front};
use common::*;

fn example(name: &str) -> String {
    policy_module("policies", name).display().to_string()
}

/// A JavaScript or Python example policy (`deny-tags-js`, `require-signature-py`, ...), built
/// by policies/build-guests.sh once per test binary (a no-op when built).
fn guest(name: &str) -> String {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    BUILD.call_once(|| {
        let status = Command::new("bash")
            .arg(root.join("build-guests.sh"))
            .status()
            .expect("bash");
        assert!(
            status.success(),
            "policies/build-guests.sh (needs tests/setup.sh's tools)"
        );
    });
    let path = root.join("target/guests").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path.display().to_string()
}

fn faulty(name: &str) -> String {
    policy_module("tests/policies", name).display().to_string()
}

struct Setup {
    t: tempfile::TempDir,
    reg: Registry,
    proxy: Proxy,
    keys: PathBuf,
    front: Option<Front>,
}

/// A proxy with `policies` (TOML) in scope, trust `release-keys` = a fresh cosign key.
fn setup(policies: &str) -> Setup {
    setup_via(policies, false)
}

/// As [`setup`], with a fault-injecting front between the proxy and the upstream if `front`.
fn setup_via(policies: &str, front: bool) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(&t.path().join("upstream"));
    let front = front.then(|| Front::start(&reg.url()));
    let upstream_url = front.as_ref().map_or_else(|| reg.url(), Front::url);
    let keys = t.path().join("keys");
    cosign_keys(&keys);
    let dir = t.path().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    htpasswd(&dir.join("users.htpasswd"), &[("ci", "ci-pass")]);
    let config = format!(
        "[storage]\npath = \"data\"\n[auth]\nhtpasswd = \"users.htpasswd\"\n[trust.release-keys]\nkeys = [\"{}\"]\n[policies]\naudit = \"audit.log\"\n{policies}\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        keys.join("cosign.pub").display(),
        upstream_url
    );
    let proxy = Proxy::start(&dir, &config);
    Setup {
        t,
        reg,
        proxy,
        keys,
        front,
    }
}

impl Setup {
    fn image(&self, repo: &str, seed: &str, tag: &str) -> OciImage {
        let img = build_image(
            &self.t.path().join(seed),
            &ImageSpec {
                seed,
                layers: &[2000],
                tag,
            },
        );
        self.reg.push(&img, &format!("{repo}:{tag}"));
        img
    }

    fn sign(&self, repo: &str, img: &OciImage) {
        cosign_sign(
            &self.keys,
            &format!("{}/{repo}@{}", self.reg.host(), img.digest),
        );
    }

    /// Attests `img` with a SLSA provenance statement naming `builder`, with the release key.
    fn attest(&self, repo: &str, img: &OciImage, builder: &str) {
        let predicate = format!(
            "predicate-{}.json",
            img.digest.trim_start_matches("sha256:")
        );
        std::fs::write(
            self.keys.join(&predicate),
            format!(r#"{{"builder":{{"id":"{builder}"}},"buildType":"t"}}"#),
        )
        .unwrap();
        let target = format!("{}/{repo}@{}", self.reg.host(), img.digest);
        let mut args = vec![
            "attest",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--type",
            "slsaprovenance",
            "--predicate",
            &predicate,
        ];
        args.extend(COSIGN_LOCAL);
        args.push(&target);
        cosign(&self.keys, &args).success();
    }

    /// Attaches an SPDX SBOM to `img` with `cosign attach sbom`.
    fn attach_sbom(&self, repo: &str, img: &OciImage) {
        std::fs::write(
            self.keys.join("sbom.spdx.json"),
            r#"{"spdxVersion":"SPDX-2.3","name":"app","SPDXID":"SPDXRef-DOCUMENT"}"#,
        )
        .unwrap();
        let target = format!("{}/{repo}@{}", self.reg.host(), img.digest);
        let mut args = vec![
            "attach",
            "sbom",
            "--sbom",
            "sbom.spdx.json",
            "--type",
            "spdx",
        ];
        args.extend(COSIGN_LOCAL);
        args.push(&target);
        cosign(&self.keys, &args).success();
    }

    fn pull(&self, name: &str) -> Outcome {
        skopeo_pull(
            &format!("{}/up/{name}", self.proxy.addr),
            &self
                .t
                .path()
                .join(format!("pull-{}", name.replace(['/', ':'], "-"))),
        )
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.proxy.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The audit log once a line matches `wanted` (its writer flushes in batches, a moment after
    /// the decision the client already has).
    fn audit_with(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        wait_for(what, Duration::from_secs(10), || {
            lines = self.audit();
            lines.iter().any(&wanted)
        });
        lines
    }
}

fn policy(name: &str, module: &str, scope: &str, extra: &str) -> String {
    format!(
        "[[policy]]\nname = \"{name}\"\nmodule = \"{module}\"\nscope = [\"{scope}\"]\n{extra}\n"
    )
}

#[test]
fn require_signature_admits_signed_images_and_refuses_unsigned_ones_with_the_reason() {
    let elsewhere = "[policy.settings]\ntrust = \"release-keys\"\n[policy.settings.signed_identity]\ntype = \"exactRepository\"\ndockerRepository = \"registry.example/elsewhere\"";
    let s = setup(
        &(policy(
            "require-signature",
            &example("require-signature"),
            "up/demo/*",
            "[policy.settings]\ntrust = \"release-keys\"",
        ) + &policy(
            "signed-elsewhere",
            &example("require-signature"),
            "up/pinned/*",
            elsewhere,
        )),
    );
    // a good signature, but for a name other than the one the policy's signed identity wants
    let pinned = s.image("pinned/app", "pinned", "v1");
    s.sign("pinned/app", &pinned);
    let refused = s.pull("pinned/app:v1");
    assert!(
        !refused.ok
            && refused.stderr.contains("policy signed-elsewhere")
            && refused.stderr.contains("signature is for")
            && refused.stderr.contains("pinned/app"),
        "{}",
        refused.stderr
    );
    let signed = s.image("demo/signed", "signed", "v1");
    s.sign("demo/signed", &signed);
    let unsigned = s.image("demo/unsigned", "unsigned", "v1");
    // signed with the release key, but the payload changed afterwards: an invalid signature
    let forged = s.image("demo/forged", "forged", "v1");
    s.sign("demo/forged", &forged);
    let sig_tag = format!("{}.sig", forged.digest.replace(':', "-"));
    let sig: serde_json::Value = http()
        .get(format!(
            "{}/v2/demo/forged/manifests/{sig_tag}",
            s.reg.url()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let layer = sig["layers"][0]["digest"].as_str().unwrap();
    let payload = http()
        .get(format!("{}/v2/demo/forged/blobs/{layer}", s.reg.url()))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let altered = payload.replacen(
        "\"optional\":null",
        "\"optional\":{\"creator\":\"mallory\"}",
        1,
    );
    assert_ne!(altered, payload);
    let new_layer = push_blob(&s.reg, "demo/forged", altered.as_bytes());
    let mut forged_sig = sig.clone();
    forged_sig["layers"][0]["digest"] = new_layer.into();
    forged_sig["layers"][0]["size"] = altered.len().into();
    push_manifest(
        &s.reg,
        "demo/forged",
        &sig_tag,
        "application/vnd.oci.image.manifest.v1+json",
        forged_sig.to_string().as_bytes(),
    );
    let refused = s.pull("demo/forged:v1");
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("signature does not verify with any trusted key"),
        "an invalid signature is no signature: {}",
        refused.stderr
    );

    s.pull("demo/signed:v1").success();
    let refused = s.pull("demo/unsigned:v1");
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("policy require-signature")
            && refused.stderr.contains("no signatures found"),
        "{}",
        refused.stderr
    );

    let conf = s.t.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            s.proxy.addr
        ),
    )
    .unwrap();
    let podman_out = podman(
        &s.t.path().join("podman"),
        &conf,
        &["pull", &format!("{}/up/demo/unsigned:v1", s.proxy.addr)],
    );
    assert!(!podman_out.ok);
    assert!(
        podman_out.stderr.contains("policy require-signature"),
        "podman shows the reason: {}",
        podman_out.stderr
    );
    podman(
        &s.t.path().join("podman"),
        &conf,
        &["pull", "-q", &format!("{}/up/demo/signed:v1", s.proxy.addr)],
    )
    .success();

    // the signature manifests themselves are admitted, so cosign can verify through the proxy
    let out = cosign_verify(
        &s.keys,
        "cosign.pub",
        &format!("{}/up/demo/signed:v1", s.proxy.addr),
    );
    assert!(out.ok, "{}", out.stderr);

    // the same client asking again (same address, user and User-Agent) gets the cached decision
    s.pull("demo/signed:v1").success();
    let audit = s.audit_with(
        "a cached admission of the repeated pull in the audit log",
        |l| l["repository"] == "demo/signed" && l["cache_hit"] == true && l["decision"] == "admit",
    );
    let refusal = audit
        .iter()
        .find(|l| l["repository"] == "demo/unsigned" && l["decision"] == "reject")
        .expect("the refusal is audited");
    assert_eq!(refusal["policy"], "require-signature");
    assert_eq!(
        refusal["digest"],
        unsigned.digest.as_str(),
        "the audit names the manifest"
    );
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("no signatures found"),
        "and why: {refusal}"
    );
    assert_eq!(
        refusal["user"],
        serde_json::Value::Null,
        "an anonymous pull"
    );
    assert!(audit.iter().any(|l| l["repository"] == "demo/signed"
        && l["decision"] == "admit"
        && l["cache_hit"] == false));
}

#[test]
fn javascript_and_python_policies_decide_through_the_proxy() {
    let mut policies = String::new();
    for lang in ["js", "py"] {
        policies += &policy(
            &format!("require-signature-{lang}"),
            &guest(&format!("require-signature-{lang}")),
            &format!("up/{lang}/*"),
            "[policy.settings]\ntrust = \"release-keys\"",
        );
        policies += &policy(
            &format!("deny-tags-{lang}"),
            &guest(&format!("deny-tags-{lang}")),
            &format!("up/{lang}/*"),
            "",
        );
    }
    let s = setup(&policies);
    for lang in ["js", "py"] {
        let signed = s.image(&format!("{lang}/signed"), &format!("{lang} signed"), "v1");
        s.sign(&format!("{lang}/signed"), &signed);
        s.image(
            &format!("{lang}/unsigned"),
            &format!("{lang} unsigned"),
            "v1",
        );
        s.pull(&format!("{lang}/signed:v1")).success();
        let refused = s.pull(&format!("{lang}/unsigned:v1"));
        assert!(
            !refused.ok
                && refused
                    .stderr
                    .contains(&format!("policy require-signature-{lang}"))
                && refused.stderr.contains("no signatures found"),
            "{lang}: {}",
            refused.stderr
        );
        s.reg.push(&signed, &format!("{lang}/signed:latest"));
        let refused = s.pull(&format!("{lang}/signed:latest"));
        assert!(
            !refused.ok
                && refused.stderr.contains(&format!("policy deny-tags-{lang}"))
                && refused.stderr.contains("latest")
                && refused.stderr.contains("is mutable; pull by digest"),
            "{lang}: {}",
            refused.stderr
        );
    }
}

/// A module built for the 0.1.0 world (before the GitHub claims and the signed-identity rule)
/// still loads and decides: its verification by the host, its rejection with its reason.
#[test]
fn a_module_built_for_the_older_world_still_decides() {
    let s = setup(&policy(
        "legacy",
        &faulty("legacy"),
        "up/*",
        "[policy.settings]\ntrust = \"release-keys\"",
    ));
    let signed = s.image("old/signed", "old signed", "v1");
    s.sign("old/signed", &signed);
    s.image("old/unsigned", "old unsigned", "v1");
    s.reg.push(&signed, "old/signed:old");
    s.pull("old/signed:v1").success();
    let refused = s.pull("old/unsigned:v1");
    assert!(
        !refused.ok
            && refused.stderr.contains("policy legacy")
            && refused.stderr.contains("no signatures found"),
        "{}",
        refused.stderr
    );
    let refused = s.pull("old/signed:old");
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("the 0.1.0 module refuses the tag old"),
        "{}",
        refused.stderr
    );
    // its host call to log reached the proxy's log through the converted interface
    assert!(s
        .proxy
        .log()
        .contains("legacy module: refusing the tag old"));
}

#[test]
fn warn_mode_admits_and_audits_the_would_be_rejection() {
    let s = setup(&policy(
        "require-signature",
        &example("require-signature"),
        "up/*",
        "mode = \"warn\"\n[policy.settings]\ntrust = \"release-keys\"",
    ));
    s.image("demo/unsigned", "warned", "v1");
    s.pull("demo/unsigned:v1").success();
    let audit = s.audit_with("an audit line for demo/unsigned", |l| {
        l["repository"] == "demo/unsigned"
    });
    let line = audit
        .iter()
        .find(|l| l["repository"] == "demo/unsigned")
        .expect("an audit line");
    assert_eq!(line["decision"], "reject");
    assert_eq!(line["mode"], "warn");
    assert_eq!(
        line["client"], "127.0.0.1",
        "the client's IP address, as the policy saw it"
    );
    assert!(s.proxy.log().contains("would reject"));
}

#[test]
fn deny_tags_and_push_time_refusals() {
    let policies = policy("deny-tags", &example("deny-tags"), "up/*", "")
        + &policy(
            "allowed-registries",
            &example("allowed-registries"),
            "up/*",
            "[policy.settings]\nallowed = [\"up/allowed/*\"]",
        );
    let s = setup(&policies);
    let img = s.image("allowed/app", "tags", "latest");
    s.reg.push(&img, "allowed/app:1.0");
    let out = s.pull("allowed/app:latest");
    assert!(
        !out.ok && out.stderr.contains("is mutable"),
        "{}",
        out.stderr
    );
    s.pull("allowed/app:1.0").success();

    // cosign signing through the proxy pushes manifests: a repository outside the allowed set is refused
    let other = s.image("elsewhere/app", "elsewhere", "1.0");
    cosign(
        &s.keys,
        &["login", &s.proxy.addr, "-u", "ci", "-p", "ci-pass"],
    )
    .success();
    let mut sign = vec!["sign", "--key", "cosign.key", "--tlog-upload=false"];
    sign.extend(COSIGN_LOCAL);
    let target = format!("{}/up/elsewhere/app@{}", s.proxy.addr, other.digest);
    sign.push(&target);
    let refused = cosign(&s.keys, &sign);
    assert!(!refused.ok, "cosign sign was refused");
    assert!(
        refused.stderr.contains("DENIED") || refused.stderr.contains("not in an allowed"),
        "{}",
        refused.stderr
    );
    let mut sign_ok = vec!["sign", "--key", "cosign.key", "--tlog-upload=false"];
    sign_ok.extend(COSIGN_LOCAL);
    let allowed = format!("{}/up/allowed/app@{}", s.proxy.addr, img.digest);
    sign_ok.push(&allowed);
    cosign(&s.keys, &sign_ok).success();
    // the signature pushed by ci is audited as ci's push, with its digest
    let audit = s.audit_with("the admitted push in the audit log", |l| {
        l["operation"] == "push" && l["repository"] == "allowed/app"
    });
    let push = audit
        .iter()
        .find(|l| l["operation"] == "push" && l["repository"] == "allowed/app")
        .unwrap();
    assert_eq!(
        push["user"], "ci",
        "the audit names the signed-in user: {push}"
    );
    assert_eq!(push["decision"], "admit");
    assert!(
        push["digest"].as_str().unwrap().starts_with("sha256:"),
        "{push}"
    );
    assert!(
        push["reference"].as_str().unwrap().ends_with(".sig"),
        "the signature's tag: {push}"
    );
}

#[test]
fn misbehaving_modules_fail_closed_and_the_proxy_keeps_serving() {
    let policies = policy("spin", &faulty("spin"), "up/slow/*", "timeout = \"50ms\"")
        + &policy("hog", &faulty("hog"), "up/hungry/*", "memory = \"16MiB\"")
        + &policy("trap", &faulty("trap"), "up/broken/*", "");
    let s = setup(&policies);
    for repo in ["slow/app", "hungry/app", "broken/app"] {
        s.image(repo, repo, "v1");
    }
    let others: Vec<OciImage> = (0..5)
        .map(|i| s.image(&format!("fine/app{i}"), &format!("fine{i}"), "v1"))
        .collect();
    let url = |repo: &str| format!("{}/v2/up/{repo}/manifests/v1", s.proxy.url());

    let r = http().get(url("slow/app")).send().unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().unwrap();
    assert_eq!(error_code(&body), "DENIED");
    assert!(body.contains("exceeded its timeout"), "{body}");
    // the timeout is CPU time (waiting does not count); the loop is stopped within it plus 10 ms
    // (epoch ticks are 2 ms; instantiation and the check itself take the rest)
    let audit = s.audit_with("the looping module's audit line", |l| {
        l["repository"] == "slow/app"
    });
    let line = audit
        .iter()
        .find(|l| l["repository"] == "slow/app")
        .unwrap();
    let cpu_us = line["cpu_us"]
        .as_u64()
        .expect("the module's CPU time is audited");
    assert!(
        (50_000..=60_000).contains(&cpu_us),
        "stopped after {cpu_us} us of CPU time, timeout 50 ms"
    );

    // 50 parallel pulls of other images while the looping module is asked again
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let u = url(&format!("fine/app{}", i % 5));
            std::thread::spawn(move || {
                http()
                    .get(u)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let again = http().get(url("slow/app")).send().unwrap().status();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(again, 403);

    let r = http().get(url("hungry/app")).send().unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text().unwrap().contains("memory"),
        "stopped at its memory cap"
    );
    let r = http().get(url("broken/app")).send().unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("trapped"));
    // the other images were admitted by no policy: each was served whole afterwards too
    for (i, img) in others.iter().enumerate() {
        let r = http()
            .get(url(&format!("fine/app{i}")))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str());
    }
}

#[test]
fn require_attestation_admits_only_images_built_by_the_named_builder() {
    let settings = "[policy.settings]\ntrust = \"release-keys\"\npredicate_type = \"slsaprovenance\"\nbuilder_id = \"https://ci.example/builder\"";
    let s = setup(&policy(
        "provenance",
        &example("require-attestation"),
        "up/built/*",
        settings,
    ));
    let ours = s.image("built/ours", "ours", "v1");
    let theirs = s.image("built/theirs", "theirs", "v1");
    s.image("built/none", "none", "v1");
    s.attest("built/ours", &ours, "https://ci.example/builder");
    s.attest("built/theirs", &theirs, "https://elsewhere.example/builder");

    s.pull("built/ours:v1").success();
    let refused = s.pull("built/theirs:v1");
    assert!(!refused.ok, "another builder's image was admitted");
    assert!(
        refused.stderr.contains("policy provenance")
            && refused.stderr.contains("built by")
            && refused.stderr.contains("elsewhere.example"),
        "{}",
        refused.stderr
    );
    let refused = s.pull("built/none:v1");
    assert!(!refused.ok, "an image without attestation was admitted");
    assert!(
        refused.stderr.contains("policy provenance") && refused.stderr.contains("attestation"),
        "{}",
        refused.stderr
    );
    s.audit_with("an admission of built/ours in the audit log", |l| {
        l["repository"] == "built/ours" && l["decision"] == "admit"
    });
}

#[test]
fn require_sbom_admits_only_images_with_an_sbom_attached() {
    let s = setup(&policy("sbom", &example("require-sbom"), "up/bom/*", ""));
    let with = s.image("bom/with", "with", "v1");
    s.image("bom/without", "without", "v1");
    s.attach_sbom("bom/with", &with);

    s.pull("bom/with:v1").success();
    let refused = s.pull("bom/without:v1");
    assert!(!refused.ok, "an image without an SBOM was admitted");
    assert!(
        refused.stderr.contains("policy sbom") && refused.stderr.contains("no SBOM is attached"),
        "{}",
        refused.stderr
    );
}

#[test]
fn waiting_on_a_slow_upstream_in_a_host_call_does_not_count_against_the_timeout() {
    let s = setup_via(
        &policy(
            "config-reader",
            &faulty("config-reader"),
            "up/slowcfg/*",
            "timeout = \"50ms\"",
        ),
        true,
    );
    let img = s.image("slowcfg/app", "slowcfg", "v1");
    let front = s.front.as_ref().unwrap();
    front.fault(
        "GET",
        &format!("/blobs/{}", img.config_digest),
        Fault::Delay(Duration::from_millis(400)),
    );

    // the module asks the host for the image config, which the proxy fetches from the upstream
    // (400 ms): eight times the module's 50 ms timeout, spent waiting rather than running
    let started = Instant::now();
    let pulled = s.pull("slowcfg/app:v1");
    assert!(
        pulled.ok,
        "admitted after the slow host call: {}",
        pulled.stderr
    );
    assert!(
        front.injected() >= 1 && started.elapsed() >= Duration::from_millis(400),
        "the config fetch was slowed"
    );
    s.audit_with("an admission of slowcfg/app in the audit log", |l| {
        l["repository"] == "slowcfg/app" && l["decision"] == "admit"
    });
}

#[test]
fn a_refusal_for_attachments_the_upstream_was_too_slow_to_give_says_so() {
    let policies = format!(
        "attachment_wait = \"1s\"\n{}{}",
        policy(
            "require-signature",
            &example("require-signature"),
            "up/slowsig/*",
            "[policy.settings]\ntrust = \"release-keys\""
        ),
        policy("sbom", &example("require-sbom"), "up/slowsbom/*", "")
    );
    let s = setup_via(&policies, true);
    let front = s.front.as_ref().unwrap();
    // signed under the name the proxy knows its upstream by (the front's address)
    let signed = s.image("slowsig/app", "slowsig", "v1");
    cosign_sign(
        &s.keys,
        &format!("{}/slowsig/app@{}", front.addr, signed.digest),
    );
    let with_sbom = s.image("slowsbom/app", "slowsbom", "v1");
    s.attach_sbom("slowsbom/app", &with_sbom);
    for method in ["GET", "HEAD"] {
        for needle in ["/manifests/sha256-", "/referrers/"] {
            front.fault(method, needle, Fault::Delay(Duration::from_secs(3)));
        }
    }

    // the signature and the SBOM are there, but the upstream takes 3 s to show them and a pull
    // waits 1 s: the refusals say why, rather than only that nothing was found
    let refused = s.pull("slowsig/app:v1");
    assert!(!refused.ok, "admitted without its signature");
    assert!(
        refused.stderr.contains("policy require-signature")
            && refused.stderr.contains("not resolved within 1s"),
        "{}",
        refused.stderr
    );
    let refused = s.pull("slowsbom/app:v1");
    assert!(!refused.ok, "admitted without its SBOM");
    let why = &refused.stderr;
    assert!(
        why.contains("policy sbom: no SBOM is attached to this image"),
        "{why}"
    );
    assert!(
        why.contains("decided without the image's attachments")
            && why.contains("not resolved within 1s"),
        "{why}"
    );

    // once the upstream answers in time, both are admitted
    front.clear();
    wait_for("the signed image admitted", Duration::from_secs(30), || {
        s.pull("slowsig/app:v1").ok
    });
    wait_for(
        "the image with an SBOM admitted",
        Duration::from_secs(30),
        || s.pull("slowsbom/app:v1").ok,
    );
}

#[test]
fn invalid_settings_are_rejected_by_check_with_the_modules_message() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("p.toml");
    std::fs::write(
        &cfg,
        policy(
            "picky-one",
            &faulty("picky"),
            "*",
            "[policy.settings]\nok = false",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("policy \"picky-one\"")
            && stderr.contains("picky.wasm")
            && stderr.contains("picky wants"),
        "{stderr}"
    );
    std::fs::write(
        &cfg,
        policy(
            "picky-one",
            &faulty("picky"),
            "*",
            "[policy.settings]\nok = true",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reload_on_sighup_swaps_policies_without_failed_requests() {
    let s = setup(&policy("gate", &example("allow-all"), "up/*", ""));
    let img = s.image("demo/app", "reload", "v1");
    s.reg.push(&img, "demo/app:latest");
    let url = format!("{}/v2/up/demo/app/manifests/v1", s.proxy.url());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                statuses.push(http().get(&url).send().unwrap().status().as_u16());
            }
            statuses
        })
    };
    let config = s.proxy.dir.join("proxy.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let swapped = text.replace(&example("allow-all"), &example("deny-tags"));
    std::fs::write(&config, &swapped).unwrap();
    let hup = |pid: u32| unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    hup(s.proxy.pid());
    wait_for("the reload", Duration::from_secs(20), || {
        s.proxy.log().contains("policies reloaded")
    });
    // a broken configuration keeps the previous policies
    std::fs::write(
        &config,
        swapped.replace(&example("deny-tags"), "/nonexistent.wasm"),
    )
    .unwrap();
    hup(s.proxy.pid());
    wait_for("the failed reload", Duration::from_secs(20), || {
        s.proxy.log().contains("keeping the previous policies")
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = looper.join().unwrap();
    assert!(statuses.len() > 10, "{}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "no failed request: {statuses:?}"
    );
    // deny-tags is now in force
    let latest = http()
        .get(format!("{}/v2/up/demo/app/manifests/latest", s.proxy.url()))
        .send()
        .unwrap();
    assert_eq!(latest.status(), 403);
}

/// Modules pulled from a registry run only with a signature of the trust `verify` names:
/// published with `portcullis policy push` into a local namespace of the proxy, refused by
/// `check` and kept out on SIGHUP while unsigned, loaded once `cosign sign` signed them, pinned
/// by digest in the audit log, re-resolved by tag on each reload; a layer whose bytes an
/// upstream changed is refused by its digest.
#[test]
fn modules_from_a_registry_run_only_signed_and_follow_their_tag_on_reload() {
    let s = setup("[[local]]\nname = \"mods\"\n");
    let img = s.image("demo/app", "oci module", "v1");
    s.reg.push(&img, "demo/app:latest");
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let push = |module: &str, target: &str, creds: bool| {
        let mut cmd = Command::new(portcullis);
        cmd.args(["policy", "push", module, target, "--insecure"]);
        if creds {
            cmd.args(["--username", "ci", "--password-stdin"]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"ci-pass\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let sign_with = |keys: &std::path::Path, reference: &str| {
        let mut args = vec![
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--registry-username",
            "ci",
            "--registry-password",
            "ci-pass",
        ];
        args.extend(COSIGN_LOCAL);
        args.push(reference);
        cosign(keys, &args).success();
    };
    let sign = |reference: &str| sign_with(&s.keys, reference);
    let module_ref = format!("{}/mods/policies/gate:v1", s.proxy.addr);
    let deny = push(&example("deny-tags"), &module_ref, true);
    assert!(deny.starts_with("sha256:"), "{deny}");

    let config = s.proxy.dir.join("proxy.toml");
    let plain = std::fs::read_to_string(&config).unwrap();
    let with_gate = format!(
        "{plain}\n{}",
        policy(
            "gate",
            "oci://mods/policies/gate:v1",
            "up/*",
            "verify = \"release-keys\""
        )
    );
    std::fs::write(&config, &with_gate).unwrap();
    let check = |cfg: &std::path::Path| {
        Command::new(portcullis)
            .args(["check", "--config"])
            .arg(cfg)
            .output()
            .unwrap()
    };
    let hup = |pid: u32| unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let reloads = |what: &str| s.proxy.log().matches(what).count();

    // unsigned: check says why, and a reload keeps the previous (empty) set of policies
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("policy \"gate\" (oci://mods/policies/gate:v1)")
            && stderr.contains(&format!(
                "{deny} is not signed as [trust.release-keys] requires"
            )),
        "{stderr}"
    );
    hup(s.proxy.pid());
    wait_for("the refused reload", Duration::from_secs(30), || {
        reloads("keeping the previous policies") == 1
    });
    assert!(s
        .proxy
        .log()
        .contains("is not signed as [trust.release-keys] requires"));
    s.pull("demo/app:latest").success();

    // signed with a key the trust entry does not hold: still refused
    let stranger = s.t.path().join("stranger");
    cosign_keys(&stranger);
    sign_with(
        &stranger,
        &format!("{}/mods/policies/gate@{deny}", s.proxy.addr),
    );
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "{deny} is not signed as [trust.release-keys] requires"
            )),
        "{stderr}"
    );

    // signed: loaded, and deciding as deny-tags, pinned by digest
    sign(&format!("{}/mods/policies/gate@{deny}", s.proxy.addr));
    let out = check(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hup(s.proxy.pid());
    wait_for("the reload", Duration::from_secs(30), || {
        reloads("SIGHUP: policies reloaded") == 1
    });
    let refused = s.pull("demo/app:latest");
    assert!(
        !refused.ok
            && refused.stderr.contains("policy gate: the tag")
            && refused.stderr.contains("is mutable"),
        "{}",
        refused.stderr
    );
    let pinned = format!("oci://mods/policies/gate@{deny}");
    s.audit_with("the refusal naming the pinned module", |l| {
        l["decision"] == "reject" && l["module"] == pinned.as_str()
    });

    // the tag moves to another signed module: the next reload follows it
    let allow = push(&example("allow-all"), &module_ref, true);
    assert_ne!(allow, deny);
    sign(&format!("{}/mods/policies/gate@{allow}", s.proxy.addr));
    hup(s.proxy.pid());
    wait_for("the second reload", Duration::from_secs(30), || {
        reloads("SIGHUP: policies reloaded") == 2
    });
    s.pull("demo/app:latest").success();
    let pinned = format!("oci://mods/policies/gate@{allow}");
    s.audit_with("the admission naming the new module", |l| {
        l["decision"] == "admit" && l["module"] == pinned.as_str()
    });

    // a signed module (never pulled through the proxy before) whose layer the upstream's
    // storage changed afterwards, keeping its length
    let bad = push(
        &example("require-sbom"),
        &format!("{}/mods/bad:v1", s.reg.host()),
        false,
    );
    cosign_sign(&s.keys, &format!("{}/mods/bad@{bad}", s.reg.host()));
    let layer = {
        let wasm = std::fs::read(example("require-sbom")).unwrap();
        sha256(&wasm).trim_start_matches("sha256:").to_string()
    };
    let data = s.reg.dir.join(format!(
        "storage/docker/registry/v2/blobs/sha256/{}/{layer}/data",
        &layer[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let tampered = s.proxy.dir.join("tampered.toml");
    std::fs::write(
        &tampered,
        format!(
            "{plain}\n{}",
            policy(
                "bad",
                "oci://up/mods/bad:v1",
                "up/*",
                "verify = \"release-keys\""
            )
        ),
    )
    .unwrap();
    let out = check(&tampered);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("policy \"bad\" (oci://up/mods/bad:v1)")
            && stderr.contains(&format!("cannot fetch the module layer sha256:{layer}"))
            && stderr.contains("upstream content does not match digest"),
        "{stderr}"
    );

    // keyless: a module signed with a certificate of our test CA, for one signer only
    use common::keyless::{push_keyless_signature, Entry, Sigstore};
    const ISSUER: &str = "https://issuer.sigstore.test";
    let pki = tempfile::tempdir().unwrap();
    let ours = Sigstore::new(pki.path(), "ours");
    let keyless = push(
        &example("allow-all"),
        &format!("{}/mods/keyless:v1", s.reg.host()),
        false,
    );
    push_keyless_signature(
        &s.reg,
        "mods/keyless",
        &keyless,
        &ours,
        &ours.issue("dev@example.com", ISSUER),
        Entry::Good,
    );
    let signer = |subject: &str| {
        let cfg = s.proxy.dir.join("keyless.toml");
        let text = format!(
            "{plain}\n[trust.ours]\ntrusted_root = {:?}\n{}[policy.verify_identity]\nissuer = \"{ISSUER}\"\nsubject = \"{subject}\"\n",
            ours.trusted_root,
            policy("keyless", "oci://up/mods/keyless:v1", "up/*", "verify = \"ours\"")
        );
        std::fs::write(&cfg, text).unwrap();
        check(&cfg)
    };
    let out = signer("dev@example.com");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = signer("eve@example.com");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("{keyless} is not signed as [trust.ours] requires")),
        "{stderr}"
    );
}

#[test]
fn sighup_reopens_the_audit_log_after_a_rotation() {
    let s = setup(&policy("gate", &example("allow-all"), "up/*", ""));
    s.image("demo/first", "first", "v1");
    s.image("demo/second", "second", "v1");
    let (log, rotated) = (
        s.proxy.dir.join("audit.log"),
        s.proxy.dir.join("audit.log.1"),
    );
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    s.pull("demo/first:v1").success();
    wait_for("the first decision", Duration::from_secs(10), || {
        read(&log).contains("demo/first")
    });

    // logrotate's way: move the file away, then SIGHUP
    std::fs::rename(&log, &rotated).unwrap();
    unsafe { libc::kill(s.proxy.pid() as i32, libc::SIGHUP) };
    wait_for("the reload", Duration::from_secs(20), || {
        s.proxy.log().contains("policies reloaded")
    });
    s.pull("demo/second:v1").success();
    wait_for(
        "the second decision in a new audit.log",
        Duration::from_secs(10),
        || read(&log).contains("demo/second"),
    );
    assert!(
        !read(&rotated).contains("demo/second"),
        "the rotated file got a line after the SIGHUP"
    );
    assert!(read(&rotated).contains("demo/first"));
}

/// A `policy test` request file under `dir`: a pull of `docker.io/library/alpine:latest`.
fn pull_request(dir: &std::path::Path) -> PathBuf {
    let request = dir.join("r.json");
    std::fs::write(
        &request,
        r#"{"namespace":"docker.io","repository":"library/alpine","reference":"latest","manifest":{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}}"#,
    )
    .unwrap();
    request
}

#[test]
fn policy_test_prints_the_decision_without_a_proxy() {
    let t = tempfile::tempdir().unwrap();
    let request = pull_request(t.path());
    let settings = t.path().join("s.json");
    let policy_test = |module: &str, with: &str| {
        std::fs::write(&settings, with).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["policy", "test", module, "--settings"])
            .arg(&settings)
            .arg("--request")
            .arg(&request)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = policy_test(&example("deny-tags"), r#"{"tags":["latest"]}"#);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("decision: reject: the tag \"latest\" is mutable"),
        "{stdout}"
    );
    let (_, stdout, _) = policy_test(&example("require-signature"), r#"{"trust":"release-keys"}"#);
    assert!(
        stdout.contains("decision: verify: trust=[\"release-keys\"]"),
        "{stdout}"
    );
    // what a module writes to stdout and stderr is kept (the proxy logs it at debug level)
    let (_, stdout, _) = policy_test(&faulty("escape"), r#"{"try":"print"}"#);
    assert!(
        stdout.contains("output(to stdout from the module\\nto stderr from the module)"),
        "{stdout}"
    );
}

/// `portcullis policy new` writes a project in each language that builds with its own tools as
/// its README says, passes its own test, and whose module decides through `policy test` and
/// measures through `policy bench`.
#[test]
fn policy_new_projects_build_and_pass_their_tests_in_rust_javascript_and_python() {
    let t = tempfile::tempdir().unwrap();
    let tools = common::tools_dir();
    let path = format!(
        "{}:{}",
        tools.join("componentize-py/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |dir: &std::path::Path, program: &str, args: &[&str]| {
        let out = common::run(
            Command::new(program)
                .args(args)
                .current_dir(dir)
                .env("PATH", &path)
                // a shared target directory: the SDK's dependencies build once across runs
                .env("CARGO_TARGET_DIR", root.join("policies/target/scaffold")),
        );
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(out.ok, "{program} {args:?} in {}: {text}", dir.display());
        text
    };
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let cases = [
        (
            "rust",
            "starter-rs",
            "policies/target/scaffold/wasm32-wasip2/release/starter_rs.wasm",
        ),
        ("js", "starter-js", "starter-js.wasm"),
        ("python", "starter-py", "starter-py.wasm"),
    ];
    for (lang, name, module) in cases {
        let dir = t.path().join(name);
        let dir_arg = dir.display().to_string();
        run(
            t.path(),
            portcullis,
            &["policy", "new", name, "--lang", lang, "--dir", &dir_arg],
        );
        let tested = match lang {
            "rust" => {
                // a module left by an earlier run must not stand in for this one
                let _ = std::fs::remove_file(root.join(module));
                let out = run(&dir, "cargo", &["test"]);
                run(
                    &dir,
                    "cargo",
                    &["build", "--release", "--target", "wasm32-wasip2"],
                );
                out
            }
            "js" => {
                run(
                    &dir,
                    "npm",
                    &["install", "--no-audit", "--no-fund", "--prefer-offline"],
                );
                let out = run(&dir, "npm", &["test"]);
                run(&dir, "npm", &["run", "build"]);
                out
            }
            _ => {
                let out = run(&dir, "./test.sh", &[]);
                run(&dir, "./build.sh", &[]);
                out
            }
        };
        let passed = match lang {
            "rust" => tested.contains("test result: ok. 2 passed"),
            "js" => tested.contains("ok: starter-js decides as expected"),
            _ => tested.contains("Ran 2 tests") && tested.contains("\nOK"),
        };
        assert!(passed, "{lang}: {tested}");
        let module = if lang == "rust" {
            root.join(module)
        } else {
            dir.join(module)
        };
        let module = module.display().to_string();
        let inputs = ["--request", "request.json", "--settings", "settings.json"];
        let decided = run(
            &dir,
            portcullis,
            &[&["policy", "test", &module][..], &inputs].concat(),
        );
        assert!(
            decided.contains("decision: reject: the tag \"latest\" may not be used"),
            "{lang}: {decided}"
        );
        let measured = run(
            &dir,
            portcullis,
            &[
                &["policy", "bench", &module][..],
                &inputs,
                &["--iterations", "20"],
            ]
            .concat(),
        );
        assert!(
            measured.contains("decision: reject: the tag \"latest\" may not be used")
                && measured.contains("cold (fresh instance + evaluate): ")
                && measured.contains("cached (the proxy's decision cache"),
            "{lang}: {measured}"
        );
    }
    // a second project never overwrites the first
    let again = Command::new(portcullis)
        .args(["policy", "new", "starter-rs", "--dir"])
        .arg(t.path().join("starter-rs"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
}

/// A module builds a poll of four million copies of one pollable in its own memory (16 MiB of
/// handles): the host refuses the list before copying it into its own memory (the copy and
/// WASI's bookkeeping of it took about 300 MiB of the proxy's memory).
#[test]
fn a_poll_of_millions_of_pollables_is_refused_before_the_host_copies_it() {
    let t = tempfile::tempdir().unwrap();
    let request = pull_request(t.path());
    let settings = t.path().join("s.json");
    std::fs::write(&settings, r#"{"try":"poll"}"#).unwrap();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "max-rss-kib=%M", env!("CARGO_BIN_EXE_portcullis")])
        .args(["policy", "test", &faulty("escape"), "--settings"])
        .arg(&settings)
        .arg("--request")
        .arg(&request)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("decision: reject: ") && stdout.contains("poll of 4194304 pollables"),
        "{stdout}{stderr}"
    );
    let rss: u64 = stderr
        .split("max-rss-kib=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure from /usr/bin/time: {stderr}"));
    assert!(rss < 160 << 10, "policy test peaked at {rss} KiB");
}

#[test]
fn keyless_identity_policy_admits_only_the_identitys_signatures() {
    use common::keyless::{push_keyless_signature, Entry, Sigstore};
    const ISSUER: &str = "https://issuer.sigstore.test";
    let pki = tempfile::tempdir().unwrap();
    let ours = Sigstore::new(pki.path(), "ours");
    let settings = format!("[policy.settings]\nissuer = \"{ISSUER}\"\nsubject_regexp = \"@example[.]com$\"\ntrust = \"ours\"");
    // the same identity, and the GitHub workflow ref the certificates carry (refs/heads/main)
    let on_ref = |r: &str| format!("{settings}\n[policy.settings.github]\nworkflow_ref = \"{r}\"");
    let s = setup(&format!(
        "{}{}{}[trust.ours]\ntrusted_root = {:?}\n",
        policy(
            "keyless",
            &example("keyless-identity"),
            "up/ci/*",
            &settings
        ),
        policy(
            "main-only",
            &example("keyless-identity"),
            "up/main/*",
            &on_ref("refs/heads/main")
        ),
        policy(
            "tags-only",
            &example("keyless-identity"),
            "up/tags/*",
            &on_ref("refs/tags/v1")
        ),
        ours.trusted_root
    ));
    for repo in ["main/app", "tags/app"] {
        let img = s.image(repo, repo, "v1");
        push_keyless_signature(
            &s.reg,
            repo,
            &img.digest,
            &ours,
            &ours.issue("dev@example.com", ISSUER),
            Entry::Good,
        );
    }
    s.pull("main/app:v1").success();
    let refused = s.pull("tags/app:v1");
    assert!(
        !refused.ok
            && refused.stderr.contains("policy tags-only")
            && refused
                .stderr
                .contains("certificate github-workflow-ref is refs/heads/main, not refs/tags/v1"),
        "{}",
        refused.stderr
    );
    let good = s.image("ci/keyless", "keyless", "v1");
    push_keyless_signature(
        &s.reg,
        "ci/keyless",
        &good.digest,
        &ours,
        &ours.issue("dev@example.com", ISSUER),
        Entry::Good,
    );
    let stranger = s.image("ci/stranger", "stranger", "v1");
    push_keyless_signature(
        &s.reg,
        "ci/stranger",
        &stranger.digest,
        &ours,
        &ours.issue("eve@example.org", ISSUER),
        Entry::Good,
    );

    s.pull("ci/keyless:v1").success();
    let refused = s.pull("ci/stranger:v1");
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("policy keyless") && refused.stderr.contains("does not match"),
        "{}",
        refused.stderr
    );
    s.audit_with("an admission of ci/keyless in the audit log", |l| {
        l["repository"] == "ci/keyless" && l["decision"] == "admit"
    });
}

#[test]
fn ten_misbehaving_modules_at_once_fail_closed_while_others_are_served() {
    // default timeouts: a timeout counts CPU time, so on a busy machine the hog and the trap
    // still reach their own fault before it runs out
    let kinds = [
        ("spin", "timeout = \"100ms\"", "exceeded its timeout"),
        ("hog", "memory = \"16MiB\"", "memory"),
        ("trap", "", "trapped"),
    ];
    let policies: String = (0..10)
        .map(|i| {
            let (kind, extra, _) = kinds[i % 3];
            policy(
                &format!("bad{i}"),
                &faulty(kind),
                &format!("up/bad{i}/*"),
                extra,
            )
        })
        .collect();
    let s = setup(&policies);
    for i in 0..10 {
        s.image(&format!("bad{i}/app"), &format!("bad{i}"), "v1");
    }
    for i in 0..5 {
        s.image(&format!("fine/app{i}"), &format!("fine{i}"), "v1");
    }
    let url = |repo: &str| format!("{}/v2/up/{repo}/manifests/v1", s.proxy.url());
    let started = Instant::now();
    let bad: Vec<_> = (0..30)
        .map(|n| {
            let (u, i) = (url(&format!("bad{}/app", n % 10)), n % 10);
            std::thread::spawn(move || {
                let r = http().get(u).send().unwrap();
                (i, r.status().as_u16(), r.text().unwrap())
            })
        })
        .collect();
    let good: Vec<_> = (0..50)
        .map(|n| {
            let u = url(&format!("fine/app{}", n % 5));
            std::thread::spawn(move || {
                http()
                    .get(u)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for h in good {
        assert_eq!(
            h.join().unwrap(),
            200,
            "images outside the bad scopes are served"
        );
    }
    for h in bad {
        let (i, status, body) = h.join().unwrap();
        let (_, _, reason) = kinds[i % 3];
        assert_eq!(
            (status, error_code(&body).as_str()),
            (403, "DENIED"),
            "bad{i}: {body}"
        );
        assert!(
            body.contains(&format!("policy bad{i}")) && body.contains(reason),
            "bad{i}: {body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    s.pull("fine/app0:v1").success();
}

#[test]
fn a_trust_repointed_at_another_authority_applies_at_once_after_sighup() {
    use common::keyless::{push_keyless_signature, Entry, Sigstore};
    const ISSUER: &str = "https://issuer.sigstore.test";
    let pki = tempfile::tempdir().unwrap();
    let (ours, replacement) = (
        Sigstore::new(&pki.path().join("ours"), "ours"),
        Sigstore::new(&pki.path().join("new"), "new"),
    );
    let settings = format!("[policy.settings]\nissuer = \"{ISSUER}\"\nsubject_regexp = \"@example[.]com$\"\ntrust = \"ours\"");
    let s = setup(&format!(
        "{}[trust.ours]\nca_certs = [{:?}]\nrekor_keys = [{:?}]\n",
        policy("keyless", &example("keyless-identity"), "up/*", &settings),
        ours.ca_file,
        ours.rekor_file
    ));
    let img = s.image("ci/app", "repointed", "v1");
    push_keyless_signature(
        &s.reg,
        "ci/app",
        &img.digest,
        &ours,
        &ours.issue("dev@example.com", ISSUER),
        Entry::Good,
    );
    s.pull("ci/app:v1").success();

    // the CA and log are found compromised: the same trust name now names their replacements
    let config = s.proxy.dir.join("proxy.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let repointed = text
        .replace(
            &format!("{:?}", ours.ca_file),
            &format!("{:?}", replacement.ca_file),
        )
        .replace(
            &format!("{:?}", ours.rekor_file),
            &format!("{:?}", replacement.rekor_file),
        );
    assert_ne!(text, repointed);
    std::fs::write(&config, repointed).unwrap();
    unsafe { libc::kill(s.proxy.pid() as i32, libc::SIGHUP) };
    wait_for("the reload", Duration::from_secs(20), || {
        s.proxy.log().contains("policies reloaded")
    });
    let refused = s.pull("ci/app:v1");
    assert!(
        !refused.ok,
        "the image verified under the old trust is refused at once"
    );
    assert!(
        refused.stderr.contains("policy keyless"),
        "{}",
        refused.stderr
    );
}

#[test]
fn modules_get_no_filesystem_network_or_environment_and_overflow_their_stack_safely() {
    let escape = faulty("escape");
    let tries = ["fs", "env", "clock", "net", "recurse", "sleep", "print"];
    let policies: String = tries
        .iter()
        .map(|w| {
            policy(
                w,
                &escape,
                &format!("up/{w}/*"),
                &format!("[policy.settings]\ntry = \"{w}\""),
            )
        })
        .collect();
    let s = setup(&policies);
    for w in tries {
        s.image(&format!("{w}/app"), w, "v1");
        let started = std::time::Instant::now();
        let r = http()
            .get(format!("{}/v2/up/{w}/app/manifests/v1", s.proxy.url()))
            .send()
            .unwrap();
        let (status, body) = (r.status().as_u16(), r.text().unwrap());
        // the module got nothing: its library answered an error (no preopened directory, an
        // empty environment, every address denied), or it failed closed
        for leak in [
            "read a file",
            "read the environment",
            "opened a connection",
            "returned from recursion",
        ] {
            assert!(!body.contains(leak), "{w}: {body}");
        }
        match w {
            "fs" | "env" | "net" | "print" => assert_eq!(status, 200, "{w}: {body}"),
            // clocks are allowed (WASI's wall clock: the module saw the time and said so)
            "clock" => assert!(status == 403 && body.contains("read the clock"), "{body}"),
            // a sleep costs no thread's time: the clock's deadline is reached at once
            "sleep" => {
                assert!(status == 403 && body.contains("slept"), "{body}");
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(20),
                    "slept for real"
                );
            }
            _ => {
                assert_eq!((status, error_code(&body).as_str()), (403, "DENIED"), "{w}");
                assert!(
                    body.contains("policy module"),
                    "{w}: failed closed, naming the failure: {body}"
                );
            }
        }
    }
    assert_eq!(
        http()
            .get(format!("{}/v2/", s.proxy.url()))
            .send()
            .unwrap()
            .status(),
        401,
        "the proxy serves on (and challenges)"
    );
}

#[test]
fn a_module_deciding_on_who_asks_is_asked_again_for_each_asker() {
    let s = setup(&policy(
        "agent",
        &faulty("escape"),
        "up/agent/*",
        "[policy.settings]\ntry = \"agent\"",
    ));
    s.image("agent/app", "agent", "v1");
    let get = |agent: &str| {
        let r = http()
            .get(format!("{}/v2/up/agent/app/manifests/v1", s.proxy.url()))
            .header("user-agent", agent)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(get("podman/4.3").0, 200);
    let (status, body) = get("blocked-client/1.0");
    assert_eq!(
        status, 403,
        "not the first client's cached admission: {body}"
    );
    assert!(body.contains("blocked-client/1.0 may not pull"), "{body}");
    assert_eq!(
        get("podman/4.3").0,
        200,
        "the first client keeps its own decision"
    );
}

#[test]
fn a_host_call_that_never_ends_is_cut_at_its_hard_cap() {
    let s = setup_via(
        &policy("config-reader", &faulty("config-reader"), "up/stuck/*", ""),
        true,
    );
    let img = s.image("stuck/app", "stuck", "v1");
    s.front.as_ref().unwrap().fault(
        "GET",
        &format!("/blobs/{}", img.config_digest),
        Fault::Delay(Duration::from_secs(60)),
    );
    let started = Instant::now();
    let r = http()
        .get(format!("{}/v2/up/stuck/app/manifests/v1", s.proxy.url()))
        .send()
        .unwrap();
    let (status, body) = (r.status().as_u16(), r.text().unwrap());
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("host call timed out"),
        "the module was told the call was cut: {body}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(20),
        "cut at the 10 s cap: {took:?}"
    );
}

#[test]
fn warn_mode_admits_what_a_trapping_module_would_refuse_and_audits_it() {
    let s = setup(&policy(
        "trap",
        &faulty("trap"),
        "up/trapped/*",
        "mode = \"warn\"",
    ));
    let img = s.image("trapped/app", "trapped", "v1");
    s.pull("trapped/app:v1").success();
    let audit = s.audit_with("the trap's audit line", |l| {
        l["repository"] == "trapped/app"
    });
    let line = audit
        .iter()
        .find(|l| l["repository"] == "trapped/app")
        .unwrap();
    assert_eq!(
        (line["decision"].as_str(), line["mode"].as_str()),
        (Some("reject"), Some("warn"))
    );
    assert!(
        line["reason"].as_str().unwrap().contains("trapped"),
        "{line}"
    );
    assert_eq!(line["digest"], img.digest.as_str());
}
