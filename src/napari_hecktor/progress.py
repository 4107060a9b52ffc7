"""Progress and cancellation for long work, shared by the CLI, the widgets and the batch runner.

Long jobs (inference, CRF, radiomics, training) are generators: they ``yield``
:class:`Progress` between steps and ``return`` their result. napari runs such a
generator in a ``thread_worker`` (``yielded`` drives the progress bar, ``quit()``
cancels between steps, ``returned`` delivers the result); the CLI and the batch
runner drive it with :func:`run_to_end`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps finished; ``message`` says what is running."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressJob = Generator[Progress, None, T]


def run_to_end(
    job: Generator[Progress, None, T],
    callback: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> T:
    """Drive a progress generator to completion and return its result.

    ``callback`` sees every :class:`Progress`; when ``should_stop()`` turns true the job
    is closed between two steps and :class:`Cancelled` is raised.
    """
    while True:
        try:
            progress = next(job)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(progress)
        if should_stop is not None and should_stop():
            job.close()
            raise Cancelled(progress.message or "cancelled")


class Cancelled(Exception):
    """A long job was stopped by the user between two steps."""
