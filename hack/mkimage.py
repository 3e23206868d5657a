#!/usr/bin/env python3
"""Builds an OCI image archive (oci-layout, index.json, blobs) from host directories, one gzip
layer per directory, reproducibly (sorted names, mtime 0, root owner). No network.

Usage: hack/mkimage.py OUT.tar NAME DIR [DIR...]
A DIR written @DIR is a root file system: its contents go at the image's root.
"""
import gzip, hashlib, io, json, os, sys, tarfile


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def layer(path):
    raw = io.BytesIO()
    base = "/"
    if path.startswith("@"):
        path = base = path[1:]
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        # Parent directories first, as image builders write them.
        parts = [] if base == path else os.path.relpath(path, "/").split(os.sep)
        for i in range(1, len(parts) + 1):
            d = os.path.join("/", *parts[:i])
            ti = t.gettarinfo(d, arcname=os.path.relpath(d, "/"))
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
            t.addfile(ti)
        for dirpath, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(dirpath, name)
                arc = os.path.relpath(full, base)
                ti = t.gettarinfo(full, arcname=arc)
                if ti is None or not (ti.isfile() or ti.isdir() or ti.issym() or ti.islnk()):
                    continue
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
                if ti.isfile():
                    with open(full, "rb") as f:
                        t.addfile(ti, f)
                else:
                    t.addfile(ti)
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=6, mtime=0), sha(data)


def main():
    out, name, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
    layers = [layer(d) for d in dirs]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}).encode()
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(cfg), "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(l), "size": len(l)} for l, _ in layers]}).encode()
    tag = name.rsplit(":", 1)[-1]
    idx = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(man), "size": len(man),
                      "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}]}).encode()
    with tarfile.open(out, "w") as t:
        for n, b in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", idx)] + [("blobs/sha256/" + sha(b)[7:], b) for b in [man, cfg] + [l for l, _ in layers]]:
            ti = tarfile.TarInfo(n)
            ti.size = len(b)
            t.addfile(ti, io.BytesIO(b))
    print(sum(len(l) for l, _ in layers))


main()
