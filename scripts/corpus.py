#!/usr/bin/env python3
"""Fetch and cache the real Debian kernels fastlkm is tested and measured on.

Usage: corpus.py [--list] [NAME...]     prints NAME ROOT VERSION per kernel
       corpus.py --kmod-sid              prints a folder with sid's kmod (34.x) depmod
                                         and modprobe, runnable on this machine
       corpus.py --kmod-testsuite        prints a folder with sid's kmod source (its
                                         testsuite/ and scripts/) and its
                                         module-playground built against the 6.12 headers
       corpus.py --kbuild NAME...        prints the headers folder to build modules for
                                         each kernel out of tree (make -C DIR M=...)

Each kernel is fetched with ``apt-get download`` from the registry the machine's own
apt sources name (foreign architectures and sid through private apt lists, never by
changing the machine), unpacked with ``dpkg-deb -x`` into one root per kernel under
``$FASTLKM_CORPUS`` (default ``~/.cache/fastlkm/corpus``) and reused on later runs.
The newest package matching each pattern is taken; no version is written here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("FASTLKM_CORPUS", Path.home() / ".cache/fastlkm/corpus"))


@dataclass(frozen=True)
class Kernel:
    name: str
    arch: str
    sid: bool
    # matched against package names; group 1 is the kernel release (uname -r)
    pattern: str
    # packages to unpack into the root, {v} being the release
    packages: tuple[str, ...]


KERNELS = {
    k.name: k
    for k in (
        Kernel("6.1-cloud-amd64", "amd64", False, r"^linux-image-(6\.1\.0-\d+-cloud-amd64)$",
               ("linux-image-{v}", "linux-headers-{v}")),
        Kernel("6.12-amd64", "amd64", False, r"^linux-image-(6\.12\.\d+\+deb12-amd64)$",
               ("linux-image-{v}", "linux-headers-{v}")),
        Kernel("6.1-686", "i386", False, r"^linux-image-(6\.1\.0-\d+-686)-unsigned$",
               ("linux-image-{v}-unsigned", "linux-headers-{v}")),
        Kernel("sid-cloud-amd64", "amd64", True, r"^linux-modules-(\d+\.\d+[^ ]*-cloud-amd64)$",
               ("linux-modules-{v}", "linux-binary-{v}", "linux-base-{v}", "linux-headers-{v}")),
    )
}

# the other architectures, one image and its headers each: kernel images that hold no ELF
# vmlinux with sections (arm64 Image, armhf zImage, s390x's image, MIPS's ELF decompressor)
# or an ELF vmlinux of another byte order and word size (ppc64el), whose export tables
# fastlkm reads from the image alone (tests/kernel/test_imagesyms.py)
IMAGE_KERNELS = {
    k.name: k
    for k in (
        Kernel("6.1-arm64", "arm64", False, r"^linux-image-(6\.1\.0-\d+-arm64)-unsigned$",
               ("linux-image-{v}-unsigned", "linux-headers-{v}")),
        Kernel("6.1-armmp", "armhf", False, r"^linux-image-(6\.1\.0-\d+-armmp)$",
               ("linux-image-{v}", "linux-headers-{v}")),
        Kernel("6.1-powerpc64le", "ppc64el", False, r"^linux-image-(6\.1\.0-\d+-powerpc64le)$",
               ("linux-image-{v}", "linux-headers-{v}")),
        Kernel("6.1-s390x", "s390x", False, r"^linux-image-(6\.1\.0-\d+-s390x)$",
               ("linux-image-{v}", "linux-headers-{v}")),
        Kernel("6.1-5kc-malta", "mips64el", False, r"^linux-image-(6\.1\.0-\d+-5kc-malta)$",
               ("linux-image-{v}", "linux-headers-{v}")),
    )
}

ALL = {**KERNELS, **IMAGE_KERNELS}


def _sources_uri() -> str:
    """The first URIs: line of the machine's own Debian sources."""
    for f in (Path("/etc/apt/sources.list.d/debian.sources"),):
        if f.exists():
            for line in f.read_text().splitlines():
                if line.startswith("URIs:"):
                    return line.split()[1]
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        if line.startswith("deb "):
            return line.split()[1]
    raise SystemExit("corpus: no Debian source found in /etc/apt")


