//! The `Containerfile`, built and run with podman: a non-root image whose health check works,
//! whose default configuration is valid, and through which skopeo pulls an image (then again
//! from the container's /data volume with the upstream stopped).
//!
//! The Containerfile's base (`docker.io/library/debian:bookworm-slim`) cannot be pulled here: a
//! Debian 12 made by debootstrap from the machine's mirror (tests/setup.sh) is imported under
//! that name into the test's own podman storage. podman runs the containers with runc and
//! explicit ulimits: crun cannot raise the default limits inside this machine's sandbox.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const IMAGE: &str = "localhost/portcullis-test:latest";

/// podman on storage of its own under `root`.
struct Podman {
    root: PathBuf,
}

impl Podman {
    fn run(&self, args: &[&str]) -> Outcome {
        let out = Command::new("podman")
            .arg("--root")
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .arg("--tmpdir")
            .arg(self.root.join("tmp"))
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            .output()
            .expect("podman is installed (tests/setup.sh)");
        Outcome {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `podman run` with the flags this machine needs (and host networking).
    fn container(&self, args: &[&str]) -> Outcome {
        let mut all = vec![
            "run",
            "--network",
            "host",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ];
        all.extend(args);
        self.run(&all)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--force", "--all"]);
        let _ = self.run(&["system", "reset", "--force"]);
    }
}

fn tools_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or("/root".into());
    PathBuf::from(
        std::env::var("PORTCULLIS_TOOLS").unwrap_or(format!("{home}/.cache/portcullis-tools")),
    )
}

/// The build context as the Containerfile expects it: the binary where `cargo build --release`
/// puts it, the container configuration, the Containerfile and its ignore file verbatim.
fn context(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ctx = dir.join("context");
    std::fs::create_dir_all(ctx.join("target/release")).unwrap();
    std::fs::create_dir_all(ctx.join("examples/container")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_portcullis"),
        ctx.join("target/release/portcullis"),
    )
    .unwrap();
    for f in [
        "Containerfile",
        ".containerignore",
        "examples/container/proxy.toml",
    ] {
        std::fs::copy(root.join(f), ctx.join(f)).unwrap();
    }
    ctx
}

fn healthy(podman: &Podman, name: &str) -> bool {
    podman.run(&["healthcheck", "run", name]).ok
}

#[test]
fn the_containerfile_builds_an_image_that_runs_unprivileged_and_serves_pulls() {
    let t = tempfile::tempdir().unwrap();
    let podman = Podman {
        root: t.path().join("podman"),
    };
    let base = tools_dir().join("bookworm-base.tar");
    assert!(
        base.exists(),
        "{} is missing: run tests/setup.sh",
        base.display()
    );
    let out = podman.run(&[
        "import",
        base.to_str().unwrap(),
        "docker.io/library/debian:bookworm-slim",
    ]);
    assert!(out.ok, "importing the base: {}", out.stderr);

    let ctx = context(t.path());
    let out = podman.run(&[
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "--tag",
        IMAGE,
        "--file",
        ctx.join("Containerfile").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert!(out.ok, "podman build: {}{}", out.stdout, out.stderr);

    // what the image promises: an unprivileged user, a volume for the store, a health check
    let inspect = podman.run(&["image", "inspect", IMAGE]);
    let image: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    let config = &image[0]["Config"];
    assert_eq!(config["User"], "portcullis", "{config}");
    assert!(config["Volumes"].get("/data").is_some(), "{config}");
    let check = image[0]["Healthcheck"]["Test"].to_string();
    assert!(
        check.contains("portcullis") && check.contains("health"),
        "{image}"
    );
    let id = podman.container(&["--rm", "--entrypoint", "id", IMAGE, "-u"]);
    assert_eq!(id.stdout.trim(), "10001", "{}", id.stderr);
    let checked = podman.container(&[
        "--rm",
        IMAGE,
        "check",
        "--config",
        "/etc/portcullis/proxy.toml",
    ]);
    assert!(
        checked.ok,
        "the image's own configuration: {}",
        checked.stderr
    );

    // run it on a configuration of the test's (a free port, the test upstream)
    let mut reg = Registry::start(&t.path().join("upstream"));
    let img = build_image(
        &t.path().join("img"),
        &ImageSpec {
            seed: "container-image",
            layers: &[5_000, 60_000],
            tag: "v1",
        },
    );
    reg.push(&img, "library/app:v1");
    let port = free_port();
    let conf = t.path().join("proxy.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = \"/data\"\n\
             [[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            reg.url()
        ),
    )
    .unwrap();
    let mount = format!("{}:/etc/portcullis/proxy.toml:ro", conf.display());
    let started = podman.container(&[
        "--detach",
        "--name",
        "portcullis",
        "--volume",
        &mount,
        IMAGE,
    ]);
    assert!(started.ok, "podman run: {}", started.stderr);
    wait_for(
        "the container's health check to pass",
        Duration::from_secs(30),
        || healthy(&podman, "portcullis"),
    );

    let out = skopeo_pull(
        &format!("127.0.0.1:{port}/up/library/app:v1"),
        &t.path().join("pulled"),
    );
    assert!(out.ok, "skopeo through the container: {}", out.stderr);
    let index = std::fs::read_to_string(t.path().join("pulled/index.json")).unwrap();
    assert!(index.contains(&img.digest), "{index}");

    // the store is the container's /data volume: the image is served from it alone
    reg.stop();
    let out = skopeo_pull(
        &format!("127.0.0.1:{port}/up/library/app:v1"),
        &t.path().join("again"),
    );
    assert!(out.ok, "skopeo from the container's store: {}", out.stderr);
    let logs = podman.run(&["logs", "portcullis"]);
    assert!(
        logs.stderr.contains("cache=\"hit\"") || logs.stdout.contains("cache=\"hit\""),
        "{}",
        logs.stderr
    );

    // the health check fails when nothing answers: it is not a constant
    let out = podman.run(&[
        "exec",
        "portcullis",
        "portcullis",
        "health",
        "http://127.0.0.1:1/healthz",
    ]);
    assert!(!out.ok, "a health check against nothing passed");
    let out = podman.run(&["stop", "--time", "10", "portcullis"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        !healthy(&podman, "portcullis"),
        "a stopped container is healthy"
    );
}
