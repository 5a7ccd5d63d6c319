"""A progress bar on stderr for the commands that read many documents (evaluate, predict).

:class:`ProgressBar` is a :data:`gpt2clf.infer.runtime.Progress` callback: the library reports
``progress(done, total)`` after each batch and prints nothing itself; this draws it with tqdm, on
stderr only, so stdout keeps only the results. It appears only after :data:`PROGRESS_DELAY_S`
seconds of reading (shorter runs show none), and is redrawn at most every 30 s when stderr is a log.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["PROGRESS_DELAY_S", "ProgressBar"]

# The bar appears once the model has read documents for this many seconds (shorter runs show none).
PROGRESS_DELAY_S = 5.0


class ProgressBar:
    """A tqdm bar on stderr, fed by a library's ``progress(done, total)`` callback (total None: a stream).

    The bar is made at the first report, so its clock, rate and time left leave out model and
    data loading; it appears only after :data:`PROGRESS_DELAY_S`. Redrawn at most every 30 s
    when stderr is not a terminal (a log), as training's bars are. :meth:`echo` prints a result
    line on stdout, first clearing the bar when both streams are the terminal.
    """

    def __init__(self, description: str, *, enabled: bool = True) -> None:
        self.description, self.enabled = description, enabled
        self.bar: Any = None
        self.cleared = False
        self.shared_terminal = enabled and sys.stdout.isatty() and sys.stderr.isatty()

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=self.description, total=total, unit=" docs", delay=PROGRESS_DELAY_S, file=sys.stderr,
                            mininterval=0.1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
        if self.bar.update(done - self.bar.n):
            self.cleared = False

    def echo(self, line: str) -> None:
        """Print ``line`` on stdout without tearing the bar."""
        if self.shared_terminal and self.bar is not None and not self.cleared:
            self.bar.clear()
            self.cleared = True
        print(line, flush=False)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
