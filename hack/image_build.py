#!/usr/bin/env python3
"""Build the images of images/images.toml without Docker or a registry (run as root).

Layers, each cached under $KUSTOS_CACHE/images/ by a hash of what went into it:
  base  mmdebstrap of Debian bookworm with python3 (shared by every image)
  deps  the image's venv from its lock file (overlayfs upper dir over the base)
  top   the kustos wheel with --no-deps, the Seldon adapter, or nothing (upper dir
        over deps)
and one OCI image-layout tar per image (`ctr images import` takes it). A rerun with
nothing changed rebuilds nothing; a code change rebuilds only the thin top layers.

  image_build.py build [--wheel-dir DIR] [NAME...]   build; print NAME REF ARCHIVE DIGEST
                                                     (and write ARCHIVE's SBOM beside it,
                                                     <name>-<hash>.cdx.json)
  image_build.py list                                the table (name, ref, archive) as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "images" / "images.toml"
# Run in each venv after its install (the Dockerfiles run the same script).
PRUNE = ROOT / "images" / "prune.py"
# Writes each image's CycloneDX SBOM next to its archive.
GEN_SBOM = ROOT / "hack" / "gen-sbom.py"
# Bump when the way a layer is made changes, so that old cache entries are not reused.
RECIPE_VERSION = "2"
ARCH = "amd64"
# Resolved once: the image's own PATH is passed to chroot'ed commands.
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


class NotBuilt(SystemExit):
    """--check: a layer or archive is missing or stale."""


CHECK_ONLY = False


def need_build(what: str) -> None:
    if CHECK_ONLY:
        raise NotBuilt(f"image_build: {what} is not built or out of date: run `make images`")


def cache_dir() -> Path:
    base = os.environ.get("KUSTOS_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kustos")
    return Path(base) / "images"


def load_table() -> dict[str, Any]:
    with TABLE.open("rb") as f:
        return tomllib.load(f)


def project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)["project"]
    return data


def ref_of(recipe: dict[str, Any]) -> str:
    return f"{recipe['repository']}:{project()['version']}"


def sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kw)


# ---------------------------------------------------------------- requirements

def requirements(recipe: dict[str, Any]) -> list[str]:
    """The kustos distribution's requirements for the recipe's extras (self-references
    such as kustos[serve] in [explain] expanded): what the deps layer installs."""
    proj = project()
    name = proj["name"]
    optional: dict[str, list[str]] = proj.get("optional-dependencies", {})
    out: list[str] = list(proj["dependencies"])
    todo, seen = list(recipe["extras"]), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            if req.startswith(f"{name}["):
                todo += req[len(name) + 1:req.index("]")].split(",")
            else:
                out.append(req)
    return sorted(set(out))


def pins(lock: Path) -> dict[str, str]:
    """name -> version of a pip-freeze style lock (comments and blank lines ignored)."""
    out = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[normalise(name)] = version.split(";")[0].strip()
    return out


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# ---------------------------------------------------------------- mounts and chroot

@contextlib.contextmanager
def overlay(lowers: list[Path], upper: Path) -> Iterator[Path]:
    """Mount lowers (top first) with upper as the writable layer; the build's scratch
    mounts (/proc, /dev, /tmp, resolv.conf, the pip cache) go on top and never reach
    upper. Everything is unmounted on the way out, even on failure."""
    work = Path(tempfile.mkdtemp(prefix="kustos-image-"))
    merged, ovl_work = work / "merged", work / "work"
    merged.mkdir()
    ovl_work.mkdir()
    upper.mkdir(parents=True, exist_ok=True)
    mounted: list[Path] = []
    try:
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={ovl_work}",
             str(merged)])
        mounted.append(merged)
        run(["mount", "-t", "proc", "proc", str(merged / "proc")])
        mounted.append(merged / "proc")
        run(["mount", "--bind", "/dev", str(merged / "dev")])
        mounted.append(merged / "dev")
        run(["mount", "-t", "tmpfs", "tmpfs", str(merged / "tmp")])
        mounted.append(merged / "tmp")
        # Name resolution for pip: the base keeps an empty resolv.conf as the mount point.
        run(["mount", "--bind", "/etc/resolv.conf", str(merged / "etc/resolv.conf")])
        mounted.append(merged / "etc/resolv.conf")
        # The host's pip cache (wheels downloaded once per machine), on /mnt which is
        # an empty directory of the base.
        pip_cache = Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache/pip")
        pip_cache.mkdir(parents=True, exist_ok=True)
        run(["mount", "--bind", str(pip_cache), str(merged / "mnt")])
        mounted.append(merged / "mnt")
        # The host's CA bundle (it may hold a proxy's CA that Debian's does not).
        host_ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
        if Path(host_ca).is_file():
            shutil.copy(host_ca, merged / "tmp/host-ca.crt")
        yield merged
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", "-l", str(m)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def chroot_env(merged: Path) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PIP_CACHE_DIR": "/mnt",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_PROGRESS_BAR": "off",
        "PIP_ROOT_USER_ACTION": "ignore",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # Index settings of the host (a mirror, a timeout) apply inside too; find-links and
    # the CA bundle are host paths, replaced or dropped.
    for k, v in os.environ.items():
        if k.startswith("PIP_") and k not in ("PIP_CERT", "PIP_FIND_LINKS", "PIP_CACHE_DIR"):
            env.setdefault(k, v)
    if (merged / "tmp/host-ca.crt").exists():
        env["PIP_CERT"] = "/tmp/host-ca.crt"
    return env


def in_chroot(merged: Path, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return run([CHROOT, str(merged), *cmd], env=chroot_env(merged), **kw)


def check_upper(upper: Path) -> None:
    """Overlay whiteouts (char 0:0) or opaque directories in upper would need converting
    to OCI whiteouts; the builds only add files, so refuse rather than ship them."""
    for dirpath, dirnames, filenames in os.walk(upper):
        for n in filenames + dirnames:
            p = Path(dirpath, n)
            st = p.lstat()
            if (st.st_mode & 0o170000) == 0o020000:
                raise SystemExit(f"image_build: {p} is a whiteout: a build step deleted a "
                                 "file of a lower layer")
    # Scratch left by tools that ignore TMPDIR.
    for junk in ("root/.cache", "root"):
        p = upper / junk
        if p.is_dir() and not any(p.iterdir()):
            p.rmdir()
        elif p.is_dir() and junk == "root/.cache":
            shutil.rmtree(p)


# ---------------------------------------------------------------- layers

class Layer:
    """A directory tree and its uncompressed tar (digest = diff_id)."""

    def __init__(self, path: Path) -> None:
        self.path = path  # cache entry directory: tree/, layer.tar, digest

    @property
    def tree(self) -> Path:
        return self.path / "tree"

    @property
    def tar(self) -> Path:
        return self.path / "layer.tar"

    @property
    def digest(self) -> str:
        return (self.path / "digest").read_text().strip()

    def done(self) -> bool:
        return (self.path / "digest").is_file() and self.tar.is_file()

    def seal(self) -> None:
        """Tar the tree (sorted, numeric owners: the same tree gives the same bytes)."""
        tmp = self.tar.with_suffix(".tmp")
        run(["tar", "--sort=name", "--numeric-owner", "--xattrs", "--format=pax",
             "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
             "-C", str(self.tree), "-cf", str(tmp), "."])
        h = hashlib.sha256()
        with tmp.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        tmp.rename(self.tar)
        (self.path / "digest").write_text(f"sha256:{h.hexdigest()}\n")


def fresh(path: Path) -> Layer:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return Layer(path)


def base_layer(table: dict[str, Any]) -> tuple[Layer, str]:
    base = table["base"]
    key = sha(RECIPE_VERSION, json.dumps(base, sort_keys=True))[:16]
    layer = Layer(cache_dir() / f"base-{key}")
    if layer.done():
        return layer, key
    need_build("the base layer")
    t0 = time.monotonic()
    log(f"base: mmdebstrap {base['variant']} {base['suite']} + {' '.join(base['packages'])}")
    layer = fresh(layer.path)
    dpkgopts = [f"--dpkgopt=path-exclude={p}" for p in base["dpkg_path_exclude"]]
    dpkgopts += [f"--dpkgopt=path-include={p}" for p in base["dpkg_path_include"]]
    uid, gid = base["user"].split(":")
    hooks = [
        # Mount points the build binds over, and the nonroot user for tools that look
        # the uid up (the images run as the number either way).
        'rm -f "$1/etc/resolv.conf"; : > "$1/etc/resolv.conf"',
        f'echo "nonroot:x:{uid}:{gid}:nonroot:/tmp:/usr/sbin/nologin" >> "$1/etc/passwd"',
        f'echo "nonroot:x:{gid}:" >> "$1/etc/group"',
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log',
    ]
    # /usr merged by mmdebstrap's own hook: the usrmerge package would pull in perl (50 MB).
    merged_usr = "/usr/share/mmdebstrap/hooks/merged-usr"
    run(["mmdebstrap", "--mode=root", f"--variant={base['variant']}", f"--hook-dir={merged_usr}",
         f"--include={','.join(base['packages'])}", *dpkgopts,
         *[f"--customize-hook={h}" for h in hooks],
         base["suite"], str(layer.tree)], stdout=subprocess.DEVNULL)
    layer.seal()
    log(f"base: {time.monotonic() - t0:.0f}s")
    return layer, key


def deps_layer(name: str, recipe: dict[str, Any], base: Layer, base_key: str,
               pip_version: str) -> tuple[Layer, str]:
    lock = ROOT / recipe["lock"]
    reqs = requirements(recipe) if recipe["lock_mode"] == "constraints" else []
    spec = {k: recipe[k] for k in ("venv", "lock_mode", "extras")}
    spec["pip"] = pip_version
    prune: list[str] = recipe.get("prune", [])
    spec["prune"] = prune
    key = sha(RECIPE_VERSION, base_key, json.dumps(spec, sort_keys=True), lock.read_bytes(),
              PRUNE.read_bytes() if prune else b"", *reqs)[:16]
    layer = Layer(cache_dir() / f"deps-{name}-{key}")
    if layer.done():
        return layer, key
    need_build(f"{name}'s dependency layer")
    t0 = time.monotonic()
    log(f"{name}: dependency layer from {recipe['lock']} ({recipe['lock_mode']})")
    layer = fresh(layer.path)
    venv = recipe["venv"]
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--no-compile"]
    with overlay([base.tree], layer.tree) as merged:
        shutil.copy(lock, merged / "tmp/lock.txt")
        in_chroot(merged, ["python3", "-m", "venv", venv])
        in_chroot(merged, [*pip, f"pip=={pip_version}"])
        if recipe["lock_mode"] == "constraints":
            in_chroot(merged, [*pip, "-c", "/tmp/lock.txt", *reqs])
        elif recipe["lock_mode"] == "no-deps":
            in_chroot(merged, [*pip, "--no-deps", "-r", "/tmp/lock.txt"])
        else:
            in_chroot(merged, [*pip, "-r", "/tmp/lock.txt"])
        frozen = in_chroot(merged, [f"{venv}/bin/python", "-m", "pip", "freeze"],
                           stdout=subprocess.PIPE).stdout
        if recipe["lock_mode"] != "requirements":
            # The lock must pin everything installed, else the image is not reproducible.
            locked = pins(lock)
            loose = [line for line in frozen.splitlines() if "==" in line
                     and locked.get(normalise(line.split("==")[0])) != line.split("==")[1]]
            if loose:
                raise SystemExit(f"image_build: {name}: not pinned by {recipe['lock']}: "
                                 + ", ".join(loose))
        inside = [a for a in prune if a != "strip"]
        if inside:
            shutil.copy(PRUNE, merged / "tmp/prune.py")
            log(in_chroot(merged, [f"{venv}/bin/python", "/tmp/prune.py", venv, *inside],
                          stdout=subprocess.PIPE).stdout.strip())
        if "strip" in prune:
            # The image has no binutils: the host's strip edits the image tree in place.
            log(run([sys.executable, str(PRUNE), str(merged / venv.lstrip("/")), "strip"],
                    stdout=subprocess.PIPE).stdout.strip())
        in_chroot(merged, [f"{venv}/bin/python", "-m", "compileall", "-q", "-j0",
                           f"{venv}/lib"], stdout=subprocess.DEVNULL)
    check_upper(layer.tree)
    (layer.path / "freeze.txt").write_text(frozen)
    layer.seal()
    log(f"{name}: dependency layer {time.monotonic() - t0:.0f}s")
    return layer, key


def source_hash(recipe: dict[str, Any]) -> str:
    """What the top layer is made of: the package's files (tracked or not, not ignored)."""
    if recipe["top"] == "none":
        files = []
    elif recipe["top"] == "seldon-adapter":
        files = ["operator/kustos/runtime/seldon_adapter.py"]
    else:
        out = run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "--",
                   "operator", "pyproject.toml", "README.md", "LICENSE"],
                  stdout=subprocess.PIPE).stdout
        files = sorted(f for f in out.splitlines() if (ROOT / f).is_file())
    return sha(*[x for f in files for x in (f, (ROOT / f).read_bytes())])


