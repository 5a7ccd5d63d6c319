"""The ``gpt2clf`` command line: parsing, messages and exit codes.

Commands::

    gpt2clf train     fine-tune a classifier and write a run folder
    gpt2clf evaluate  score a saved model folder on a labelled split
    gpt2clf predict   classify new text with a saved model folder
    gpt2clf export    write a model folder as an ONNX file (checked against PyTorch)
    gpt2clf serve     an HTTP API and a web page for a saved model folder
    gpt2clf data stats  documents, classes and token lengths of a dataset
    gpt2clf explain   which tokens led a saved model to its label (integrated gradients, attention)
    gpt2clf report    one self-contained HTML report of a finished run

Exit codes: 0 success, 2 a user error (one message on stderr, no traceback unless
``--debug``), 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gpt2clf.config import (
    DATASET_FIELDS,
    PRESET_CHOICES,
    SERVE_HOST,
    SERVE_PORT,
    Config,
    InferenceSettings,
    ServeAccess,
    ServeSettings,
    choose_preset,
)
from gpt2clf.distributed.settings import ClusterSettings
from gpt2clf.errors import PerformanceWarning, SecurityWarning, UserError
from gpt2clf.flags import (
    add_dataclass_flags,
    config_overrides,
    settings_from_args,
    training_field_groups,
)

__all__ = ["build_parser", "config_from_args", "main", "settings_from_args", "user_error_message"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# Config fields that say how a long document is read (data stats reports what they leave unread).
READING_FIELDS = ("long_documents", "chunk_stride", "max_chunks", "chunk_token_budget")

TRAIN_EXAMPLES = """\
examples:
  # fine-tune GPT-2 on 20 Newsgroups (downloads model and data on first use)
  gpt2clf train --output runs/20ng
  # the published seed recipe (GPU recommended)
  gpt2clf train --preset blog --output runs/blog --precision bf16-mixed
  # a few minutes on a CPU: frozen backbone, feature cache, subset
  gpt2clf train --preset cpu-quick --output runs/quick
  # full fine-tuning on a CPU: micro-batches of 4 make the same batch of 16 faster and 3x smaller
  gpt2clf train --batch-size 4 --accumulate-grad-batches 4 --output runs/cpu
  # train GPT-2's top 2 layers; the 10 frozen ones run once into the feature cache
  gpt2clf train --train-top-layers 2 --output runs/top2
  # read whole posts in overlapping 512-token windows, and mix in a TF-IDF model
  gpt2clf train --long-documents chunks --max-chunks 8 --fusion tfidf --output runs/chunks
  # offline, with local folders
  gpt2clf train --backbone ./gpt2 --data-dir ./20news-bydate.tar.gz --output runs/offline
  # your own data
  gpt2clf train --train-file reviews.csv --text-column body --label-column stars --output runs/reviews
  # several text fields, joined as "subject: ...\\n\\nbody: ..."; Parquet files work like CSV
  gpt2clf train --train-file mail.parquet --text-column subject --text-column body --output runs/mail
  # several labels per document (CSV cells like sports|politics, JSON lists in JSONL)
  gpt2clf train --train-file tags.csv --multi-label --output runs/tags
  # a Hugging Face dataset (pip install 'gpt2clf[datasets]')
  gpt2clf train --dataset imdb --freeze backbone --output runs/imdb
  gpt2clf train --dataset glue:sst2 --text-column sentence --output runs/sst2
  # the plan and parameter counts, without training
  gpt2clf train --preset blog --dry-run --json
  # continue an interrupted run
  gpt2clf train --output runs/20ng --resume
  # on a Ray cluster (pip install 'gpt2clf[ray]'): 4 workers with a GPU each, checkpoints in S3
  gpt2clf train --engine ray --address auto --workers 4 --gpus-per-worker 1 \\
      --storage-path s3://bucket/runs --output runs/ray
"""

EVALUATE_EXAMPLES = """\
examples:
  gpt2clf evaluate runs/20ng/model
  gpt2clf evaluate runs/20ng/model --split validation --json
  gpt2clf evaluate runs/reviews/model --test-file holdout.csv --output reports/holdout
