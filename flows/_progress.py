"""What a running study shows on the console, and what only its log file keeps.

    ProgressBar       one updating line on a terminal: trials, spent/budget, best, ETA
    ConsoleFilter     for a console log handler: leaves out what the study already said
    LogFileFilter     for the log file: leaves out Prefect's copies of a trial's traceback
    FILE_ONLY         ``extra=`` for a record that belongs in the log file, not the console

Hydra's job logging (``flows/conf/config.yaml``) puts :class:`ConsoleFilter` on its console
handler and :class:`LogFileFilter` on its file handler (``<output_dir>/tune.log``): a failed
trial is one line on the console, and that line with the traceback in the file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import IO

__all__ = ["FILE_ONLY", "ConsoleFilter", "LogFileFilter", "ProgressBar"]

#: ``logger.info(line, extra=FILE_ONLY)``: the study printed ``line`` itself (a progress
#: line), or it is detail the console does not need (a failed trial's traceback).
FILE_ONLY = {"eeipu_console": False}

# Prefect's engine reports a failed stage task and then the failed trial subflow, each with
# a full traceback, at ERROR on these loggers; the study's one line per failed trial says
# the same (stage, exception type and message), and the log file keeps the tracebacks.
_ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class ConsoleFilter(logging.Filter):
    """Drop, on a console handler, records marked :data:`FILE_ONLY` and Prefect's engine
    reports of failed task and flow runs (ERROR records of ``prefect.task_runs`` and
    ``prefect.flow_runs``): the study says each failure once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "eeipu_console", True) is False:
            return False
        return not (record.name in _ENGINE_LOGGERS and record.levelno >= logging.ERROR)


class LogFileFilter(logging.Filter):
    """Drop, in the log file, Prefect's engine tracebacks of a failed stage task and of the
    trial subflow that failed with it (a ``StageError``): the study logs the same traceback
    once, after the failed trial's line. Prefect's one-line reports stay, and the run's
    logs on the Prefect server keep every traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in _ENGINE_LOGGERS or not record.exc_info:
            return True
        exc = record.exc_info[1]
        # By name: importing `stages` here would import Prefect when logging is configured.
        return not (record.name == "prefect.task_runs" or type(exc).__name__ == "StageError")


class ProgressBar:
    """One line on a terminal, redrawn in place: a bar of spent/budget, the trials told,
    the best objective and the time left (ETA).

    Lines printed through :meth:`write` appear above it. The ETA extrapolates this run's
    pace (budget spent, or trials told against ``max_trials``, per wall second since the
    bar started), whichever ends first.

    Example:
        >>> import io
        >>> class Tty(io.StringIO):
        ...     def isatty(self):
        ...         return True
        >>> bar = ProgressBar(Tty(), budget=10.0, clock=iter([0.0, 5.0]).__next__)
        >>> bar.render(n_trials=2, spent=5.0, best=0.5)
        '[##########----------]  50% | 2 trials | spent 5/10 | best 0.5 | ETA 0:05'
    """

    width = 20

    def __init__(
        self,
        stream: IO[str],
        budget: float,
        *,
        max_trials: int | None = None,
        spent: float = 0.0,
        n_trials: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream, self.budget, self.max_trials, self.clock = stream, budget, max_trials, clock
        self._start = (clock(), spent, n_trials)  # this run's pace is measured from here
        self._shown = ""

    @staticmethod
    def wanted(stream: IO[str], progress: bool) -> bool:
        """Whether to draw a bar on ``stream``: ``progress`` is on and it is a terminal
        (not a file, a pipe or a Prefect worker's captured output)."""
        isatty = getattr(stream, "isatty", None)
        return bool(progress and isatty is not None and isatty())

    def render(self, n_trials: int, spent: float, best: float | None) -> str:
        frac = spent / self.budget if self.budget > 0 else 1.0
        filled = min(self.width, int(self.width * frac))
        bar = "#" * filled + "-" * (self.width - filled)
        trials = f"{n_trials}" + (f"/{self.max_trials}" if self.max_trials is not None else "")
        best_s = "-" if best is None else f"{best:.6g}"
        return (
            f"[{bar}] {100 * frac:3.0f}% | {trials} trials | spent {spent:.4g}/{self.budget:.4g}"
            f" | best {best_s} | ETA {_clock_text(self._eta(n_trials, spent))}"
        )

    def _eta(self, n_trials: int, spent: float) -> float | None:
        t0, spent0, n0 = self._start
        elapsed = self.clock() - t0
        etas = []
        if spent >= self.budget or (self.max_trials is not None and n_trials >= self.max_trials):
            return 0.0
        if spent > spent0:
            etas.append(elapsed * (self.budget - spent) / (spent - spent0))
        if self.max_trials is not None and n_trials > n0:
            etas.append(elapsed * (self.max_trials - n_trials) / (n_trials - n0))
        return min(etas, default=None)

    def update(self, n_trials: int, spent: float, best: float | None) -> None:
        """Redraw the bar."""
        self._shown = self.render(n_trials, spent, best)
        self.stream.write("\r\x1b[K" + self._shown)
        self.stream.flush()

    def write(self, line: str) -> None:
        """Print ``line`` above the bar (the bar is redrawn below it)."""
        self.stream.write("\r\x1b[K" + line + "\n" + self._shown)
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar: what follows prints where it was."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = ""


def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"