def top_layer(name: str, recipe: dict[str, Any], lowers: list[Layer], deps_key: str,
              src_key: str, get_wheel: Callable[[], Path]) -> Layer:
    key = sha(RECIPE_VERSION, deps_key, src_key, recipe["check"])[:16]
    layer = Layer(cache_dir() / f"top-{name}-{key}")
    if layer.done():
        return layer
    need_build(f"{name}'s top layer")
    wheel = get_wheel() if recipe["top"] == "wheel" else None
    t0 = time.monotonic()
    layer = fresh(layer.path)
    venv = recipe["venv"]
    py = f"{venv}/bin/python"
    with overlay([x.tree for x in lowers], layer.tree) as merged:
        if recipe["top"] == "wheel":
            assert wheel is not None
            shutil.copy(wheel, merged / "tmp" / wheel.name)
            pip = [py, "-m", "pip"]
            if "pip" in recipe.get("prune", []):
                # The venv has no pip (images/prune.py): Debian's pip wheel runs from its zip.
                wheels = sorted((merged / "usr/share/python-wheels").glob("pip-*.whl"))
                if not wheels:
                    raise SystemExit("image_build: no pip wheel in /usr/share/python-wheels")
                pip = [py, f"/usr/share/python-wheels/{wheels[-1].name}/pip"]
            in_chroot(merged, [*pip, "install", "--no-deps", "--no-compile",
                               f"/tmp/{wheel.name}"], stdout=subprocess.DEVNULL)
            site = f"{venv}/lib/python3.11/site-packages"
            targets = [f"{site}/kustos"]
        elif recipe["top"] == "seldon-adapter":
            adapter = merged / recipe["adapter_dir"].lstrip("/")
            adapter.mkdir(parents=True)
            shutil.copy(ROOT / "operator/kustos/runtime/seldon_adapter.py",
                        adapter / "kustos_seldon_adapter.py")
            targets = [recipe["adapter_dir"]]
        else:
            targets = []  # top = "none": nothing to add, only the check below
        if targets:  # (compileall without arguments would compile all of sys.path)
            in_chroot(merged, [py, "-m", "compileall", "-q", *targets],
                      stdout=subprocess.DEVNULL)
        # The Dockerfiles' smoke import, with the image's own environment.
        env = {**chroot_env(merged), **recipe["env"]}
        run([CHROOT, str(merged), py, "-c", recipe["check"]], env=env)
    check_upper(layer.tree)
    layer.seal()
    log(f"{name}: top layer {time.monotonic() - t0:.1f}s")
    return layer


