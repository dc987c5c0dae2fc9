"""Stand-ins, built with no network, for every image critest pulls (validation suite and
benchmarks), pushed into a local registry under repository paths that mirror the originals:

  registry.k8s.io/e2e-test-images/busybox:1.29-2     -> REG/e2e-test-images/busybox:1.29-2
  gcr.io/k8s-staging-cri-tools/test-image-1:latest   -> REG/k8s-staging-cri-tools/test-image-1:latest
  registry.k8s.io/pause:3.9 (and k8s.gcr.io/pause)   -> REG/pause:3.9
  docker.io/library/busybox:latest                   -> REG/library/busybox:latest
  public.ecr.aws/docker/library/busybox:1            -> REG/docker/library/busybox:1

so a runtime whose mirrors send those registries to http://REG resolves the original names offline.

Provenance: a copy of /work/shared/tools/fixture-images.py (whose README lets the project keep its
own), adapted for tools/critest: a module with parameters instead of a script with argv, pushes
in parallel, the Debian busybox package cached across runs, and no ~50 MB pull-benchmark image
(Cricket's own `make bench` builds that one; critest does not pull it).

Everything is built from Debian's busybox-static (/bin/busybox and hard-linked applets in /bin,
as the official busybox image lays them out). Two deliberate additions, both needed by specs:
  * /bin/sh is Debian's *dynamic* busybox (package `busybox`, fetched with `apt-get download`,
    plus its three glibc libraries). busybox-static is built with FEATURE_SH_STANDALONE, so its
    shell runs `ls` as a built-in applet and never execs /bin/ls; the MaskedPaths spec masks
    /bin/ls and expects "/bin/sh: ls: Permission denied".
  * /bin/pgrep and /bin/ipcs are small shell stand-ins (busybox-static has neither applet).
Digest-pinned references (test-image-digest@sha256:9700f9a2...) can not be reproduced offline;
test-image-digest is pushed by tag only.

Layers are built as plain tar + JSON (OCI image layout, gzip, mtime 0, deterministic), every
image sharing one busybox base layer, then pushed with `skopeo copy --format v2s2`.
"""
from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

EPOCH = 1700000000
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# --------------------------------------------------------------------------- file entries
# A layer is a dict path -> (kind, data, mode, uid, gid); kind is file|dir|hardlink|symlink.


def f(data, mode=0o755, uid=0, gid=0):
    return ("file", data.encode() if isinstance(data, str) else data, mode, uid, gid)


def d(mode=0o755, uid=0, gid=0):
    return ("dir", None, mode, uid, gid)


def hl(target):
    return ("hardlink", target, 0o755, 0, 0)


def layer_tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        # parents first, in a stable order; hard links after every file they may point at
        for path in sorted(entries, key=lambda p: (entries[p][0] == "hardlink", p.count("/"), p)):
            kind, data, mode, uid, gid = entries[path]
            ti = tarfile.TarInfo(path)
            ti.mtime, ti.mode, ti.uid, ti.gid = EPOCH, mode, uid, gid
            ti.uname = ti.gname = "root" if uid == 0 else ""
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "file":
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
                tf.addfile(ti)
            elif kind == "symlink":
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, data, 0o777
                tf.addfile(ti)
    return buf.getvalue()


def parents(entries):
    """Add a directory entry for every missing parent (mode 0755)."""
    for path in list(entries):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            entries.setdefault("/".join(parts[:i]), d())
    return entries


# --------------------------------------------------------------------------- rootfs pieces
PGREP = """#!/bin/sh
# pgrep stand-in (Debian's busybox-static has no pgrep): print the PID of every process whose
# name (/proc/PID/comm) contains PATTERN; exit 1 when there is none.
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
rc=1
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [ "$pid" = "$$" ] && continue
  read -r name < "$d/comm" 2>/dev/null || continue
  case "$name" in *"$1"*) echo "$pid"; rc=0 ;; esac
done
exit $rc
"""

