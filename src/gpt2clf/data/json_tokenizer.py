"""A GPT-2 or MPNet tokenizer read straight from a model folder's ``tokenizer.json``, for fast start-up.

``transformers.AutoTokenizer`` costs about 1.5 s to import and build on a 2-core CPU; the
Rust ``tokenizers`` library that does the actual work loads the same ``tokenizer.json`` in
about 0.1 s. :class:`JsonTokenizer` wraps it with the small part of transformers' tokenizer
API that :mod:`gpt2clf.data.batching` uses (calling it on texts, ``pad_token_id``,
``eos_token_id``, ``padding_side``), so prediction can skip ``transformers`` altogether.

Guarantees:

* :func:`load_json_tokenizer` returns a tokenizer only for the tokenizer classes whose whole
  behaviour is in ``tokenizer.json``: GPT-2's (``GPT2Tokenizer``/``GPT2TokenizerFast``, when
  its template adds no special tokens to a single text) and MPNet's (``MPNetTokenizer``/
  ``MPNetTokenizerFast``: lower-casing, WordPiece, ``<s> ... </s>``); None otherwise, and the
  caller then uses ``AutoTokenizer``.
* Token ids and offsets equal ``AutoTokenizer``'s for the same folder (tested on real 20
  Newsgroups posts), truncation included: the text is cut to leave room for the template's
  special tokens, as the ``tokenizers`` library does when transformers asks it to truncate.
* Special tokens come from ``tokenizer_config.json``; a missing pad token is the eos token,
  as :func:`gpt2clf.data.batching.load_tokenizer` sets it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["JsonTokenizer", "load_json_tokenizer"]

_GPT2_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast")
# Tokenizers whose template wraps a text in special tokens, all of it written in tokenizer.json.
_TEMPLATE_CLASSES = ("MPNetTokenizer", "MPNetTokenizerFast")


class JsonTokenizer:
    """``tokenizers.Tokenizer`` with the calling convention of a transformers tokenizer (a subset)."""

    def __init__(self, backend: Any, *, eos_token: str | None, pad_token: str | None,
                 padding_side: str = "right", name_or_path: str = "") -> None:
        self.backend = backend
        self.eos_token = eos_token
        self.pad_token = pad_token or eos_token
        self.padding_side = padding_side
        self.name_or_path = name_or_path
        self.eos_token_id = None if eos_token is None else backend.token_to_id(eos_token)
        self.pad_token_id = None if self.pad_token is None else backend.token_to_id(self.pad_token)

    is_fast = True  # it is the Rust tokenizer: character offsets are available

    def __call__(self, text: str | Sequence[str], *, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, padding: bool = False, return_offsets_mapping: bool = False,
                 **ignored: Any) -> dict[str, Any]:
        """``{"input_ids": ids}`` for one text, or a list of id lists for a list of texts (no padding);
        with ``return_offsets_mapping`` also each token's ``(start, end)`` characters as ``offset_mapping``."""
        if padding:
            raise ValueError("JsonTokenizer does not pad; gpt2clf's collators do")
        single = isinstance(text, str)
        # What tokenizers does when asked to truncate, without changing the shared backend's state
        # (the server tokenizes on several threads): cut the text to leave room for the special
        # tokens, then add them. A max_length below their count is ignored there, and so here.
        encodings = self.backend.encode_batch([text] if single else list(text), add_special_tokens=False)
        special = self.backend.num_special_tokens_to_add(False) if add_special_tokens else 0
        if truncation and max_length is not None and max_length >= special:
            for encoding in encodings:
                encoding.truncate(max_length - special)
        if special:
            encodings = [self.backend.post_process(encoding, None, True) for encoding in encodings]
        ids = [encoding.ids for encoding in encodings]
        out: dict[str, Any] = {"input_ids": ids[0] if single else ids}
        if return_offsets_mapping:
            offsets = [encoding.offsets for encoding in encodings]
            out["offset_mapping"] = offsets[0] if single else offsets
        return out

    def decode(self, ids: Sequence[int], **ignored: Any) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


def load_json_tokenizer(folder: str | Path, padding_side: str = "right") -> JsonTokenizer | None:
    """The folder's GPT-2 or MPNet tokenizer as a :class:`JsonTokenizer`, or None when it is not one this can read."""
    folder = Path(folder)
    try:
        settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        kind = settings.get("tokenizer_class")
        if kind not in (*_GPT2_CLASSES, *_TEMPLATE_CLASSES) or settings.get("add_bos_token") \
                or settings.get("add_eos_token"):
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:
        return None
    backend.no_truncation()
    backend.no_padding()
    probe = "hello world"
    if kind in _GPT2_CLASSES and backend.encode(probe).ids != backend.encode(probe, add_special_tokens=False).ids:
        return None  # a GPT-2 template that adds special tokens: leave it to transformers
    eos, pad = _token(settings.get("eos_token")), _token(settings.get("pad_token"))
    tokenizer = JsonTokenizer(backend, eos_token=eos, pad_token=pad, padding_side=padding_side,
                              name_or_path=str(folder))
    if tokenizer.pad_token_id is None:
        return None
    return tokenizer


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