"""

PREDICT_EXAMPLES = """\
examples:
  gpt2clf predict runs/20ng/model "My X server crashes when I resize an xterm"
  gpt2clf predict runs/20ng/model --file post.txt --top-k 5
  gpt2clf predict runs/20ng/model --input corpus.jsonl --text-column body --json > predictions.jsonl
  gpt2clf predict runs/mail/model --input mail.parquet --text-column subject --text-column body
  # faster on a CPU: an int8 copy of the model (probabilities move by about 0.01)
  gpt2clf predict runs/20ng/model --input corpus.jsonl --int8 --json > predictions.jsonl
  # through ONNX Runtime, with the file 'gpt2clf export' wrote (default MODEL_DIR/model.onnx)
  gpt2clf predict runs/20ng/model --runtime onnx --input corpus.jsonl --json > predictions.jsonl
  gpt2clf predict runs/20ng/model --engine ray --input posts/ --id-column id --output preds/  # Ray: to Parquet
"""

EXPORT_EXAMPLES = """\
examples:
  # writes runs/20ng/model/model.onnx, the default of 'predict --runtime onnx'
  gpt2clf export runs/20ng/model --format onnx
  gpt2clf export runs/20ng/model --format onnx --output deploy/20ng.onnx --json
  # also check parity on your own texts (besides the built-in samples)
  gpt2clf export runs/20ng/model --check-texts "GPU drivers for X11?" "The Bruins won 3-2"
"""

INT8_HELP = ("CPU only: run an int8 copy of the model (dynamic quantization), about 1.4x faster; "
             "probabilities move by about 0.01")

SERVE_EXAMPLES = """\
examples:
  # the API and the web page on http://127.0.0.1:8000 (OpenAPI docs at /docs)
  gpt2clf serve runs/20ng/model
  curl -s localhost:8000/v1/classify -H 'content-type: application/json' \\
       -d '{"texts": ["My X server crashes when I resize an xterm"], "top_k": 3}'
  # every interface needs a key (requests send 'Authorization: Bearer KEY'); bigger merged batches
  (umask 077; openssl rand -hex 32 > key.txt)
  gpt2clf serve runs/20ng/model --host 0.0.0.0 --port 8080 --api-key-file key.txt --max-batch-tokens 16384
  # one request per model call (no merging), a small queue and a short timeout
  gpt2clf serve runs/20ng/model --no-micro-batching --max-queue 16 --request-timeout-s 5
Stop it with Ctrl-C or SIGTERM: requests in flight finish first, then it exits 0.
Needs the serve extra: pip install "gpt2clf[serve]"
"""

EXPLAIN_EXAMPLES = """\
examples:
  gpt2clf explain runs/20ng/model "My X server crashes when I resize an xterm"
  # towards another label, more integration steps, as JSON (one object per document)
  gpt2clf explain runs/20ng/model --file post.txt --label sci.space --steps 200 --json
  # a page with the text shaded by attribution and a per-head attention heat map
  gpt2clf explain runs/20ng/model --file post.txt --html why.html
  # what our blocks route to the pooled token, no Captum needed
  gpt2clf explain runs/20ng/model "hockey playoffs tonight" --method attention
"""

REPORT_EXAMPLES = """\
examples:
  gpt2clf report runs/20ng                      # writes runs/20ng/report.html
  gpt2clf report runs/20ng --output /tmp/20ng.html
"""

STATS_EXAMPLES = """\
examples:
  gpt2clf data stats
  GPT2CLF_20NG=./20news-bydate.tar.gz gpt2clf data stats --tokenizer ./gpt2-tokenizer --json
  gpt2clf data stats --train-file reviews.csv --plot stats.png
"""


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------
def command_parser(commands: Any, name: str, help_text: str, description: str, examples: str
                   ) -> argparse.ArgumentParser:
    """A subcommand's parser: its help line, description, examples epilog and ``--debug``."""
    # allow_abbrev=False: a mistyped flag (--learning-rat) is refused, not taken as the flag it starts.
    parser = commands.add_parser(name, help=help_text, description=description, epilog=examples, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return parser


def add_model_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder written by 'gpt2clf train'")


def add_train_parser(commands: Any) -> None:
    train = command_parser(commands, "train", "fine-tune a classifier and write a run folder",
        "Fine-tune a classifier. Settings are filled in this order: "
        "defaults, --preset, --config FILE.yaml, then the flags below.",
        TRAIN_EXAMPLES)
    run = train.add_argument_group("run")
    run.add_argument("--output", "-o", metavar="RUN_DIR", help="run folder to write (required unless --dry-run)")
    run.add_argument("--preset", choices=PRESET_CHOICES,
                     help="a named recipe (default: auto: best where a CUDA GPU is present, else cpu; the plain "
                          "defaults if you set one of the recipes' settings yourself; none: the plain defaults)")
    run.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (default: none)")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --output")
    run.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    run.add_argument("--dry-run", action="store_true", help="build data and model, print the plan, train nothing")
    run.add_argument("--json", action="store_true", help="print the plan or final metrics as JSON")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--no-report", action="store_true", help="skip RUN_DIR/report.html at the end of the run")
    for title, names in training_field_groups():
        add_dataclass_flags(train, Config, names, title)
    add_dataclass_flags(train, ClusterSettings, None, "cluster (--engine ray)")


