"""Tokens and batches: tokenizer loading, tokenized datasets, collators and samplers.

Texts (from :mod:`gpt2clf.data.splits`) become documents of token-id windows (:func:`encode_documents`
under a :class:`Windowing`; truncation gives one window), then padded batches that waste little
compute on padding:

* :class:`TokenizedDataset` holds the documents (and labels), and says whether the model reads a
  document's windows as one document (``chunks``);
* :class:`PaddingCollator` pads a batch to its own longest document, left or right, with an
  attention mask;
* :class:`LengthGroupedSampler` (training) groups documents of similar length while still
  shuffling, reproducibly from ``(seed, epoch)``, rank-aware for DDP;
* :func:`length_sorted_batches` (evaluation and prediction) sorts by length and cuts batches.

Nothing here prints or exits: a tokenizer that cannot be loaded raises
:class:`~gpt2clf.errors.ModelLoadError` with a one-line message.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, Sampler

from gpt2clf.config import LONG_DOCUMENT_CHOICES, PADDING_SIDES, check_batch_size
from gpt2clf.errors import ModelLoadError, first_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "LengthGroupedSampler",
    "PaddingCollator",
    "ReadingCoverage",
    "TokenizedDataset",
    "Windowing",
    "body_lengths",
    "encode_and_measure",
    "encode_documents",
    "flatten_windows",
    "index_and_labels",
    "length_sorted_batches",
    "load_tokenizer",
    "reading_coverage",
    "special_tokens_around",
    "token_lengths",
    "tokenize_texts",
    "tokens_read",
]


def load_tokenizer(name_or_path: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer with a pad token and the requested padding side.

    A tokenizer without a pad token (GPT-2) gets ``pad_token = eos_token``. Loaded
    tokenizers are cached per (name, side); each call returns its own copy, so changing
    one does not change another.

    Raises:
        ModelLoadError: the name is neither a local tokenizer folder nor on the Hub, or the
            tokenizer has neither a pad nor an end-of-text token.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    local = Path(name_or_path).expanduser()
    key = str(local.resolve()) if local.exists() else name_or_path
    return copy.deepcopy(_load_tokenizer_cached(key, padding_side))


@functools.lru_cache(maxsize=8)
def _load_tokenizer_cached(name_or_path: str, padding_side: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        reason = first_line(err)
        if Path(name_or_path).is_dir():
            raise ModelLoadError(
                f"tokenizer folder {name_or_path} could not be loaded ({reason}); it needs tokenizer.json "
                "or vocab.json+merges.txt (save_pretrained writes them), or pass another --tokenizer"
            ) from err
        raise ModelLoadError(
            f"tokenizer {name_or_path!r} was not found as a local folder or on the Hugging Face Hub "
            f"({reason}); pass --tokenizer PATH to a folder with tokenizer.json or vocab.json+merges.txt"
        ) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer {name_or_path!r} has neither a pad nor an end-of-text token; "
                                 "use a tokenizer that defines one")
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; padding is masked anyway
    tokenizer.padding_side = padding_side
    return tokenizer


def tokenize_texts(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int,
                   batch_size: int = 1000) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length``, without padding.

    Special tokens are those the tokenizer adds by default (none for GPT-2). Guarantee:
    every result has at least one token; a text that tokenizes to nothing (the empty
    string) gets ``[tokenizer.eos_token_id]`` (or the pad token id without an eos token).
    Texts with lone surrogates are encoded with those replaced by ``?``. Texts are
    encoded ``batch_size`` at a time with the fast tokenizer's batch call.
    """
    if isinstance(texts, str):
        raise TypeError("tokenize_texts takes a sequence of texts, not a single string")
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    out: list[list[int]] = []
    for batch in _encode_batches(texts, tokenizer, batch_size, truncation=True, max_length=max_length):
        for ids in batch:
            if not ids:
                if filler is None:
                    raise ValueError("a text gave no tokens and the tokenizer has no eos or pad token")
                ids = [filler]
            out.append(list(ids))
    return out


