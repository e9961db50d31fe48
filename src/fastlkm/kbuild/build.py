"""``fastlkm kernel build``: Debian's Linux 6.12 with the fast loader, built and cached.

1. ``apt-get download linux-source-6.12`` (the source of the corpus' 6.12 image, Debian's
   patches applied), unpacked once per version;
2. the patch series of ``data/linux/`` applied (``series`` gives the order), on a fresh
   copy whenever the series changes;
3. configured: ``x86_64_defconfig`` merged with ``data/linux/fastlkm.config``
   (``scripts/kconfig/merge_config.sh``, then ``olddefconfig``);
4. ``make bzImage modules`` with the machine's gcc (ccache when installed), ``KSYMHASH``
   naming ``fastlkm kernel postlink``: the post-link step fills vmlinux's tables;
5. ``make modules_install`` (modules signed with the build's own key), then ``fastlkm
   hash --style all --undef-hash`` over them, re-signed with that key, so
   ``module.sig_enforce=1`` still holds.

The result lives under ``$XDG_CACHE_HOME/fastlkm/kernel/KEY`` (``FASTLKM_KERNEL_CACHE``
overrides the folder), KEY being a digest of the source package, the patches and the
configuration; the source and object tree stay under ``work/`` so that a changed patch
rebuilds only what it touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastlkm.errors import FastlkmError
from fastlkm.io.atomic import atomic_write

DATA = Path(__file__).resolve().parent.parent / "data" / "linux"
SOURCE_PACKAGE = "linux-source-6.12"
BASE_CONFIG = "x86_64_defconfig"
# Debian packages the build needs (Documentation/process/changes.rst)
BUILD_DEPS = ("flex", "bison", "libelf-dev", "bc", "libssl-dev", "dwarves", "make", "gcc",
              "xz-utils", "patch", "kmod", "cpio")
# what `build` produced, bumped when its layout changes
LAYOUT = 1


class BuildError(FastlkmError):
    """The kernel could not be fetched, patched, configured or built."""


def cache_root() -> Path:
    env = os.environ.get("FASTLKM_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastlkm" / "kernel"


def series() -> list[Path]:
    """The patch series in order."""
    names = (DATA / "series").read_text().split()
    return [DATA / n for n in names]


@dataclass(frozen=True)
class KernelBuild:
    """A built kernel: everything the bench and the model need."""

    root: Path              # the cache folder of this build
    release: str            # uname -r
    source_version: str     # Debian version of linux-source-6.12
    bzimage: Path
    vmlinux: Path
    moddir: Path            # ROOT/lib/modules/RELEASE, modules processed by fastlkm hash
    signing_key: Path
    info: dict[str, object]

    @property
    def modroot(self) -> Path:
        """The root holding lib/modules/RELEASE (depmod's -b)."""
        return self.moddir.parents[2]

    def summary(self) -> str:
        i = self.info
        return (f"kernel {self.release} (Debian {SOURCE_PACKAGE} {self.source_version}, "
                f"{len(series())} patches): {i.get('vmlinux_exports')} vmlinux exports, "
                f"{i.get('modules')} modules, built in {i.get('build_seconds')} s\n"
                f"  bzImage {self.bzimage}\n  modules {self.moddir}")


def _say(msg: str) -> None:
    sys.stderr.write(f"fastlkm: kernel: {msg}\n")
    sys.stderr.flush()


def _apt_install(packages: tuple[str, ...]) -> None:
    missing = [p for p in packages
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    _say(f"installing {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([*sudo, "apt-get", "-qq", "update"],
                [*sudo, "apt-get", "install", "-y", "-qq", *missing]):
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0 and "install" in cmd:
            raise BuildError(f"apt-get install {' '.join(missing)} failed: "
                             f"{p.stderr.strip()[-500:]}")


def fetch_source(root: Path) -> tuple[Path, str]:
    """The newest linux-source-6.12 package, downloaded once: (.deb, version)."""
    debs = root / "src"
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(f"{SOURCE_PACKAGE}_*_all.deb"))
    if not have:
        _say(f"apt-get download {SOURCE_PACKAGE}")
        p = subprocess.run(["apt-get", "-oAPT::Sandbox::User=root", "-qq", "download",
                            SOURCE_PACKAGE], cwd=debs, capture_output=True, text=True)
        if p.returncode != 0:
            raise BuildError(f"apt-get download {SOURCE_PACKAGE} failed: "
                             f"{p.stderr.strip()[-500:]}")
        have = sorted(debs.glob(f"{SOURCE_PACKAGE}_*_all.deb"))
        if not have:
            raise BuildError(f"apt-get download left no {SOURCE_PACKAGE} package in {debs}")
    deb = have[-1]
    version = deb.name.split("_")[1].replace("%3a", ":")
    return deb, version


def series_digest(version: str) -> str:
    """What the patched source tree depends on: the source version and the series."""
    h = hashlib.sha256(f"source {version}\n".encode())
    for p in series():
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build_key(version: str, config: bytes) -> str:
    """The cache key of a build: the patched tree's digest and the configuration."""
    h = hashlib.sha256(f"layout {LAYOUT}\n{series_digest(version)}\n".encode())
    h.update(config)
    return h.hexdigest()[:16]


def _unpack(deb: Path, version: str, work: Path) -> Path:
    """The pristine source tree of *version*, unpacked once."""
    tree = work / f"linux-source-{version}"
    stamp = tree / ".fastlkm-pristine"
    if stamp.exists():
        return tree
    _say(f"unpacking {deb.name}")
    tmp = work / "unpack.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    tars = list(tmp.glob("usr/src/linux-source-*.tar.*"))
    if len(tars) != 1:
        raise BuildError(f"{deb.name}: expected one source tarball, found {len(tars)}")
    with tarfile.open(tars[0]) as tf:
        tf.extractall(tmp / "x", filter="tar")
    tops = list((tmp / "x").iterdir())
    if len(tops) != 1:
        raise BuildError(f"{tars[0].name}: expected one top folder")
    shutil.rmtree(tree, ignore_errors=True)
    tops[0].rename(tree)
    shutil.rmtree(tmp)
    stamp.write_text(version + "\n")
    return tree


def _patched_files(patches: list[Path]) -> set[str]:
    """The files a series writes (its ``+++ b/PATH`` lines)."""
    out = set()
    for p in patches:
        for line in p.read_text(errors="replace").splitlines():
            if line.startswith("+++ b/"):
                out.add(line[6:].split("\t")[0])
    return out


def _patched(pristine: Path, work: Path, digest: str) -> Path:
    """A copy of *pristine* with the series applied; kept while the series is the same
    (its objects then stay valid), replaced when it changes.  A file the old or the new
    series writes keeps its old mtime where its contents are the same, and gets a new
    one where they differ, so that make rebuilds exactly what changed, even where a file
    went back to its pristine contents (and its pristine mtime)."""
    tree = work / "linux"
    stamp = tree / ".fastlkm-series"
    if stamp.exists() and stamp.read_text().split("\n", 1)[0] == digest:
        return tree
    old_files = set(stamp.read_text().split("\n")[1:]) if stamp.exists() else set()
    _say(f"applying {len(series())} patches")
    tmp = work / "linux.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # hard links would let a patch write through to the pristine tree: copy
    shutil.copytree(pristine, tmp, symlinks=True)
    for p in series():
        r = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(p)], cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"{p.name} does not apply to {pristine.name}: "
                             f"{(r.stdout + r.stderr).strip()[-800:]}")
    files = _patched_files(series())
    now = time.time()
    for f in sorted((old_files | files) - {""}):
        new_f, old_f = tmp / f, tree / f
        if not new_f.exists():
            continue
        if old_f.exists() and old_f.read_bytes() == new_f.read_bytes():
            st = old_f.stat()           # unchanged: its objects stay valid
            os.utime(new_f, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.utime(new_f, (now, now))
    old = work / "linux.old"
    shutil.rmtree(old, ignore_errors=True)
    if tree.exists():
        tree.rename(old)
    tmp.rename(tree)
    shutil.rmtree(old, ignore_errors=True)
    stamp.write_text("\n".join([digest, *sorted(files)]) + "\n")
    return tree


def _make(tree: Path, obj: Path, args: list[str], log: Path,
          progress: Callable[[str], None] | None = None) -> None:
    cmd = ["make", f"O={obj}", *args]
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if progress is not None:
                progress(line.rstrip())
        if proc.wait() != 0:
            f.flush()
            tail = log.read_text(errors="replace").splitlines()[-30:]
            raise BuildError(f"make {' '.join(args[:3])} failed; see {log}:\n"
                             + "\n".join(tail))


def _progress() -> tuple[Callable[[str], None] | None, Callable[[], None]]:
    """A one-line status of the make output on a terminal; nothing elsewhere."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console

    console = Console(stderr=True)
    status = console.status("building")
    status.start()
    return (lambda line: status.update(line[:100])), status.stop


def pristine_source(root: Path | None = None) -> Path:
    """The unpacked, unpatched source tree of the newest linux-source-6.12 (what the
    series applies to; its scripts/checkpatch.pl judges the series)."""
    root = root or cache_root()
    deb, version = fetch_source(root)
    (root / "work").mkdir(parents=True, exist_ok=True)
    return _unpack(deb, version, root / "work")


def build_kernel(force: bool = False, jobs: int | None = None,
                 root: Path | None = None) -> KernelBuild:
    """The patched kernel, built now or taken from the cache (*root*, default
    :func:`cache_root`)."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    config = (DATA / "fastlkm.config").read_bytes()
    deb, version = fetch_source(root)
    key = build_key(version, config)
    out = root / key
    done = out / "build.json"
    if done.exists() and not force:
        return load_build(out)
    _apt_install(BUILD_DEPS)
    start = time.monotonic()
    work = root / "work"
    work.mkdir(exist_ok=True)
    tree = _patched(_unpack(deb, version, work), work, series_digest(version))
    obj = work / "build"
    obj.mkdir(exist_ok=True)
    log = work / "build.log"
    log.write_text("")
    frag = obj / "fastlkm.config"
    frag.write_bytes(config)
    _say(f"configuring ({BASE_CONFIG} + fastlkm.config)")
    _make(tree, obj, [BASE_CONFIG], log)
    merge = subprocess.run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O",
                            str(obj), str(obj / ".config"), str(frag)], cwd=tree,
                           capture_output=True, text=True)
    if merge.returncode != 0:
        raise BuildError(f"merge_config.sh failed: {merge.stderr.strip()[-500:]}")
    _make(tree, obj, ["olddefconfig"], log)
    _check_config(obj / ".config", config)
    ncpu = jobs or (os.cpu_count() or 1) + 1
    cc = "ccache gcc" if shutil.which("ccache") else "gcc"
    ksymhash = f"{sys.executable} -m fastlkm kernel postlink"
    _say(f"make -j{ncpu} bzImage modules (log: {log})")
    update, stop = _progress()
    try:
        _make(tree, obj, [f"-j{ncpu}", f"CC={cc}", f"KSYMHASH={ksymhash}", "bzImage",
                          "modules"], log, update)
    finally:
        stop()
    return install(tree, obj, out, version, log, time.monotonic() - start)


