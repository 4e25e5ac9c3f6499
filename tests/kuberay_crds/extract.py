"""Regenerate the KubeRay CRD schemas the deploy tests validate against.

    python tests/kuberay_crds/extract.py KUBERAY_REPO [--ref v1.7.0]

KUBERAY_REPO is a kuberay checkout (files read from its work tree) or, with `--ref`, any clone
(files read with `git show REF:path`, so a bare mirror works). Only each CRD's `v1`
openAPIV3Schema is kept, as gzipped JSON: the CRD files are about 1 MB each and the tests need
nothing else. Output is byte-for-byte reproducible (sorted keys, gzip without a timestamp).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KINDS = ("rayclusters", "rayjobs", "rayservices")
SOURCE = "ray-operator/config/crd/bases/ray.io_{kind}.yaml"


def v1_schema(crd_text: str, source: str) -> dict:
    crd = yaml.load(crd_text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return version["schema"]["openAPIV3Schema"]
    raise ValueError(
        f"{source}: no v1 version among {[v['name'] for v in crd['spec']['versions']]}"
    )


def read(repo: Path, ref: str | None, path: str) -> str:
    if ref is None:
        return (repo / path).read_text()
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"{ref}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="kuberay checkout or clone")
    parser.add_argument("--ref", help="git tag or commit to read (default: the work tree)")
    args = parser.parse_args()
    for kind in KINDS:
        path = SOURCE.format(kind=kind)
        schema = v1_schema(read(args.repo, args.ref, path), path)
        data = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        out = HERE / f"{kind}.v1.schema.json.gz"
        out.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        print(f"{path} -> {out.name} ({len(data):,} bytes of JSON, {out.stat().st_size:,} gzipped)")


if __name__ == "__main__":
    main()