@dataclass(frozen=True)
class Windowing:
    """How documents become model inputs: one window of at most ``max_length`` tokens, or several.

    * ``truncate``: the first ``max_length`` tokens;
    * ``head-tail``: the first quarter and the last three quarters of ``max_length`` (the end of
      a post often names its topic again: signatures, closing questions);
    * ``chunks``: overlapping windows of ``max_length`` tokens every ``stride`` tokens (default
      7/8 of ``max_length``), as many as reading the first ``token_budget`` tokens takes (or at most
      ``max_chunks`` when that is set); a longer document gets that many windows spread evenly from
      its first token to its last, and the gaps between them go unread (:func:`reading_coverage`
      counts them).

    Each window gets the tokenizer's special tokens (BERT's [CLS] ... [SEP]; none for GPT-2).
    """

    max_length: int
    mode: str = "truncate"
    stride: int | None = None
    max_chunks: int | None = None
    token_budget: int = 4096

    def __post_init__(self) -> None:
        if self.mode not in LONG_DOCUMENT_CHOICES:
            raise ValueError(f"long-document mode must be one of {', '.join(LONG_DOCUMENT_CHOICES)}; "
                             f"got {self.mode!r}")
        if (self.max_length < 1 or self.token_budget < 1 or (self.max_chunks is not None and self.max_chunks < 1)
                or (self.stride is not None and self.stride < 1)):
            raise ValueError("max_length, max_chunks, token_budget and stride must be at least 1")

    @classmethod
    def of(cls, settings: Any) -> Windowing:
        """The windowing a :class:`~gpt2clf.config.Config` (or its recorded dict) describes."""
        get = settings.get if isinstance(settings, dict) else lambda name, default=None: getattr(settings, name)
        max_chunks = get("max_chunks", None)
        return cls(int(get("max_length", 512)), str(get("long_documents", "truncate") or "truncate"),
                   get("chunk_stride", None), None if max_chunks is None else int(max_chunks),
                   int(get("chunk_token_budget", 4096) or 4096))

    @property
    def windowed(self) -> bool:
        """Whether a document may become several windows (its items are lists of windows)."""
        return self.mode == "chunks"

    def stride_for(self, body: int) -> int:
        """Tokens from one window's start to the next, for windows of ``body`` tokens (special tokens aside)."""
        return self.stride or max(1, body - body // 8)

    def window_limit(self, body: int) -> int:
        """The most windows a document gets: ``max_chunks``, or as many as fit in ``token_budget`` tokens."""
        if self.max_chunks is not None:
            return self.max_chunks
        if self.token_budget <= body:
            return 1
        return (self.token_budget - body) // self.stride_for(body) + 1

    def how_to_read_more(self) -> str:
        """The setting that makes this windowing read more of a long document, for messages."""
        if not self.windowed:
            return "--long-documents chunks reads whole documents"
        if self.max_chunks is not None:  # the cap decides, whatever the token budget
            return "raise --max-chunks, or leave it unset to read up to --chunk-token-budget tokens"
        return "raise --chunk-token-budget"

    def describe(self) -> str:
        """A short human description, e.g. ``chunks of 512 tokens, up to 4096 tokens``."""
        if self.mode == "truncate":
            return f"the first {self.max_length} tokens"
        if self.mode == "head-tail":
            return f"the first and last tokens, {self.max_length} in all"
        limit = f"at most {self.max_chunks} windows" if self.max_chunks is not None else \
            f"up to {self.token_budget} tokens"
        return f"windows of {self.max_length} tokens, {limit}"


def encode_documents(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, windowing: Windowing,
                     batch_size: int = 1000) -> list[list[list[int]]]:
    """Every document as its windows under ``windowing``: a list of token lists per text.

    ``truncate`` and ``head-tail`` give one window per document (``truncate``'s is exactly
    :func:`tokenize_texts`'s); ``chunks`` gives one or more. Every window has at least one token.
    """
    return _encode(texts, tokenizer, windowing, batch_size, None)


def encode_and_measure(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, windowing: Windowing,
                       batch_size: int = 1000) -> tuple[list[list[list[int]]], ReadingCoverage]:
    """:func:`encode_documents`, and what the windows leave unread of the texts (:func:`reading_coverage`)."""
    lengths: list[int] = []
    items = _encode(texts, tokenizer, windowing, batch_size, lengths)
    prefix, suffix = special_tokens_around(tokenizer)
    return items, reading_coverage(lengths, windowing, len(prefix) + len(suffix))


def _encode(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, windowing: Windowing, batch_size: int,
            lengths: list[int] | None) -> list[list[list[int]]]:
    """The encoding of :func:`encode_documents`; appends each text's untruncated body length to ``lengths``."""
    if isinstance(texts, str):
        raise TypeError("encode_documents takes a sequence of texts, not a single string")
    prefix, suffix = special_tokens_around(tokenizer)
    body = windowing.max_length - len(prefix) - len(suffix)
    if windowing.mode == "truncate" and (lengths is None or body < 1
                                         or getattr(tokenizer, "truncation_side", "right") != "right"):
        # the tokenizer's own truncation where no lengths are wanted, or where it cannot be a slice of the body
        if lengths is not None:
            lengths += body_lengths(texts, tokenizer, batch_size)
        return [[ids] for ids in tokenize_texts(texts, tokenizer, windowing.max_length, batch_size)]
    if windowing.mode != "truncate" and body < 2:
        raise ValueError(f"max_length {windowing.max_length} leaves no room beside "
                         f"{len(prefix) + len(suffix)} special tokens")
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id

    def finish(ids: list[int]) -> list[int]:
        window = [*prefix, *ids, *suffix]
        if window:
            return window
        if filler is None:
            raise ValueError("a text gave no tokens and the tokenizer has no eos or pad token")
        return [filler]

    out: list[list[list[int]]] = []
    for batch in _encode_batches(texts, tokenizer, batch_size, truncation=False, add_special_tokens=False):
        for ids in batch:
            ids = list(ids)
            if lengths is not None:
                lengths.append(len(ids))
            if windowing.mode == "truncate":
                # tokenize_texts's result from the same untruncated pass: a tokenizer truncates after encoding,
                # so one pass gives the lengths and the windows (it halves the tokenizing of a training run)
                out.append([finish(ids[:body])])
            elif windowing.mode == "head-tail":
                head = body // 4
                out.append([finish(ids if len(ids) <= body else ids[:head] + ids[len(ids) - (body - head):])])
            else:
                out.append([finish(ids[start:start + body]) for start in window_starts(len(ids), body, windowing)])
    return out


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence (BERT: [CLS], [SEP]; GPT-2: none).

    Read off by encoding a probe text with and without them, so it works for any tokenizer
    whose single-sequence template wraps the text.
    """
    probe = "hello world"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start]), list(full[start + len(plain):])
    return [], []


def window_starts(n: int, body: int, windowing: Windowing) -> list[int]:
    """Where the windows of an ``n``-token document start (``body`` tokens each, special tokens aside)."""
    if n <= body:
        return [0]
    stride = windowing.stride_for(body)
    needed = math.ceil((n - body) / stride) + 1
    count = windowing.window_limit(body)
    if needed <= count:
        return [min(i * stride, n - body) for i in range(needed)]
    if count == 1:
        return [0]
    return [round(i * (n - body) / (count - 1)) for i in range(count)]


def tokens_read(n: int, windowing: Windowing, special_tokens: int = 0) -> int:
    """How many of a document's ``n`` tokens (special tokens aside) the model reads under ``windowing``.

    ``special_tokens`` is how many the tokenizer adds around one sequence (BERT: 2; GPT-2: 0).
    """
    body = max(1, windowing.max_length - special_tokens)
    if not windowing.windowed or n <= body:
        return min(n, body)
    read, covered_to = 0, 0
    for start in window_starts(n, body, windowing):
        stop = min(start + body, n)
        read += max(0, stop - max(start, covered_to))
        covered_to = max(covered_to, stop)
    return read


@dataclass(frozen=True)
class ReadingCoverage:
    """How much of a split's text the model reads: documents read only in part and tokens left unread."""

    documents: int
    partly_read: int
    tokens: int
    unread_tokens: int

    @property
    def unread_share(self) -> float:
        """Unread tokens as a share of all the split's tokens (special tokens aside)."""
        return self.unread_tokens / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "partly_read": self.partly_read, "tokens": self.tokens,
                "unread_tokens": self.unread_tokens, "unread_share": round(self.unread_share, 6)}

    def describe(self) -> str:
        """One phrase, e.g. ``31 of 9051 documents read in part, 2.4% of the tokens unread``."""
        return (f"{self.partly_read} of {self.documents} documents read in part, {self.unread_share:.1%} of "
                "the tokens unread")


