"""The ``serve`` extra: one error for a missing FastAPI, uvicorn, pydantic or prometheus-client.

Every serve module that needs them imports them under ``try``/``except ImportError`` and raises
:func:`missing_extra` instead, so ``gpt2clf serve`` without the extra prints one line saying how to
install it (a :class:`~gpt2clf.errors.UserError`), whichever module happened to be imported first.
:mod:`gpt2clf.serve.microbatch` needs none of them.
"""

from __future__ import annotations

from gpt2clf.errors import UserError

__all__ = ["MissingExtraError", "missing_extra"]


class MissingExtraError(UserError, ImportError):
    """An optional dependency group (an 'extra') is not installed."""


def missing_extra(err: ImportError) -> MissingExtraError:
    """The one-line error for ``err``, an import of the serve extra that failed."""
    return MissingExtraError(f"serving needs FastAPI, uvicorn and prometheus-client ({err.name} is missing): "
                             'pip install "gpt2clf[serve]"')
