"""The benchmark commands refuse malformed arguments with one line and exit 2."""

import pytest

from bench import settings_ab


@pytest.mark.parametrize(("argv", "message"), [
    (["--setting", "--instances 2", "--point", "Decode:1:1"], "write NAME=FLAGS"),
    (["--setting", "a=", "--point", "Decode:1"], "write METHOD:ITEMS:CONCURRENCY"),
    (["--setting", "a=", "--point", "Sample:1:1"], "METHOD Decode or Encode"),
])
def test_settings_ab_names_a_bad_argument(argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_ab.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
