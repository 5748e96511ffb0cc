"""Noisy answers: a seeded share of answers with one value wrong or formatted differently.

A real model is sometimes wrong and often inconsistent in form ("1.299,00"
one time, 1299 the next). Learned rules must survive both: a reformatted
value must still compare equal, a wrong one must not retire good rules too
often. The noise of a page depends only on the seed and the page, so a run is
reproducible whatever the order of its calls, and asking twice about the
same page gives the same answer, as a real model at temperature 0 tends to.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EmulatorConfig


@dataclass(frozen=True)
class Noise:
    #: Share of answers with one value changed.
    rate: float = 0.0
    #: Of those, the share where it is wrong (the rest: the same value, formatted otherwise).
    wrong_share: float = 0.5
    seed: int = 0

    def apply(self, fields: dict[str, Any], page: str) -> dict[str, Any]:
        """``fields`` with the noise this page gets, if any."""
        if self.rate <= 0:
            return fields
        digest = hashlib.sha256(f"{self.seed}\0{page}".encode()).hexdigest()
        rng = random.Random(digest)
        if rng.random() >= self.rate:
            return fields
        names = [name for name, value in fields.items() if _scalar(value)]
        if not names:
            return fields
        name = rng.choice(sorted(names))
        wrong = rng.random() < self.wrong_share
        return {**fields, name: (_wrong if wrong else _reformatted)(fields[name], rng)}


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool) and value != ""


def _wrong(value: Any, rng: random.Random) -> Any:
    if isinstance(value, int | float):
        return round(float(value) * rng.choice((0.5, 1.1, 2.0)) + 1, 2)
    return rng.choice((f"{value} (refurbished)", str(value)[: max(len(str(value)) // 2, 1)]))


def _reformatted(value: Any, rng: random.Random) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value)
    return rng.choice((f"  {text} ", text.upper(), text.replace(" ", "  ")))


def noise_of(config: EmulatorConfig) -> Noise:
    """The noise an EmulatorConfig asks for."""
    return Noise(config.noise_rate, config.noise_wrong_share, config.seed)
