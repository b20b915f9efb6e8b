import json
from pathlib import Path

import pytest
import torch

from tests.conftest import train_digits
from training.cli import main
from training.data import load_digits
from training.model import LEGACY_DECODER_LAYERS, ModelConfig, build_model
from training.run_dir import load_run
from training.train import evaluate_loss


def test_training_lowers_test_loss_by_a_quarter(digits_run: Path) -> None:
    run = load_run(digits_run)
    test = torch.from_numpy(load_digits().test)
    torch.manual_seed(0)
    untrained = evaluate_loss(build_model(run.model.config), test, 512,
                              torch.Generator().manual_seed(0))
    trained = evaluate_loss(run.model, test, 512, torch.Generator().manual_seed(0))
    assert trained < 0.75 * untrained, (trained, untrained)


def test_run_folder_holds_everything(digits_run: Path) -> None:
    names = {p.name for p in digits_run.iterdir()}
    assert {"model.pt", "config.json", "metrics.json", "report.md", "samples.png",
            "reconstructions.png", "denoising.png"} <= names
    metrics = json.loads((digits_run / "metrics.json").read_text())
    psnr = metrics["evaluation"]["psnr"]["gaussian:0.3"]
    assert psnr["vae"] > psnr["noisy"]  # the denoising VAE really denoises


@pytest.mark.parametrize("arch", ["conv", "subpixel"])
def test_same_seed_gives_identical_weights(tmp_path: Path, arch: str) -> None:
    settings = {"lr_schedule": "onecycle"} if arch == "subpixel" else {}
    a = load_run(train_digits(tmp_path / "a", arch=arch, epochs=1, **settings)).model.state_dict()
    b = load_run(train_digits(tmp_path / "b", arch=arch, epochs=1, **settings)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--noise", "gaussian:2"], "noise 'gaussian:2' is invalid"),
        (["--dataset", "mnist"], "needs --data-dir"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], "no such folder"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
        (["--arch", "subpixel", "--decoder-layers", "2"], "two counts, QUARTER,HALF"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_command_updates_report(digits_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(digits_run), "--iwae-samples", "4", "--eval-images", "8"]) == 0
    report = capsys.readouterr().out
    assert "IWAE bound with k=4 on binarised test images (nats) |" in report
    assert "| lower | 8 |" in report  # the row says how many test images it used


def test_model_config_round_trips_and_reads_runs_from_before_decoder_layers() -> None:
    config = ModelConfig("subpixel", (1, 28, 28), 32, 512, 16, (2, 0))
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    older = {k: v for k, v in config.to_dict().items() if k != "decoder_layers"}
    assert ModelConfig.from_dict(older).decoder_layers == LEGACY_DECODER_LAYERS
    # Two layers at a quarter of the size, none at half: the counts shape the decoder.
    convs = [m for m in build_model(config).decoder.children() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