IPCS = """#!/bin/sh
# ipcs stand-in (Debian's busybox-static has no ipcs): `ipcs -m` lists the System V shared
# memory segments of this IPC namespace, from /proc/sysvipc/shm.
case "${1:--m}" in -m) ;; *) echo "ipcs: only -m is supported" >&2; exit 1 ;; esac
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do
  printf '0x%08x %-10s %-10s %-10s %-10s %-10s\\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
echo
"""

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
"""


def dynamic_busybox_sh(cache):
    """Debian's dynamically linked busybox (no FEATURE_SH_STANDALONE) and its libraries; the
    package is downloaded into `cache` once."""
    os.makedirs(cache, exist_ok=True)
    debs = [x for x in os.listdir(cache) if x.startswith("busybox_") and x.endswith(".deb")]
    if not debs:
        dl = ["apt-get", "-o", "APT::Sandbox::User=root", "download", "busybox"]
        if subprocess.run(dl, cwd=cache, stdout=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)   # fresh machine: no lists yet
            subprocess.run(dl, cwd=cache, check=True, stdout=subprocess.DEVNULL)
        debs = [x for x in os.listdir(cache) if x.startswith("busybox_") and x.endswith(".deb")]
    root = os.path.join(cache, "root")
    if not os.path.exists(os.path.join(root, "bin/busybox")):
        subprocess.run(["dpkg-deb", "-x", os.path.join(cache, debs[0]), root], check=True)
    sh = os.path.join(root, "bin/busybox")
    entries = {"bin/sh": f(open(sh, "rb").read())}
    out = subprocess.run(["ldd", sh], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        lib = line.split("=>")[-1].split("(")[0].strip()
        if lib.startswith("/"):
            entries[lib.lstrip("/")] = f(open(os.path.realpath(lib), "rb").read())
    return entries


def busybox_base(deb_cache):
    """The shared base layer: the layout of the official busybox image, from busybox-static."""
    e = {}
    for p in ["bin", "dev", "etc", "home", "proc", "root", "sys", "usr", "usr/bin", "usr/sbin",
              "usr/local", "usr/local/bin", "var", "var/run", "var/www", "lib", "lib64"]:
        e[p] = d(0o700 if p == "root" else 0o755)
    e["tmp"] = d(0o1777)
    e["bin/busybox"] = f(open("/bin/busybox", "rb").read())
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a not in ("busybox",):
            e["bin/" + a] = hl("bin/busybox")
    e["bin/pgrep"] = f(PGREP)
    e["bin/ipcs"] = f(IPCS)
    e.update(dynamic_busybox_sh(deb_cache))   # replaces the bin/sh hard link
    e["etc/passwd"] = f(PASSWD, 0o644)
    e["etc/group"] = f(GROUP, 0o644)
    e["etc/shadow"] = f("".join(line.split(":")[0] + ":*:10933:0:99999:7:::\n"
                                for line in PASSWD.splitlines()), 0o600)
    return parents(e)


def nginx_layer(port):
    conf = f"# nginx stand-in: busybox httpd on port {port}, root /usr/share/nginx/html\n"
    script = f"""#!/bin/sh
# nginx stand-in built on busybox httpd (serves /usr/share/nginx/html on port {port}).
# Like nginx, the long-lived parent process is named "nginx", says "master process" in its
# command line, writes /var/run/nginx.pid and stops on TERM, INT or QUIT.
if [ "$1" != "master process" ]; then exec /usr/sbin/nginx "master process" "$@"; fi
httpd -f -p {port} -h /usr/share/nginx/html &
child=$!
trap 'kill $child 2>/dev/null; rm -f /var/run/nginx.pid; exit 0' TERM INT QUIT
echo $$ > /var/run/nginx.pid
echo "nginx stand-in: busybox httpd listening on port {port}, pid $child" >&2
wait $child
"""
    e = {
        "usr/sbin/nginx": f(script),
        "etc/nginx/nginx.conf": f(conf, 0o644),
        "usr/share/nginx/html/index.html": f("<!DOCTYPE html>\n<html><head><title>Welcome to nginx!"
                                             "</title></head><body><h1>Welcome to nginx!</h1>"
                                             "</body></html>\n", 0o644),
        "var/log/nginx": d(),
        "var/cache/nginx": d(),
    }
    return parents(e)


def httpd_layer():
    script = """#!/bin/sh
# httpd (Apache) stand-in built on busybox httpd: serves /usr/local/apache2/htdocs on port 80 and
# logs Apache's start lines, including "Command line: 'httpd -D FOREGROUND'".
httpd -f -p 80 -h /usr/local/apache2/htdocs &
child=$!
trap 'kill $child 2>/dev/null; exit 0' TERM INT QUIT WINCH
echo "AH00558: httpd: stand-in (busybox httpd), listening on port 80" >&2
echo "[mpm_event:notice] [pid $$] AH00489: Apache/2.4.39 (Unix) configured -- resuming normal operations" >&2
echo "[core:notice] [pid $$] AH00094: Command line: 'httpd -D FOREGROUND'" >&2
wait $child
"""
    e = {
        "usr/local/bin/httpd-foreground": f(script),
        "usr/local/apache2/htdocs/index.html": f("<html><body><h1>It works!</h1></body></html>\n", 0o644),
        "usr/local/apache2/logs": d(),
    }
    return parents(e)


def nonewprivs_layer():
    bb = open("/bin/busybox", "rb").read()
    script = """#!/bin/sh
