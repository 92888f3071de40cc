//! OCI image layouts built from scratch: deterministic tar+gzip layers, config, manifest.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::sha256;

/// What image to build.
pub struct ImageSpec<'a> {
    /// Varies every byte of the image.
    pub seed: &'a str,
    /// Size in bytes of each layer's file content.
    pub layers: &'a [usize],
    /// The tag written into the layout.
    pub tag: &'a str,
}

/// An image written as an OCI layout.
pub struct OciImage {
    pub dir: PathBuf,
    pub tag: String,
    /// The manifest digest.
    pub digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    /// Layer digests, in order.
    pub layers: Vec<String>,
}

impl OciImage {
    /// The bytes of a blob of this image.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(blob_path(&self.dir, digest)).unwrap()
    }

    /// Every blob digest: config and layers.
    pub fn blobs(&self) -> Vec<String> {
        let mut v = vec![self.config_digest.clone()];
        v.extend(self.layers.iter().cloned());
        v
    }
}

/// Where a blob lives in an OCI layout.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(alg).join(hex)
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    std::fs::write(blob_path(layout, &d), bytes).unwrap();
    d
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01B3);
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn layer_tar_gz(seed: &str, index: usize, size: usize) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let data = noise(&format!("{seed}/{index}"), size);
    let mut header = tar::Header::new_ustar();
    header.set_path(format!("data/{seed}-{index}.bin")).unwrap();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append(&header, data.as_slice()).unwrap();
    let tar_bytes = tar.into_inner().unwrap();
    let diff_id = sha256(&tar_bytes);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Writes an OCI layout for the spec into `dir`.
pub fn build_image(dir: &Path, spec: &ImageSpec) -> OciImage {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for (i, size) in spec.layers.iter().enumerate() {
        let (gz, diff_id) = layer_tar_gz(spec.seed, i, *size);
        let d = write_blob(dir, &gz);
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()}));
        layers.push(d);
        diff_ids.push(diff_id);
    }
    let config = json!({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Labels": {"test.seed": spec.seed}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_digest = write_blob(dir, config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    })
    .to_string()
    .into_bytes();
    let digest = write_blob(dir, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": spec.tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    OciImage {
        dir: dir.to_path_buf(),
        tag: spec.tag.to_string(),
        digest,
        manifest,
        config_digest,
        layers,
    }
}

/// A multi-platform image (an OCI index over one image per platform) written as an OCI layout.
pub struct OciIndex {
    pub dir: PathBuf,
    pub tag: String,
    /// The index digest.
    pub digest: String,
    /// The platform manifests' digests, in order.
    pub children: Vec<String>,
}

/// Writes an OCI layout holding an index over one small image per `os/arch` platform.
pub fn build_index(dir: &Path, seed: &str, platforms: &[&str], tag: &str) -> OciIndex {
    let mut entries = Vec::new();
    let mut children = Vec::new();
    for p in platforms {
        let (os, arch) = p.split_once('/').unwrap();
        let child = build_image(
            dir,
            &ImageSpec {
                seed: &format!("{seed}-{p}"),
                layers: &[2048],
                tag,
            },
        );
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": child.digest,
            "size": child.manifest.len(), "platform": {"os": os, "architecture": arch},
        }));
        children.push(child.digest);
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})
        .to_string()
        .into_bytes();
    let digest = write_blob(dir, &index);
    let top = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
    OciIndex {
        dir: dir.to_path_buf(),
        tag: tag.to_string(),
        digest,
        children,
    }
}
