"""Batch prediction on Ray Data against one process, on real 20 Newsgroups test posts.

Three modes, each printing one JSON object on stdout (progress on stderr), each with ``uptime``'s load:

* default (compare): a GPT-2-small-shaped model (``GPT2Config()`` with random weights, our 2 blocks of
  768, 20 labels; built like ``benchmarks/onnx_cpu.py``) over ``--docs`` test posts written to one Parquet
  file. ``gpt2clf predict --input F --json`` (one process, all cores) against ``gpt2clf predict --engine ray
  --input F --output DIR`` (a local cluster of this machine's CPUs: one model actor per CPU but one). It
  reports rows/s of each whole command and of the Ray job alone, Ray's start-up cost (``ray.init`` of a
  new local cluster, timed alone), the peak RSS of each model actor (sampled from /proc), and whether the
  labels agree and by how much the probabilities differ.
* ``--two-node``: two Ray nodes on this machine (``ray start --head --block`` and ``ray start --address
  ... --block``, ``--node-cpus`` each, in their own temp folder and port), then a job on that cluster with
  ``record_worker``: rows per node and per actor. Both nodes are stopped by signalling the two ``ray start``
  processes this script started (never ``ray stop``, which stops every Ray process of the user, other
  people's too), and any process left under the temp folder is killed by pid.
* ``--acceptance``: a tiny model (2 layers of 64) over all 7,532 test posts, ``predict --engine ray
  --workers 2`` against single-process ``predict``: 7,532 rows, equal labels, probabilities within 1e-5.

Usage::

    python benchmarks/ray_predict.py --docs 200            # GPT-2 small dims; minutes per 100 posts on 2 cores
    python benchmarks/ray_predict.py --two-node --tiny --docs 1000
    python benchmarks/ray_predict.py --acceptance
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RAY = str(Path(sys.executable).parent / "ray")  # the ray command of this Python
sys.path.insert(0, str(Path(__file__).parent))
from onnx_cpu import build_gpt2_small_folder, cpu_description, log  # noqa: E402


def load() -> str:
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def build_tiny_folder(folder: Path, tokenizer_path: Path, label_names: list[str]) -> None:
    """A random 2 x 64 GPT-2 with one 32-wide block: the test suite's tiny model, reading 128 tokens."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from gpt2clf.data.batching import load_tokenizer
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    torch.manual_seed(0)
    backbone = folder.parent / "tiny-gpt2"
    GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256)).save_pretrained(backbone)
    spec = ClassifierSpec(num_labels=len(label_names), label_names=label_names, n_embed=32, n_heads=2, n_blocks=1)
    GPT2Classifier.from_backbone(str(backbone), spec).save_pretrained(
        folder, tokenizer=load_tokenizer(str(tokenizer_path)), extra={"config": {"max_length": 128}})


def prepare(args: argparse.Namespace, work: Path, tiny: bool) -> tuple[Path, Path, list[str]]:
    """The model folder and a Parquet file of (id, text) for the first ``--docs`` test posts."""
    import pandas as pd

    from gpt2clf.data.newsgroups import load_20newsgroups

    test = load_20newsgroups("test", data_dir=args.data_dir)
    texts = list(test.texts[: args.docs])
    model = work / "model"
    log(f"building a random {'tiny' if tiny else 'GPT-2 small'} model folder in {model}")
    (build_tiny_folder if tiny else build_gpt2_small_folder)(model, Path(args.tokenizer), list(test.label_names))
    posts = work / "posts.parquet"
    pd.DataFrame({"id": [f"t{i}" for i in range(len(texts))], "text": texts}).to_parquet(posts)
    return model, posts, texts


