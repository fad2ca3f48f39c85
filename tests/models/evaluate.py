"""Run the digits models on a TFLite runtime and keep MANIFEST.json up to date.

``python -m tests.models.evaluate [--runtime NAME] FILE...`` prints one JSON line per model
(a ``start`` line first, so a parent can tell which model crashed the process). The manifest
keeps, per file, its sha256, size, variant, converter and one result per runtime version it
was run on; results survive a rewrite only while the file's sha256 is unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = {
    "ai-edge-litert": ("ai_edge_litert", "ai_edge_litert.interpreter", ("ai-edge-litert",)),
    "tflite-runtime": ("tflite_runtime", "tflite_runtime.interpreter", ("tflite-runtime",)),
    "tensorflow": ("tensorflow", "tensorflow", ("tensorflow", "tensorflow-cpu")),
}
ALIASES = {
    "ai_edge_litert": "ai-edge-litert",
    "litert": "ai-edge-litert",
    "tflite_runtime": "tflite-runtime",
    "tf": "tensorflow",
}
MANIFEST_FILE = "MANIFEST.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


def active_runtime() -> str:
    """EDGELOOP_RUNTIME if set, else the first importable of the RUNTIMES modules, in order."""
    wanted = os.environ.get("EDGELOOP_RUNTIME", "").strip()
    if wanted:
        name = ALIASES.get(wanted, wanted)
        if name not in RUNTIMES:
            raise ValueError(f"EDGELOOP_RUNTIME={wanted!r}: expected one of {sorted(RUNTIMES)}")
        return name
    for name, (module, _, _) in RUNTIMES.items():
        if importlib.util.find_spec(module) is not None:
            return name
    raise ModuleNotFoundError("no TFLite runtime: install ai-edge-litert or tflite-runtime")


def runtime_version(name: str) -> str | None:
    for dist in RUNTIMES[name][2]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def interpreter(name: str, path: str | Path) -> Any:
    """A constructed (not yet allocated) interpreter of runtime ``name`` for ``path``."""
    module = importlib.import_module(RUNTIMES[name][1])
    if name == "tensorflow":
        module = module.lite
    return module.Interpreter(model_path=str(path))


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind == "f" or not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    scaled = np.round(x / float(scale) + int(zero))
    return np.clip(scaled, info.min, info.max).astype(dtype)


def predict(interp: Any, x: np.ndarray) -> np.ndarray:
    """Predicted class for each sample of ``x`` (float32, N x 8 x 8 x 1), one invoke per sample."""
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    preds = np.empty(len(x), dtype=np.int64)
    for i, sample in enumerate(x):
        interp.set_tensor(inp["index"], _quantize(sample[np.newaxis], inp))
        interp.invoke()
        preds[i] = int(np.argmax(interp.get_tensor(out["index"])[0]))
    return preds


def evaluate(name: str, path: Path, x: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """{"loaded", "failed_at" (construct, allocate_tensors, invoke), "error", "accuracy"}."""
    result: dict[str, Any] = {
        "loaded": False,
        "failed_at": "construct",
        "error": None,
        "accuracy": None,
    }
    try:
        interp = interpreter(name, path)
        result["failed_at"] = "allocate_tensors"
        interp.allocate_tensors()
        result["failed_at"] = "invoke"
        preds = predict(interp, x)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}".strip()
        return result
    result.update(loaded=True, failed_at=None, accuracy=round(float(np.mean(preds == labels)), 4))
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_in(python: str, files: list[Path], data: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """Evaluate ``files`` in child processes of ``python``; a crash is recorded, not fatal."""
    results: dict[str, dict[str, Any]] = {}
    label = "?"
    todo = [str(f) for f in files]
    while todo:
        cmd = [python, "-m", "tests.models.evaluate", "--data", str(data), *todo]
        proc = subprocess.run(
            cmd, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
        )
        started: str | None = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            label = f"{rec['runtime']} {rec['version']}"
            if rec["event"] == "start":
                started = rec["file"]
            else:
                results[rec["file"]] = rec["result"]
                started = None
        done = set(results)
        if proc.returncode != 0:
            if started is None:
                raise RuntimeError(f"{python} failed: {proc.stderr.strip()[-2000:]}")
            results[started] = {
                "loaded": False,
                "failed_at": "crashed",
                "accuracy": None,
                "error": f"process died with exit status {proc.returncode} "
                "(negative = killed by that signal)",
            }
            done.add(started)
        todo = [f for f in todo if f not in done]
    return label, results


def update_manifest(out: Path, info: dict[str, dict[str, str]], pythons: list[str]) -> Path:
    """Rewrite OUT/MANIFEST.json for every file present, running each model under each python."""
    path = out / MANIFEST_FILE
    old = json.loads(path.read_text())["files"] if path.exists() else {}
    files = sorted(
        p
        for p in [*out.glob("*"), *out.glob("legacy/*")]
        if p.suffix in (".tflite", ".npz", ".keras")
    )
    entries: dict[str, dict[str, Any]] = {}
    for p in files:
        rel = p.relative_to(out).as_posix()
        digest = sha256(p)
        prev = old.get(rel, {})
        entry: dict[str, Any] = {"sha256": digest, "size": p.stat().st_size}
        if prev.get("sha256") == digest or rel not in info:
            entry.update({k: v for k, v in prev.items() if k in ("variant", "converter", "set")})
        entry.update(info.get(rel, {}))
        entry["set"] = "legacy" if rel.startswith("legacy/") else "main"
        if p.suffix == ".tflite":
            entry["results"] = prev.get("results", {}) if prev.get("sha256") == digest else {}
        entries[rel] = entry
    models = [out / rel for rel in entries if rel.endswith(".tflite")]
    for python in pythons:
        label, results = run_in(python, models, out / "digits_data.npz")
        for file, result in results.items():
            entries[Path(file).relative_to(out).as_posix()]["results"][label] = result
    for entry in entries.values():
        if "results" in entry:
            entry["results"] = dict(sorted(entry["results"].items()))
    doc = {
        "about": "Made by tests/models/make_models.py; see tests/models/README.md. 'results' "
        "holds, per runtime version, whether the model loads and its held-out digits accuracy.",
        "files": entries,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate digits models on one TFLite runtime.")
    parser.add_argument("--runtime", default=None, help="default: EDGELOOP_RUNTIME or first found")
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "digits_data.npz")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    name = ALIASES.get(args.runtime, args.runtime) if args.runtime else active_runtime()
    version = runtime_version(name)
    with np.load(args.data) as npz:
        x, labels = npz["x"], npz["labels"]
    for file in args.files:
        head = {"runtime": name, "version": version, "file": str(file)}
        print(json.dumps({**head, "event": "start"}), flush=True)
        result = evaluate(name, file, x, labels)
        print(json.dumps({**head, "event": "result", "result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
