"""The Python packages of the guest's venv, made on this machine: the guest has no network.

What is installed is what setup.cfg asks for the daemon and its tests (not the fuzzer, nor the
linters), each at the version this checkout's venv holds (`pip freeze` as constraints), so the
guest runs the code against the same libraries as this machine. The guest's Python is Debian
bookworm's 3.11, the same minor version as the venv's, so the same wheels fit.

The wheels are built here (pip wheel), then installed here from them alone (pip install
--no-index --target) into a directory that reaches the guest as a read-only disk, byte-compiled:
the guest's venv only points at it. Installing them in the guest instead took more than ten
minutes under TCG; this way the guest's set-up takes seconds.
"""
from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
import sys

from tools.cgroup2_vm import disks

DEPS_LABEL = "cricket-deps"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTRAS = ("test",)
LEFT_OUT = ("atheris",)  # the fuzzer: none of the guest's tests use it


def requirements(setup_cfg: str = os.path.join(REPO, "setup.cfg")) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = cfg.get("options", "install_requires", fallback="").splitlines()
    for extra in EXTRAS:
        lines += cfg.get("options.extras_require", extra, fallback="").splitlines()
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        name = line.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        if line and name.lower() not in LEFT_OUT:
            out.append(line)
    return out


def constraints() -> list[str]:
    """The venv's installed versions, as pins (the project itself and editable installs left out)."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines()
            if line and not line.startswith(("-e", "#")) and " @ " not in line
            and line.split("==")[0].lower() not in ("cricket", *LEFT_OUT)]


def build_wheels(dest: str) -> bool:
    """Wheels for requirements() under constraints() into dest, with requirements.txt and
    constraints.txt beside them. False when they were there already for the same lists."""
    reqs, pins = requirements(), constraints()
    digest = hashlib.sha256("\n".join([*reqs, "--", *pins, sys.version.split()[0][:4]]).encode()).hexdigest()
    stamp = os.path.join(dest, "stamp")
    try:
        with open(stamp) as f:
            if f.read().strip() == digest:
                return False
    except FileNotFoundError:
        pass
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    with open(os.path.join(dest, "requirements.txt"), "w") as f:
        f.write("\n".join(reqs) + "\n")
    with open(os.path.join(dest, "constraints.txt"), "w") as f:
        f.write("\n".join(pins) + "\n")
    print(f"cgroup2-vm: building the guest's wheels into {dest}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", dest,
                    "-r", os.path.join(dest, "requirements.txt"), "-c", os.path.join(dest, "constraints.txt")],
                   check=True)
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return True


def deps_disk(cache: str) -> str:
    """The installed packages as an ext4 image (CACHE/deps.img), made again when the wheels change."""
    wheel_dir = os.path.join(cache, "wheels")
    image = os.path.join(cache, "deps.img")
    stamp = image + ".stamp"
    with open(os.path.join(wheel_dir, "stamp")) as f:
        digest = f.read().strip()
    try:
        with open(stamp) as f:
            if f.read().strip() == digest and os.path.isfile(image):
                return image
    except FileNotFoundError:
        pass
    print("cgroup2-vm: installing the wheels into the guest's package disk", flush=True)
    target = os.path.join(cache, "deps.tmp")
    if os.path.isdir(target):
        shutil.rmtree(target)
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check",
                        "--find-links", wheel_dir, "--target", target,
                        "-r", os.path.join(wheel_dir, "requirements.txt"),
                        "-c", os.path.join(wheel_dir, "constraints.txt")], check=True)
        disks.make_ext4(target, image, DEPS_LABEL, free=16 << 20)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return image