# ---------------------------------------------------------------- OCI image layout

def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def image_config(recipe: dict[str, Any], table: dict[str, Any], layers: list[Layer],
                 ref: str) -> bytes:
    env = [f"{k}={v}" for k, v in recipe["env"].items()]
    config = {
        "architecture": ARCH,
        "os": "linux",
        "config": {
            "User": table["base"]["user"],
            "Env": env,
            "Entrypoint": recipe["entrypoint"],
            "Cmd": recipe["cmd"],
            "WorkingDir": recipe["workdir"],
            "ExposedPorts": {f"{p}/tcp": {} for p in recipe["ports"]},
            "Labels": {
                "org.opencontainers.image.title": ref.rsplit("/", 1)[1].split(":")[0],
                "org.opencontainers.image.description": recipe["description"],
                "org.opencontainers.image.licenses": recipe["licenses"],
                "org.opencontainers.image.version": ref.rsplit(":", 1)[1],
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [x.digest for x in layers]},
        "history": [{"created_by": f"kustos image_build {n}"} for n in ("base", "deps", "top")],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def write_archive(out: Path, ref: str, config: bytes, layers: list[Layer]) -> str:
    """An OCI image layout tar; returns the manifest digest (what containerd records)."""
    cfg_digest, _ = blob(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": x.digest, "size": x.tar.stat().st_size} for x in layers],
    }, sort_keys=True, separators=(",", ":")).encode()
    man_digest, _ = blob(manifest)
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest, "size": len(manifest),
            "platform": {"architecture": ARCH, "os": "linux"},
            # containerd names the image after io.containerd.image.name when present.
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]},
        }],
    }, sort_keys=True, separators=(",", ":")).encode()
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes("index.json", index)
        add_bytes(f"blobs/sha256/{man_digest[7:]}", manifest)
        add_bytes(f"blobs/sha256/{cfg_digest[7:]}", config)
        for x in layers:
            info = tarfile.TarInfo(f"blobs/sha256/{x.digest[7:]}")
            info.size = x.tar.stat().st_size
            info.mode = 0o644
            with x.tar.open("rb") as f:
                tar.addfile(info, f)
    tmp.rename(out)
    return man_digest


