"""Fast start-up: a GPT-2 model folder predicts without importing transformers, with the same results.

``Predictor.from_folder`` builds a plain GPT-2 backbone with :mod:`gpt2clf.model.gpt2_body` and reads
a GPT-2 tokenizer with :mod:`gpt2clf.data.json_tokenizer`. These tests check that both give what
transformers' own classes give, that anything else still goes through transformers, and that
a one-text ``predict`` process indeed never imports transformers. No timings are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, GPT2Config, GPT2Model

from gpt2clf.data.batching import Windowing, encode_documents, load_tokenizer, tokenize_texts
from gpt2clf.data.json_tokenizer import JsonTokenizer, load_json_tokenizer
from gpt2clf.data.newsgroups import load_20newsgroups
from gpt2clf.infer.predictor import Predictor
from gpt2clf.model.backbone import BackboneAdapter, backbone_from_config
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
from gpt2clf.model.gpt2_body import GPT2Body, native_gpt2_reason

REPO = Path(__file__).resolve().parents[1]


def saved_config(config: GPT2Config) -> dict:
    return json.loads(config.to_json_string(use_diff=False))


def padded_batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 300, (4, 12), generator=generator)
    mask = torch.ones(4, 12, dtype=torch.long)
    for row, n in enumerate((12, 7, 3, 1)):
        if side == "right":
            mask[row, n:] = 0
        else:
            mask[row, :12 - n] = 0
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
def test_native_gpt2_body_gives_transformers_hidden_states(side: str) -> None:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_head=4, n_layer=3, n_positions=64, vocab_size=300, bos_token_id=1,
                        eos_token_id=1)
    reference = GPT2Model(config).eval()
    native = GPT2Body(saved_config(config))
    native.load_state_dict(reference.state_dict(), strict=True)
    native.eval()
    ids, mask = padded_batch(side)
    ours, theirs = BackboneAdapter(native), BackboneAdapter(reference)
    real = mask.bool()
    with torch.no_grad():
        full = ours.hidden_states(ids, mask)
        assert torch.isfinite(full).all()  # padded queries attend to themselves: no NaN to leak
        assert torch.allclose(full[real], theirs.hidden_states(ids, mask)[real], atol=1e-5)
        lower = ours.hidden_states(ids, mask, num_layers=2)
        assert torch.allclose(lower[real], theirs.hidden_states(ids, mask, num_layers=2)[real], atol=1e-5)
        assert torch.allclose(ours.from_layer(lower, mask, 2)[real], full[real], atol=1e-5)
        unpadded = torch.ones_like(mask)
        assert torch.allclose(ours.hidden_states(ids, unpadded), theirs.hidden_states(ids, unpadded), atol=1e-5)


@pytest.mark.parametrize("change", [
    {"scale_attn_by_inverse_layer_idx": True},
    {"add_cross_attention": True},
    {"activation_function": "relu"},
])
def test_gpt2_options_the_native_body_lacks_go_through_transformers(change: dict) -> None:
    config = saved_config(GPT2Config(n_embd=32, n_head=2, n_layer=1, n_positions=32, vocab_size=100, **change))
    assert native_gpt2_reason(config) is not None
    built = backbone_from_config(config, origin="test", native=True)
    assert not isinstance(built, GPT2Body)
    assert type(built).__name__ == "GPT2Model"


def test_other_architectures_go_through_transformers() -> None:
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    values = json.loads(config.to_json_string(use_diff=False))
    assert "bert" in native_gpt2_reason(values)
    assert type(backbone_from_config(values, origin="test", native=True)).__name__ == "BertModel"


def test_json_tokenizer_gives_autotokenizers_ids_on_real_posts(tiny_model_dir: Path, archive_path: Path) -> None:
    fast = load_json_tokenizer(tiny_model_dir)
    assert isinstance(fast, JsonTokenizer)
    slow = load_tokenizer(str(tiny_model_dir))
    texts = [*load_20newsgroups("test", archive_path).texts[:150], "", " ", "caf\u00e9 \U0001f600", "lone \ud800 half"]
    for max_length in (16, 256):
        assert tokenize_texts(texts, fast, max_length) == tokenize_texts(texts, slow, max_length)
    chunks = Windowing(32, "chunks", max_chunks=3)
    assert encode_documents(texts[:40], fast, chunks) == encode_documents(texts[:40], slow, chunks)
    assert (fast.pad_token_id, fast.eos_token_id) == (slow.pad_token_id, slow.eos_token_id)
    for text in texts[:20]:
        assert fast(text, return_offsets_mapping=True)["offset_mapping"] == \
            [tuple(span) for span in slow(text, return_offsets_mapping=True)["offset_mapping"]]
    ids = fast("Hello, world")["input_ids"]
    assert fast.decode(ids) == slow.decode(ids, clean_up_tokenization_spaces=False) == "Hello, world"


def test_json_tokenizer_declines_what_it_does_not_read(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert load_json_tokenizer(tmp_path) is None  # no files
    settings = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    folder = tmp_path / "bert-like"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "BertTokenizer"}))
    assert load_json_tokenizer(folder) is None
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "add_bos_token": True}))
    assert load_json_tokenizer(folder) is None


@pytest.mark.parametrize("side", ["right", "left"])
def test_fast_start_predictor_gives_the_same_probabilities(tiny_backbone: Path, tokenizer, archive_path: Path,
                                                           tmp_path: Path, side: str) -> None:
    torch.manual_seed(0)
    spec = ClassifierSpec(num_labels=4, label_names=list("abcd"), n_embed=32, n_heads=2, n_blocks=1,
                          pooling="mean")
    model = GPT2Classifier.from_backbone(str(tiny_backbone), spec)
    torch.nn.init.normal_(model.head[1].weight, std=1.0)  # O(1) logits, so the tolerance means something
    folder = tmp_path / "model"
    model.save_pretrained(folder, tokenizer=tokenizer,
                          extra={"config": {"max_length": 64, "padding_side": side}})
    texts = [*load_20newsgroups("test", archive_path).texts[:24], "short", ""]
    fast = Predictor.from_folder(folder, precision="32-true")
    slow = Predictor.from_folder(folder, precision="32-true", fast_start=False)
    assert isinstance(fast.model.backbone, GPT2Body) and isinstance(fast.tokenizer, JsonTokenizer)
    assert not isinstance(slow.model.backbone, GPT2Body) and not isinstance(slow.tokenizer, JsonTokenizer)
    assert fast.tokenizer.padding_side == side
    got, want = fast.predict_proba(texts), slow.predict_proba(texts)
    assert torch.allclose(got, want, atol=1e-5)
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    # A model loaded the fast way saves a folder that loads the usual way, unchanged.
    fast.model.save_pretrained(tmp_path / "again", tokenizer=slow.tokenizer, extra={"config": {"max_length": 64}})
    again = Predictor.from_folder(tmp_path / "again", precision="32-true", fast_start=False)
    assert torch.allclose(again.predict_proba(texts[:4]), want[:4], atol=1e-6)


def test_a_one_text_predict_process_never_imports_transformers(tiny_model_dir: Path) -> None:
    probe = (
        "import sys, json\n"
        "from gpt2clf.cli import main\n"
        "code = main(['predict', sys.argv[1], 'My X server crashes', '--json'])\n"
        "heavy = sorted(m for m in ('transformers', 'lightning', 'sklearn', 'scipy') if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", probe, str(tiny_model_dir)], capture_output=True, text=True,
                          env=env, timeout=300)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, done.stderr
    prediction = json.loads(done.stdout.strip().splitlines()[-1])
    assert prediction["label"] in {"a", "b", "c"}
