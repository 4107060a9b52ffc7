"""Errors the user can act on.

Every problem with the user's input (a corrupt file, CT and PET that do not
overlap, a label grid that differs from the CT, a wrong model file...) is raised
as :class:`HecktorInputError` with one sentence that says what is wrong and,
where possible, what to do. The CLI prints that sentence and exits non-zero
without a traceback; the napari reader and widgets show it as a notification.
"""

from __future__ import annotations


class HecktorInputError(Exception):
    """Bad user input: the message is meant to be shown as is, on one line.

    Deliberately not a ``ValueError``: napari's writer dispatch swallows ValueErrors
    (it reads them as "this writer does not apply"), which would hide the message.
    """