# ---------------------------------------------------------------- main

def build_wheel(wheel_dir: Path | None, src_key: str) -> Path:
    """The kustos wheel: from --wheel-dir, else built once per source hash."""
    if wheel_dir is not None:
        wheels = sorted(wheel_dir.glob("kustos-*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"image_build: need exactly one kustos wheel in {wheel_dir}")
        return wheels[0]
    out = cache_dir() / f"wheel-{src_key[:16]}"
    wheels = sorted(out.glob("kustos-*.whl"))
    if len(wheels) == 1:
        return wheels[0]
    shutil.rmtree(out, ignore_errors=True)
    log("building the kustos wheel")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
         str(ROOT)])
    # setuptools builds in the tree; leave it as it was.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return next(out.glob("kustos-*.whl"))


# An entry this table does not produce is removed only when nothing has touched it for
# this long: the cache is shared by every checkout on the machine (a CI clone, another
# branch), and one of them may be building, or have mounted, an entry of its own table.
PRUNE_AFTER = float(os.environ.get("KUSTOS_IMAGE_PRUNE_AFTER", 6 * 3600))
# With less free space than this on the cache's disk the grace is one hour: each change of
# the sources supersedes ~4 GB of archives, and a few changes in an afternoon filled the
# disk of a shared machine (the image tests' throwaway containerd then had no room).
LOW_DISK_BYTES = float(os.environ.get("KUSTOS_IMAGE_LOW_DISK_GB", 40)) * 2**30
PRUNE_AFTER_LOW_DISK = 3600.0


