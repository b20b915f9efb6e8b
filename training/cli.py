"""`vae-train`: train a run folder, or `vae-train evaluate RUN` to measure one."""

from __future__ import annotations

import logging
import sys

from training.errors import UsageError
from training.extra import missing_train_extra


def _train(argv: list[str]) -> int:
    from training.config import build_train_parser, train_config_from_args
    from training.pipeline import fit

    config = train_config_from_args(build_train_parser().parse_args(argv))
    metrics = fit(config)
    print(f"wrote {config.out}: test loss {metrics['evaluation']['test_loss']:.2f} nats/image; "
          f"see {config.out / 'report.md'}")
    return 0


def _evaluate(argv: list[str]) -> int:
    from training.config import build_evaluate_parser
    from training.pipeline import evaluate_run, write_per_image

    args = build_evaluate_parser().parse_args(argv)
    if args.per_image is not None:
        scores = write_per_image(args.run, args.per_image, args.data_dir, args.eval_images,
                                 args.per_image_samples, args.seed, args.device)
        print(f"wrote {args.per_image}: {len(scores['nll'])} images, {args.per_image_samples} "
              f"samples, seed {args.seed}; mean nll {scores['nll'].mean():.2f} nats, "
              f"neg_elbo {scores['neg_elbo'].mean():.2f}")
        return 0
    evaluate_run(args.run, args.data_dir, args.iwae_samples, args.eval_images, args.device)
    print((args.run / "report.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch to evaluate when the first word is 'evaluate', else train."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args[:1] == ["evaluate"]:
            return _evaluate(args[1:])
        return _train(args)
    except UsageError as err:
        print(f"vae-train: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if (advice := missing_train_extra(err)) is None:
            raise
        print(f"vae-train: error: {advice}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
