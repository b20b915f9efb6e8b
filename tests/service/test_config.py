"""ServerConfig: flag over environment over default, and each kind of bad value is a ConfigError."""

from pathlib import Path

import pytest

from service.cli import main
from service.config import ConfigError, ServerConfig, parse_bool
from service.cores import usable_cores


def test_flag_beats_environment_beats_default() -> None:
    env = {"VAE_SERVE_MAX_BATCH_SIZE": "16", "VAE_SERVE_GRACE_S": "2.5"}
    config = ServerConfig.from_args(["--max-batch-size", "8"], environ=env)
    assert config.max_batch_size == 8 and config.grace_s == 2.5
    assert config.port == 50051 and config.model_repo == Path("models")


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), ("Yes", True),
                                             ("false", False), ("0", False), ("no", False)])
def test_booleans_read_the_usual_words(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--port", "http"], {}, "--port='http': expected an integer"),
    ([], {"VAE_SERVE_GRACE_S": "soon"}, "VAE_SERVE_GRACE_S='soon': expected a number"),
    ([], {"VAE_SERVE_DEVICE": "tpu"}, "VAE_SERVE_DEVICE='tpu': expected one of auto, cuda, cpu"),
    (["--log-level", "loud"], {}, "expected one of DEBUG, INFO, WARNING, ERROR"),
    (["--max-batch-size", "0"], {}, "--max-batch-size (VAE_SERVE_MAX_BATCH_SIZE) must be >= 1"),
    ([], {"VAE_SERVE_PORT": "70000"}, "must be within 0..65535"),
])
def test_bad_values_name_the_setting(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServerConfig.from_args(argv, environ=env)


def test_cli_turns_a_bad_value_into_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_SERVE_INSTANCES", "many")
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vae-serve: error: VAE_SERVE_INSTANCES='many': expected an integer or auto"]


def test_help_prints_each_default_once() -> None:
    from service.config import build_parser

    text = build_parser().format_help()
    assert "(default: 64; env VAE_SERVE_MAX_BATCH_SIZE)" in " ".join(text.split())
    assert "None" not in text


def test_intra_op_threads_auto_is_the_cores_this_process_may_use() -> None:
    assert ServerConfig().session_threads() == usable_cores()
    assert ServerConfig(intra_op_threads=3).session_threads() == 3


def test_each_worker_counts_its_share_of_the_cores_as_its_own() -> None:
    cores = usable_cores()
    assert ServerConfig().process_cores() == cores  # one process: all of them
    assert ServerConfig(workers=2, port=1).process_cores() == max(1, cores // 2)
    assert ServerConfig(workers=0, port=1).process_cores() == 1  # auto: a worker per core
