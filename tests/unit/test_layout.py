"""The shape of the tree, kept by a test: which package may import which, and verbs that stand
alone. docs/design.md explains the layers; this is where they are enforced."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Each package and the project packages it may import (besides itself and the standard library).
ALLOWED = {
    "linux": set(),                                   # the Linux toolkit: nothing of the project's
    "frames": {"api"},                                # the frame protocol and its clients
    "shim": {"api", "frames", "linux"},               # the shim process: no daemon code
    "image": {"linux"},                               # images know nothing of pods
    "cni": {"frames", "linux"},                       # networks know nothing of images or the shim
    "cri": {"api", "cni", "frames", "image", "linux"},  # the daemon: never the shim process itself
    "cli": {"api", "cri", "image"},                   # the admin client: the config it shares, references
}
PROJECT = {*ALLOWED, "api", "bench", "tests", "tools"}


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
            out.extend(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        if not path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            yield path


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_beneath_them(package):
    wrong = []
    for path in _modules(package):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PROJECT and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_verb_module_imports_another():
    # Shared lifecycle code lives beside the verbs (cri/*_lifecycle.py, cri/status.py ...), so a
    # reader finds each CRI call in one file and a change to one verb cannot reach into another.
    wrong = []
    for path in _modules("cri/verbs"):
        for name in _imports(path):
            if name.startswith("cri.verbs"):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_every_verb_file_is_named_for_its_object():
    # The object is a pod sandbox, a container, or the runtime itself (its config).
    names = {p.stem for p in _modules("cri/verbs")} - {"__init__"}
    assert names and all(n.startswith(("sandbox_", "container_", "runtime_")) for n in names), names
