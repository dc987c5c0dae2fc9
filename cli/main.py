"""`cricket`: the operator's command line for a node's cricketd.

It talks to the daemon's socket: the CRI where the CRI suffices (images,
inspect, rmi, ps, pods, info), Cricket's admin API where it does not (pull and
push with progress, tag, history, prune, save, load). Registry credentials
that `login` stores stay on this side and go along with each pull or push. Errors are one line on
stderr and exit status 1; `--output json` prints what scripts want.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import sys
import tarfile
import tempfile
from typing import cast

import grpc

from api.admin.v1 import admin_pb2 as apb
from api.admin.v1 import admin_pb2_grpc as apb_grpc
from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from cli.output import PullDisplay, as_json, human_age, human_size, short_id, table
from cri.config import DEFAULT_CONFIG_FILE, ConfigError, load
from image import dockerignore
from image.dockerignore import Patterns
from image.reference import parse_reference

CALL_SECONDS = 60.0
CHUNK = 1 << 20


class Client:
    def __init__(self, socket: str):
        self.socket = socket
        channel = grpc.insecure_channel("unix://" + socket)
        self.runtime = pb_grpc.RuntimeServiceStub(channel)
        self.images = pb_grpc.ImageServiceStub(channel)
        self.admin = apb_grpc.AdminStub(channel)


def _socket(args) -> str:
    if args.socket:
        return args.socket
    if os.environ.get("CRICKET_SOCKET"):
        return os.environ["CRICKET_SOCKET"]
    try:
        return load(DEFAULT_CONFIG_FILE).socket
    except ConfigError:
        return load(None).socket  # a broken config file is the daemon's problem to report


# -- images --------------------------------------------------------------------------------------


# -- credentials ---------------------------------------------------------------------------------


def auth_file() -> str:
    """Where `cricket login` keeps credentials: $CRICKET_AUTH_FILE, else ~/.config/cricket/auth.json."""
    return os.environ.get("CRICKET_AUTH_FILE") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "cricket", "auth.json")


def _read_auths() -> dict:
    try:
        with open(auth_file()) as f:
            return json.load(f).get("auths", {})
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise SystemExit(f"cricket: error: {auth_file()} is not JSON: {e}") from None


# A file of our own: a fresh inode (O_EXCL), never a symlink someone planted (O_NOFOLLOW).
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _replacing(path: str, mode: int):
    """Write a new `path`: yield a file made fresh beside it, under a random name, with `mode`
    from its first byte, and rename it over `path` once the block ends without an error.

    A fixed name (path + ".tmp") would let whoever can write to the directory plant a file
    there first, whose mode the data would keep, or a symlink, which the data would be
    written through; and renaming it would put their file or symlink in place of ours.
    """
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, _CREATE_NEW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off; never added any
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_auths(auths: dict) -> None:
    path = auth_file()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with _replacing(path, 0o600) as f:  # never readable by others, even briefly
        f.write(json.dumps({"auths": auths}, indent=2).encode())


def _credentials(args, image: str) -> tuple[str, str]:
    """--user USER:PASSWORD, else what `cricket login` stored for the image's registry."""
    if args.user:
        user, _, password = args.user.partition(":")
        return user, password
    try:
        host = parse_reference(image).domain
    except ValueError:
        return "", ""  # the daemon says what is wrong with the name
    stored = _read_auths().get(host, {}).get("auth", "")
    user, _, password = base64.b64decode(stored).decode().partition(":") if stored else ("", "", "")
    return user, password


def cmd_login(c: Client, args) -> None:
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else args.password
    if not args.username or not password:
        raise SystemExit("cricket: error: give --username and --password (or --password-stdin)")
    auths = _read_auths()
    auths[args.registry] = {"auth": base64.b64encode(f"{args.username}:{password}".encode()).decode()}
    _write_auths(auths)
    print(f"Credentials for {args.registry} stored in {auth_file()}")


def cmd_logout(c: Client, args) -> None:
    auths = _read_auths()
    if auths.pop(args.registry, None) is None:
        raise SystemExit(f"cricket: error: no credentials stored for {args.registry}")
    _write_auths(auths)


# -- images --------------------------------------------------------------------------------------


