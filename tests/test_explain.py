"""``gpt2clf explain``: attributions that find planted keywords, exact IG bookkeeping, readable
tokens, recomputed attention weights, one-line errors, and a self-contained HTML page."""

from __future__ import annotations

import html
import io
import json
import random
import re
from pathlib import Path

import pytest
import torch

from gpt2clf.cli import main
from gpt2clf.infer.predictor import Predictor
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
from gpt2clf.report.explain import Explanation, attention_weights, explain, readable_tokens
from keyword_corpus import PLANTED_KEYWORDS as KEYWORDS
from keyword_corpus import PLANTED_MAX_LENGTH as MAX_LENGTH
from keyword_corpus import planted_text

# "Dominates": one token carries at least half of the document's total |attribution| and
# moves the target logit by at least one unit. Calibrated on the planted run (CPU, seed 42):
# keyword tokens carry 0.80-0.98 of the mass and 2-5 logits; in keyword-free texts the
# largest token carried at most 0.72 of the mass but under 0.4 logits (the all-pad baseline
# is itself classified "none", so those attributions are all small).
DOMINANT_SHARE = 0.5
DOMINANT_LOGITS = 1.0


@pytest.fixture(scope="module")
def predictor(planted_run_dir: Path) -> Predictor:
    return Predictor.from_folder(planted_run_dir / "model", device="cpu", precision="32-true")


