"""Tests of gpt2clf.model.classifier over tiny randomly initialised backbones (no downloads)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    MPNetConfig,
    MPNetModel,
    RobertaConfig,
    RobertaModel,
)

from gpt2clf.errors import ConfigError, ModelLoadError
from gpt2clf.model.classifier import (
    AttentionPooling,
    Block,
    ClassifierSpec,
    GPT2Classifier,
    SelfAttention,
    pool_last_token,
    pool_mean,
    position_ids_from_mask,
)
from tolerances import assert_close_at_scale

VOCAB = 100
PAD = 0
LABELS = ["alpha", "beta", "gamma"]
POOLINGS = ["last", "mean", "attention"]


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 saved like a hub checkpoint."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=64,
                        bos_token_id=1, eos_token_id=1)
    folder = tmp_path_factory.mktemp("gpt2")
    GPT2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT encoder, 48 wide (so a 32-wide classifier needs an input projection)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=PAD)
    folder = tmp_path_factory.mktemp("bert")
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoBERTa: its learned positions start at pad id + 1 (padding_idx), unlike BERT's."""
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    folder = tmp_path_factory.mktemp("roberta")
    RobertaModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MPNet (all-mpnet-base-v2's architecture): learned positions from pad id + 1 like RoBERTa's,
    plus a relative position bias in every attention layer."""
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2)
    folder = tmp_path_factory.mktemp("mpnet")
    MPNetModel(config).save_pretrained(folder)
    return folder


FAMILIES = ["gpt2", "bert", "roberta", "mpnet"]


def make_spec(**changes) -> ClassifierSpec:
    values = dict(num_labels=3, label_names=list(LABELS), n_embed=32, n_heads=2, n_blocks=2,
                  dropout=0.1, pooling="last")
    values.update(changes)
    return ClassifierSpec(**values)


def make_model(folder: Path, seed: int = 0, **spec_changes) -> GPT2Classifier:
    torch.manual_seed(seed)
    return GPT2Classifier.from_backbone(str(folder), make_spec(**spec_changes)).eval()


def pad_batch(docs: list[list[int]], side: str, pad_id: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to one length on ``side``; returns input_ids and attention_mask."""
    width = max(len(d) for d in docs)
    ids, mask = [], []
    for doc in docs:
        fill = width - len(doc)
        if side == "right":
            ids.append(doc + [pad_id] * fill)
            mask.append([1] * len(doc) + [0] * fill)
        else:
            ids.append([pad_id] * fill + doc)
            mask.append([0] * fill + [1] * len(doc))
    return torch.tensor(ids), torch.tensor(mask)


SHORT = [5, 17, 42, 8, 23]
LONG = [9, 31, 7, 64, 12, 55, 3, 88, 41]


# --- helpers and pooling ----------------------------------------------------------------------
def test_position_ids_from_mask_left_and_right() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]])
    assert torch.equal(position_ids_from_mask(mask), expected)


def test_pool_last_token_left_and_right_padding() -> None:
    hidden = torch.arange(2 * 5, dtype=torch.float).view(2, 5, 1).repeat(1, 1, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])  # a gap after the end: still the last 1
    assert pool_last_token(hidden, right)[:, 0].tolist() == [2.0, 9.0]
    assert pool_last_token(hidden, left)[:, 0].tolist() == [4.0, 8.0]


def test_pool_mean_and_attention_pooling_ignore_pads() -> None:
    hidden = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1, 1:].mean(0)])
    poisoned = hidden.clone()
    poisoned[0, 2:] = float("nan")
    poisoned[1, 0] = 1e6
    assert torch.allclose(pool_mean(poisoned, mask), expected, atol=1e-6)
    pooler = AttentionPooling(6)
    assert torch.allclose(pooler(poisoned, mask), pooler(hidden, mask), atol=1e-6)
    assert not pooler(poisoned, mask).isnan().any()


def test_self_attention_masks_padded_keys_and_never_makes_nan() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, dropout=0.0).eval()
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    out = attn(x, mask)
    changed = x.clone()
    changed[0, :2] = torch.randn(2, 16) * 100  # new pad states
    assert not out.isnan().any()
    assert torch.allclose(attn(changed, mask)[0, 2:], out[0, 2:], atol=1e-5)
    # non-causal: the first real token reads the later ones
    later = x.clone()
    later[0, 5] += 1.0
    assert not torch.allclose(attn(later, mask)[0, 2], out[0, 2])
    block = Block(16, 4).eval()
    assert block(x, mask).shape == (1, 6, 16)


