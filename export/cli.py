"""`vae-export`: publish a run folder to the model repository, or --check a published version."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.help_format import DefaultsHelpFormatter
from training.extra import missing_train_extra


def build_parser() -> argparse.ArgumentParser:
    from export.onnx_export import OPSET  # imports torch: never at import, which needs no extra

    p = argparse.ArgumentParser(
        prog="vae-export",
        description="Export a trained run to REPO/MODEL/VERSION/{encoder,decoder,scorer}.onnx + "
        "manifest.json, after the ONNX checker and a parity check against torch (max abs "
        "error <= 1e-5, and <= 1e-3 nats for the scorer's log p(x | z), at batch sizes 1, 3, "
        "64). Publishing is atomic; versions are never overwritten. Or re-verify a published "
        "version with --check.",
        epilog="exit codes: 0 published or verified; 1 a graph failed a check of its contents "
        "(ONNX checker, parity, the smoke run); 2 a wrong input (run folder, repository, "
        "manifest, sha256 mismatch, an existing version).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("run", type=Path, nargs="?", help="run folder written by vae-train")
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository folder")
    p.add_argument("--model", default="vae", help="model name (folder inside the repository)")
    p.add_argument("--version", type=int, help="version to publish (default: next integer)")
    p.add_argument("--opset", type=int, default=OPSET, choices=range(18, 22), metavar="18..21",
                   help="ONNX opset")
    p.add_argument("--data-dir", type=Path,
                   help="IDX folder for the parity images of a run folder made before runs kept "
                   "them (parity_images.npy); newer runs need no data")
    p.add_argument("--check", type=Path, metavar="VERSION_DIR",
                   help="re-verify a published version folder, e.g. models/vae/1, and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as err:
        if (advice := missing_train_extra(err)) is None:
            raise
        print(f"vae-export: error: {advice}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.run is None) == (args.check is None):
        parser.error("give a run folder to export, or --check VERSION_DIR")
    from export.publish import check_version, publish
    from export.verify import VerificationError
    from service.plane.repository import IntegrityError, ManifestError
    from training.errors import UsageError

    try:
        if args.check is not None:
            manifest = check_version(args.check)
            print(f"{args.check}: OK (model {manifest.model_name} v{manifest.version}, "
                  f"image {list(manifest.image_shape)}, latent {manifest.latent_dim}, "
                  f"graphs {', '.join(manifest.graphs)})")
        else:
            folder = publish(args.run, args.repo, args.model, args.version, args.opset,
                             args.data_dir)
            print(f"published {folder}")
    except (UsageError, ManifestError, IntegrityError) as err:
        print(f"vae-export: error: {err}", file=sys.stderr)
        return 2
    except VerificationError as err:
        print(f"vae-export: verification failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
