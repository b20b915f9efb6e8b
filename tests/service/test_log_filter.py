"""grpc's reports of calls whose client left are one rate-limited line, other records pass."""

import logging

from service.transport.log_filter import ClientNoiseFilter


def _record(message: str, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "x.py", 1, message, (), info)


def test_client_caused_errors_become_one_warning_then_are_counted() -> None:
    noise = ClientNoiseFilter()
    first = _record("Unexpected error", RuntimeError("Failed 'execute_batch': ExecuteBatchError"))
    assert noise.filter(first) and first.levelname == "WARNING" and first.exc_info is None
    assert not noise.filter(_record("ExecuteBatchError again"))


def test_other_grpc_errors_pass_untouched() -> None:
    record = _record("Server stopped unexpectedly", ValueError("boom"))
    assert ClientNoiseFilter().filter(record) and record.levelname == "ERROR"