def _moved(events, args, pushing: bool) -> apb.Progress:
    display = PullDisplay(pushing=pushing)
    last = None
    for event in events:
        if event.image_id:
            last = event
        elif args.output != "json":
            display.update(event.digest, event.size, event.done, event.state)
    return cast(apb.Progress, last)  # a finished stream ends with the image's event


def cmd_pull(c: Client, args) -> None:
    user, password = _credentials(args, args.image)
    last = _moved(c.admin.Pull(apb.PullRequest(image=args.image, username=user, password=password)), args, False)
    if args.output == "json":
        as_json({"id": last.image_id, "ref": last.image_ref})
    else:
        print(f"Pulled {last.image_ref} ({short_id(last.image_id)})")


def cmd_push(c: Client, args) -> None:
    user, password = _credentials(args, args.image)
    last = _moved(c.admin.Push(apb.PushRequest(image=args.image, username=user, password=password)), args, True)
    if args.output == "json":
        as_json({"id": last.image_id, "ref": last.image_ref})
    else:
        print(f"Pushed {last.image_ref}")


def _names(image: pb.Image) -> list[tuple[str, str]]:
    """(repository, tag) pairs of an image; one with <none> for an image without tags."""
    pairs = [tuple(t.rsplit(":", 1)) for t in image.repo_tags]
    if not pairs:
        pairs = [(d.split("@", 1)[0], "<none>") for d in image.repo_digests[:1]] or [("<none>", "<none>")]
    return pairs


def cmd_images(c: Client, args) -> None:
    images = c.images.ListImages(pb.ListImagesRequest(), timeout=CALL_SECONDS).images
    if args.output == "json":
        as_json([{"id": i.id, "repoTags": list(i.repo_tags), "repoDigests": list(i.repo_digests),
                  "size": i.size} for i in images])
        return
    if args.quiet:
        for i in images:
            print(short_id(i.id))
        return
    rows = [[repo, tag, short_id(i.id), human_size(i.size)] for i in images for repo, tag in _names(i)]
    table(["REPOSITORY", "TAG", "IMAGE ID", "SIZE"], sorted(rows))


def _status(c: Client, image: str) -> pb.ImageStatusResponse:
    answer = c.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=True),
                                  timeout=CALL_SECONDS)
    if not answer.image.id:
        raise SystemExit(f"cricket: error: no image {image!r}")
    return answer


def cmd_inspect(c: Client, args) -> None:
    docs = []
    for image in args.images:
        answer = _status(c, image)
        info = json.loads(answer.info.get("info", "{}"))
        docs.append({"id": answer.image.id, "repoTags": list(answer.image.repo_tags),
                     "repoDigests": list(answer.image.repo_digests), "size": answer.image.size,
                     "manifestDigest": info.get("manifestDigest"), "manifestMediaType": info.get("manifestMediaType"),
                     "chainID": info.get("chainID"), "config": info.get("imageSpec")})
    as_json(docs)


def cmd_history(c: Client, args) -> None:
    answer = c.admin.History(apb.HistoryRequest(image=args.image), timeout=CALL_SECONDS)
    entries = list(reversed(answer.entries))  # newest first, as docker history prints them
    if args.output == "json":
        as_json([{"created": e.created, "createdBy": e.created_by, "comment": e.comment,
                  "emptyLayer": e.empty_layer, "size": e.size, "layer": e.layer} for e in entries])
        return
    rows = []
    for e in entries:
        created_by = e.created_by if args.no_trunc or len(e.created_by) <= 45 else e.created_by[:44] + "…"
        rows.append([human_age(e.created), created_by, human_size(e.size), e.comment])
    table(["CREATED", "CREATED BY", "SIZE", "COMMENT"], rows)


def cmd_tag(c: Client, args) -> None:
    c.admin.Tag(apb.TagRequest(source=args.source, target=args.target), timeout=CALL_SECONDS)


def cmd_rmi(c: Client, args) -> None:
    for image in args.images:
        _status(c, image)  # RemoveImage of a missing image succeeds; the operator wants to know
        c.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image)), timeout=CALL_SECONDS)
        print(f"Removed {image}")