def reading_coverage(lengths: Sequence[int], windowing: Windowing, special_tokens: int = 0) -> ReadingCoverage:
    """What ``windowing`` leaves unread of documents of ``lengths`` tokens each (untruncated, no special tokens)."""
    read = [tokens_read(n, windowing, special_tokens) for n in lengths]
    return ReadingCoverage(len(lengths), sum(r < n for r, n in zip(read, lengths, strict=True)), int(sum(lengths)),
                           int(sum(lengths) - sum(read)))


def body_lengths(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, batch_size: int = 1000) -> list[int]:
    """Untruncated token count per text without the tokenizer's special tokens (what windows are cut from)."""
    return [len(ids) for batch in _encode_batches(texts, tokenizer, batch_size, truncation=False,
                                                  add_special_tokens=False) for ids in batch]


def token_lengths(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                   batch_size: int = 1000) -> list[int]:
    """Untruncated token count per text (0 for texts that give no tokens)."""
    return [len(ids) for batch in _encode_batches(texts, tokenizer, batch_size, truncation=False)
            for ids in batch]


def _encode_batches(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, batch_size: int,
                    **kwargs: Any) -> Iterator[list[list[int]]]:
    kwargs.setdefault("add_special_tokens", True)
    for start in range(0, len(texts), batch_size):
        batch = [text if isinstance(text, str) else str(text) for text in texts[start:start + batch_size]]
        call = dict(padding=False, return_attention_mask=False, return_token_type_ids=False, verbose=False,
                    **kwargs)  # verbose=False: no length warnings
        try:
            encoded = tokenizer(batch, **call)
        except TypeError:
            # The Rust tokenizer rejects strings holding lone surrogates; replace those.
            batch = [text.encode("utf-8", "replace").decode("utf-8") for text in batch]
            encoded = tokenizer(batch, **call)
        yield encoded["input_ids"]


