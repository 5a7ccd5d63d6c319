"""How long a training run spends tokenizing: one untruncated pass against the two passes it used to make.

A training run needs each split's token windows and, for the "what goes unread" warning, each text's
untruncated length. ``encode_and_measure`` now slices the windows from the one untruncated encoding it
measures; before, it encoded every text twice (``body_lengths``, then ``tokenize_texts``). Both are timed
here on the same texts, and the results are checked to be equal.

Usage::

    python benchmarks/tokenize_speed.py --data-dir ../shared/data/20news-bydate.tar.gz \\
        --tokenizer ../shared/gpt2-tokenizer --max-length 128 --rounds 2
"""

from __future__ import annotations

import argparse
import platform
import time

from gpt2clf.data.batching import Windowing, body_lengths, encode_and_measure, load_tokenizer, tokenize_texts
from gpt2clf.data.newsgroups import load_20newsgroups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the 20 Newsgroups bydate archive or folder")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder or hub id")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.tokenizer)
    texts = list(load_20newsgroups(args.split, args.data_dir).texts)
    print(f"{len(texts)} posts ({args.split}), max_length {args.max_length}, {platform.processor() or 'CPU'}")
    for round_ in range(1, args.rounds + 1):
        start = time.perf_counter()
        lengths = body_lengths(texts, tokenizer)
        windows = tokenize_texts(texts, tokenizer, args.max_length)
        two_passes = time.perf_counter() - start
        start = time.perf_counter()
        items, coverage = encode_and_measure(texts, tokenizer, Windowing(args.max_length, "truncate"))
        one_pass = time.perf_counter() - start
        assert items == [[ids] for ids in windows] and coverage.tokens == sum(lengths), "the two ways disagree"
        print(f"round {round_}: two passes {two_passes:.1f} s, one pass {one_pass:.1f} s "
              f"({two_passes / one_pass:.2f}x); {coverage.tokens:,} tokens")


if __name__ == "__main__":
    main()
