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

# The stages, bottom to top: a module imports only modules of its own stage or of stages below it.
# The foundation (errors, files, config) and the entry points (estimator, cli) sit at the package's top level.
STAGES: list[set[str]] = [
    {"errors"}, {"files"}, {"config"},
    {"flags"},  # command-line flags from the dataclasses of config
    {"data"},  # text -> tokens, windows, batches
    {"model"},  # token ids -> logits; the model-folder format
    {"infer"},  # logits -> probabilities and metrics
    {"report"},  # plots, explanations, the HTML run report
    {"training"},  # run setup, feature cache, optimisation, the Lightning loop
    {"serve", "distributed"},  # HTTP; Ray
    {"estimator"}, {"cli"},
]


def module_name(path: Path) -> str:
    """``src/gpt2clf/model/classifier.py`` -> ``model.classifier``; a package's ``__init__`` -> its own name."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "gpt2clf"


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def package_imports() -> dict[str, set[str]]:
    """module -> the gpt2clf modules it imports anywhere (top level, inside functions, under TYPE_CHECKING)."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}

    def resolve(dotted: str) -> str | None:
        """The longest known module that ``gpt2clf.<dotted>`` names (a name imported from a module counts as it)."""
        parts = dotted.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2clf"):
                base = node.module.removeprefix("gpt2clf").lstrip(".")
                targets = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name.removeprefix("gpt2clf.") for alias in node.names
                           if alias.name.startswith("gpt2clf.")]
            for target in targets:
                module = resolve(target)
                if module is None and target.split(".")[0] in _lazy_exports():
                    module = _lazy_exports()[target.split(".")[0]]  # from gpt2clf import Predictor
                if module and module != name:
                    found.add(module)
        graph[name] = found
    return graph


def _lazy_exports() -> dict[str, str]:
    """The root's lazily exported names -> the module that defines each."""
    import gpt2clf

    return {name: module.removeprefix("gpt2clf.") for name, module in gpt2clf._EXPORTS.items()}


