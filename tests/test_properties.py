"""Property-based test: any text survives text -> tokens -> batch -> logits.

Arbitrary Unicode (surrogates, control characters, emoji, right-to-left marks), empty and
whitespace-only strings, and very long strings: nothing crashes, shapes and masks are right,
probabilities are finite and sum to 1, and a document's logits do not depend on its batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2clf.data.batching import PaddingCollator, load_tokenizer, tokenize_texts
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

MAX_LENGTH = 48

texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=50),  # control characters
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=80),  # surrogates included
    st.just(""),
    st.just("   \n\t  "),
    st.integers(min_value=1, max_value=200).map(lambda n: "word " * n),  # longer than MAX_LENGTH
    st.text(alphabet="\u200f\u202e\ufeff\U0001f600\u0301", max_size=40),
)


@pytest.fixture(scope="module")
def classifier(tiny_backbone: Path) -> GPT2Classifier:
    torch.manual_seed(0)
    spec = ClassifierSpec(num_labels=4, n_embed=32, n_heads=2, n_blocks=1)
    return GPT2Classifier.from_backbone(str(tiny_backbone), spec).eval()


@pytest.fixture(scope="module")
def gpt2_tokenizer(tokenizer_path: Path):
    return load_tokenizer(str(tokenizer_path))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(texts, min_size=1, max_size=5), padding_side=st.sampled_from(["right", "left"]))
def test_any_text_gives_well_formed_batches_and_logits(batch: list[str], padding_side: str, classifier,
                                                       gpt2_tokenizer) -> None:
    token_lists = tokenize_texts(batch, gpt2_tokenizer, MAX_LENGTH)
    assert len(token_lists) == len(batch)
    assert all(1 <= len(ids) <= MAX_LENGTH for ids in token_lists)
    assert all(0 <= i < len(gpt2_tokenizer) for ids in token_lists for i in ids)

    collate = PaddingCollator(gpt2_tokenizer.pad_token_id, padding_side)
    features = collate([{"input_ids": ids, "index": i} for i, ids in enumerate(token_lists)])
    longest = max(len(ids) for ids in token_lists)
    assert features["input_ids"].shape == (len(batch), longest)
    assert features["attention_mask"].sum(dim=1).tolist() == [len(ids) for ids in token_lists]
    for row, ids in zip(features["attention_mask"], token_lists, strict=True):
        real = row.nonzero().flatten()
        # the real tokens are one contiguous run at the chosen side
        assert real.numel() == len(ids) and (real[-1] - real[0] + 1) == len(ids)
        assert (real[0] == 0) if padding_side == "right" else (real[-1] == longest - 1)

    with torch.inference_mode():
        logits = classifier(features["input_ids"], features["attention_mask"])
        assert logits.shape == (len(batch), 4)
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(torch.softmax(logits, -1).sum(-1), torch.ones(len(batch)))
        alone = classifier(torch.tensor([token_lists[0]]), torch.ones(1, len(token_lists[0]), dtype=torch.long))
    torch.testing.assert_close(alone[0], logits[0], atol=1e-5, rtol=1e-4)