class TokenizedDataset(Dataset):
    """Encoded documents (and optionally labels) as a map-style dataset; every document is a list of windows.

    ``documents`` is what :func:`encode_documents` returns: one window per document under ``truncate``
    and ``head-tail``, one or more under ``chunks``. ``windowed`` (:attr:`Windowing.windowed`, given by
    whoever chose the windowing) says whether the model reads a document as several windows and
    aggregates them; an unwindowed dataset must hold exactly one window per document. The shape of the
    token lists never decides it.

    Item ``i`` says which it is by its key: ``{"input_ids": window, "index": i}`` for an unwindowed
    document, ``{"windows": [window, ...], "index": i}`` for a windowed one, plus ``"labels"`` when
    given (an int class index, or a multi-hot tuple for multi-label data). :attr:`windows` lists all
    windows in document order, :attr:`window_counts` how many each document has, and :attr:`lengths`
    every document's token count, for length-aware samplers.
    """

    def __init__(self, documents: Sequence[Sequence[list[int]]], labels: Sequence[Any] | None = None, *,
                 windowed: bool = False) -> None:
        if labels is not None and len(labels) != len(documents):
            raise ValueError(f"TokenizedDataset got {len(documents)} documents but {len(labels)} labels")
        if not windowed:
            several = next((i for i, windows in enumerate(documents) if len(windows) != 1), None)
            if several is not None:
                raise ValueError(f"document {several} has {len(documents[several])} windows but the dataset is not "
                                 "windowed; pass windowed=True (--long-documents chunks), or "
                                 "TokenizedDataset.from_token_lists for plain token lists")
        self.documents = [list(windows) for windows in documents]
        self.labels = None if labels is None else [label_value(label) for label in labels]
        self.windowed = bool(windowed)
        self.lengths: list[int] = [sum(len(window) for window in windows) for windows in self.documents]

    @classmethod
    def from_token_lists(cls, token_lists: Sequence[list[int]], labels: Sequence[Any] | None = None
                         ) -> TokenizedDataset:
        """An unwindowed dataset of one token list per document (as :func:`tokenize_texts` gives)."""
        return cls([[ids] for ids in token_lists], labels)

    @property
    def windows(self) -> list[list[int]]:
        """Every document's windows, in document order."""
        return [window for document in self.documents for window in document]

    @property
    def window_counts(self) -> list[int]:
        """How many of :attr:`windows` each document has (1 each when not windowed)."""
        return [len(document) for document in self.documents]

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = ({"windows": self.documents[i]} if self.windowed
                                else {"input_ids": self.documents[i][0]})
        item["index"] = i
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class PaddingCollator:
    """Pads a list of :class:`TokenizedDataset` items to the longest one in the batch.

    Returns long tensors ``input_ids`` (B x longest), ``attention_mask`` (1 for real tokens,
    0 for padding), ``index`` and, when the items have them, ``labels``. Padding goes on
    the right or the left (``padding_side``). Items of windowed documents (key ``windows``) give
    a row per window and a ``document_index`` tensor (see :func:`flatten_windows`).
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; load the tokenizer with load_tokenizer() "
                             "to get a pad token")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        windows, document_index = flatten_windows(features, "input_ids")
        sequences = [torch.as_tensor(w, dtype=torch.long).reshape(-1) for w in windows]
        width = max((len(s) for s in sequences), default=0)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            n = len(seq)
            if n == 0:
                continue
            cols = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            input_ids[row, cols] = seq
            attention_mask[row, cols] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **index_and_labels(features)}
        if document_index is not None:
            batch["document_index"] = document_index
        return batch


def flatten_windows(features: Sequence[dict[str, Any]], row_key: str) -> tuple[list[Any], torch.Tensor | None]:
    """The rows of a batch, and which document each row belongs to.

    An item holds one row under ``row_key`` (then the owners are None: row ``r`` is document ``r``),
    or, under ``windows``, a windowed document's rows; those become one row per window, with a
    ``document_index`` tensor naming each row's document. A batch holds one kind of item.
    """
    if not features or "windows" not in features[0]:
        return [f[row_key] for f in features], None
    rows = [window for f in features for window in f["windows"]]
    owners = [doc for doc, f in enumerate(features) for _ in f["windows"]]
    return rows, torch.tensor(owners, dtype=torch.long)


def label_value(label: Any) -> int | tuple[int, ...]:
    """A label as datasets hold it: an int class index, or a multi-hot tuple (multi-label)."""
    if isinstance(label, (tuple, list)):
        return tuple(int(v) for v in label)
    return int(label)


def index_and_labels(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The ``index`` (and, when present, ``labels``) tensors that every collator carries along.

    ``labels`` is long (B,) of class indices, or float (B, num_labels) multi-hot rows for
    multi-label data.
    """
    batch = {"index": torch.tensor([int(f["index"]) for f in features], dtype=torch.long)}
    if features and "labels" in features[0]:
        if isinstance(features[0]["labels"], tuple):
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        else:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
    return batch


