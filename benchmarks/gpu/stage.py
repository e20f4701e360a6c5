"""Move files bigger than one transfer to the GPU machine: split here, join and verify there.

    python benchmarks/gpu/stage.py split FILE DIR1 DIR2 [...]     # FILE in len(DIRS) parts: DIR1/NAME.part1, DIR2/NAME.part2, …
    python benchmarks/gpu/stage.py join FILE SHA256 DIR [DIR ...]  # NAME.part* found in the DIRs → FILE, checked against SHA256
    python benchmarks/gpu/stage.py check FILE SHA256               # exit 0 when FILE exists with that checksum

The GPU machine receives at most 64 MiB per call, so the 98 MB SmolLM2 GGUF travels in two calls (each carrying one
part, less than 30 s apart so the machine stays warm) and is joined there. ``join`` refuses a missing part, a part
count that does not match, or a checksum that does not match, naming what is wrong.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def split(path: Path, folders: list[Path]) -> list[Path]:
    size = path.stat().st_size
    per = -(-size // len(folders))
    parts = []
    with open(path, "rb") as source:
        for index, folder in enumerate(folders, 1):
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f"{path.name}.part{index}of{len(folders)}"
            with open(part, "wb") as target:
                remaining = per
                while remaining > 0:
                    chunk = source.read(min(1 << 20, remaining))
                    if not chunk:
                        break
                    target.write(chunk)
                    remaining -= len(chunk)
            parts.append(part)
    return parts


def join(path: Path, expected: str, folders: list[Path]) -> None:
    parts = sorted({p for folder in folders for p in folder.glob(f"{path.name}.part*of*")}, key=lambda p: p.name)
    if not parts:
        raise SystemExit(f"error: no {path.name}.part* in {', '.join(map(str, folders))}. Fix: carry both parts (stage-1 then the next call)")
    total = int(parts[0].name.rsplit("of", 1)[1])
    names = {p.name for p in parts}
    missing = [f"{path.name}.part{i}of{total}" for i in range(1, total + 1) if f"{path.name}.part{i}of{total}" not in names]
    if missing:
        raise SystemExit(f"error: {missing[0]} is missing. Fix: the machine went cold between the calls; run stage-1 again, then this call within 30 s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.joining")
    with open(tmp, "wb") as target:
        for index in range(1, total + 1):
            part = next(p for p in parts if p.name == f"{path.name}.part{index}of{total}")
            with open(part, "rb") as source:
                shutil.copyfileobj(source, target, 1 << 20)
    actual = sha256(tmp)
    if actual != expected:
        tmp.unlink()
        raise SystemExit(f"error: joined {path.name} has sha256 {actual}, expected {expected}. Fix: re-run prepare.sh here and carry fresh parts")
    tmp.replace(path)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("split", "join", "check"):
        raise SystemExit(__doc__)
    command, path = argv[0], Path(argv[1])
    if command == "split":
        for part in split(path, [Path(a) for a in argv[2:]]):
            print(f"{part} ({part.stat().st_size:,} bytes)")
        print(f"sha256 {sha256(path)}")
    elif command == "join":
        join(path, argv[2], [Path(a) for a in argv[3:]])
        print(f"joined {path} ({path.stat().st_size:,} bytes), sha256 verified")
    else:
        ok = path.is_file() and sha256(path) == argv[2]
        print(f"{path}: {'ok' if ok else 'missing or different'}")
        raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