def cmd_prune(c: Client, args) -> None:
    answer = c.admin.Prune(apb.PruneRequest(), timeout=CALL_SECONDS * 5)
    if args.output == "json":
        as_json({"removed": list(answer.removed), "reclaimed": answer.reclaimed})
        return
    for image_id in answer.removed:
        print(f"Removed {image_id}")
    print(f"Reclaimed {human_size(answer.reclaimed)}")


def cmd_save(c: Client, args) -> None:
    fmt = apb.OCI_ARCHIVE if args.format == "oci" else apb.DOCKER_ARCHIVE
    # Often into a shared directory (/tmp): written as login writes credentials, so nothing
    # planted beside the file can redirect it.
    with _replacing(args.output_file, 0o666 & ~_umask()) as out:  # as open() would make it
        for chunk in c.admin.Save(apb.SaveRequest(images=args.images, format=fmt)):
            out.write(chunk.data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cmd_load(c: Client, args) -> None:
    def chunks():
        with open(args.input_file, "rb") as f:
            while data := f.read(CHUNK):
                yield apb.Chunk(data=data)

    answer = c.admin.Load(chunks())
    if args.output == "json":
        as_json(list(answer.images))
    else:
        for line in answer.images:
            print(f"Loaded {line}")


def _context_tar(root: str, patterns: Patterns, out) -> None:
    """The build context as a tar, less what .dockerignore leaves out (as docker's client does):
    symlinks as symlinks, never followed."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(root):
            rel_top = os.path.relpath(top, root)
            rel_top = "" if rel_top == "." else rel_top + "/"
            kept = []
            for d in sorted(dirs):
                rel = rel_top + d
                if not patterns.ignored(rel):
                    tar.add(os.path.join(top, d), rel, recursive=False)
                    kept.append(d)
                elif patterns.may_reinclude_under(rel):
                    kept.append(d)
            dirs[:] = kept
            for name in sorted(files):
                rel = rel_top + name
                if not patterns.ignored(rel):
                    tar.add(os.path.join(top, name), rel, recursive=False)


def cmd_build(c: Client, args) -> None:
    dockerfile = args.file or os.path.join(args.context, "Dockerfile")
    with open(dockerfile) as f:
        text = f.read()
    try:
        with open(os.path.join(args.context, ".dockerignore")) as f:
            patterns = dockerignore.load(f.read())
    except FileNotFoundError:
        patterns = dockerignore.load("")
    build_args = {}
    for item in args.build_arg:
        name, sep, value = item.partition("=")
        if not sep:  # NAME alone: its value from the environment, as docker takes it
            if name not in os.environ:
                continue
            value = os.environ[name]
        build_args[name] = value
    with tempfile.TemporaryFile() as context:
        _context_tar(args.context, patterns, context)
        context.seek(0)

        def inputs():
            yield apb.BuildInput(options=apb.BuildOptions(
                tags=args.tag, dockerfile=text, dockerfile_name=os.path.basename(dockerfile),
                build_args=build_args, target=args.target or "", no_cache=args.no_cache, network=args.network))
            while data := context.read(CHUNK):
                yield apb.BuildInput(context=data)

        for event in c.admin.Build(inputs()):
            if event.image_id:
                print(event.image_id if args.quiet else f"Built {short_id(event.image_id)}"
                      + (f" as {', '.join(args.tag)}" if args.tag else ""))
            elif not args.quiet:
                print(event.text, flush=True)


def _container_id(c: Client, spec: str) -> str:
    """A container's whole ID from a unique prefix (or its name), as crictl takes them."""
    listed = c.runtime.ListContainers(pb.ListContainersRequest(), timeout=CALL_SECONDS).containers
    found = [x.id for x in listed if x.id.startswith(spec) or x.metadata.name == spec]
    if len(found) != 1:
        raise SystemExit(f"cricket: error: {'no' if not found else 'more than one'} container matches {spec!r}")
    return found[0]


def cmd_commit(c: Client, args) -> None:
    answer = c.admin.Commit(apb.CommitRequest(container=_container_id(c, args.container), name=args.image or "",
                                              changes=args.change, message=args.message or "",
                                              no_pause=not args.pause), timeout=CALL_SECONDS * 10)
    print(answer.image_id)


def cmd_export(c: Client, args) -> None:
    request = apb.ExportRequest(container=_container_id(c, args.container))
    with _replacing(args.output_file, 0o666 & ~_umask()) as out:
        for chunk in c.admin.Export(request):
            out.write(chunk.data)


def cmd_import(c: Client, args) -> None:
    def inputs():
        yield apb.ImportInput(name=args.image, changes=args.change)
        with open(args.file, "rb") as f:
            while data := f.read(CHUNK):
                yield apb.ImportInput(data=data)

    print(c.admin.Import(inputs()).image_id)


# -- the node ------------------------------------------------------------------------------------


def cmd_ps(c: Client, args) -> None:
    state = None if args.all else pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)
    listed = c.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(state=state)),
                                      timeout=CALL_SECONDS).containers
    if args.output == "json":
        as_json([{"id": x.id, "name": x.metadata.name, "podSandboxId": x.pod_sandbox_id, "image": x.image.image,
                  "state": pb.ContainerState.Name(x.state), "createdAt": x.created_at} for x in listed])
        return
    table(["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "POD ID"],
          [[short_id(x.id), x.image.image, human_age(x.created_at / 1e9),
            pb.ContainerState.Name(x.state).removeprefix("CONTAINER_").capitalize(), x.metadata.name,
            short_id(x.pod_sandbox_id)] for x in listed])


def cmd_pods(c: Client, args) -> None:
    listed = c.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL_SECONDS).items
    if args.output == "json":
        as_json([{"id": p.id, "name": p.metadata.name, "namespace": p.metadata.namespace,
                  "state": pb.PodSandboxState.Name(p.state), "createdAt": p.created_at} for p in listed])
        return
    table(["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE"],
          [[short_id(p.id), human_age(p.created_at / 1e9),
            "Ready" if p.state == pb.SANDBOX_READY else "NotReady", p.metadata.name, p.metadata.namespace]
           for p in listed])