def add_evaluate_parser(commands: Any) -> None:
    evaluate = command_parser(commands, "evaluate", "score a saved model folder on a labelled split",
        "Accuracy, macro-F1, loss, a per-class table and a confusion "
        "matrix. By default on the dataset recorded with the model.",
        EVALUATE_EXAMPLES)
    add_model_dir(evaluate)
    evaluate.add_argument("--split", choices=["test", "validation", "train"], default="test",
                          help="which split to score (default: test)")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar (stderr)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--output", metavar="DIR", help="write metrics.json, report.txt and confusion_matrix.png")
    add_dataclass_flags(evaluate, InferenceSettings, title="inference")
    evaluate.add_argument("--int8", action="store_true", help=INT8_HELP)
    add_dataclass_flags(evaluate, Config, [*DATASET_FIELDS, "max_eval_samples"],
                        "data (default: as recorded with the model)")


def add_predict_parser(commands: Any) -> None:
    predict = command_parser(commands, "predict", "classify new text with a saved model folder",
        "Label and top-k probabilities for each document.",
        PREDICT_EXAMPLES)
    add_model_dir(predict)
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="documents to classify")
    predict.add_argument("--file", action="append", default=[], metavar="F",
                         help="a text file to classify as one document (repeatable)")
    predict.add_argument("--input", metavar="CORPUS", help="a .jsonl, .csv, .tsv or .parquet file: one document "
                         "per row, streamed in batches (--engine ray: also a folder, glob or URI)")
    predict.add_argument("--text-column", action="append", default=None, metavar="COLUMN",
                         help="column of --input holding the text; repeat for several fields, joined as in "
                         "training (default: text)")
    predict.add_argument("--no-progress", action="store_true", help="hide the progress bar (stderr)")
    predict.add_argument("--top-k", type=int, default=3, help="how many top labels to show (default: 3)")
    predict.add_argument("--json", action="store_true",
                         help="one JSON object per line: label, probabilities, top_k, id (and labels, the chosen "
                         "ones, for a multi-label model)")
    add_dataclass_flags(predict, InferenceSettings, title="inference")
    predict.add_argument("--int8", action="store_true", help=INT8_HELP)
    predict.add_argument("--runtime", default="torch", metavar="{torch,onnx}",
                         help="torch, or onnx: ONNX Runtime on the CPU with an exported file (default: torch)")
    predict.add_argument("--onnx-model", metavar="PATH", help="the ONNX file for --runtime onnx "
                         "(default: MODEL_DIR/model.onnx, where 'gpt2clf export' writes it)")
    cluster = predict.add_argument_group("beyond one machine (--engine ray: --input files to Parquet files)")
    cluster.add_argument("--output", metavar="DIR", help="the folder (or s3://... URI) for the Parquet files")
    cluster.add_argument("--id-column", metavar="COLUMN", help="column of --input naming each row, written beside "
                         "its prediction (default: a 'row' column, the row's 0-based position in the input)")
    cluster.add_argument("--overwrite", action="store_true", help="replace the Parquet files in a non-empty --output")
    add_dataclass_flags(cluster, ClusterSettings, ["engine", "workers", "gpus_per_worker", "address"])


def add_export_parser(commands: Any) -> None:
    export = command_parser(commands, "export", "write a model folder as an ONNX file (checked against PyTorch)",
        "Export to ONNX with dynamic batch and sequence dims: inputs input_ids\n"
        "and attention_mask (int64 [batch, seq]), output logits ([batch, labels]); labels,\n"
        "max_length and padding side in the file's metadata. The file is kept only if ONNX\n"
        "Runtime's probabilities match PyTorch's within 1e-3 on sample texts.",
        EXPORT_EXAMPLES)
    add_model_dir(export)
    export.add_argument("--format", default="onnx", metavar="{onnx}", help="the export format (default: onnx)")
    export.add_argument("--output", "-o", metavar="FILE.onnx", help="where to write (default: MODEL_DIR/model.onnx)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or more (default: 18)")
    export.add_argument("--check-texts", nargs="+", default=[], metavar="TEXT",
                        help="more texts to check parity on, besides the built-in samples")
    export.add_argument("--json", action="store_true", help="print the export report as JSON")