# nonewprivs stand-in: /usr/local/lib/nnp/id is a setuid-root copy of busybox, allowed by
# /etc/busybox.conf to keep euid 0 for `id`; with no_new_privs the setuid bit is ignored.
echo "Effective uid: $(/usr/local/lib/nnp/id -u)"
"""
    e = {
        "usr/local/bin/nnp": f(script),
        "usr/local/lib/nnp/id": f(bb, 0o4755),
        # 0600: only a process whose euid is already root (the setuid copy) can read it.
        "etc/busybox.conf": f("[SUID]\nid = ssx 0.0\n", 0o600),
    }
    return parents(e)


def predefined_group_layer():
    # images/image-predefined-group: adduser -u 1000 -D default-user;
    # addgroup -g 50000 group-defined-in-image; addgroup default-user group-defined-in-image
    e = {
        "etc/passwd": f(PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n", 0o644),
        "etc/group": f(GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n", 0o644),
        "home/default-user": d(0o755, 1000, 1000),
    }
    return parents(e)


PAUSE = """#!/bin/sh
# pause stand-in: PID 1 of the pod, named "pause"; its one helper process is named "busybox"
# (exec'd by path, so no process called "sleep" shows up in a shared PID namespace); ash's
# wait reaps every child, orphans re-parented to PID 1 included; exits 0 on TERM or INT.
trap 'exit 0' TERM INT
while :; do
  /bin/busybox sleep 2147483647 &
  wait $!
