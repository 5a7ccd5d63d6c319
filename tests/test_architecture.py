"""The package's shape: imports go one way, entry points are importable lazily, and the
inference commands never need Lightning."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "gpt2clf"


def package_imports() -> dict[str, set[str]]:
    """module -> the gpt2clf modules it imports anywhere (top level, inside functions, under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        name = path.stem
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2clf"):
                target = node.module.split(".")
                if len(target) > 1:
                    found.add(target[1])
                else:  # from gpt2clf import x: x is a module or a lazily exported name
                    found.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists())
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("gpt2clf."):
                        found.add(alias.name.split(".")[1])
        found.discard(name)
        graph[name] = found
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_among_package_modules() -> None:
    graph = package_imports()
    assert {"cli", "config", "corpora", "batching", "backbone", "model", "inference", "training"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_import_only_downward() -> None:
    """The data flows one way: the model knows nothing of training or the CLI; data code no model."""
    graph = package_imports()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert not reaches("model") & {"training", "cli", "prediction", "evaluation", "feature_cache", "inference"}
    assert not reaches("corpora") & {"batching", "model", "backbone", "training", "cli"}
    assert not reaches("batching") & {"model", "backbone", "training", "cli"}
    assert "training" not in reaches("evaluation") | reaches("prediction")
    assert all("cli" not in reaches(name) for name in graph if name != "cli")
    matplotlib_users = [p.stem for p in PACKAGE.glob("*.py") if "matplotlib" in p.read_text(encoding="utf-8")
                        and p.stem != "plots"]
    assert matplotlib_users == []


def run_python(code: str, *, env_extra: dict[str, str] | None = None, cwd: Path | None = None
               ) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_functions_and_modules_stay_small_enough_to_read() -> None:
    """No function in the package passes 80 lines, create_app stays a short assembly (60), and
    training.py keeps to its one job (650 lines)."""
    long_functions = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                limit = 60 if (path.stem, node.name) == ("serving", "create_app") else 80
                if length > limit:
                    long_functions.append(f"{path.stem}.{node.name}: {length} lines (limit {limit})")
    assert not long_functions, long_functions
    assert len((PACKAGE / "training.py").read_text(encoding="utf-8").splitlines()) <= 650


def test_every_module_declares_its_public_names() -> None:
    """Each module lists its public surface in __all__, and every name listed exists."""
    import importlib

    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        module = importlib.import_module(f"gpt2clf.{path.stem}" if path.stem != "__init__" else "gpt2clf")
        names = getattr(module, "__all__", None)
        if names is None:
            problems.append(f"{path.stem}: no __all__")
        elif path.stem != "__init__":
            problems.extend(f"{path.stem}.{name}: listed, not defined" for name in names if not hasattr(module, name))
    assert not problems, problems


def test_entry_points_import_lazily() -> None:
    code = ("import sys, gpt2clf\n"
            "assert 'torch' not in sys.modules\n"
            "from gpt2clf import Config, GPT2Classifier, Predictor, fit, train\n"
            "assert callable(fit) and callable(train) and Config().epochs >= 1\n"
            "print(GPT2Classifier.__module__, Predictor.__module__)\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gpt2clf.model", "gpt2clf.prediction"]


def test_help_imports_no_torch() -> None:
    code = ("import sys\nfrom gpt2clf.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False")


@pytest.fixture()
def no_lightning(tmp_path: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import lightning`` fail."""
    for name in ("lightning", "pytorch_lightning"):
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text(f"raise ImportError('{name} is blocked for this test')\n")
    return tmp_path


@pytest.mark.slow
def test_predict_and_evaluate_run_without_lightning(no_lightning: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "eval.csv"
    data.write_text("text,label\n" + "".join(f"sample text {i},{'abc'[i % 3]}\n" for i in range(12)),
                    encoding="utf-8")
    code = ("import sys\nfrom gpt2clf.cli import main\n"
            f"rc = main(['predict', {str(tiny_model_dir)!r}, '--json', 'hello world'])\n"
            "assert rc == 0, rc\n"
            f"rc = main(['evaluate', {str(tiny_model_dir)!r}, '--train-file', {str(data)!r}, '--json'])\n"
            "assert rc == 0, rc\n"
            "assert not any(m == 'lightning' or m.startswith('lightning.') for m in sys.modules)\n"
            "print('OK')\n")
    path = os.pathsep.join([str(no_lightning), os.environ.get("PYTHONPATH", "")])
    result = run_python(code, env_extra={"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "OK"
    blocked = run_python("import lightning", env_extra={"PYTHONPATH": path})
    assert blocked.returncode != 0 and "blocked for this test" in blocked.stderr


def test_the_micro_batcher_works_without_fastapi() -> None:
    """``gpt2clf.microbatch`` is plain asyncio: it imports, and merges requests, with the serve extra blocked."""
    code = ("import sys\n"
            "for name in ('fastapi', 'starlette', 'uvicorn', 'pydantic', 'prometheus_client'):\n"
            "    sys.modules[name] = None  # any import of them now fails\n"
            "import asyncio\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "from gpt2clf.microbatch import Job, MicroBatcher, QueueFull\n"
            "calls = []\n"
            "def run_batch(texts):\n"
            "    calls.append(texts)\n"
            "    return [t.upper() for t in texts]\n"
            "async def main():\n"
            "    batcher = MicroBatcher(run_batch, executor=ThreadPoolExecutor(1), max_wait_ms=10_000, max_queue=2)\n"
            "    first = batcher.submit(['ccc', 'a'], [3, 1])\n"
            "    second = batcher.submit(['bb'], [2])\n"
            "    try:\n"
            "        batcher.submit(['x'], [1])\n"
            "    except QueueFull:\n"
            "        print('full')\n"
            "    batcher.start()\n"
            "    await batcher.close()  # finishes the queued jobs, without waiting out max_wait_ms\n"
            "    print(first.future.result(), second.future.result(), isinstance(first, Job))\n"
            "asyncio.run(main())\n"
            "print(calls)\n"
            "try:\n"
            "    import fastapi\n"
            "except ImportError:\n"
            "    print('blocked')\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["full", "['CCC', 'A'] ['BB'] True", "[['a', 'bb', 'ccc']]", "blocked"]


def test_only_model_io_reads_a_model_folders_config_json(tiny_model_dir: Path, monkeypatch, tmp_path: Path) -> None:
    """A model folder's config.json is parsed in one place (gpt2clf.model_io): every reader of a folder
    (the predictor, the estimator, the server, export's checks, evaluation's recorded config) goes through it.
    Any other gpt2clf module that opens the file fails this test, however it opens it."""
    import builtins
    import io
    import sys
    import time
    from pathlib import Path as _Path

    from fastapi.testclient import TestClient

    from gpt2clf.estimator import GPT2TextClassifier
    from gpt2clf.model_io import read_training_config, recorded_config
    from gpt2clf.onnx_runtime import folder_fingerprints, unsupported_reason
    from gpt2clf.prediction import Predictor
    from gpt2clf.serving import create_app

    target = (tiny_model_dir / "config.json").resolve()
    openers: list[str] = []

    def note(path: object) -> None:
        try:
            if _Path(path).resolve() != target:  # type: ignore[arg-type]
                return
        except (TypeError, ValueError):
            return
        # The direct caller of open(): a library (transformers' AutoTokenizer looks for a
        # model_type there) reading the file is not our code parsing it.
        name = sys._getframe(2).f_globals.get("__name__", "")
        if name.startswith("gpt2clf."):
            openers.append(name)

    real_open, real_io_open = builtins.open, io.open
    real_read_text, real_read_bytes = _Path.read_text, _Path.read_bytes

    def spy_open(file, *args, **kwargs):
        note(file)
        return real_open(file, *args, **kwargs)

    def spy_io_open(file, *args, **kwargs):
        note(file)
        return real_io_open(file, *args, **kwargs)

    def spy_read_text(self, *args, **kwargs):
        note(self)
        return real_read_text(self, *args, **kwargs)

    def spy_read_bytes(self, *args, **kwargs):
        note(self)
        return real_read_bytes(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_io_open)
    monkeypatch.setattr(_Path, "read_text", spy_read_text)
    monkeypatch.setattr(_Path, "read_bytes", spy_read_bytes)

    Predictor.from_folder(tiny_model_dir, precision="32-true").predict_proba(["hello there"])
    Predictor.from_folder(tiny_model_dir, fast_start=False, precision="32-true")
    GPT2TextClassifier.load(tiny_model_dir)
    recorded_config(tiny_model_dir)
    unsupported_reason(read_training_config(tiny_model_dir))
    folder_fingerprints(tiny_model_dir)
    with TestClient(create_app(tiny_model_dir)) as client:  # the folder loads in the background
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v1/model").status_code == 200
    assert openers, "the spy saw no read at all: the test would prove nothing"
    assert set(openers) == {"gpt2clf.model_io"}, sorted(set(openers))
