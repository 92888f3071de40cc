//! Test fixtures: a real upstream registry (Debian's docker-registry), the real proxy binary,
//! OCI image layouts built from scratch, and the real clients (skopeo, podman).
#![allow(dead_code)]

pub mod containerd;
pub mod front;
pub mod image;
pub mod keyless;
pub mod liar;
pub mod sigs;
pub mod tls;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use image::{build_image, ImageSpec, OciImage};

/// A free loopback port (bound and released; the caller binds it again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `check` is true or the deadline passes.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn http_ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-ksS", "-o", "/dev/null", "--max-time", "2", url])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Debian's docker-registry on a loopback port, with its access log in `dir/registry.log`.
pub struct Registry {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    extra_config: String,
    tls: bool,
}

impl Registry {
    /// Starts a plain registry (deletes enabled) storing under `dir`.
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, "")
    }

    /// Starts a registry with extra YAML appended at the top level (e.g. an `auth:` block).
    pub fn start_with(dir: &Path, extra_config: &str) -> Registry {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut r = Registry {
            dir: dir.to_path_buf(),
            port: free_port(),
            child: None,
            extra_config: extra_config.into(),
            tls: false,
        };
        r.spawn();
        r
    }

    /// Starts a registry serving HTTPS: `tls_yaml` is its `http.tls` block, indented by two.
    pub fn start_tls(dir: &Path, tls_yaml: &str) -> Registry {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut r = Registry {
            dir: dir.to_path_buf(),
            port: free_port(),
            child: None,
            extra_config: tls_yaml.into(),
            tls: true,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{}\n  secret: test-secret\n{}",
            self.dir.join("storage").display(),
            self.port,
            self.extra_config
        );
        std::fs::write(self.dir.join("config.yml"), config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("registry.log"))
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry is installed (tests/setup.sh)");
        self.child = Some(child);
        let url = format!("{}/v2/", self.url());
        wait_for("docker-registry to answer", Duration::from_secs(15), || {
            Command::new("curl")
                .args(["-ksS", "-o", "/dev/null", "--max-time", "2", &url])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>` (`https://` for a TLS registry).
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host()
        )
    }

    /// Stops the registry (the proxy's upstream goes away).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// How many requests with this method whose path contains `needle` the registry served.
    pub fn count(&self, method: &str, needle: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("\"{method} /v2/")) && l.contains(needle))
            .count()
    }

    /// [`Registry::count`] once the registry's access log has caught up (it logs a request after
    /// answering it): waits up to 5 s for at least `at_least` lines, then a moment more for any
    /// others.
    pub fn count_settled(&self, method: &str, needle: &str, at_least: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.count(method, needle) < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.count(method, needle)
    }

    /// Pushes an OCI layout image to `repo:tag` here with skopeo.
    pub fn push(&self, image: &OciImage, repo_tag: &str) {
        skopeo(&[
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!("oci:{}:{}", image.dir.display(), image.tag),
            &format!("docker://{}/{repo_tag}", self.host()),
        ])
        .success();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The portcullis binary under test, with its log in `dir/proxy.log`.
/// The address a proxy's start-up line names: the text banner, or the JSON log event.
fn listening_address(line: &str) -> Option<String> {
    if let Some(addr) = line.strip_prefix("portcullis listening on ") {
        return Some(addr.to_string());
    }
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    (event["message"] == "portcullis listening")
        .then(|| event["addr"].as_str().map(str::to_string))
        .flatten()
}

pub struct Proxy {
    pub dir: PathBuf,
    pub addr: String,
    child: Option<Child>,
    config: PathBuf,
    /// A command the binary is started under (e.g. `prlimit --nofile=...`), if any.
    launcher: Vec<String>,
}

impl Proxy {
    /// Writes `config` (TOML, without `[server]`) to `dir/proxy.toml` and starts the proxy on it.
    pub fn start(dir: &Path, config: &str) -> Proxy {
        Proxy::start_with_server(dir, "", config)
    }

    /// Like [`Proxy::start`], with extra `[server]` keys (e.g. TLS files). A proxy with users
    /// and no TLS of its own is told TLS is terminated in front of it (`insecure_auth`): the
    /// tests talk to it over loopback.
    pub fn start_with_server(dir: &Path, server: &str, config: &str) -> Proxy {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("proxy.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        let grace = if server.contains("shutdown_grace") {
            ""
        } else {
            "shutdown_grace = \"2s\"\n"
        };
        let plain_auth = config.contains("htpasswd")
            && !server.contains("tls_cert")
            && !server.contains("insecure_auth");
        let insecure = if plain_auth {
            "insecure_auth = true\n"
        } else {
            ""
        };
        writeln!(
            f,
            "[server]\nlisten = \"127.0.0.1:0\"\n{grace}{insecure}{server}\n{config}"
        )
        .unwrap();
        let mut p = Proxy {
            dir: dir.to_path_buf(),
            addr: String::new(),
            child: None,
            config: path,
            launcher: Vec::new(),
        };
        p.spawn();
        p
    }

    /// Like [`Proxy::start_with_server`], the binary started under `launcher` (a command that
    /// runs its arguments, e.g. `prlimit --nofile=64:64`).
    pub fn start_under(launcher: &[&str], dir: &Path, server: &str, config: &str) -> Proxy {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("proxy.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n{server}\n{config}\n"
            ),
        )
        .unwrap();
        let mut p = Proxy {
            dir: dir.to_path_buf(),
            addr: String::new(),
            child: None,
            config: path,
            launcher: launcher.iter().map(|s| s.to_string()).collect(),
        };
        p.spawn();
        p
    }

    /// A proxy with one upstream named `name` pointing at `url`, plus extra TOML.
    pub fn for_upstream(dir: &Path, name: &str, url: &str, extra: &str) -> Proxy {
        Proxy::start(
            dir,
            &format!("[storage]\npath = \"data\"\n{extra}\n[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"2s\"\nconnect_timeout = \"1s\"\nretries = 1\n"),
        )
    }

    fn spawn(&mut self) {
        let log_path = self.dir.join("proxy.log");
        let start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_portcullis");
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let mut addr = None;
        wait_for("the proxy to listen", Duration::from_secs(180), || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            addr = text[start as usize..].lines().find_map(listening_address);
            addr.is_some()
        });
        self.addr = addr.unwrap();
        assert!(
            http_ok(&format!("{}/healthz", self.url())),
            "proxy answers /healthz"
        );
    }

    /// `http://<addr>`, or `https://` when the proxy serves TLS.
    pub fn url(&self) -> String {
        let tls = std::fs::read_to_string(&self.config)
            .unwrap_or_default()
            .contains("tls_cert");
        format!("{}://{}", if tls { "https" } else { "http" }, self.addr)
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("proxy running").id()
    }

    /// Kills the proxy with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
    }

    /// Waits up to `timeout` for the process to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the proxy again on the same configuration and storage (a new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Whether the store holds a blob with this digest.
    pub fn has_blob(&self, digest: &str) -> bool {
        let (alg, hex) = digest.split_once(':').unwrap();
        self.data().join("blobs").join(alg).join(hex).exists()
    }

    /// Whether a blob is (or within 10 s becomes) cached: a fill moves a blob into the store
    /// just after its client got the last byte.
    pub fn cached(&self, digest: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.has_blob(digest) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Files left in the spool directory (partial downloads).
    pub fn spool_files(&self) -> usize {
        std::fs::read_dir(self.data().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The outcome of a client command.
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Panics with the client's output unless it succeeded.
    pub fn success(self) -> Outcome {
        assert!(
            self.ok,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs a command to its end: whether it succeeded, and what it wrote.
pub fn run(cmd: &mut Command) -> Outcome {
    let out = cmd.output().expect("client is installed (tests/setup.sh)");
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs skopeo with an accept-anything policy.
pub fn skopeo(args: &[&str]) -> Outcome {
    let policy = std::env::temp_dir().join("portcullis-test-policy.json");
    if !policy.exists() {
        let tmp = policy.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
        std::fs::rename(&tmp, &policy).unwrap();
    }
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy").arg(&policy).args(args);
    run(&mut cmd)
}

/// Copies `docker://<src>` to a fresh OCI layout under `dest` with skopeo (plain http source).
pub fn skopeo_pull(src: &str, dest: &Path) -> Outcome {
    let _ = std::fs::remove_dir_all(dest);
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{src}"),
        &format!("oci:{}:pulled", dest.display()),
    ])
}

/// Runs podman with throwaway storage under `root`, using `registries_conf`.
pub fn podman(root: &Path, registries_conf: &Path, args: &[&str]) -> Outcome {
    let policy = root.join("policy.json");
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_REGISTRIES_CONF", registries_conf)
        .env("HOME", root)
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
        ])
        .arg("--tmpdir")
        .arg(root.join("tmp"));
    if args.first() == Some(&"pull") {
        cmd.arg("pull")
            .arg("--signature-policy")
            .arg(&policy)
            .args(&args[1..]);
    } else {
        cmd.args(args);
    }
    run(&mut cmd)
}

/// An HTTP client for direct API checks.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// An HTTPS client trusting the given CA certificate (PEM).
pub fn https(ca: &Path) -> reqwest::blocking::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .add_root_certificate(cert)
        .build()
        .unwrap()
}

/// An htpasswd file with bcrypt entries for `(user, password)` pairs.
pub fn htpasswd(path: &Path, users: &[(&str, &str)]) {
    let lines: Vec<String> = users
        .iter()
        .map(|(u, p)| format!("{u}:{}", bcrypt::hash(p, 5).unwrap()))
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The SHA-256 digest of bytes, `sha256:<hex>`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The `errors[0].code` of an OCI error body.
pub fn error_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not OCI error JSON: {body:?}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sends a request line exactly as written (no client-side path normalisation) and returns
/// the status, the headers (lower-cased names) and the body.
pub fn raw_request(addr: &str, method: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Where tests/setup.sh puts the tools Debian 12 does not package.
pub fn tools_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(
        std::env::var("PORTCULLIS_TOOLS").unwrap_or(format!("{home}/.cache/portcullis-tools")),
    )
}

/// Runs Debian 13's skopeo (containers/image with sigstore verification and signing enabled)
/// with `policy`: the binary from the Debian 13 tree tests/setup.sh bootstraps, started by that
/// tree's own dynamic loader and libraries. Fails loudly when the tree is missing.
pub fn sigstore_skopeo(policy: &Path, args: &[&str]) -> Outcome {
    let root = tools_dir().join("trixie");
    let skopeo = root.join("usr/bin/skopeo");
    assert!(
        skopeo.exists(),
        "Debian 13's skopeo is missing at {}: run tests/setup.sh",
        skopeo.display()
    );
    let libs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
        .map(|l| root.join(l).display().to_string());
    let mut cmd = Command::new(root.join("lib64/ld-linux-x86-64.so.2"));
    cmd.arg("--library-path")
        .arg(libs.join(":"))
        .arg(skopeo)
        .arg("--policy")
        .arg(policy)
        .args(args);
    run(&mut cmd)
}

/// The cosign binary: on PATH, else where tests/setup.sh puts it.
pub fn cosign_bin() -> PathBuf {
    if let Ok(p) = std::env::var("COSIGN") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("cosign"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| tools_dir().join("bin/cosign"))
}

/// Runs cosign in `dir` with the test passphrase, plain-http registries and no transparency log.
pub fn cosign(dir: &Path, args: &[&str]) -> Outcome {
    cosign_with(dir, &[], args)
}

/// Runs cosign like [`cosign`], with extra environment (e.g. `SSL_CERT_FILE`).
pub fn cosign_with(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Outcome {
    let mut cmd = Command::new(cosign_bin());
    cmd.current_dir(dir)
        .env("COSIGN_PASSWORD", "test-passphrase")
        .env("COSIGN_YES", "true")
        .env("HOME", dir)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Makes a cosign key pair (`cosign.key`, `cosign.pub`) in `dir`.
pub fn cosign_keys(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    cosign(dir, &["generate-key-pair"]).success();
}

/// Flags that let cosign talk to plain-http loopback registries without a transparency log.
pub const COSIGN_LOCAL: [&str; 2] = ["--allow-http-registry", "--allow-insecure-registry"];

/// `cosign sign --key <dir>/cosign.key` of `reference`, offline.
pub fn cosign_sign(dir: &Path, reference: &str) {
    let mut args = vec!["sign", "--key", "cosign.key", "--tlog-upload=false"];
    args.extend(COSIGN_LOCAL);
    args.push(reference);
    cosign(dir, &args).success();
}

/// `cosign verify --key <dir>/<key>` of `reference`.
pub fn cosign_verify(dir: &Path, key: &str, reference: &str) -> Outcome {
    let mut args = vec!["verify", "--key", key, "--insecure-ignore-tlog"];
    args.extend(COSIGN_LOCAL);
    args.push(reference);
    cosign(dir, &args)
}

/// Checks the proxy's store: every blob hashes to its name, and no spool file is left over.
pub fn assert_store_consistent(proxy: &Proxy) {
    let dir = proxy.data().join("blobs/sha256");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            sha256(&bytes),
            format!("sha256:{name}"),
            "a stored blob does not match its digest"
        );
    }
    assert_eq!(proxy.spool_files(), 0, "spool files left over");
}

/// Pushes a blob to the registry (monolithic upload) and returns its digest.
pub fn push_blob(reg: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = http()
        .post(format!("{}/v2/{repo}/blobs/uploads/", reg.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let url = if loc.starts_with("http") {
        loc.clone()
    } else {
        format!("{}{loc}", reg.url())
    };
    let r = http()
        .put(format!("{url}{sep}digest={digest}"))
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    digest
}

pub fn push_manifest(reg: &Registry, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let r = http()
        .put(format!("{}/v2/{repo}/manifests/{reference}", reg.url()))
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
}

static POLICY_BUILD: std::sync::Once = std::sync::Once::new();

/// Builds the example and test policy modules once per test binary (a no-op when built) and
/// returns the path of one: `workspace` is `policies` or `tests/policies`.
pub fn policy_module(workspace: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    POLICY_BUILD.call_once(|| {
        for ws in ["policies", "tests/policies"] {
            let status = Command::new("cargo")
                .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
                .current_dir(root.join(ws))
                .status()
                .expect("cargo");
            assert!(
                status.success(),
                "building the policies in {ws} (needs `rustup target add wasm32-wasip2`)"
            );
        }
    });
    let path = root
        .join(workspace)
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}