def keyword_texts(n: int, seed: int = 123) -> list[tuple[str, str, tuple[int, int]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = list(KEYWORDS)[i % len(KEYWORDS)]
        text, span = planted_text(rng, label)
        out.append((text, label, span))
    return out


def dominant(exp: Explanation) -> int | None:
    """The position of the token that dominates the document, if one does."""
    magnitudes = [abs(a) for a in exp.attributions]
    top = max(range(len(magnitudes)), key=magnitudes.__getitem__)
    share = magnitudes[top] / sum(magnitudes)
    return top if share >= DOMINANT_SHARE and magnitudes[top] >= DOMINANT_LOGITS else None


def test_the_planted_keyword_model_learns_the_task(planted_run_dir: Path) -> None:
    metrics = json.loads((planted_run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9


def test_explain_json_ranks_the_keyword_among_the_top_three_tokens(planted_run_dir: Path, capsys) -> None:
    cases = keyword_texts(12)
    assert main(["explain", str(planted_run_dir / "model"), "--json", "--steps", "16", *[text for text, _,
                                                                                         _ in cases]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(cases)
    hits = 0
    for line, (_, _, (start, end)) in zip(lines, cases, strict=True):
        record = json.loads(line)
        assert set(record) >= {"label", "probabilities", "tokens", "attributions", "method", "delta"}
        assert record["method"] == "integrated-gradients"
        assert len(record["attributions"]) == len(record["tokens"])
        top3 = sorted(range(len(record["tokens"])), key=lambda i: -record["attributions"][i])[:3]
        hits += any(record["offsets"][i][0] < end and record["offsets"][i][1] > start for i in top3)
    print(f"keyword among the top 3 attributions: {hits}/{len(cases)}")
    assert hits >= 0.9 * len(cases)


def test_a_keyword_dominates_its_text_and_no_token_dominates_a_keyword_free_text(predictor: Predictor) -> None:
    dominated = 0
    cases = keyword_texts(6, seed=5)
    for text, _, (start, end) in cases:
        exp = explain(predictor, text, steps=32)
        top = dominant(exp)
        dominated += top is not None and exp.offsets[top][0] < end and exp.offsets[top][1] > start
    assert dominated >= 0.8 * len(cases)
    rng = random.Random(9)
    for _ in range(6):
        text, _ = planted_text(rng, "none")
        exp = explain(predictor, text, steps=32)
        assert dominant(exp) is None, exp.summary()


def test_integrated_gradients_add_up_to_the_logit_difference(predictor: Predictor) -> None:
    # 200 steps: on these texts |delta| / |logit difference| was at most 0.0022 (50 steps: up to
    # 0.21 on one text, the path from all-pad to the text crosses a sharp transition).
    for text, label, _ in keyword_texts(4, seed=11):
        exp = explain(predictor, text, steps=200, label=label)
        assert exp.target == label
        # Completeness: Captum's delta is exactly the gap between the sum and the logit difference...
        assert sum(exp.attributions) == pytest.approx(exp.logit_difference + exp.delta, abs=1e-4)
        # ...and that gap is small next to the difference being explained.
        assert abs(exp.logit_difference) > 1.0
        assert abs(exp.delta) <= 0.01 * abs(exp.logit_difference)


def test_a_few_steps_already_find_the_same_top_token(predictor: Predictor) -> None:
    text, _, _ = keyword_texts(1, seed=3)[0]
    coarse, fine = explain(predictor, text, steps=16), explain(predictor, text, steps=200)
    assert coarse.top_tokens(1)[0][0] == fine.top_tokens(1)[0][0]


def test_tokens_are_readable_spans_of_the_original_text(tokenizer) -> None:
    text = "Héllo wörld 🤖  $5 GPU\n\nnew"
    ids = tokenizer(text)["input_ids"]
    tokens, offsets = readable_tokens(text, ids, tokenizer)
    assert len(tokens) == len(ids)
    assert not any("Ġ" in t or "Ċ" in t or "Ã" in t for t in tokens)
    assert tokens[:3] == ["H", "é", "llo"]
    assert "🤖" in tokens[6] and " GPU" in tokens
    assert all(text[a:b] == t for t, (a, b) in zip(tokens, offsets, strict=True))


def test_tokens_are_decoded_when_the_tokenizer_gives_no_offsets(tokenizer) -> None:
    class NoOffsets:  # a slow tokenizer: no offsets mapping
        is_fast = False

        def decode(self, ids, **kwargs):
            return tokenizer.decode(ids, **kwargs)

    text = "Hello world and more"
    tokens, offsets = readable_tokens(text, tokenizer(text)["input_ids"], NoOffsets())
    assert offsets is None
    assert tokens == ["Hello", " world", " and", " more"]


def test_display_segments_cover_the_text_once(predictor: Predictor) -> None:
    text = "the hockey 🤖 day  good"
    exp = explain(predictor, text, method="attention")
    pieces = exp.display_segments()
    assert "".join(piece for piece, _ in pieces) == text
    assert sum(v for _, v in pieces) == pytest.approx(sum(exp.attributions))


def test_a_long_text_is_explained_over_the_tokens_the_model_reads(predictor: Predictor) -> None:
    exp = explain(predictor, " ".join(["hockey good day"] * 20), method="attention")
    assert exp.truncated and len(exp.tokens) == MAX_LENGTH


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_recomputed_attention_weights_are_the_ones_the_block_used(tiny_backbone: Path, tokenizer,
                                                                  pooling: str) -> None:
    torch.manual_seed(0)
    spec = ClassifierSpec(num_labels=2, n_embed=32, n_heads=4, n_blocks=2, pooling=pooling, dropout=0.0)
    model = GPT2Classifier.from_backbone(str(tiny_backbone), spec).eval()
    block = model.blocks[1]
    x = torch.randn(2, 7, 32)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    weights = attention_weights(block, x, mask)
    _, _, v = block.attn.qkv(x).split(32, dim=2)
    v = v.view(2, 7, 4, 8).transpose(1, 2)
    mixed = (weights @ v).transpose(1, 2).reshape(2, 7, 32)
    with torch.no_grad():
        assert torch.allclose(block.attn.out_proj(mixed), block.attn(x, mask), atol=1e-5)
    assert torch.all(weights[1, :, :4, 4:] == 0)  # real queries never read padded keys

    exp = explain(Predictor(model, tokenizer, max_length=32, device="cpu"), "a short text to route", method="attention")
    assert len(exp.head_weights) == 2 and len(exp.head_weights[0]) == 4
    for head in exp.head_weights[-1]:
        assert sum(head) == pytest.approx(1.0, abs=1e-5) and min(head) >= 0
    assert exp.attributions == pytest.approx(torch.tensor(exp.head_weights[-1]).mean(0).tolist())
    assert (exp.pooling_weights is not None) == (pooling == "attention")
    assert exp.delta is None and exp.method == "attention"


def test_the_heat_map_names_tokens_as_the_top_tokens_table_does(tiny_model_dir: Path, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    from gpt2clf.report import plots

    drawn: list[list[str]] = []
    original = plots._png

    def record(fig, *args, **kwargs):  # the tick labels matplotlib actually draws
        for tick in fig.axes[0].get_xticklabels():
            assert tick.get_parse_math() is False  # a "$" is drawn as a dollar, not mathtext
        drawn.append([tick.get_text() for tick in fig.axes[0].get_xticklabels()])
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plots, "_png", record)
    text = "Many people said:  café naïve 🤖 costs $5\n\tthe end"
    out = tmp_path / "why.html"
    assert main(["explain", str(tiny_model_dir), text, "--method", "attention", "--html", str(out), "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert len(drawn) == 1
    labels = drawn[0]
    assert len(labels) == len(tokens) > 10
    rows = re.findall(r'<tr><td><code>(.*?)</code></td><td class="num">(\d+)</td>', out.read_text(encoding="utf-8"))
    assert len(rows) == 10  # the top-tokens table
    for shown, position in rows:
        assert html.unescape(shown) == labels[int(position)]
    # the user's characters, without GPT-2's byte symbols or a marker glued to each word
    assert {"people", "café", "🤖", "$", "\\n", "\\t", "end"} <= set(labels)
    assert not any(mark in label for label in labels for mark in ("Ġ", "Ċ", "Ã", "ð"))
    assert all(label.strip("␣") == label or set(label) == {"␣"} for label in labels)


@pytest.mark.parametrize("args, message", [
    (["--label", "nope", "text"], "unknown label 'nope'"),
    (["--method", "shap", "text"], "unknown explanation method 'shap'"),
    ([], "nothing to explain"),
    (["--steps", "0", "text"], "steps must be an integer from 1"),
    (["--steps", "many", "text"], "--steps must be an integer"),
    (["--file", "/nonexistent/post.txt"], "no such file"),
])
def test_bad_explain_inputs_are_one_line_errors(planted_run_dir: Path, capsys, args: list[str], message: str) -> None:
    assert main(["explain", str(planted_run_dir / "model"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2clf: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def assert_self_contained_page_renders(browser, path: Path) -> bytes:
    """Open ``path`` from disk: no console errors, no network, a non-blank screenshot."""
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    messages, requests = [], []
    page.on("console", lambda m: messages.append(m) if m.type == "error" else None)
    page.on("pageerror", lambda e: messages.append(e))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        shot = page.screenshot(full_page=True)
    finally:
        page.close()
    assert messages == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert images and all(done and width > 0 for done, width in images)
    from PIL import Image

    pixels = Image.open(io.BytesIO(shot)).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100 and len(set(pixels.getdata())) > 20  # not blank: text, colours, figures
    return shot


def test_explain_html_is_one_self_contained_page(planted_run_dir: Path, tmp_path: Path, browser, capsys) -> None:
    out = tmp_path / "why.html"
    text, _, _ = keyword_texts(1, seed=21)[0]
    assert main(["explain", str(planted_run_dir / "model"), text, "the day 🤖 <b>not bold</b> & more", "--html",
                 str(out),
                 "--steps", "16"]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.count('class="card"') == 2
    assert "data:image/png;base64," in html  # the attention heat map
    assert "<b>not" not in html and "&lt;" in html and "&gt;" in html  # document text is escaped
    assert "towards" in html and "against" in html  # the legend
    assert_self_contained_page_renders(browser, out)