def prune(keep: set[Path]) -> None:
    """Remove cache entries this table no longer produces (superseded layers, archives)
    that nothing has used for PRUNE_AFTER seconds (an hour when the disk is short of
    space); one that cannot be removed (mounted by a build in progress) is left for a
    later prune."""
    now = time.time()
    grace = PRUNE_AFTER
    if shutil.disk_usage(cache_dir()).free < LOW_DISK_BYTES:
        grace = min(grace, PRUNE_AFTER_LOW_DISK)
    for p in cache_dir().iterdir():
        if not p.name.startswith(("base-", "deps-", "top-", "wheel-", "kustos")) or p in keep:
            continue
        try:
            if now - p.lstat().st_mtime < grace:
                continue
            log(f"removing superseded {p.name}")
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as err:
            log(f"leaving {p.name} for later: {err.strerror}")


def write_sbom(name: str, out: Path, base: Layer) -> None:
    """<name>-<hash>.cdx.json beside the archive: the Python packages of the image's lock
    closure (hack/gen-sbom.py) and the Debian packages of the base layer's dpkg status.
    Rewritten only when its content changes."""
    cmd = [sys.executable, str(GEN_SBOM), "--out", str(out), name]
    status = base.tree / "var" / "lib" / "dpkg" / "status"
    if status.is_file():
        cmd += ["--dpkg-status", str(status)]
    run(cmd)


