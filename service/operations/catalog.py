"""Every operation the server offers, in one table: the fronts serve exactly these."""

from __future__ import annotations

from service.operations.codec import DECODE, DENOISE, ENCODE, SAMPLE
from service.operations.interpolate import INTERPOLATE
from service.operations.score import SCORE
from service.operations.spec import Operation

OPERATIONS: tuple[Operation, ...] = (ENCODE, DECODE, SAMPLE, DENOISE, SCORE, INTERPOLATE)
