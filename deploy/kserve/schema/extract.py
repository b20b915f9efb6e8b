"""Write the openAPIV3Schema of KServe's ServingRuntime and InferenceService CRDs, as served by
one KServe release, into this folder as compact JSON, with where each came from.

Needs PyYAML (the interpreter of .venv-tools has it) and a git clone of kserve/kserve:
    .venv-tools/bin/python deploy/kserve/schema/extract.py /path/to/kserve v0.20.0
tests/deploy/test_kserve.py validates deploy/kserve/*.yaml against the files this writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {  # output file -> CRD file in the kserve repository
    "servingruntime.json": "config/crd/full/serving.kserve.io_servingruntimes.yaml",
    "inferenceservice.json": "config/crd/full/serving.kserve.io_inferenceservices.yaml",
}


def git(repo: str, *args: str) -> bytes:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="a git clone of https://github.com/kserve/kserve")
    parser.add_argument("tag", help="a release tag, e.g. v0.20.0")
    args = parser.parse_args()
    commit = git(args.repo, "rev-parse", f"{args.tag}^{{commit}}").decode().strip()
    for out, path in CRDS.items():
        text = git(args.repo, "show", f"{commit}:{path}")
        crd = next(doc for doc in yaml.safe_load_all(text) if doc)
        served = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
        assert len(served) == 1, f"{path}: want one served storage version"
        version = served[0]
        document = {
            "crd": crd["metadata"]["name"],
            "apiVersion": f"{crd['spec']['group']}/{version['name']}",
            "kind": crd["spec"]["names"]["kind"],
            "source": {"repository": "https://github.com/kserve/kserve", "tag": args.tag,
                       "commit": commit, "path": path, "sha256": hashlib.sha256(text).hexdigest()},
            "openAPIV3Schema": version["schema"]["openAPIV3Schema"],
        }
        (HERE / out).write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{out}: {document['kind']} {document['apiVersion']} from {path} at {args.tag} ({commit})")


if __name__ == "__main__":
    main()