def _apt_options(k: Kernel) -> list[str]:
    lists = CACHE / "apt" / f"{k.arch}{'-sid' if k.sid else ''}"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    opts = ["-oAPT::Sandbox::User=root",
            f"-oAPT::Architecture={k.arch}", f"-oAPT::Architectures={k.arch}",
            f"-oDir::State::Lists={lists}"]
    if k.sid:
        src = CACHE / "apt" / "sid.list"  # apt prunes unknown files inside a lists folder
        src.write_text(f"deb {_sources_uri()} sid main\n")
        opts += [f"-oDir::Etc::SourceList={src}", "-oDir::Etc::SourceParts=/dev/null"]
    stamp = lists.with_name(lists.name + ".updated")
    if not stamp.exists():
        # a failing secondary list (mirror mid-sync) is not fatal: the search below decides
        subprocess.run(["apt-get", *opts, "-qq", "update"], check=False)
        stamp.touch()
    return opts


def _version_key(release: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", release)]


def resolve(k: Kernel) -> str:
    """The newest release of *k* for which every package exists."""
    opts = _apt_options(k)
    out = subprocess.run(["apt-cache", *opts, "pkgnames"], capture_output=True, text=True,
                         check=True).stdout.split()
    names = set(out)
    rx = re.compile(k.pattern)
    releases = sorted({m.group(1) for n in names if (m := rx.match(n))}, key=_version_key)
    for release in reversed(releases):
        if all(p.format(v=release) in names for p in k.packages):
            return release
    raise SystemExit(f"corpus: no complete package set for {k.name}")


def _download(k: Kernel, pkg: str) -> Path:
    """The .deb of *pkg* (for *k*'s suite and architecture), downloaded once."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)

    def have() -> list[Path]:
        return list(debs.glob(f"{pkg}_*_{k.arch}.deb")) + list(debs.glob(f"{pkg}_*_all.deb"))

    if not have():
        subprocess.run(["apt-get", *_apt_options(k), "-qq", "download", pkg], cwd=debs,
                       check=True)
    return have()[0]


def _keep(tmp: Path, dest: Path, names: tuple[str, ...]) -> Path:
    """Move *names* of the finished *tmp* into *dest*, which they replace."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for x in names:
        (tmp / x).rename(dest / x)
    return dest


def fetch(name: str) -> tuple[Path, str]:
    """Return (root, release) of kernel *name*, downloading it once."""
    k = ALL[name]
    done = CACHE / name / "release"
    if done.exists():
        release = done.read_text().strip()
        return CACHE / name / "root", release
    release = resolve(k)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        for p in k.packages:
            subprocess.run(["dpkg-deb", "-x", str(_download(k, p.format(v=release))),
                            str(root)], check=True)
        # kmod's depmod looks in ROOT/lib/modules; usrmerged trees keep modules in usr/lib
        if not (root / "lib").exists() and (root / "usr/lib/modules").exists():
            (root / "lib").symlink_to("usr/lib")
        (Path(tmp) / "release").write_text(release + "\n")
        _keep(Path(tmp), CACHE / name, ("root", "release"))
    return CACHE / name / "root", release


def image_package(name: str) -> Path:
    """The kernel image package (the first of the kernel's packages) of *name*, as
    downloaded: what a user holding only the image and its modules has."""
    k = ALL[name]
    _, release = fetch(name)
    pkg = k.packages[0].format(v=release)
    have = sorted((CACHE / "debs").glob(f"{pkg}_*_{k.arch}.deb"))
    if not have:
        subprocess.run(["apt-get", *_apt_options(k), "-qq", "download", pkg],
                       cwd=CACHE / "debs", check=True)
        have = sorted((CACHE / "debs").glob(f"{pkg}_*_{k.arch}.deb"))
    return have[-1]


def shadow_root(root: Path, release: str, dest: Path) -> Path:
    """A root under *dest* whose modules directory links to the files of the cached tree
    *root* (depmod's outputs left out), so that a depmod can write its outputs there
    without touching the cache."""
    for d in ("lib/modules", "usr/lib/modules"):
        src = root / d / release
        if src.is_dir() and not src.is_symlink():
            break
    moddir = dest / "lib/modules" / release
    moddir.mkdir(parents=True)
    keep = ("modules.order", "modules.builtin", "modules.builtin.modinfo")
    for e in src.iterdir():
        if e.name.startswith("modules.") and e.name not in keep:
            continue
        (moddir / e.name).symlink_to(e)
    return dest


# kmod 34 needs a newer C library than Debian 12's: its packages and sid's libc are
# unpacked into one folder and run through that folder's dynamic loader
KMOD_SID_PACKAGES = ("kmod", "libkmod2", "libc6", "liblzma5", "libzstd1", "libssl3t64",
                     "zlib1g")


def kmod_sid() -> Path:
    """A folder with ``depmod`` and ``modprobe`` scripts running sid's kmod (34.x)."""
    dest = CACHE / "kmod-sid"
    if (dest / "depmod").exists():
        return dest
    k = Kernel("kmod-sid", "amd64", True, "", ())
    opts = _apt_options(k)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        t = Path(tmp)
        for pkg in KMOD_SID_PACKAGES:
            subprocess.run(["apt-get", *opts, "-qq", "download", pkg], cwd=t, check=True)
        root = t / "root"
        for deb in sorted(t.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        lib = root / "usr/lib/x86_64-linux-gnu"
        for tool in ("depmod", "modprobe"):
            (t / tool).write_text(
                "#!/bin/sh\n"
                f'exec "{dest}/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" '
                f'--library-path "{dest}/root/usr/lib/x86_64-linux-gnu" --argv0 {tool} '
                f'"{dest}/root/usr/bin/kmod" "$@"\n')
            (t / tool).chmod(0o755)
        assert (lib / "ld-linux-x86-64.so.2").exists()
        return _keep(t, dest, ("root", "depmod", "modprobe"))


def _source_options() -> list[str]:
    """apt options for sid's source packages (deb-src), through a private list."""
    lists = CACHE / "apt" / "src-sid"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    src = CACHE / "apt" / "src-sid.list"
    src.write_text(f"deb-src {_sources_uri()} sid main\n")
    opts = ["-oAPT::Sandbox::User=root", f"-oDir::State::Lists={lists}",
            f"-oDir::Etc::SourceList={src}", "-oDir::Etc::SourceParts=/dev/null"]
    stamp = lists.with_name(lists.name + ".updated")
    if not stamp.exists():
        subprocess.run(["apt-get", *opts, "-qq", "update"], check=True)
        stamp.touch()
    return opts




# the kernel whose headers module-playground is built against: Debian 12's 6.12
PLAYGROUND_KERNEL = "6.12-amd64"


def kmod_testsuite() -> Path:
    """A folder with sid's kmod source tree (``kmod/``: ``testsuite/``, ``scripts/``)
    whose ``testsuite/module-playground`` is built against Debian's 6.12 headers, as DKMS
    builds a module: the headers, their common part and kbuild unpacked into
    ``headers/`` (not into /), the kernel's Makefile run from there."""
    dest = CACHE / "kmod-testsuite"
    if (dest / "built").exists():
        return dest
    _, release = fetch(PLAYGROUND_KERNEL)
    k = KERNELS[PLAYGROUND_KERNEL]
    base = release.rsplit("-", 1)[0]          # 6.12.N+deb12-amd64 -> 6.12.N+deb12
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        t = Path(tmp)
        # the .dsc may be missing from the registry while the tarballs arrive
        subprocess.run(["apt-get", *_source_options(), "-qq", "source", "--download-only",
                        "kmod"], cwd=t, check=False)
        tarballs = sorted(t.glob("kmod_*.orig.tar.*"), key=lambda p: _version_key(p.name))
        if not tarballs:
            raise SystemExit("corpus: sid's kmod source could not be downloaded")
        unpacked = t / "unpacked"
        unpacked.mkdir()
        subprocess.run(["tar", "-xf", str(tarballs[-1]), "-C", str(unpacked)], check=True)
        (top,) = [d for d in unpacked.iterdir() if d.is_dir()]
        top.rename(t / "kmod")
        headers = t / "headers"
        for pkg in (f"linux-headers-{release}", f"linux-headers-{base}-common",
                    f"linux-kbuild-{base}"):
            subprocess.run(["dpkg-deb", "-x", str(_download(k, pkg)), str(headers)],
                           check=True)
        src = headers / "usr/src"
        # the flavour's Makefile includes the common one by its absolute path: name it
        # directly, so that the kernel's source tree is found inside headers/
        subprocess.run(["make", "-s", "-C", str(src / f"linux-headers-{release}"), "-f",
                        str(src / f"linux-headers-{base}-common/Makefile"),
                        f"M={t / 'kmod/testsuite/module-playground'}", "modules"],
                       check=True)
        (t / "built").write_text(release + "\n")
        return _keep(t, dest, ("kmod", "headers", "built"))


def kbuild(name: str) -> Path:
    """The headers of kernel *name* ready for ``make -C DIR M=MODDIR modules``, as DKMS
    builds an out-of-tree module: linux-headers-VERSION with the packages it depends on
    (linux-headers-BASE-common, linux-kbuild-BASE), unpacked into a root of their own
    under the cache.  The absolute paths among them (the flavour's Makefile includes
    /usr/src/linux-headers-BASE-common/Makefile; on 7.x it also sets KBUILD_OUTPUT to
    its own /usr/src path) are pointed into that root."""
    k = KERNELS[name]
    dest = CACHE / f"{name}-kbuild"
    done = dest / "headers"
    if done.exists():
        return Path(done.read_text().strip())
    _, release = fetch(name)
    opts = _apt_options(k)
    debs = CACHE / "debs"
    headers = next(debs.glob(f"linux-headers-{release}_*.deb"), None)
    if headers is None:
        subprocess.run(["apt-get", *opts, "-qq", "download", f"linux-headers-{release}"],
                       cwd=debs, check=True)
        headers = next(debs.glob(f"linux-headers-{release}_*.deb"))
    depends = subprocess.run(["dpkg-deb", "-f", str(headers), "Depends"], capture_output=True,
                             text=True, check=True).stdout
    wanted = [headers.name.split("_")[0], *sorted(
        {m.group(0) for m in re.finditer(r"linux-(headers-[^\s,|]+-common|kbuild-[^\s,|]+)",
                                         depends)})]
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        for pkg in wanted:
            have = list(debs.glob(f"{pkg}_*.deb"))
            if not have:
                subprocess.run(["apt-get", *opts, "-qq", "download", pkg], cwd=debs,
                               check=True)
                have = list(debs.glob(f"{pkg}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(have[0]), str(root)], check=True)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        root.rename(dest / "root")
    src = dest / "root/usr/src" / f"linux-headers-{release}"
    makefile = src / "Makefile"
    makefile.write_text(re.sub(r"(?<![\w./-])/usr/src/", f"{dest}/root/usr/src/",
                               makefile.read_text()))
    done.write_text(f"{src}\n")
    return src


def sign_file(headers: Path) -> Path:
    """scripts/sign-file of the kbuild package behind *headers* (from kbuild())."""
    tool = (headers / "scripts/sign-file").resolve()
    if not tool.is_file():
        raise SystemExit(f"corpus: no sign-file under {headers}/scripts")
    return tool


def main(argv: list[str]) -> int:
    if "--list" in argv:
        print("\n".join(ALL))
        return 0
    if "--kmod-sid" in argv:
        print(kmod_sid())
        return 0
    if "--kmod-testsuite" in argv:
        print(kmod_testsuite())
        return 0
    if "--kbuild" in argv:
        for name in [a for a in argv if a != "--kbuild"]:
            print(name, kbuild(name))
        return 0
    for name in argv or list(ALL):
        root, release = fetch(name)
        print(name, root, release)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