def add_serve_parser(commands: Any) -> None:
    serve = command_parser(commands, "serve", "an HTTP API and a web page for a saved model folder",
        "Serve POST /v1/classify, GET /v1/model, /healthz, /readyz, /metrics "
        "and a web page at /. Concurrent requests share model calls (micro-batching).",
        SERVE_EXAMPLES)
    add_model_dir(serve)
    serve.add_argument("--host", default=SERVE_HOST, help=f"address to listen on; one other than loopback needs "
                       f"an API key or --allow-unauthenticated (default: {SERVE_HOST})")
    serve.add_argument("--port", type=int, default=SERVE_PORT, help=f"port to listen on (default: {SERVE_PORT})")
    add_dataclass_flags(serve, InferenceSettings, title="inference")
    add_dataclass_flags(serve, ServeSettings, title="batching and limits")
    add_dataclass_flags(serve, ServeAccess, title="access (the key: GPT2CLF_API_KEY or --api-key-file, never a flag)")


def add_explain_parser(commands: Any) -> None:
    explain = command_parser(commands, "explain", "which tokens led a saved model to its label",
        "Per-token attributions towards the predicted label (or --label): "
        "integrated gradients on the input embeddings (Captum), or the attention our "
        "blocks pay from the pooled position. Runs in float32 (gradients need it).",
        EXPLAIN_EXAMPLES)
    add_model_dir(explain)
    explain.add_argument("texts", nargs="*", metavar="TEXT", help="documents to explain")
    explain.add_argument("--file", action="append", default=[], metavar="F",
                         help="a text file to explain as one document (repeatable)")
    explain.add_argument("--label", metavar="L", help="the label to explain (default: the predicted one)")
    explain.add_argument("--method", default="integrated-gradients", metavar="METHOD",
                         help="integrated-gradients or attention (default: integrated-gradients)")
    explain.add_argument("--steps", default="50", metavar="N",
                         help="integration steps of integrated gradients (default: 50)")
    explain.add_argument("--top-k", type=int, default=5, help="tokens listed per document (default: 5)")
    explain.add_argument("--html", metavar="OUT.html", help="also write one self-contained HTML page")
    explain.add_argument("--json", action="store_true", help="one JSON object per line: label, probabilities, "
                         "tokens, attributions, method, delta, ...")
    add_dataclass_flags(explain, InferenceSettings, ["device"])


def add_report_and_data_parsers(commands: Any) -> None:
    report = command_parser(commands, "report", "one self-contained HTML report of a finished run",
        "Config, data summary, learning curves, metrics, confusion, the "
        "most confident test errors with highlighted tokens, timings and hardware.",
        REPORT_EXAMPLES)
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by 'gpt2clf train --output'")
    report.add_argument("--output", "-o", metavar="FILE.html", help="where to write (default: RUN_DIR/report.html)")

    data = commands.add_parser("data", help="inspect datasets", allow_abbrev=False).add_subparsers(dest="data_command",
                                                                               metavar="SUBCOMMAND", required=True)
    stats = command_parser(data, "stats", "documents, classes and token lengths of a dataset",
        "Statistics of the dataset's own splits (before any validation split).",
        STATS_EXAMPLES)
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.add_argument("--plot", metavar="FILE.png", help="write class balance and token-length histogram")
    stats.add_argument("--tokenizer", default="gpt2", help="hub id or folder of the tokenizer (default: gpt2)")
    stats.add_argument("--max-length", default="512", help="length to report the share above (default: 512)")
    add_dataclass_flags(stats, Config, [*DATASET_FIELDS, "multi_label"], "data")
    add_dataclass_flags(stats, Config, READING_FIELDS, "how the model would read long documents (what goes unread)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2clf",
        allow_abbrev=False,
        description="Fine-tune a pretrained GPT-2 with custom transformer blocks for text classification.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'gpt2clf COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in (add_train_parser, add_evaluate_parser, add_predict_parser, add_export_parser,
                        add_serve_parser, add_explain_parser, add_report_and_data_parsers):
        add_command(commands)
    return parser