done
"""


def pause_layer():
    bb = open("/bin/busybox", "rb").read()
    return parents({"bin/busybox": f(bb), "bin/sh": hl("bin/busybox"),
                    "pause": f(PAUSE), "etc/passwd": f("root:x:0:0:root:/root:/bin/sh\n", 0o644),
                    "etc/group": f("root:x:0:\n", 0o644), "tmp": d(0o1777)})


# --------------------------------------------------------------------------- OCI layout
class Layout:
    def __init__(self, root):
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)
        with open(os.path.join(root, "oci-layout"), "w") as fh:
            json.dump({"imageLayoutVersion": "1.0.0"}, fh)
        self.manifests: list[dict] = []
        self.cache: dict[str, dict] = {}

    def blob(self, data):
        dg = hashlib.sha256(data).hexdigest()
        p = os.path.join(self.blobs, dg)
        if not os.path.exists(p):
            with open(p + ".tmp", "wb") as fh:
                fh.write(data)
            os.rename(p + ".tmp", p)
        return "sha256:" + dg, len(data)

    def layer(self, key, make, level=6):
        if key not in self.cache:
            raw = make()
            diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
            gz = gzip.compress(raw, compresslevel=level, mtime=0)
            digest, size = self.blob(gz)
            self.cache[key] = {"digest": digest, "size": size, "diff_id": diff_id}
        return self.cache[key]

    def image(self, ref, layers, cmd=None, entrypoint=None, user="", workdir="", ports=None,
              env=None, labels=None, stop_signal=None):
        cfg = {"Env": [PATH_ENV] + (env or []), "Cmd": cmd, "WorkingDir": workdir, "User": user}
        if entrypoint:
            cfg["Entrypoint"] = entrypoint
        if ports:
            cfg["ExposedPorts"] = {f"{p}/tcp": {} for p in ports}
        if labels:
            cfg["Labels"] = labels
        if stop_signal:
            cfg["StopSignal"] = stop_signal
        config = {
            "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "bench/fixture-images.py " + ref}
                        for _ in layers],
        }
        cdig, csize = self.blob(json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer["digest"], "size": layer["size"]} for layer in layers],
        }
        mdig, msize = self.blob(json.dumps(manifest, sort_keys=True).encode())
        self.manifests.append({"mediaType": manifest["mediaType"], "digest": mdig, "size": msize,
                               "annotations": {"org.opencontainers.image.ref.name": ref}})

    def write_index(self):
        with open(os.path.join(self.root, "index.json"), "w") as fh:
            json.dump({"schemaVersion": 2, "manifests": self.manifests}, fh, indent=1)


def marker_layer(name):
    # images/image-test: FROM busybox; ADD ${TEST} ${TEST}  (an empty file named after the image)
    return lambda: layer_tar({name: f(b"", 0o644)})


def build(workdir, deb_cache):
    """Build every stand-in into an OCI layout under `workdir`; the layout's path and, for each
    image there, the registry paths it is to be pushed under."""
    layout_dir = os.path.join(workdir, "oci")
    if os.path.exists(layout_dir):
        shutil.rmtree(layout_dir)
    lay = Layout(layout_dir)
    base = lay.layer("base", lambda: layer_tar(busybox_base(deb_cache)))
    # (local ref in the layout, [registry paths it is pushed to])
    images: list[tuple[str, list[str]]] = []

    def add(paths, extra_layers=(), **kw):
        ref = f"img{len(images)}"
        lay.image(ref, [base, *extra_layers], **kw)
        images.append((ref, paths))

    sh = {"cmd": ["sh"]}
    add(["e2e-test-images/busybox:1.29-2", "e2e-test-images/busybox:1.29-4", "library/busybox:latest",
         "library/busybox:1.29", "library/busybox:1.36",
         "docker/library/busybox:1.35.0-glibc", "docker/library/busybox:1-uclibc",
         "docker/library/busybox:1", "docker/library/busybox:1-glibc", "docker/library/busybox:1-musl"], **sh)
    add(["e2e-test-images/nginx:1.14-2", "e2e-test-images/nginx:1.14-4", "library/nginx:latest"],
        [lay.layer("nginx80", lambda: layer_tar(nginx_layer(80)))],
        cmd=["nginx", "-g", "daemon off;"], ports=[80], stop_signal="SIGTERM")
    add(["k8s-staging-cri-tools/hostnet-nginx-amd64:latest"],
        [lay.layer("nginx12003", lambda: layer_tar(nginx_layer(12003)))],
        cmd=["nginx", "-g", "daemon off;"], ports=[12003], stop_signal="SIGTERM")
    add(["e2e-test-images/httpd:2.4.39-4", "e2e-test-images/httpd:2.4.38-4"],
        [lay.layer("httpd", lambda: layer_tar(httpd_layer()))],
        cmd=["httpd-foreground"], ports=[80], workdir="/usr/local/apache2", stop_signal="SIGWINCH")
    add(["e2e-test-images/nonewprivs:1.3"], [lay.layer("nnp", lambda: layer_tar(nonewprivs_layer()))],
        cmd=["/usr/local/bin/nnp"])
    # images/image-user with USER build arg (see cri-tools images/build)
    for name, user in [("test-image-user-uid", "1002"), ("test-image-user-username", "www-data"),
                       ("test-image-user-uid-group", "1003:1004"),
                       ("test-image-user-username-group", "www-data:1004")]:
        add([f"k8s-staging-cri-tools/{name}:latest"], user=user, **sh)
    add(["k8s-staging-cri-tools/test-image-predefined-group:latest"],
        [lay.layer("predef", lambda: layer_tar(predefined_group_layer()))], user="1000", **sh)
    # images/image-test: each a distinct image (a marker file named after it)
    for name in ["test-image-1", "test-image-2", "test-image-3", "test-image-latest", "test-image-digest"]:
        add([f"k8s-staging-cri-tools/{name}:latest"], [lay.layer(name, marker_layer(name))], **sh)
    add(["k8s-staging-cri-tools/test-image-tags:1", "k8s-staging-cri-tools/test-image-tags:2",
         "k8s-staging-cri-tools/test-image-tags:3"], [lay.layer("tags", marker_layer("test-image-tags"))], **sh)
    add(["k8s-staging-cri-tools/test-image-tag:test", "k8s-staging-cri-tools/test-image-tag:all"],
        [lay.layer("tag", marker_layer("test-image-tag"))], **sh)
    # pause (sandbox image): its own tiny single-layer image
    pause = lay.layer("pause", lambda: layer_tar(pause_layer()))
    ref = f"img{len(images)}"
    lay.image(ref, [pause], entrypoint=["/pause"], user="65535:65535")  # as registry.k8s.io/pause
    images.append((ref, ["pause:3.6", "pause:3.7", "pause:3.8", "pause:3.9", "pause:3.10"]))
    lay.write_index()
    return layout_dir, images


def push(layout_dir, images, registry, workers=8):
    """Push every image under each of its paths to `registry` (plain HTTP). Repositories go side
    by side, the tags of one repository one after another: docker-registry answers 500 now and
    then to concurrent pushes into one repository, so a push is also tried again."""
    by_repo: dict[str, list[tuple[str, str]]] = {}
    for ref, paths in images:
        for path in paths:
            by_repo.setdefault(path.rsplit(":", 1)[0], []).append((ref, path))

    def one(ref, path, tries=3):
        for attempt in range(tries):
            done = subprocess.run(["skopeo", "copy", "--quiet", "--format", "v2s2", "--dest-tls-verify=false",
                                   f"oci:{layout_dir}:{ref}", f"docker://{registry}/{path}"], capture_output=True)
            if done.returncode == 0:
                return
            if attempt == tries - 1:
                raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)

    def repository(jobs):
        for ref, path in jobs:
            one(ref, path)

    repos = list(by_repo.values())
    # The first image alone, so the shared base layer is uploaded once, not once per worker.
    first = repos[0].pop(0)
    one(*first)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(repository, repos))
    return [first[1], *(path for jobs in repos for _, path in jobs)]
