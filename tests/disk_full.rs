//! A full disk, on a small tmpfs mounted as the proxy's storage (needs root or CAP_SYS_ADMIN;
//! without them the test fails, naming what it lacks): a fill that hits the full disk fails for its
//! client and caches nothing; below `min_free` blobs stream from the upstream uncached; pushes
//! get 507 with nothing half-written; what is cached keeps being served; space coming back
//! brings caching and pushes back.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(dir.to_path_buf()))
}

fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs struct
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// Writes a filler file so that about `leave` bytes stay free.
fn fill_disk(dir: &Path, leave: u64) {
    let filler = dir.join("filler");
    let _ = std::fs::remove_file(&filler);
    let size = free_bytes(dir).saturating_sub(leave);
    std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
}

#[test]
fn a_full_disk_fails_cleanly_and_recovers() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("proxy");
    let Some(_mount) = mount_tmpfs(&dir.join("data"), "64m") else {
        panic!("disk_full: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN, as tests/run.sh has in CI): this test cannot run here");
    };
    let data = dir.join("data");
    let reg = Registry::start(&t.path().join("upstream"));
    htpasswd(&dir.join("users.htpasswd"), &[("ci", "ci-pass")]);
    let proxy = Proxy::start(
        &dir,
        &format!("[storage]\npath = \"data\"\nmin_free = \"12MiB\"\n[auth]\nhtpasswd = \"users.htpasswd\"\n[[local]]\nname = \"internal\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n", reg.url()),
    );
    let image = |name: &str, size: usize| {
        let img = build_image(
            &t.path().join(name),
            &ImageSpec {
                seed: name,
                layers: &[size],
                tag: "v1",
            },
        );
        reg.push(&img, &format!("full/{name}:v1"));
        img
    };
    let small = image("small", 1 << 20);
    let big = image("big", 24 << 20);
    let blob_url = |name: &str, d: &str| format!("{}/v2/up/full/{name}/blobs/{d}", proxy.url());
    skopeo_pull(
        &format!("{}/up/full/small:v1", proxy.addr),
        &t.path().join("warm"),
    )
    .success();

    // 16 MiB free, above min_free: the fill of a 24 MiB blob hits the full disk
    fill_disk(&data, 16 << 20);
    let got = http()
        .get(blob_url("big", &big.layers[0]))
        .send()
        .and_then(|r| r.bytes());
    assert!(
        got.is_err() || sha256(&got.unwrap()) != big.layers[0],
        "the client must not get a whole blob"
    );
    wait_for(
        "the failed fill to clean up",
        std::time::Duration::from_secs(10),
        || proxy.spool_files() == 0,
    );
    assert!(!proxy.has_blob(&big.layers[0]), "nothing cached");
    assert_store_consistent(&proxy);
    assert!(
        proxy.log().contains("storage is full") || proxy.log().contains("No space left"),
        "the full disk is logged"
    );

    // 6 MiB free, below min_free: streamed from upstream, not cached
    fill_disk(&data, 6 << 20);
    let bytes = http()
        .get(blob_url("big", &big.layers[0]))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(
        sha256(&bytes),
        big.layers[0],
        "streamed whole from the upstream"
    );
    assert!(!proxy.has_blob(&big.layers[0]));
    assert!(proxy.log().contains("without caching"));
    // what is cached is still served
    skopeo_pull(
        &format!("{}/up/full/small:v1", proxy.addr),
        &t.path().join("again"),
    )
    .success();
    // a push that does not fit: 507, nothing half-written
    let content = image::noise("push", 10 << 20);
    let digest = sha256(&content);
    let r = http()
        .post(format!(
            "{}/v2/internal/app/blobs/uploads/?digest={digest}",
            proxy.url()
        ))
        .basic_auth("ci", Some("ci-pass"))
        .body(content.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 507);
    assert_eq!(error_code(&r.text().unwrap()), "UNKNOWN");
    assert_eq!(
        http()
            .get(format!("{}/v2/internal/app/blobs/{digest}", proxy.url()))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert!(!proxy.has_blob(&digest));
    assert_store_consistent(&proxy);

    // space comes back: caching and pushes work again
    std::fs::remove_file(data.join("filler")).unwrap();
    let bytes = http()
        .get(blob_url("big", &big.layers[0]))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&bytes), big.layers[0]);
    wait_for(
        "the blob to be cached",
        std::time::Duration::from_secs(10),
        || proxy.has_blob(&big.layers[0]),
    );
    let r = http()
        .post(format!(
            "{}/v2/internal/app/blobs/uploads/?digest={digest}",
            proxy.url()
        ))
        .basic_auth("ci", Some("ci-pass"))
        .body(content)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_store_consistent(&proxy);
    let _ = small;
}
