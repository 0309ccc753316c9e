"""Where an erasure's inputs came from: data versions (DVC hashes) and the code version.

    data_versions("data", ["digits", "shapes"])   # {"digits": {"dvc_md5": ..., "files_sha256": ...}}
    code_version()                                # {"git_commit": ..., "dirty": False, "package": "0.1.0"}
    dvc_object_uri("27b8...dir")                  # s3://clip-unlearn/dvc/files/md5/27/b8...dir (DVC's remote)
    folder_md5("models/reference")                # DVC's .dir md5, as dvc.lock records it
    git_source_tags()                             # MLflow's mlflow.source.git.* run tags
"""

from __future__ import annotations

import configparser
import hashlib
import json
import subprocess
from pathlib import Path

import yaml

from clip_unlearn import __version__

REPO = Path(__file__).resolve().parents[3]


def dvc_lock_md5s(lock: Path = REPO / "dvc.lock") -> dict[str, str]:
    """{output path: md5} of every stage's outs in dvc.lock ({} without one)."""
    if not lock.is_file():
        return {}
    out = {}
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for o in stage.get("outs", []):
            out[str(Path(o["path"]))] = o.get("md5", "")
    return out


def tree_sha256(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every file: any changed byte changes it."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def folder_md5(folder: str | Path) -> str:
    """DVC's hash of a folder output (the `.dir` md5 that dvc.lock records)."""
    folder = Path(folder)
    entries = [{"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(folder).as_posix()}
               for f in sorted(folder.rglob("*")) if f.is_file()]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def data_versions(root: str | Path, names: list[str], lock: Path = REPO / "dvc.lock") -> dict:
    md5s = dvc_lock_md5s(lock)
    out = {}
    for name in names:
        folder = Path(root) / name
        if not folder.is_dir():
            continue
        rel = str(folder.resolve().relative_to(REPO)) if folder.resolve().is_relative_to(REPO) else None
        out[name] = {"files_sha256": tree_sha256(folder), "dvc_md5": md5s.get(rel) if rel else None}
    return out


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> dict:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src", "flows", "tasks")
    return {"git_commit": commit, "dirty": bool(dirty) if commit else None, "package": __version__}


def git_source_tags(entry_point: str) -> dict[str, str]:
    """The run tags MLflow's UI reads for a run's source (what git checkout made it, from where)."""
    tags = {"mlflow.source.type": "JOB", "mlflow.source.name": entry_point,
            "mlflow.source.git.commit": _git("rev-parse", "HEAD"), "mlflow.source.git.branch":
            _git("rev-parse", "--abbrev-ref", "HEAD"), "mlflow.source.git.repoURL": _git("remote", "get-url", "origin")}
    return {k: v for k, v in tags.items() if v}


def dvc_object_uri(md5: str | None, config: Path = REPO / ".dvc" / "config") -> str | None:
    """Where DVC's default remote keeps the object with this md5 (DVC 3 layout files/md5/xx/rest)."""
    if not md5 or not config.is_file():
        return None
    cp = configparser.ConfigParser()
    cp.read(config)
    name = cp.get("core", "remote", fallback=None)
    url = cp.get(f'remote "{name}"', "url", fallback=None) if name else None
    return f"{url.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}" if url else None