def config_from_args(args: argparse.Namespace, say: Any = None) -> Config:
    """Defaults, then --preset (auto: the recipe for this machine, the line saying why goes to ``say``),
    then --config, then flags."""
    overrides = config_overrides(args)
    preset = args.preset or "auto"
    if preset == "auto":
        explicit = set(overrides) | set(Config.yaml_keys(args.config) if args.config else ())
        preset, why = choose_preset(explicit, gpu=None if args.accelerator in (None, "auto", "gpu", "cuda") else False)
        if say is not None:
            say(why)
    config = Config.from_preset(preset)
    if args.config:
        config = Config.from_yaml(args.config, base=config)
    return config.updated(**overrides)


# ---------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------
def command_train(args: argparse.Namespace) -> int:
    from gpt2clf.training.loop import train

    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    config = asked_resume_config(args) if args.resume else config_from_args(args, say)
    if not args.output and not args.dry_run:
        raise UserError("train needs --output RUN_DIR (or --dry-run)")
    cluster = settings_from_args(ClusterSettings, args)
    if cluster.engine == "ray":
        from gpt2clf.distributed.train import plan_on_ray, train_on_ray

        result = (plan_on_ray(config, cluster, output_dir=args.output, report=not args.no_report) if args.dry_run
                  else train_on_ray(config, args.output, cluster, overwrite=args.overwrite, resume=args.resume,
                                    notify=say, report=not args.no_report))
    else:
        result = train(config, args.output or ".", overwrite=args.overwrite, resume=args.resume,
                       dry_run=args.dry_run, enable_progress_bar=not args.no_progress, notify=say,
                       report=not args.no_report)
    if not result:  # a DDP worker process: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.dry_run:
        print_plan(result)
    else:
        test = result["test"]
        if "micro_f1" in test:  # multi-label
            print(f"test micro-F1 {test['micro_f1']:.4f}  macro-F1 {test['macro_f1']:.4f}  subset accuracy "
                  f"{test['subset_accuracy']:.4f}  loss {test['loss']:.4f}  ({test['documents']} documents)")
        else:
            print(f"test accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  loss {test['loss']:.4f}  "
                  f"({test['documents']} documents)")
        print(f"model saved to {Path(args.output) / 'model'}")
        if not args.no_report:
            print(f"report: {Path(args.output) / 'report.html'}")
    return 0


def asked_resume_config(args: argparse.Namespace) -> Config:
    """The config --resume asks for: the run's saved config.yaml with the flags given on top (or, with
    --preset or --config, those); train() refuses it if it changes what the run computes, and continues with
    gpt2clf.training.plan.resumed_config."""
    from gpt2clf.training.plan import saved_run_config

    if not args.output:
        raise UserError("--resume needs --output RUN_DIR, the run folder to continue")
    if args.preset or args.config:
        return config_from_args(args)
    return saved_run_config(args.output).updated(**config_overrides(args))


def print_plan(plan: dict[str, Any]) -> None:
    from gpt2clf.training.plan import describe_estimate

    counts = plan["parameters"]
    print(f"recipe     {plan['config']['preset']}")
    print(f"backbone   {plan['backbone']}")
    print(f"precision  {plan['precision']}")
    print("parameters " + "  ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    data = plan["data"]
    if "error" in data:
        print(f"data       not loaded: {data['error']}")
    else:
        print(f"data       {data['num_classes']} classes; train {data['train']}, validation {data['validation']}, "
              f"test {data['test']} documents; {data['train_tokens']} training tokens")
        reading = data["reading"]
        unread = ", ".join(f"{name} {reading[name]['unread_share']:.1%} ({reading[name]['partly_read']} documents "
                           "read in part)" for name in ("train", "validation", "test") if name in reading)
        print(f"reads      {reading['windows']}; tokens unread: {unread}")
        steps = plan["optimizer_steps"]
        print(f"steps      {steps['per_epoch']} per epoch, {steps['total']} in all")
        print(f"time       {describe_estimate(plan['estimated_seconds'])}")
    if "cluster" in plan:
        where = plan["cluster"]
        print(f"ray        {where['workers']} worker(s), {where['cpus_per_worker']} CPU and "
              f"{where['gpus_per_worker']:g} GPU each, on {where['address']}; checkpoints in "
              f"{where['storage_path']} ({where['estimate_note']})")


def command_evaluate(args: argparse.Namespace) -> int:
    from gpt2clf.infer.evaluation import evaluate_folder
    from gpt2clf.report.evaluation_files import save_evaluation
    from gpt2clf.report.progress_bar import ProgressBar

    inference = settings_from_args(InferenceSettings, args)
    with ProgressBar(f"evaluate {args.split}", enabled=not args.no_progress) as progress:
        result = evaluate_folder(args.model_dir, split=args.split,
                                 data_overrides=config_overrides(args, [*DATASET_FIELDS, "max_eval_samples"]),
                                 device=inference.device, precision=inference.precision, int8=args.int8,
                                 batch_size=inference.batch_size, progress=progress)
    written = save_evaluation(result, args.output) if args.output else []
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.report())
        if written:
            print(f"\nwrote {written[0]}, {' and '.join(path.name for path in written[1:])}")
    return 0


