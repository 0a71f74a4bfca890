"""What other apps keep about slides and experiments, asked before a lab manager deletes them.

experiments imports none of the apps that analyse slides (histoia <- experiments <- predictions),
yet a slide still being analysed must not lose its file, and an experiment's results must go
with it. So such an app registers here from its AppConfig.ready():

- a guard: given the slides about to lose their files, a sentence saying why not now (work
  still queued or running on them), or "" when nothing stands in the way;
- a cleanup: given an experiment about to be deleted, remove the app's own rows and files for
  it, in the deleting transaction.

predictions registers both (predictions/apps.py). This module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable

_guards: list[Callable] = []
_cleanups: list[Callable] = []


def register(guard: Callable | None = None, cleanup: Callable | None = None) -> None:
    if guard is not None and guard not in _guards:
        _guards.append(guard)
    if cleanup is not None and cleanup not in _cleanups:
        _cleanups.append(cleanup)


def reasons_to_wait(slides) -> list[str]:
    """Why the files of these slides cannot be removed now (empty: they can)."""
    return [reason for guard in _guards if (reason := guard(slides))]


def clean_up(experiment) -> None:
    for cleanup in _cleanups:
        cleanup(experiment)