def gpt2clf(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the CLI; its wall time (start-up included)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gpt2clf.cli", *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"gpt2clf {' '.join(args)} failed ({done.returncode}): {done.stderr[-3000:]}")
    return seconds, done


def single_process(model: Path, posts: Path) -> tuple[float, dict[str, np.ndarray], dict[str, str]]:
    """Wall seconds of one-process ``predict --json``, and probabilities and labels by id."""
    log(f"single-process predict ({load()})")
    seconds, done = gpt2clf("predict", str(model), "--input", str(posts), "--json", "--precision", "32-true",
                            "--no-progress")
    probs, labels = {}, {}
    for line in done.stdout.splitlines():
        record = json.loads(line)
        key = "t" + record["id"].rsplit(":", 1)[1]  # ids are PATH:ROW; the file's ids are tROW
        probs[key] = np.array(list(record["probabilities"].values()), dtype=np.float64)
        labels[key] = record["label"]
    return seconds, probs, labels


class ActorMemory(threading.Thread):
    """Samples /proc every 0.5 s: peak RSS (MB) of every process titled as a gpt2clf model actor."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and b"PredictBatches" in (entry / "cmdline").read_bytes():
                        status = (entry / "status").read_text()
                        kb = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
                        self.peak[int(entry.name)] = max(self.peak.get(int(entry.name), 0.0), kb / 1024)
                except (OSError, StopIteration, ValueError):
                    continue


def ray_command(model: Path, posts: Path, output: Path, *extra: str) -> tuple[float, dict[str, Any], ActorMemory]:
    log(f"predict --engine ray {' '.join(extra)} ({load()})")
    memory = ActorMemory()
    memory.start()
    seconds, done = gpt2clf("predict", str(model), "--engine", "ray", "--input", str(posts), "--id-column", "id",
                            "--output", str(output), "--precision", "32-true", "--json", *extra)
    memory.stop.set()
    return seconds, json.loads(done.stdout.strip().splitlines()[-1]), memory


def agreement(output: Path, probs: dict[str, np.ndarray], labels: dict[str, str]) -> dict[str, Any]:
    import pandas as pd

    frame = pd.read_parquet(output).set_index("id")
    columns = [c for c in frame.columns if c.startswith("prob_")]
    ids = sorted(probs)
    got = frame.loc[ids, columns].to_numpy(dtype=np.float64)
    want = np.stack([probs[i] for i in ids])
    return {"rows": len(frame), "unique_ids": int(frame.index.nunique()),
            "labels_equal": bool((frame.loc[ids, "label"].to_numpy() == np.array([labels[i] for i in ids])).all()),
            "max_abs_probability_difference": float(np.abs(got - want).max())}


def ray_startup_seconds() -> float:
    """Seconds for ``ray.init`` to start a new local cluster (in a fresh process, shut down after)."""
    code = ("import time, ray; s = time.perf_counter(); ray.init(include_dashboard=False, log_to_driver=False); "
            "print(time.perf_counter() - s); ray.shutdown()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model, posts, texts = prepare(args, work, tiny=args.tiny)
    local_s, probs, labels = single_process(model, posts)
    ray_s, summary, memory = ray_command(model, posts, work / "preds", *args.ray_flags)
    startup = ray_startup_seconds()
    return {"docs": len(texts), "single_process": {"seconds": local_s, "rows_per_s": len(texts) / local_s},
            "ray": {"command_seconds": ray_s, "command_rows_per_s": len(texts) / ray_s,
                    "job_seconds": summary["seconds"], "job_rows_per_s": summary["rows_per_second"],
                    "actors": summary["actors"], "actor_peak_rss_mb": sorted(memory.peak.values())},
            "ray_init_seconds": startup, "agreement": agreement(work / "preds", probs, labels)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_node(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pandas as pd

    from gpt2clf.distributed import PredictOptions, predict_files
    from gpt2clf.distributed.cluster import ray_cluster
    from gpt2clf.distributed.settings import ClusterSettings

    model, posts, texts = prepare(args, work, tiny=args.tiny)
    temp = Path(tempfile.mkdtemp(prefix="rpb", dir="/tmp"))  # short: Ray's socket paths have a length limit
    address = f"127.0.0.1:{free_port()}"
    common = ["--block", "--num-cpus", str(args.node_cpus), "--temp-dir", str(temp), "--disable-usage-stats"]
    started = time.perf_counter()
    nodes = [subprocess.Popen([RAY, "start", "--head", "--port", address.split(":")[1], "--include-dashboard=false",
                               *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        while not (temp / "ray_current_cluster").exists():  # written once the head is up
            if nodes[0].poll() is not None:
                raise SystemExit(f"ray start --head exited with {nodes[0].returncode}")
            time.sleep(0.5)
        with ray_cluster(address) as ray:  # sends this machine's token, as predict --address does
            nodes.append(subprocess.Popen([RAY, "start", "--address", address, *common],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                time.sleep(0.5)
            cluster_seconds = time.perf_counter() - started
            log(f"two nodes up in {cluster_seconds:.1f} s: {ray.cluster_resources()} ({load()})")
            summary = predict_files(model, str(posts), str(work / "preds"), id_column="id",
                                    cluster=ClusterSettings(engine="ray", address=address),
                                    options=PredictOptions(precision="32-true", record_worker=True,
                                                           rows_per_call=args.rows_per_call))
        workers = pd.read_parquet(work / "preds")["worker"]
    finally:
        stop_nodes(nodes, temp)
    per_node = collections.Counter(w.split(":")[0][:8] for w in workers)
    return {"docs": len(texts), "node_cpus": args.node_cpus, "cluster_start_seconds": cluster_seconds,
            "summary": summary.to_dict(), "rows_per_node": dict(per_node),
            "rows_per_actor": dict(collections.Counter(w[:8] + ":" + w.split(":")[1] for w in workers))}


def stop_nodes(nodes: list[subprocess.Popen[bytes]], temp: Path) -> None:
    """SIGINT each ``ray start --block`` (it shuts its node down), then kill what is left under ``temp``."""
    for node in reversed(nodes):
        node.send_signal(signal.SIGINT)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
    time.sleep(2)
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(temp).encode() in (entry / "cmdline").read_bytes():
                log(f"killing leftover process {entry.name} of our cluster")
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


def acceptance(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    args.docs = 7532
    model, posts, texts = prepare(args, work, tiny=True)
    local_s, probs, labels = single_process(model, posts)
    ray_s, summary, _ = ray_command(model, posts, work / "preds", "--workers", "2")
    result = agreement(work / "preds", probs, labels)
    result.update(docs=len(texts), single_process_seconds=local_s, ray_command_seconds=ray_s, summary=summary,
                  accepted=result["rows"] == result["unique_ids"] == 7532 and result["labels_equal"]
                  and result["max_abs_probability_difference"] <= 1e-5)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200, help="test posts to classify (default: 200)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead of GPT-2 small dimensions")
    parser.add_argument("--two-node", action="store_true", help="two Ray nodes on this machine")
    parser.add_argument("--node-cpus", type=int, default=2, help="--two-node: CPUs each node offers (default: 2; "
                        "with 1 each the pool is one actor, since a CPU stays free for reading)")
    parser.add_argument("--rows-per-call", type=int, default=16, help="--two-node: rows per actor call (default: "
                        "16; small, so that a short job still spreads over actors that start at different times)")
    parser.add_argument("--acceptance", action="store_true", help="tiny model over all 7,532 posts")
    parser.add_argument("--ray-flags", nargs="*", default=[], help="more flags for predict --engine ray")
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "20news-bydate.tar.gz"))
    parser.add_argument("--tokenizer", default=str(SHARED / "gpt2-tokenizer"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="gpt2clf-ray-bench-"))
    mode = "two-node" if args.two_node else "acceptance" if args.acceptance else "compare"
    before = load()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = (two_node if args.two_node else acceptance if args.acceptance else compare)(args, work)
    print(json.dumps({"mode": mode, "started": started, "load_before": before, "load_after": load(),
                      "cpu": cpu_description(), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
