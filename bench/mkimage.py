#!/usr/bin/env python3
"""Writes an OCI image layout with one random-content layer per size given (tar, gzip level 0
for speed), for the benchmark. Usage: mkimage.py DIR TAG SIZE_MIB [SIZE_MIB ...]
Prints the manifest digest and each layer digest, one per line."""
import gzip, hashlib, io, json, os, sys, tarfile

def blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d

def layer(seed, mib):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        data = hashlib.sha256(seed.encode()).digest() * 0 + os.urandom(mib << 20)
        info = tarfile.TarInfo("bench/%s.bin" % seed)
        info.size, info.mtime = len(data), 0
        t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    return gzip.compress(tar, compresslevel=0, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest()

def main():
    layout, tag, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    descs, diffs = [], []
    for i, mib in enumerate(sizes):
        gz, diff = layer("%s-%d" % (tag, i), mib)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(layout, gz), "size": len(gz)})
        diffs.append(diff)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(layout, config), "size": len(config)},
                           "layers": descs}).encode()
    md = blob(layout, manifest)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
                   "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    print(md)
    for d in descs:
        print(d["digest"])

main()
