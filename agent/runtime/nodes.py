"""How many of the model's nodes a delegate took, read back from the interpreter.

What the runtimes expose (ai-edge-litert 2.3.0 and tflite-runtime 2.14 alike): the Python
``Interpreter._get_ops_details()`` lists every node of subgraph 0 in node-index order -- the
model's operators first, then one node named ``DELEGATE`` per delegated partition, appended when
a delegate replaces a partition (``ReplaceNodeSubsetsWithDelegateKernels``). Replaced nodes stay
in the list (only the hidden execution plan drops them). A ``DELEGATE`` node's inputs/outputs are
its partition's boundary tensors, so the replaced nodes are recovered by walking back from the
partition outputs through their producers until the partition inputs.

When the delegate is applied is what tells delegates apart: an explicit delegate
(``experimental_delegates``: Edge TPU, external) is applied in the ``Interpreter`` constructor;
the runtime's default delegate (XNNPACK) lazily, in the first ``allocate_tensors()``.

Counts (subgraph 0 only; control-flow subgraphs are not inspected):
- ``nodes_total``: the model's own operators (nodes not named ``DELEGATE``).
- ``nodes_delegated``: how many of those the chosen delegate's partitions replaced.
Both are None when the runtime does not expose ``_get_ops_details``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DELEGATE_NODE = "DELEGATE"


@dataclass(frozen=True)
class Node:
    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def snapshot(interpreter: Any) -> list[Node] | None:
    """The interpreter's nodes now, or None when the runtime does not expose them.

    Reads the wrapper's ``NumNodes``/``NodeName``/``NodeInputs``/``NodeOutputs`` (what
    ``_get_ops_details()`` is built on, without its per-tensor dtype look-ups), falling back to
    ``_get_ops_details()`` itself.
    """
    try:
        raw = getattr(interpreter, "_interpreter", None)
        if raw is not None and hasattr(raw, "NumNodes"):
            return [
                _node(i, raw.NodeName(i), raw.NodeInputs(i), raw.NodeOutputs(i))
                for i in range(int(raw.NumNodes()))
            ]
        ops = interpreter._get_ops_details()
        return [_node(op["index"], op["op_name"], op["inputs"], op["outputs"]) for op in ops]
    except Exception as exc:  # absent or failing private API: report "not exposed"
        log.debug("node details not exposed: %s", exc)
        return None


def _node(index: Any, name: Any, inputs: Iterable[Any], outputs: Iterable[Any]) -> Node:
    return Node(
        index=int(index),
        name=str(name),
        inputs=tuple(int(t) for t in inputs if int(t) >= 0),
        outputs=tuple(int(t) for t in outputs if int(t) >= 0),
    )


def model_nodes(nodes: list[Node]) -> list[Node]:
    return [n for n in nodes if n.name != DELEGATE_NODE]


def replaced_by(nodes: list[Node], delegate_nodes: Iterable[Node]) -> set[int]:
    """Indices of model nodes replaced by the given DELEGATE nodes."""
    producer: dict[int, Node] = {}
    for node in model_nodes(nodes):
        for t in node.outputs:
            producer[t] = node
    taken: set[int] = set()
    for dnode in delegate_nodes:
        boundary = set(dnode.inputs)
        stack = list(dnode.outputs)
        seen_tensors: set[int] = set()
        while stack:
            t = stack.pop()
            if t in boundary or t in seen_tensors:
                continue
            seen_tensors.add(t)
            found = producer.get(t)
            if found is None or found.index in taken:
                continue
            taken.add(found.index)
            stack.extend(found.inputs)
    return taken


def count(
    after_construct: list[Node] | None, after_allocate: list[Node] | None, *, explicit: bool
) -> tuple[int | None, int | None]:
    """(nodes_total, nodes_delegated) for the explicit delegate or, if not explicit, XNNPACK."""
    if after_construct is None or after_allocate is None:
        return None, None
    total = len(model_nodes(after_allocate))
    first_lazy = len(after_construct)
    if explicit:
        chosen = [n for n in after_construct if n.name == DELEGATE_NODE]
    else:
        chosen = [n for n in after_allocate[first_lazy:] if n.name == DELEGATE_NODE]
    return total, len(replaced_by(after_allocate, chosen))