# --- spec ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [dict(n_embed=30, n_heads=4), dict(pooling="max"), dict(label_names=["a", "b"]), dict(num_labels=0,
     label_names=[]), dict(dropout=1.0)],
)
def test_spec_rejects_bad_architecture(changes) -> None:
    with pytest.raises(ConfigError):
        make_spec(**changes)


def test_spec_default_label_names() -> None:
    assert ClassifierSpec(num_labels=3).label_names == ["0", "1", "2"]


# --- forward and padding invariance -------------------------------------------------------------
@pytest.mark.parametrize("pooling", POOLINGS)
def test_output_shape(gpt2_dir: Path, pooling: str) -> None:
    model = make_model(gpt2_dir, pooling=pooling)
    ids, mask = pad_batch([SHORT, LONG, LONG[:2]], "right")
    assert model(ids, mask).shape == (3, 3)
    assert model(ids).shape == (3, 3)  # no mask: every token is real


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_logits_do_not_depend_on_padding(request: pytest.FixtureRequest, family: str, pooling: str) -> None:
    model = make_model(request.getfixturevalue(f"{family}_dir"), pooling=pooling)
    with torch.no_grad():
        alone = model(torch.tensor([SHORT]), torch.ones(1, len(SHORT), dtype=torch.long))[0]
        long_alone = model(torch.tensor([LONG]), torch.ones(1, len(LONG), dtype=torch.long))[0]
        for side in ("right", "left"):
            for pad_id in (PAD, 77):
                ids, mask = pad_batch([SHORT, LONG], side, pad_id)
                logits = model(ids, mask)
                assert torch.allclose(logits[0], alone, atol=1e-5), (side, pad_id)
                assert torch.allclose(logits[1], long_alone, atol=1e-5), (side, pad_id)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padded_positions_change_nothing(request: pytest.FixtureRequest, family: str, pooling: str) -> None:
    model = make_model(request.getfixturevalue(f"{family}_dir"), pooling=pooling)
    for side in ("right", "left"):
        ids, mask = pad_batch([SHORT, LONG], side)
        with torch.no_grad():
            reference = model(ids, mask)
            other_ids = ids.masked_fill(mask == 0, 99)
            assert torch.allclose(model(other_ids, mask), reference, atol=1e-5)
            hidden = model.backbone_hidden_states(ids, mask)
            poisoned = hidden.clone()
            poisoned[0, mask[0] == 0] = torch.randn_like(poisoned[0, mask[0] == 0]) * 1e3
            assert torch.allclose(model.classify_hidden_states(hidden, mask), reference, atol=1e-5)
            poisoned_logits = model.classify_hidden_states(poisoned, mask)
            assert torch.allclose(poisoned_logits, reference, atol=1e-5)
            poisoned[0, mask[0] == 0] = float("nan")
            assert torch.allclose(model.classify_hidden_states(poisoned, mask), reference, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_needs_position_ids(request: pytest.FixtureRequest, family: str) -> None:
    """Guard: each backbone really is position-sensitive, so the invariance above is earned."""
    model = make_model(request.getfixturevalue(f"{family}_dir"))
    ids, mask = pad_batch([SHORT, LONG], "left")
    with torch.no_grad():
        ours = model.backbone_hidden_states(ids, mask)
        shifted = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert not torch.allclose(ours[real], shifted[real], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_position_ids_follow_each_backbones_own_numbering(request: pytest.FixtureRequest, family: str) -> None:
    """Ours equal the backbone's default where its default is right (no padding, or right padding
    with its own pad id), and a padded document's states equal its unpadded ones (left and right)."""
    model = make_model(request.getfixturevalue(f"{family}_dir"))
    pad_id = model.backbone.config.pad_token_id if model.backbone.config.pad_token_id is not None else PAD
    with torch.no_grad():
        for doc in (SHORT, LONG):
            ids, mask = torch.tensor([doc]), torch.ones(1, len(doc), dtype=torch.long)
            alone = model.backbone_hidden_states(ids, mask)[0]
            own = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state[0]
            assert torch.allclose(alone, own, atol=1e-5)
            for side in ("right", "left"):
                padded_ids, padded_mask = pad_batch([SHORT, LONG], side, pad_id)
                row = 0 if doc is SHORT else 1
                states = model.backbone_hidden_states(padded_ids, padded_mask)[row][padded_mask[row].bool()]
                assert torch.allclose(states, alone, atol=1e-5), side
        ids, mask = pad_batch([SHORT, LONG], "right", pad_id)
        own = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(model.backbone_hidden_states(ids, mask)[mask.bool()], own[mask.bool()], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_max_positions_is_the_longest_input_that_runs(request: pytest.FixtureRequest, family: str) -> None:
    """RoBERTa and MPNet have 66 position embeddings but number tokens from 2: 64 fit, as for the others."""
    model = make_model(request.getfixturevalue(f"{family}_dir"))
    assert model.adapter.max_positions == 64
    with torch.no_grad():
        assert model(torch.full((1, 64), 5)).shape == (1, 3)
        with pytest.raises((IndexError, RuntimeError)):  # one more is out of range: the bound is tight
            model(torch.full((1, 65), 5))


def test_dropout_only_in_training(gpt2_dir: Path) -> None:
    model = make_model(gpt2_dir, dropout=0.5)
    ids, mask = pad_batch([SHORT, LONG], "right")
    with torch.no_grad():
        assert torch.equal(model(ids, mask), model(ids, mask))
        model.train()
        assert not torch.allclose(model(ids, mask), model(ids, mask))


# --- trainable parameters -----------------------------------------------------------------
def _grads(model: GPT2Classifier) -> dict[str, bool]:
    model.zero_grad(set_to_none=True)
    ids, mask = pad_batch([SHORT, LONG], "left")
    model.train()
    model(ids, mask).sum().backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def _ours(name: str) -> bool:
    return not name.startswith("backbone.")


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_gradients_reach_backbone_when_unfrozen(gpt2_dir: Path, pooling: str) -> None:
    model = make_model(gpt2_dir, pooling=pooling)
    model.set_trainable("none")
    grads = _grads(model)
    assert grads["backbone.wte.weight"] and grads["backbone.h.0.attn.c_attn.weight"]
    assert all(has for name, has in grads.items() if _ours(name))


def test_frozen_backbone_gets_no_gradients(gpt2_dir: Path) -> None:
    model = make_model(gpt2_dir)
    model.set_trainable("backbone")
    grads = _grads(model)
    assert not any(has for name, has in grads.items() if not _ours(name))
    assert all(has for name, has in grads.items() if _ours(name))
    counts = model.parameter_counts()
    assert counts["trainable"] == counts["blocks"] + counts["head"]
    assert counts["total"] == counts["backbone"] + counts["blocks"] + counts["head"]


def test_train_top_layers(gpt2_dir: Path) -> None:
    model = make_model(gpt2_dir)
    model.set_trainable("backbone", train_top_layers=1)
    grads = _grads(model)
    backbone = {name: has for name, has in grads.items() if not _ours(name)}
    top = {name for name in backbone if name.startswith(("backbone.h.1.", "backbone.ln_f."))}
    assert top and all(backbone[name] for name in top)
    assert not any(has for name, has in backbone.items() if name not in top)
    assert all(has for name, has in grads.items() if _ours(name))
    assert len(model.backbone_layers()) == 2
    model.set_trainable(train_top_layers=0)
    assert not any(p.requires_grad for p in model.backbone_parameters())
    model.set_trainable("none")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="only 2 layers"):
        model.set_trainable(train_top_layers=3)
    with pytest.raises(ConfigError):
        model.set_trainable("everything")


def test_parameter_groups_partition_the_model(gpt2_dir: Path) -> None:
    model = make_model(gpt2_dir, pooling="attention")
    backbone = {id(p) for p in model.backbone_parameters()}
    ours = {id(p) for p in model.head_parameters()}
    assert not backbone & ours
    assert backbone | ours == {id(p) for p in model.parameters()}


def test_gradient_checkpointing_gives_the_same_gradients(gpt2_dir: Path) -> None:
    plain = make_model(gpt2_dir, dropout=0.0)
    checkpointed = make_model(gpt2_dir, dropout=0.0)
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.backbone.gradient_checkpointing
    for model in (plain, checkpointed):
        model.backbone.config.attn_pdrop = model.backbone.config.resid_pdrop = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.backbone.h[0].attn.attn_dropout.p = 0.0
    _grads(plain)
    _grads(checkpointed)
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        assert_close_at_scale(b.grad, a.grad, rel=1e-5, msg=name)  # sums over the batch: see tests/tolerances.py


# --- parameter accounting -------------------------------------------------------------------
def test_blog_configuration_counts_138_6m() -> None:
    torch.manual_seed(0)
    spec = ClassifierSpec(num_labels=20, label_names=[f"group{i}" for i in range(20)], n_embed=768,
                          n_heads=2, n_blocks=2, dropout=0.2)
    counts = GPT2Classifier(GPT2Model(GPT2Config()), spec).parameter_counts()
    assert counts["backbone"] == 124_439_808  # GPT-2 small
    assert counts["blocks"] == 2 * 7_087_872 + 1_536  # two 768-wide blocks + ln_f
    assert counts["head"] == 768 * 20 + 20
    assert counts["total"] == 138_632_468
    assert abs(counts["total"] - 138.6e6) < 0.5e6


# --- saving and loading -------------------------------------------------------------------
@pytest.mark.parametrize("pooling", POOLINGS)
def test_save_and_load_roundtrip(gpt2_dir: Path, tmp_path: Path, pooling: str) -> None:
    model = make_model(gpt2_dir, pooling=pooling)
    folder = tmp_path / "model"
    model.save_pretrained(folder, extra={"epoch": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "gpt2clf" and config["format_version"] == 1
    assert config["backbone_name"] == str(gpt2_dir) and config["extra"] == {"epoch": 3}
    loaded = GPT2Classifier.from_pretrained(folder)
    assert not loaded.training
    assert loaded.spec == model.spec and loaded.label_names == LABELS
    ids, mask = pad_batch([SHORT, LONG], "left")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_save_overwrites_whole_folder(gpt2_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "stale.txt").write_text("old")
    make_model(gpt2_dir).save_pretrained(folder)
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left behind


def test_save_with_tokenizer(gpt2_dir: Path, tmp_path: Path) -> None:
    class FakeTokenizer:
        def save_pretrained(self, folder: str) -> None:
            Path(folder, "tokenizer.json").write_text("{}")

    make_model(gpt2_dir).save_pretrained(tmp_path / "m", tokenizer=FakeTokenizer())
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    GPT2Classifier.from_pretrained(tmp_path / "m")


def test_load_is_offline_and_never_unpickles(gpt2_dir: Path, tmp_path: Path, monkeypatch) -> None:
    model = make_model(gpt2_dir)
    model.save_pretrained(tmp_path / "m")

    def refuse(*args, **kwargs):
        raise AssertionError("loading must not use pickle or the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loaded = GPT2Classifier.from_pretrained(tmp_path / "m")
    ids, mask = pad_batch([SHORT, LONG], "right")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


@pytest.fixture
def saved(gpt2_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "saved"
    make_model(gpt2_dir).save_pretrained(folder)
    return folder


def test_truncated_weights_raise_model_load_error(saved: Path) -> None:
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    for size in (len(data) // 2, 100, 4):
        weights.write_bytes(data[:size])
        with pytest.raises(ModelLoadError, match="truncated or corrupted"):
            GPT2Classifier.from_pretrained(saved)


def _edit_config(folder: Path, **spec_changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["spec"].update(spec_changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("changes", "tensor"),
    [(dict(n_blocks=3), "blocks.2."), (dict(n_blocks=1), "blocks.1."), (dict(n_embed=48), "input_projection"),
     (dict(pooling="attention"), "pooler."), (dict(num_labels=4, label_names=list("abcd")), "head.1.")],
)
def test_config_not_matching_weights(saved: Path, changes: dict, tensor: str) -> None:
    _edit_config(saved, **changes)
    with pytest.raises(ModelLoadError, match="different models") as info:
        GPT2Classifier.from_pretrained(saved)
    assert tensor in str(info.value) and "\n" not in str(info.value)


def test_mismatched_width_names_the_shape(saved: Path) -> None:
    path = saved / "config.json"
    config = json.loads(path.read_text())
    config["backbone_config"]["n_inner"] = 64  # GPT-2 MLP width: default 4 x 32 = 128
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"shape \(32, 128\).*\(32, 64\)"):
        GPT2Classifier.from_pretrained(saved)


def test_broken_folders(saved: Path, tmp_path: Path, gpt2_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        GPT2Classifier.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="not a gpt2clf model"):
        GPT2Classifier.from_pretrained(gpt2_dir)  # a plain Hugging Face folder
    config = saved / "config.json"
    text = config.read_text()
    config.write_text(text[:20])
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        GPT2Classifier.from_pretrained(saved)
    config.write_text(text.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ModelLoadError, match="upgrade"):
        GPT2Classifier.from_pretrained(saved)
    config.unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        GPT2Classifier.from_pretrained(saved)
    config.write_text(text)
    (saved / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is missing"):
        GPT2Classifier.from_pretrained(saved)


def test_backbone_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found locally or on the Hugging Face Hub") as info:
        GPT2Classifier.from_backbone(str(tmp_path / "no-such-model"), make_spec())
    assert "save_pretrained" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="cannot read backbone folder"):
        GPT2Classifier.from_backbone(str(empty), make_spec())


def test_falls_back_when_sdpa_is_unsupported(gpt2_dir: Path, monkeypatch) -> None:
    real = transformers.AutoModel.from_pretrained
    asked = []

    def no_sdpa(name, **kwargs):
        asked.append(kwargs.get("attn_implementation"))
        if kwargs.get("attn_implementation") == "sdpa":
            raise ValueError("X does not support an attention implementation through "
                             "torch.nn.functional.scaled_dot_product_attention yet.")
        return real(name, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_sdpa)
    model = GPT2Classifier.from_backbone(str(gpt2_dir), make_spec())
    assert asked == ["sdpa", None] and isinstance(model.backbone, GPT2Model)


def test_lm_head_checkpoint_gives_base_model(tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                        bos_token_id=1, eos_token_id=1)
    lm = GPT2LMHeadModel(config)
    lm.save_pretrained(tmp_path / "lm")
    model = GPT2Classifier.from_backbone(str(tmp_path / "lm"), make_spec())
    assert isinstance(model.backbone, GPT2Model)
    assert torch.equal(model.backbone.wte.weight, lm.transformer.wte.weight)
    direct = GPT2Classifier(lm, make_spec())  # handing over an LM-head model works too
    assert isinstance(direct.backbone, GPT2Model)
    direct.save_pretrained(tmp_path / "m")
    GPT2Classifier.from_pretrained(tmp_path / "m")


# --- a non-GPT-2 backbone ------------------------------------------------------------------------
def test_bert_backbone(bert_dir: Path, tmp_path: Path) -> None:
    model = make_model(bert_dir, pooling="mean")
    assert isinstance(model.backbone, BertModel)
    assert isinstance(model.input_projection, torch.nn.Linear)
    assert tuple(model.input_projection.weight.shape) == (32, 48)
    assert model.adapter.position_offset == 0  # BERT numbers real tokens from 0: positions come from the mask
    assert len(model.backbone_layers()) == 2  # found at .encoder.layer
    ids, mask = pad_batch([SHORT, LONG], "right")
    with torch.no_grad():
        logits = model(ids, mask)
        alone = model(torch.tensor([SHORT]), torch.ones(1, len(SHORT), dtype=torch.long))
    assert logits.shape == (2, 3)
    assert torch.allclose(logits[0], alone[0], atol=1e-5)  # right padding: pads are masked
    model.set_trainable(train_top_layers=1)
    grads = _grads(model)
    assert grads["backbone.encoder.layer.1.attention.self.query.weight"]
    assert not grads["backbone.encoder.layer.0.attention.self.query.weight"]
    model.eval()
    model.save_pretrained(tmp_path / "bert-clf")
    loaded = GPT2Classifier.from_pretrained(tmp_path / "bert-clf")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_blocks_take_the_backbones_shape_by_default(gpt2_dir: Path, bert_dir: Path, tmp_path: Path) -> None:
    # gpt2_dir is 32 wide with 2 heads; bert_dir 48 wide with 2 heads.
    model = make_model(gpt2_dir, n_embed=None, n_heads=None)
    assert (model.spec.n_embed, model.spec.n_heads) == (32, 2)
    assert isinstance(model.input_projection, torch.nn.Identity)
    assert make_model(bert_dir, n_embed=None, n_heads=None).spec.n_embed == 48
    # An explicit width keeps the backbone's heads when they divide it, else one head per 64.
    assert make_model(gpt2_dir, n_embed=96, n_heads=None).spec.n_heads == 2
    assert make_model(gpt2_dir, n_embed=129, n_heads=None).spec.n_heads == 1
    assert make_model(gpt2_dir, n_embed=192, n_heads=None, n_blocks=0).spec.n_heads == 2
    # The resolved shape is what a saved folder records, so it reloads without the backbone.
    model.save_pretrained(tmp_path / "saved")
    reloaded = GPT2Classifier.from_pretrained(tmp_path / "saved")
    assert (reloaded.spec.n_embed, reloaded.spec.n_heads) == (32, 2)


def test_input_projection_preserves_the_feature_scale(bert_dir: Path) -> None:
    # A 48-wide backbone into 32-wide blocks: the projection starts variance-preserving, so
    # the backbone's features are not shrunk before the blocks add their random updates.
    model = make_model(bert_dir)
    weight = model.input_projection.weight.detach()
    assert weight.shape == (32, 48)
    assert float(weight.std()) == pytest.approx(48 ** -0.5, rel=0.15)
    x = torch.randn(64, 48)
    with torch.no_grad():
        assert float(model.input_projection(x).std()) == pytest.approx(1.0, rel=0.25)
