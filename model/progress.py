"""Progress of long steps (decoding footage, an epoch's batches, scoring calibration frames).

Model code never decides whether a bar is drawn: its long loops take a `Progress`, a wrapper
`progress(items, total=..., desc=..., unit=...)` that yields the items unchanged. `silent` (the
default) draws nothing; `bars()` is what the CLI passes: a tqdm bar with a rate and an ETA on stderr
(on a terminal only, so logs and captured output stay clean). A wrapper may return an object with
tqdm's `set_postfix(dict)`; the trainer then shows its running losses there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def __call__(
        self, items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Iterable[T]: ...


def silent(items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """No progress display: the items, unchanged."""
    return iter(items)


def bars(enabled: bool = True, leave: bool = False) -> Progress:
    """tqdm bars on stderr with an ETA (`enabled=False`, e.g. `--quiet`: `silent`).

    `leave=False` clears each bar when its step ends, so an epoch's summary line stays readable.
    """
    if not enabled:
        return silent
    from tqdm import tqdm

    def wrap(items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it") -> Iterable[T]:
        # disable=None: draw only on a terminal (a log file would get one line per refresh).
        return tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave,
                    dynamic_ncols=True, disable=None)

    return wrap