def stage_of(module: str) -> int:
    top = module.split(".")[0]
    for index, stage in enumerate(STAGES):
        if top in stage:
            return index
    raise AssertionError(f"{module}: in no stage; add its sub-package to STAGES")


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
    assert {"cli", "config", "data.splits", "data.newsgroups", "data.labelled_files", "data.hub", "data.batching",
            "model.backbone", "model.classifier", "infer.runtime", "training.loop"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_is_cut_into_stages() -> None:
    """At least five sub-packages, at most eight modules left at the top level, and every module in a stage."""
    sub_packages = [path.parent.name for path in PACKAGE.glob("*/__init__.py")]
    top_level = [path.name for path in PACKAGE.glob("*.py")]
    assert len(sub_packages) >= 5, sub_packages
    assert len(top_level) <= 8, top_level
    for module in package_modules():
        if module != "gpt2clf":
            stage_of(module)  # raises for a module in no stage


def test_stages_import_only_downward() -> None:
    """Each sub-package imports only those below it in STAGES (function-level imports count too)."""
    upward = [f"{module} -> {target}" for module, targets in package_imports().items() if module != "gpt2clf"
              for target in targets if stage_of(target) > stage_of(module)]
    assert not upward, upward


def test_the_stage_check_finds_a_planted_upward_import() -> None:
    assert stage_of("training.loop") > stage_of("model.classifier")
    assert stage_of("cli") > stage_of("serve.app") > stage_of("report.plots") > stage_of("infer.predictor")
    assert stage_of("data.splits") < stage_of("model.folder")


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

    assert not reaches("model.classifier") & {"training.loop", "cli", "infer.predictor", "infer.evaluation",
                                              "train.feature_cache", "infer.runtime"}
    for corpus_module in ("data.text_dataset", "data.newsgroups", "data.labelled_files", "data.hub", "data.splits"):
        assert not reaches(corpus_module) & {"data.batching", "model.classifier", "model.backbone", "training.loop",
                                             "cli"}, corpus_module
    for source_module in ("data.newsgroups", "data.labelled_files", "data.hub"):  # one module per source
        assert not reaches(source_module) & {"data.splits", "data.newsgroups", "data.hub"} - {source_module}
    assert not reaches("data.batching") & {"model.classifier", "model.backbone", "training.loop", "cli"}
    assert "training.loop" not in reaches("infer.evaluation") | reaches("infer.predictor")
    assert all("cli" not in reaches(name) for name in graph if name != "cli")
    matplotlib_users = [name for name, path in package_modules().items()
                        if "matplotlib" in path.read_text(encoding="utf-8") and name != "report.plots"]
    assert matplotlib_users == []


def test_functions_and_modules_stay_small_enough_to_read() -> None:
    """No function in the package passes 80 lines (create_app, a short assembly, 60), none takes more than
    8 parameters (constructors aside), and no module passes 700 lines."""
    long_functions, long_signatures, long_modules = [], [], []
    for name, path in package_modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 700:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                limit = 60 if (name, node.name) == ("serve.app", "create_app") else 80
                if length > limit:
                    long_functions.append(f"{name}.{node.name}: {length} lines (limit {limit})")
                if node.name != "__init__" and parameter_count(node) > 8:
                    long_signatures.append(f"{name}.{node.name}: {parameter_count(node)} parameters")
    assert not long_functions, long_functions
    assert not long_signatures, long_signatures
    assert not long_modules, long_modules


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Parameters a caller passes: ``self``/``cls`` not counted, ``*args``/``**kwargs`` one each."""
    args = node.args
    names = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    count = len(names) + (args.vararg is not None) + (args.kwarg is not None)
    return count - (1 if names and names[0].arg in ("self", "cls") else 0)


def test_the_size_checks_count_what_they_claim() -> None:
    tree = ast.parse("def f(self, a, b, /, c, *rest, d, e, **more): pass\ndef g(): pass\n")
    f, g = tree.body
    assert parameter_count(f) == 7 and parameter_count(g) == 0


def test_every_module_declares_its_public_names() -> None:
    """Each module lists its public surface in __all__, and every name listed exists."""
    import importlib

    problems = []
    for name, path in package_modules().items():
        if path.name == "__init__.py" and name != "gpt2clf":
            continue  # sub-packages only document their modules; the root lists its lazy exports
        module = importlib.import_module(name if name == "gpt2clf" else f"gpt2clf.{name}")
        names = getattr(module, "__all__", None)
        if names is None:
            problems.append(f"{name}: no __all__")
        elif name != "gpt2clf":
            problems.extend(f"{name}.{item}: listed, not defined" for item in names if not hasattr(module, item))
    assert not problems, problems


def run_python(code: str, *, env_extra: dict[str, str] | None = None, cwd: Path | None = None
               ) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_entry_points_import_lazily() -> None:
    code = ("import sys, gpt2clf\n"
            "assert 'torch' not in sys.modules\n"
            "from gpt2clf import Config, GPT2Classifier, Predictor, fit, train\n"
            "assert callable(fit) and callable(train) and Config().epochs >= 1\n"
            "from gpt2clf import GPT2TextClassifier, evaluate_folder, labelled_texts\n"
            "print(GPT2Classifier.__module__, Predictor.__module__, train.__module__, GPT2TextClassifier.__module__,\n"
            "      evaluate_folder.__module__, labelled_texts.__module__)\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gpt2clf.model.classifier", "gpt2clf.infer.predictor", "gpt2clf.training.loop",
                                     "gpt2clf.estimator", "gpt2clf.infer.evaluation", "gpt2clf.data.splits"]


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
    """``gpt2clf.serve.microbatch`` is plain asyncio: it imports, and merges requests, with the serve extra blocked."""
    code = ("import sys\n"
            "for name in ('fastapi', 'starlette', 'uvicorn', 'pydantic', 'prometheus_client'):\n"
            "    sys.modules[name] = None  # any import of them now fails\n"
            "import asyncio\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "from gpt2clf.serve.microbatch import Job, MicroBatcher, QueueFull\n"
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
    """A model folder's config.json is parsed in one place (gpt2clf.model.folder): every reader of a folder
    (the predictor, the estimator, the server, export's checks, evaluation's recorded config) goes through it.
    Any other gpt2clf module that opens the file fails this test, however it opens it."""
    import builtins
    import io
    import time
    from pathlib import Path as _Path

    from fastapi.testclient import TestClient

    from gpt2clf.estimator import GPT2TextClassifier
    from gpt2clf.infer.onnx_runtime import folder_fingerprints, unsupported_reason
    from gpt2clf.infer.predictor import Predictor
    from gpt2clf.model.folder import read_training_config, recorded_config
    from gpt2clf.serve.app import create_app

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
    assert set(openers) == {"gpt2clf.model.folder"}, sorted(set(openers))
