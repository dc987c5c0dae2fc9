"""Fuzz target: image manifests, indexes and configs (image/manifest.py), as a registry or an archive
serves them to a pull.

The first byte picks the Content-Type the body comes with (a manifest or index type, a generic
one, or none) or that the body is an image config. A manifest that parses has well-formed
descriptors; an index is then asked for this host's image and a few other platforms', which it
either offers or refuses by name."""
from __future__ import annotations

from fuzz.harness import instrumented, run

with instrumented(__name__ == "__main__"):
    from image import manifest as m

EXPECTED = (m.ManifestError,)
_CONTENT_TYPES = (None, "", "application/json", m.OCI_MANIFEST, m.OCI_INDEX, m.DOCKER_MANIFEST,
                  m.DOCKER_MANIFEST_LIST, m.DOCKER_SCHEMA1_SIGNED, "application/vnd.oci.image.manifest.v1+json; x=y")
_PLATFORMS = (m.Platform("linux", "arm64", "v8"), m.Platform("linux", "arm", "v6"), m.Platform("linux", "amd64", "v3"),
              m.Platform("windows", "amd64"))


def check(data: bytes) -> None:
    if not data:
        return
    choice, body = data[0] % (len(_CONTENT_TYPES) + 1), data[1:]
    if choice == len(_CONTENT_TYPES):
        doc = m.parse_config(body)
        assert isinstance(doc, dict)
        return
    parsed = m.parse_manifest(body, _CONTENT_TYPES[choice])
    if isinstance(parsed, m.Index):
        for want in (m.host_platform(), *_PLATFORMS):
            try:
                chosen = m.select_platform(parsed, want)
            except m.ManifestError:
                continue
            assert chosen in parsed.manifests
    else:
        for d in (parsed.config, *parsed.layers):
            assert m.check_digest(d.digest) and d.size >= 0


if __name__ == "__main__":
    run(check, EXPECTED)