class LengthGroupedSampler(Sampler[int]):
    """Dataset indices for ``DataLoader(batch_size=batch_size, sampler=...)``, grouped by length.

    The order is a pure function of ``(seed, epoch)`` (a ``torch.Generator`` seeded with
    ``seed + epoch``; the global RNG is never touched), so a resumed run replays it.

    * ``shuffle`` and ``group_by_length``: shuffle all indices, cut them into megabatches of
      ``batch_size * megabatch_factor``, sort each megabatch by length (longest first), cut
      it into batches and shuffle the order of the batches. A short last batch stays last,
      so the DataLoader's cuts fall exactly on the grouped batches.
    * ``shuffle`` only: a plain random permutation.
    * ``group_by_length`` only (evaluation): longest first, ties in index order, the order
      of :func:`length_sorted_batches`.
    * neither: the identity order.

    Distributed (``num_replicas > 1``): the sampler is rank-aware itself (turn off
    Lightning's sampler replacement). The list is padded by repeating indices (like
    ``DistributedSampler``), or trimmed with ``drop_last``, to a multiple of
    ``num_replicas * batch_size``; whole batches then go round-robin to the ranks, so every
    rank sees the same number of full, length-homogeneous batches. With one replica and no
    ``drop_last`` every index appears exactly once. ``len()`` is this rank's index count.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True,
                 group_by_length: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False, megabatch_factor: int = 50) -> None:
        check_batch_size(batch_size)
        if megabatch_factor < 1:
            raise ValueError(f"megabatch_factor must be at least 1, got {megabatch_factor}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.megabatch_factor = megabatch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def _total_size(self) -> int:
        n, chunk = len(self.lengths), self.num_replicas * self.batch_size
        if self.drop_last:
            return n // chunk * chunk
        if self.num_replicas > 1:
            return math.ceil(n / chunk) * chunk
        return n

    def __len__(self) -> int:
        return self._total_size() // self.num_replicas

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch, in order."""
        n, total, size = len(self.lengths), self._total_size(), self.batch_size
        if total == 0:
            return []
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if total > n:  # pad by repeating from the start, like DistributedSampler
            order = order.repeat(math.ceil(total / n))
        order = order[:total]
        if self.shuffle and self.group_by_length:
            megabatch = size * self.megabatch_factor
            chunks: list[torch.Tensor] = []
            for start in range(0, total, megabatch):
                mega = order[start:start + megabatch]
                by_length = torch.sort(self.lengths[mega], descending=True, stable=True).indices
                chunks.extend(mega[by_length].split(size))
            # Only the very last batch can be short; keep it last so DataLoader batches align.
            tail = [chunks.pop()] if len(chunks[-1]) < size else []
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()] + tail
        else:
            if self.group_by_length:  # deterministic evaluation order: longest first
                order = order[torch.sort(self.lengths[order], descending=True, stable=True).indices]
            chunks = list(order.split(size))
        return [chunk.tolist() for chunk in chunks[self.rank::self.num_replicas]]

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self.batches() for i in batch)


def length_sorted_batches(lengths: Sequence[int], batch_size: int, *,
                          max_tokens: int | None = None) -> list[list[int]]:
    """Indices sorted by length (longest first, ties in input order), cut into batches.

    For evaluation and prediction: similar lengths share a batch, so little is padded.
    A batch holds at most ``batch_size`` documents and, with ``max_tokens``, at most that
    many padded tokens (documents x its longest); a document longer than ``max_tokens``
    gets a batch of its own. Callers put the results back in input order (e.g. via the
    batches' ``index``).
    """
    check_batch_size(batch_size)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # sorted() is stable
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Longest first: the batch's first document sets its padded width.
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= batch_size or (len(current) + 1) * max(width, 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