def command_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    from gpt2clf.data.labelled_files import iter_documents
    from gpt2clf.report.progress_bar import ProgressBar

    inference = settings_from_args(InferenceSettings, args)
    cluster = settings_from_args(ClusterSettings, args)
    if cluster.engine == "ray" or args.output or args.id_column:
        return command_predict_ray(args, inference, cluster)
    if not (args.texts or args.file or args.input):
        raise UserError("nothing to classify: give TEXT arguments, --file F or --input CORPUS")
    if args.runtime == "onnx":
        from gpt2clf.infer.onnx_runtime import OnnxPredictor

        predictor: Any = OnnxPredictor.from_folder(args.model_dir, args.onnx_model, batch_size=inference.batch_size,
                                                   device=inference.device, int8=args.int8)
    elif args.runtime == "torch":
        from gpt2clf.infer.predictor import Predictor

        if args.onnx_model:
            raise UserError("--onnx-model needs --runtime onnx")
        predictor = Predictor.from_folder(args.model_dir, batch_size=inference.batch_size, device=inference.device,
                                          precision=inference.precision, int8=args.int8)
    else:
        raise UserError(f"unknown --runtime {args.runtime!r}; choose torch or onnx")
    pending: collections.deque[str] = collections.deque()  # ids of documents read but not yet printed

    def texts() -> Iterator[str]:
        for doc_id, text in iter_documents(args.texts, args.file, args.input, args.text_column or ["text"]):
            pending.append(doc_id)
            yield text

    with ProgressBar("predict", enabled=not args.no_progress) as progress:
        for prediction in predictor.predict(texts(), top_k=args.top_k, progress=progress):
            doc_id = pending.popleft()
            if args.json:
                progress.echo(json.dumps({"id": doc_id, **prediction.to_dict()}))
            else:
                ranked = "  ".join(f"{name} {p:.3f}" for name, p in prediction.top_k)
                shown = prediction.label if prediction.labels is None else "|".join(prediction.labels) or "(none)"
                progress.echo(f"{doc_id}\t{shown}\t{ranked}")
    return 0


def command_predict_ray(args: argparse.Namespace, inference: InferenceSettings, cluster: ClusterSettings) -> int:
    from gpt2clf.distributed.predict import PredictOptions, predict_files

    if cluster.engine != "ray" or args.texts or args.file or not (args.input and args.output):
        raise UserError("--engine ray classifies --input CORPUS into --output DIR (both needed; no TEXT or --file), "
                        "and --output and --id-column go with it")
    options = PredictOptions(batch_size=inference.batch_size, precision=inference.precision, device=inference.device,
                             int8=args.int8, runtime=args.runtime, onnx_model=args.onnx_model)
    summary = predict_files(args.model_dir, args.input, args.output, text_column=args.text_column or ["text"],
                            id_column=args.id_column, cluster=cluster, options=options, overwrite=args.overwrite)
    print(json.dumps(summary.to_dict()) if args.json else summary.line())
    return 0


def command_export(args: argparse.Namespace) -> int:
    from gpt2clf.infer.export import EXPORT_FORMATS, export_onnx

    if args.format not in EXPORT_FORMATS:
        raise UserError(f"unknown export --format {args.format!r}; supported: {', '.join(EXPORT_FORMATS)}")
    report = export_onnx(args.model_dir, args.output, opset=args.opset, check_texts=args.check_texts)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def command_serve(args: argparse.Namespace) -> int:
    from gpt2clf.serve.app import serve

    serve(args.model_dir, settings_from_args(ServeSettings, args), host=args.host, port=args.port,
          inference=settings_from_args(InferenceSettings, args), access=settings_from_args(ServeAccess, args))
    return 0