def build(names: list[str], wheel_dir: Path | None) -> int:
    """Build (or with CHECK_ONLY, only find) the images; one line per image on stdout."""
    if os.geteuid() != 0 and not CHECK_ONLY:
        raise SystemExit("image_build: run as root (mmdebstrap, overlay mounts, chroot)")
    table = load_table()
    recipes: dict[str, Any] = table["images"]
    unknown = set(names) - set(recipes)
    if unknown:
        raise SystemExit(f"image_build: unknown images {sorted(unknown)}")
    selected = names or list(recipes)
    if not CHECK_ONLY:
        cache_dir().mkdir(parents=True, exist_ok=True)
    base, base_key = base_layer(table)
    keep = {base.path}
    wheel_src = source_hash({"top": "wheel"})
    wheels: list[Path] = []

    def get_wheel() -> Path:
        if not wheels:
            wheels.append(build_wheel(wheel_dir, wheel_src))
        return wheels[0]

    for name in selected:
        t0 = time.monotonic()
        recipe = recipes[name]
        ref = ref_of(recipe)
        deps, deps_key = deps_layer(name, recipe, base, base_key, table["venv"]["pip"])
        src_key = source_hash(recipe)
        top = top_layer(name, recipe, [deps, base], deps_key, src_key, get_wheel)
        layers = [base, deps, top]
        config = image_config(recipe, table, layers, ref)
        out = cache_dir() / f"{name}-{sha(config)[:16]}.oci.tar"
        keep |= {deps.path, top.path, out, out.with_suffix(".digest")}
        if not out.with_suffix(".digest").is_file():
            need_build(f"{name}'s archive")
            digest = write_archive(out, ref, config, layers)
            out.with_suffix(".digest").write_text(digest + "\n")
            log(f"{name}: archive {out.name} in {time.monotonic() - t0:.1f}s")
        digest = out.with_suffix(".digest").read_text().strip()
        sbom = cache_dir() / f"{name}-{sha(config)[:16]}.cdx.json"
        keep.add(sbom)
        if not CHECK_ONLY:
            write_sbom(name, sbom, base)
        print(f"{name} {ref} {out} {digest}", flush=True)
    keep |= {w.parent for w in wheels}
    # The wheel of the current sources stays (the next top layer build reuses it).
    keep.add(cache_dir() / f"wheel-{wheel_src[:16]}")
    if not names and not CHECK_ONLY:
        prune(keep)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="image_build.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--wheel-dir", type=Path)
    b.add_argument("--check", action="store_true",
                   help="build nothing: fail unless every layer and archive is current")
    b.add_argument("names", nargs="*")
    sub.add_parser("list")
    args = p.parse_args(argv)
    if args.cmd == "list":
        table = load_table()
        print(json.dumps({n: {"ref": ref_of(r), **r} for n, r in table["images"].items()},
                         indent=2))
        return 0
    global CHECK_ONLY
    CHECK_ONLY = args.check
    return build(args.names, args.wheel_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