def install(tree: Path, obj: Path, out: Path, version: str, log: Path,
            seconds: float) -> KernelBuild:
    """modules_install, fastlkm hash over the modules, and the kept files, into *out*."""
    start = time.monotonic()
    release = (obj / "include/config/kernel.release").read_text().strip()
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    _say("make modules_install")
    _make(tree, obj, [f"INSTALL_MOD_PATH={staging / 'root'}", "modules_install"], log)
    moddir = staging / "root/lib/modules" / release
    for link in ("build", "source"):
        (moddir / link).unlink(missing_ok=True)
    for name in ("System.map", "Module.symvers", ".config", "arch/x86/boot/bzImage"):
        shutil.copy2(obj / name, staging / Path(name).name)
    boot = staging / "root/boot"
    boot.mkdir()
    shutil.copy2(obj / "vmlinux", boot / f"vmlinux-{release}")   # the model reads it
    key_pem = staging / "signing_key.pem"
    shutil.copy2(obj / "certs/signing_key.pem", key_pem)
    _say("fastlkm hash --style all --undef-hash (re-signed with the build's key)")
    _hash_modules(moddir, key_pem)
    info = _describe(staging, moddir, release, version,
                     seconds + time.monotonic() - start)
    atomic_write(staging / "build.json", json.dumps(info, indent=1).encode())
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return load_build(out)