def command_data_stats(args: argparse.Namespace) -> int:
    from gpt2clf.data.stats import describe_dataset
    from gpt2clf.report.plots import plot_dataset_stats

    config = Config().updated(**config_overrides(args, [*DATASET_FIELDS, "multi_label", *READING_FIELDS]),
                              max_length=args.max_length)
    stats = describe_dataset(config, args.tokenizer, config.max_length)
    if args.plot:
        plot_dataset_stats(stats, args.plot)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"{stats['num_classes']} classes; token lengths under {args.tokenizer}, max_length "
              f"{config.max_length}; the model reads {stats['reads']}")
        for name, split in stats["splits"].items():
            tokens = split["tokens"]
            unread = split["unread"]
            print(f"{name:>5}: {split['documents']} documents; tokens p50 {tokens['p50']:.0f}, p90 "
                  f"{tokens['p90']:.0f}, p99 {tokens['p99']:.0f}; {tokens['over_max_length']:.1%} over max_length; "
                  f"unread: {unread['unread_share']:.1%} of tokens ({unread['partly_read']} documents read in part)")
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


def command_explain(args: argparse.Namespace) -> int:
    from gpt2clf.data.labelled_files import iter_documents
    from gpt2clf.report.explain import explain_folder

    try:
        steps = int(args.steps)
    except ValueError:
        raise UserError(f"--steps must be an integer, got {args.steps!r}") from None
    texts = [text for _, text in iter_documents(args.texts, args.file)]
    explanations = explain_folder(args.model_dir, texts, method=args.method, label=args.label, steps=steps,
                                  device=settings_from_args(InferenceSettings, args).device, html=args.html)
    for exp in explanations:
        print(json.dumps(exp.to_dict()) if args.json else exp.summary(args.top_k))
    if args.html and not args.json:
        print(f"wrote {args.html}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from gpt2clf.report.run_report import write_run_report

    print(f"wrote {write_run_report(args.run_dir, args.output)}")
    return 0


COMMANDS = {"train": command_train, "evaluate": command_evaluate, "predict": command_predict,
            "export": command_export, "serve": command_serve, "explain": command_explain,
            "report": command_report}


def quiet_libraries() -> None:
    """Keep the terminal for our own output: no library tips, banners or load bars."""
    import logging

    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers reads these when it is first imported; importing it here just to quiet it
    # would cost ~0.5 s, and a predict with a GPT-2 model folder never imports it at all.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (gpt2clf used as a library): tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    """Our own warnings as one ``gpt2clf: warning:`` line; others as Python shows them."""
    from gpt2clf.data.text_dataset import DataWarning

    if issubclass(category, (DataWarning, PerformanceWarning, SecurityWarning)):
        print(f"gpt2clf: warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gpt2clf`` command; returns the exit code."""
    quiet_libraries()
    warnings.showwarning = show_warning
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse stops filling TEXT ... at the first option, so `predict MODEL --json "text"`
    # leaves "text" over; documents after options are still documents.
    if extras and args.command in ("predict", "explain") and not any(e.startswith("-") for e in extras):
        args.texts = [*args.texts, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    handler = command_data_stats if args.command == "data" else COMMANDS[args.command]
    debug = getattr(args, "debug", False) or os.environ.get("GPT2CLF_DEBUG") == "1"
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("gpt2clf: interrupted; a run continues from its last checkpoint with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # every user mistake becomes one line and exit code 2
        message = user_error_message(err)
        if message is None or debug:
            raise
        print(f"gpt2clf: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def user_error_message(err: BaseException) -> str | None:
    """One line for errors caused by the user's input; None for bugs (which keep their traceback)."""
    if isinstance(err, UserError):
        return str(err)
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover
        MisconfigurationException = ()  # type: ignore[assignment]
    if isinstance(err, MisconfigurationException):
        return str(err).splitlines()[0] + " (check --accelerator, --devices, --strategy and --precision)"
    if isinstance(err, (PermissionError, IsADirectoryError, NotADirectoryError)):
        return f"cannot write or read {err.filename}: {err.strerror}"
    return None


if __name__ == "__main__":
    sys.exit(main())
