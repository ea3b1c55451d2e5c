#!/usr/bin/env python3
"""Writes a one-layer image as a docker-archive tar (what `ctr images import` reads).

  mkimage.py OUT.tar TAG [--entrypoint JSON] [--cmd JSON] [--workdir DIR]
             [--file SRC:DST[:MODE]]... [--link DST:TARGET]... [--text DST:CONTENT]...

Stdlib only, no registry, reproducible (fixed mtimes, sorted entries), so the image id only
changes when its content does.
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def add_dirs(tar, seen, path):
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d and d not in seen:
            seen.add(d)
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(ti)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("tag")
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--link", action="append", default=[])
    ap.add_argument("--text", action="append", default=[])
    a = ap.parse_args()

    entries = []  # (path, kind, payload, mode)
    for f in a.file:
        src, dst, *mode = f.split(":")
        entries.append((dst, "file", open(src, "rb").read(), int(mode[0], 8) if mode else 0o755))
    for t in a.text:
        dst, content = t.split(":", 1)
        entries.append((dst, "file", content.encode(), 0o644))
    for l in a.link:
        dst, target = l.split(":", 1)
        entries.append((dst, "link", target, 0o777))
    entries.sort(key=lambda e: e[0])

    buf, seen = io.BytesIO(), set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("tmp", "etc", "proc", "sys", "dev", "var", "run"):  # mount points, /tmp for tools
            add_dirs(tar, seen, d + "/x")
        for path, kind, payload, mode in entries:
            add_dirs(tar, seen, path)
            ti = tarfile.TarInfo(path.strip("/"))
            ti.mode, ti.mtime = mode, 0
            if kind == "link":
                ti.type, ti.linkname = tarfile.SYMTYPE, payload
                tar.addfile(ti)
            else:
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))
    layer = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()

    cfg = {"Env": ["PATH=/bin:/usr/bin:/sbin"], "WorkingDir": a.workdir}
    if a.entrypoint:
        cfg["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        cfg["Cmd"] = json.loads(a.cmd)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/node/mkimage.py"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [a.tag], "Layers": ["layer.tar"]}]).encode()

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w") as out:
        for name, data in (("layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            out.addfile(ti, io.BytesIO(data))
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