def _check_config(dot_config: Path, fragment: bytes) -> None:
    """Every option the fragment sets made it into .config (a dependency can drop one)."""
    have = set(dot_config.read_text().splitlines())
    lost = []
    for line in fragment.decode().splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and line not in have:
            lost.append(line)
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            opt = line[2:].split()[0]
            if any(h.startswith(opt + "=") for h in have):
                lost.append(line)
    if lost:
        raise BuildError(f"options of fastlkm.config not in the configuration: "
                         f"{', '.join(lost[:10])}")


def _hash_modules(moddir: Path, key: Path) -> None:
    from fastlkm.embedded.postprocess import HashOptions, hash_paths

    opts = HashOptions(style="all", undef_hash=True, sign_key=str(key), sign_cert=str(key))
    outcomes, errors = hash_paths([str(moddir / "kernel")], opts)
    if errors:
        raise BuildError(f"fastlkm hash failed on {len(errors)} modules: {errors[0]}")
    if not outcomes:
        raise BuildError(f"no modules under {moddir}")


def _describe(staging: Path, moddir: Path, release: str, version: str,
              seconds: float) -> dict[str, object]:
    from fastlkm.elf.reader import ElfFile
    from fastlkm.kernel.ksymtab import read_exports

    path = staging / "root/boot" / f"vmlinux-{release}"
    vmlinux = ElfFile(path.read_bytes(), str(path))
    modules = sorted(str(p.relative_to(moddir)) for p in moddir.rglob("*.ko"))
    return {"release": release, "source_version": version, "layout": LAYOUT,
            "patches": [p.name for p in series()],
            "vmlinux_exports": len(read_exports(vmlinux)), "modules": len(modules),
            "build_seconds": round(seconds)}


def load_build(out: Path) -> KernelBuild:
    try:
        info = json.loads((out / "build.json").read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"{out}: not a finished build ({e}); run fastlkm kernel build "
                         f"--force") from None
    release = str(info["release"])
    return KernelBuild(out, release, str(info["source_version"]), out / "bzImage",
                       out / "root/boot" / f"vmlinux-{release}",
                       out / "root/lib/modules" / release, out / "signing_key.pem", info)