def cmd_info(c: Client, args) -> None:
    version = c.runtime.Version(pb.VersionRequest(), timeout=CALL_SECONDS)
    status = c.runtime.Status(pb.StatusRequest(verbose=True), timeout=CALL_SECONDS)
    fs = c.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=CALL_SECONDS).image_filesystems
    config = json.loads(status.info.get("config", "{}"))
    doc = {
        "runtime": {"name": version.runtime_name, "version": version.runtime_version,
                    "apiVersion": version.runtime_api_version},
        "conditions": {cond.type: {"status": cond.status, "reason": cond.reason, "message": cond.message}
                       for cond in status.status.conditions},
        "handlers": [h.name or "(default)" for h in status.runtime_handlers],
        "cni": config.get("cni", {}),
        "storage": {"root": config.get("root_dir"), "imagesBytes": fs[0].used_bytes.value if fs else 0,
                    "imagesInodes": fs[0].inodes_used.value if fs else 0},
        "socket": c.socket,
        "config": config,
    }
    if args.output == "json":
        as_json(doc)
        return
    print(f"Runtime:      {version.runtime_name} {version.runtime_version} (CRI {version.runtime_api_version})")
    print(f"Socket:       {c.socket}")
    for kind, cond in doc["conditions"].items():
        reason = "" if cond["status"] else f" ({cond['reason']}: {cond['message']})"
        print(f"{kind + ':':<14}{'yes' if cond['status'] else 'no'}{reason}")
    print(f"Handlers:     {', '.join(doc['handlers'])}")
    cni = doc["cni"]
    print(f"CNI:          config in {cni.get('conf_dir')}, plugins in {':'.join(cni.get('bin_dirs', []))}")
    print(f"Storage:      {doc['storage']['root']}, images {human_size(doc['storage']['imagesBytes'])}")


