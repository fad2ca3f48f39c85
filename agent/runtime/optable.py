"""Build the operator-support table of a TFLite runtime from evidence.

Run under the Python environment of the runtime to measure::

    python -m agent.runtime.optable --runtime tflite-runtime --out
    agent/runtime/data/ops_tflite-runtime_2.14.0.json

For every builtin operator code 0..255 and version 1..20 this builds a minimal flatbuffer (one
operator code in the opcode table, an empty subgraph) with the ``tflite`` schema builders and
constructs the runtime's Interpreter from it. Op resolution happens while the interpreter is
built, over the whole opcode table (``InterpreterBuilder::BuildLocalIndexToRegistrationMapping``),
before any kernel code runs: a failure reads "Didn't find op for builtin opcode 'X' version 'N'"
or "Op builtin_code out of range: N"; anything else means the runtime resolves that op/version.
Custom operator names are checked with one real node, because unresolved custom ops are only
reported at ``allocate_tensors()`` ("Encountered unresolved custom op").

Checks run in child processes, many per child; a child that crashes is replaced and the check
it was on is recorded as "crashed", so a native fault cannot stop the sweep.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tflite

from agent.runtime.modelfile import CUSTOM_CODE, builtin_name

log = logging.getLogger(__name__)

# flatbuffers ships no type information; importing it as a module object keeps mypy --strict quiet.
flatbuffers: Any = importlib.import_module("flatbuffers")
flexbuffers: Any = importlib.import_module("flatbuffers.flexbuffers")

MAX_CODE = 255
MAX_VERSION = 20
CUSTOM_CANDIDATES = (
    "TFLite_Detection_PostProcess",
    "Mfcc",
    "AudioSpectrogram",
    "edgetpu-custom-op",
    "edgeloop-no-such-op",  # control: must come out unresolved
)
MISSING_MARKERS = ("Didn't find op for builtin opcode", "Op builtin_code out of range")
UNRESOLVED_CUSTOM = "Encountered unresolved custom op"
RESULT_PREFIX = "OPTABLE-RESULT "
RUNTIMES: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (module holding Interpreter, distributions to read the version from)
    "ai-edge-litert": ("ai_edge_litert.interpreter", ("ai-edge-litert",)),
    "tflite-runtime": ("tflite_runtime.interpreter", ("tflite-runtime",)),
    "tensorflow": ("tensorflow.lite.python.interpreter", ("tensorflow-cpu", "tensorflow")),
}


def build_probe_model(
    code: int,
    version: int,
    custom_code: str | None = None,
    with_node: bool = False,
    deprecated_code: int | None = None,
) -> bytes:
    """A valid .tflite with one operator code (and optionally one node without tensors).

    ``deprecated_code`` overrides the int8 ``deprecated_builtin_code`` field, which converters set
    to ``min(code, 127)`` (schema v3a); the runtime takes the max of the two fields.
    """
    b = flatbuffers.Builder(256)
    custom = b.CreateString(custom_code) if custom_code is not None else None
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(
        b, min(code, 127) if deprecated_code is None else deprecated_code
    )
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, version)
    if custom is not None:
        tflite.OperatorCodeAddCustomCode(b, custom)
    opcode = tflite.OperatorCodeEnd(b)
    nodes = []
    if with_node:
        # Custom kernels parse their options in init(): give them an empty FlexBuffer map.
        options = b.CreateByteVector(bytes(flexbuffers.Dumps({})))
        tflite.OperatorStartInputsVector(b, 0)
        ins = b.EndVector()
        tflite.OperatorStartOutputsVector(b, 0)
        outs = b.EndVector()
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, 0)
        tflite.OperatorAddInputs(b, ins)
        tflite.OperatorAddOutputs(b, outs)
        tflite.OperatorAddCustomOptions(b, options)
        nodes.append(tflite.OperatorEnd(b))
    subgraph = _empty_subgraph(b, nodes)
    tflite.BufferStart(b)
    buffer0 = tflite.BufferEnd(b)
    opcodes = _vector(b, tflite.ModelStartOperatorCodesVector, [opcode])
    subgraphs = _vector(b, tflite.ModelStartSubgraphsVector, [subgraph])
    buffers = _vector(b, tflite.ModelStartBuffersVector, [buffer0])
    desc = b.CreateString("edgeloop optable probe")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, opcodes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffers)
    tflite.ModelAddDescription(b, desc)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _vector(b: Any, start: Callable[[Any, int], None], items: list[int]) -> int:
    start(b, len(items))
    for item in reversed(items):
        b.PrependUOffsetTRelative(item)
    return int(b.EndVector())


def _empty_subgraph(b: Any, nodes: list[int]) -> int:
    operators = _vector(b, tflite.SubGraphStartOperatorsVector, nodes)
    tensors = _vector(b, tflite.SubGraphStartTensorsVector, [])
    inputs = _vector(b, tflite.SubGraphStartInputsVector, [])
    outputs = _vector(b, tflite.SubGraphStartOutputsVector, [])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors)
    tflite.SubGraphAddInputs(b, inputs)
    tflite.SubGraphAddOutputs(b, outputs)
    tflite.SubGraphAddOperators(b, operators)
    return int(tflite.SubGraphEnd(b))


@dataclass(frozen=True)
class Check:
    code: int
    version: int
    custom: str | None = None

    def key(self) -> list[Any]:
        return [self.code, self.version, self.custom]


def runtime_version(runtime: str) -> str:
    for dist in RUNTIMES[runtime][1]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise SystemExit(f"{runtime} is not installed in {sys.executable}")


def _interpreter_class(runtime: str) -> Any:
    module = __import__(RUNTIMES[runtime][0], fromlist=["Interpreter"])
    return module.Interpreter


def run_check(interpreter: Any, check: Check) -> tuple[str, str]:
    """Return ("resolved"|"missing", detail) for one op/version on this runtime."""
    if check.custom is None:
        try:
            interpreter(model_content=build_probe_model(check.code, check.version))
        except Exception as exc:
            text = str(exc)
            if any(marker in text for marker in MISSING_MARKERS):
                return "missing", text.splitlines()[0][:200] if text else ""
            return "resolved", f"{type(exc).__name__}: {text[:200]}"
        return "resolved", ""
    model = build_probe_model(CUSTOM_CODE, check.version, check.custom, with_node=True)
    try:
        interpreter(model_content=model).allocate_tensors()
    except Exception as exc:
        text = str(exc)
        if UNRESOLVED_CUSTOM in text:
            return "missing", text.splitlines()[0][:200]
        return "resolved", f"{type(exc).__name__}: {text[:200]}"
    return "resolved", ""


def child_main(runtime: str) -> int:
    """Child mode: read checks (JSON list) from stdin, print one result line per check."""
    interpreter = _interpreter_class(runtime)
    for code, version, custom in json.load(sys.stdin):
        status, detail = run_check(interpreter, Check(code, version, custom))
        sys.stdout.write(RESULT_PREFIX + json.dumps([code, version, custom, status, detail]) + "\n")
        sys.stdout.flush()
    return 0


def run_checks(runtime: str, checks: Sequence[Check]) -> dict[tuple[int, int, str | None], str]:
    """Run checks in child processes; a crash marks the check in flight and a new child resumes."""
    results: dict[tuple[int, int, str | None], str] = {}
    pending = list(checks)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    while pending:
        proc = subprocess.run(
            [sys.executable, "-m", "agent.runtime.optable", "--child", runtime],
            input=json.dumps([c.key() for c in pending]),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env=env,
        )
        done = 0
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                code, version, custom, status, _detail = json.loads(line[len(RESULT_PREFIX) :])
                results[(code, version, custom)] = status
                done += 1
        if done < len(pending):
            crashed = pending[done]
            tail = proc.stderr.strip().splitlines()[-1:] or [""]
            log.warning("child died (rc %s) on %s: %s", proc.returncode, crashed, tail[0])
            results[(crashed.code, crashed.version, crashed.custom)] = f"crashed:{proc.returncode}"
            done += 1
        pending = pending[done:]
    return results


def sanity(runtime: str) -> None:
    """The method must tell a resolvable op (ADD v1) from an impossible one before the sweep."""
    res = run_checks(runtime, [Check(0, 1), Check(9, 99), Check(250, 1)])
    expected = {(0, 1, None): "resolved", (9, 99, None): "missing", (250, 1, None): "missing"}
    if res != expected:
        raise SystemExit(f"probe method does not work on {runtime}: {res}")


def build_table(
    runtime: str, max_code: int = MAX_CODE, max_version: int = MAX_VERSION
) -> dict[str, Any]:
    sanity(runtime)
    checks = [
        Check(code, v)
        for code in range(max_code + 1)
        if code != CUSTOM_CODE
        for v in range(1, max_version + 1)
    ]
    checks += [Check(CUSTOM_CODE, 1, name) for name in CUSTOM_CANDIDATES]
    results = run_checks(runtime, checks)
    builtin: dict[str, dict[str, Any]] = {}
    crashes = []
    for (code, version, custom), status in sorted(results.items(), key=lambda kv: str(kv[0])):
        if status.startswith("crashed"):
            crashes.append({"code": code, "version": version, "custom": custom, "status": status})
        if custom is not None or status != "resolved":
            continue
        entry = builtin.setdefault(builtin_name(code), {"code": code, "versions": []})
        entry["versions"].append(version)
    for entry in builtin.values():
        entry["versions"].sort()
        entry["max"] = entry["versions"][-1]
    # A custom op that crashed in its kernel's init was resolved: unresolved ones run no code.
    custom_table = {
        name: results[(CUSTOM_CODE, 1, name)] != "missing" for name in CUSTOM_CANDIDATES
    }
    return {
        "runtime": runtime,
        "version": runtime_version(runtime),
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generator": "python -m agent.runtime.optable --runtime %s --out %s",
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "schema_package": f"tflite {importlib.metadata.version('tflite')}",
        "method": "one opcode per model, Interpreter(model_content=...) in child processes; "
        'missing = "Didn\'t find op for builtin opcode" / "Op builtin_code out of range"',
        "probed": {
            "codes": [0, max_code],
            "versions": [1, max_version],
            "custom": list(CUSTOM_CANDIDATES),
            "checks": len(checks),
        },
        "crashes": crashes,
        "builtin": dict(sorted(builtin.items(), key=lambda kv: int(kv[1]["code"]))),
        "custom": custom_table,
    }


def dump_table(table: dict[str, Any]) -> str:
    """JSON with one line per operator, so a diff between two tables reads op by op."""
    lines = []
    for key, value in table.items():
        if isinstance(value, dict) and key in ("builtin", "custom"):
            inner = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines.append(f" {json.dumps(key)}: {{\n" + ",\n".join(inner) + "\n }")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    json.loads(text)  # never write a file the loader cannot read
    return text


def _default_runtime() -> str:
    for name in RUNTIMES:
        try:
            runtime_version(name)
            __import__(RUNTIMES[name][0], fromlist=["Interpreter"])
        except (SystemExit, ImportError):
            continue
        return name
    raise SystemExit("no TFLite runtime installed here")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.runtime.optable", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), help="default: first installed")
    parser.add_argument(
        "--out", type=Path, help="default: agent/runtime/data/ops_<runtime>_<version>.json"
    )
    parser.add_argument("--max-code", type=int, default=MAX_CODE)
    parser.add_argument("--max-version", type=int, default=MAX_VERSION)
    parser.add_argument("--child", metavar="RUNTIME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runtime = args.runtime or _default_runtime()
    table = build_table(runtime, args.max_code, args.max_version)
    out = args.out or Path(__file__).parent / "data" / f"ops_{runtime}_{table['version']}.json"
    table["generator"] = table["generator"] % (runtime, out.name if not args.out else args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_table(table))
    log.info(
        "%s %s: %d builtin ops resolved, %d crashes -> %s",
        runtime,
        table["version"],
        len(table["builtin"]),
        len(table["crashes"]),
        out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