# -- the command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cricket", description="Look after a node's Cricket: images, pods, containers.")
    p.add_argument("--socket", help="cricketd's socket (default: $CRICKET_SOCKET, else the config file's)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="how to print answers")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, fn, help_text):
        cp = sub.add_parser(name, help=help_text, description=help_text)
        cp.set_defaults(fn=fn)
        return cp

    cp = command("pull", cmd_pull, "pull an image, showing each layer's progress")
    cp.add_argument("image")
    cp.add_argument("--user", help="registry credentials, USER:PASSWORD (default: what login stored)")
    cp = command("push", cmd_push, "push an image to the registry its name points at")
    cp.add_argument("image")
    cp.add_argument("--user", help="registry credentials, USER:PASSWORD (default: what login stored)")
    cp = command("login", cmd_login, "store credentials for a registry (in a file of mode 0600)")
    cp.add_argument("registry", metavar="REGISTRY", help="host[:port], as image names spell it")
    cp.add_argument("-u", "--username")
    cp.add_argument("-p", "--password")
    cp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    cp = command("logout", cmd_logout, "forget a registry's stored credentials")
    cp.add_argument("registry", metavar="REGISTRY")
    cp = command("images", cmd_images, "list images")
    cp.add_argument("-q", "--quiet", action="store_true", help="image IDs only")
    cp = command("inspect", cmd_inspect, "an image's record, manifest digest and config, as JSON")
    cp.add_argument("images", nargs="+", metavar="IMAGE")
    cp = command("history", cmd_history, "an image's layers and the instructions that made them")
    cp.add_argument("image")
    cp.add_argument("--no-trunc", action="store_true", help="print instructions whole")
    cp = command("tag", cmd_tag, "give an image another name")
    cp.add_argument("source", metavar="SOURCE")
    cp.add_argument("target", metavar="TARGET")
    cp = command("rmi", cmd_rmi, "remove images (by name or ID)")
    cp.add_argument("images", nargs="+", metavar="IMAGE")
    command("prune", cmd_prune, "remove the build cache and the images no container uses, and what only they held")
    cp = command("build", cmd_build, "build an image from a Dockerfile, running its steps on this node")
    cp.add_argument("context", metavar="CONTEXT", help="the directory whose files COPY and ADD see")
    cp.add_argument("-t", "--tag", action="append", default=[], help="a name for the image (repeatable)")
    cp.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    cp.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    cp.add_argument("--target", help="the stage to build (default: the last)")
    cp.add_argument("--no-cache", action="store_true", help="run every step, reusing no cached layer")
    cp.add_argument("--network", choices=("none", "host"), default="none",
                    help="RUN steps' network: none (only loopback, the default) or the host's")
    cp.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    cp = command("commit", cmd_commit, "a container's changes as a new image")
    cp.add_argument("container", metavar="CONTAINER")
    cp.add_argument("image", metavar="NAME[:TAG]", nargs="?")
    cp.add_argument("-c", "--change", action="append", default=[], help="a Dockerfile instruction for the config")
    cp.add_argument("-m", "--message", help="the commit's comment in the image's history")
    cp.add_argument("--pause", type=lambda v: v.lower() not in ("false", "0", "no"), default=True,
                    metavar="true|false", help="freeze the container while its changes are read (default true)")
    cp = command("export", cmd_export, "a container's whole filesystem as a tar")
    cp.add_argument("container", metavar="CONTAINER")
    cp.add_argument("-o", "--output-file", required=True, metavar="FILE")
    cp = command("import", cmd_import, "a one-layer image from a filesystem tar")
    cp.add_argument("file", metavar="FILE")
    cp.add_argument("image", metavar="NAME[:TAG]")
    cp.add_argument("-c", "--change", action="append", default=[], help="a Dockerfile instruction for the config")
    cp = command("save", cmd_save, "write images to an archive (docker-archive, or OCI with --format oci)")
    cp.add_argument("-o", "--output-file", required=True, metavar="FILE")
    cp.add_argument("--format", choices=("docker", "oci"), default="docker")
    cp.add_argument("images", nargs="+", metavar="IMAGE")
    cp = command("load", cmd_load, "load images from a docker-archive or OCI archive")
    cp.add_argument("-i", "--input-file", required=True, metavar="FILE")
    cp = command("ps", cmd_ps, "list containers (running ones unless -a)")
    cp.add_argument("-a", "--all", action="store_true")
    command("pods", cmd_pods, "list pod sandboxes")
    command("info", cmd_info, "the daemon: version, conditions, handlers, CNI, storage")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(Client(_socket(args)), args)
    except grpc.RpcError as e:
        print(f"cricket: error: {e.details() or e.code().name}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1  # whoever read our output stopped (| head): nothing to say
    except OSError as e:
        print(f"cricket: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
