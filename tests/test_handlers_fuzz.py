"""P12: bad input never kills the agent.

In-process, Hypothesis feeds every message handler of a real :class:`agent.service.Agent`
(``_handle_message``, exactly what the core thread runs for each MQTT message) arbitrary topics
under the device's prefix and arbitrary payloads: malformed JSON, wrong types, invalid UTF-8,
huge payloads, ``.npy`` garbage, duplicate and out-of-range chunk indexes, path traversal in
signed model names. The properties: no exception ever escapes a handler, every request that
names a response topic gets exactly one reply, nothing is written outside the state directory,
a bad inference request never counts as an inference failure (it would fail a trial's health
gate), and the device still installs and serves afterwards. The transport is never started:
its ``publish`` is the one seam, recorded instead of sent.

End to end, ``mosquitto_pub`` (no project code on the sending side) sends malformed payloads to
every topic of a running agent: same PID, ``input_rejected`` events, still serving.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.config import load_config
from agent.mqtt.types import IncomingMessage, PublishHandle
from agent.runtime.delegates import load_model
from agent.service import Agent
from agent.serving.server import NPY_CONTENT_TYPE, Server
from agent.wire.chunks import encode_chunk
from agent.wire.codec import canonical_json
from agent.wire.manifest_signing import model_fields, sign_manifest
from agent.wire.messages import EventKind
from agent.wire.topics import VERBS
from agent.wire.trust import key_id_of
from deploy.keys import init_keys, load_private
from deploy.push import PushResult
from tests import json_strategies as strategies
from tests.agent_proc import AgentProcess, Observer, observing, wait_for
from tests.broker import Broker, free_port
from tests.modelzoo import digits_data, model

pytestmark = [pytest.mark.runtime]

DEVICE = "pi-01"
BASE = f"edgeloop/dev/{DEVICE}"
REPLY_TOPIC = "test/replies"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


# ---- the harness: a real Agent whose transport is never started ------------------------------
@dataclass
class Sent:
    topic: str
    payload: bytes
    correlation: bytes | None


@dataclass
class Harness:
    agent: Agent
    root: Path
    state: Path
    key: Any
    before: set[Path]
    sent: list[Sent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _n: int = 0

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                **props: Any) -> PublishHandle:  # fmt: skip
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        with self._lock:
            self.sent.append(Sent(topic, data, props.get("correlation_data")))
        handle = PublishHandle(None, qos)
        handle._resolve(0)
        return handle

    def send(
        self, topic: str, payload: bytes, *, reply: bool = True, content_type: str | None = None
    ) -> bytes:
        """Hand one message to the core's handler; returns its correlation data."""
        self._n += 1
        corr = f"c-{self._n}".encode()
        msg = IncomingMessage(
            topic, payload, 1, False, REPLY_TOPIC if reply else None, corr, None, (), content_type
        )
        self.agent._handle_message(msg)  # must never raise
        while not self.agent.events.empty():  # what background jobs queued for the core
            kind, item = self.agent.events.get_nowait()
            self.agent._dispatch(kind, item)
        return corr

    def replies_to(self, corr: bytes) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.topic == REPLY_TOPIC and s.correlation == corr]

    def events(self) -> list[dict[str, Any]]:
        recs = self.agent.outbox.peek(0, 1_000_000)
        return [json.loads(r.payload) for r in recs if r.topic.endswith("/events")]

    def files_outside_state(self) -> list[Path]:
        now = {p for p in self.root.rglob("*") if p.is_file() or p.is_symlink()}
        return sorted(p for p in now - self.before if self.state not in p.parents)


@contextmanager
def harness(tmp: Path, serve: Path | None = None) -> Iterator[Harness]:
    init_keys(tmp / "keys")
    state = tmp / "deep" / "er" / "state"
    cfg = load_config(
        None,
        overrides={
            "device_id": DEVICE,
            "state_dir": str(state),
            "trust_keys": [str(tmp / "keys" / "edgeloop.pub")],
            "broker.port": free_port(),  # nothing listens there; the transport is not started
        },
        environ={},
    )
    agent = Agent(cfg)
    h = Harness(agent, tmp, state, load_private(tmp / "keys"), set())
    agent.transport.publish = h.publish  # type: ignore[method-assign]
    if serve is not None:
        loaded = load_model(serve, "cpu", threads=1)
        agent.loaded = loaded
        agent.server = Server(loaded.interpreter, {"sha256": "0" * 64, "name": "digits"})
    h.before = {p for p in tmp.rglob("*") if p.is_file()}
    try:
        yield h
    finally:
        agent.loadgen.stop()
        if agent.server is not None:
            agent.server.stop()
        agent.transport.stop(final=None)
        agent.outbox.close()
        agent.store.close()


# ---- strategies -----------------------------------------------------------------------------
json_values = strategies.json_values(int_bits=70, text_size=40, key_size=12, size=5, leaves=25)
arg_keys = st.sampled_from(
    ["manifest", "gates", "delegate", "runs", "threads", "telemetry_interval_s", "loadgen",
     "enabled", "rate_hz", "x"]
)  # fmt: skip
command_docs = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=140) | json_values,
        "args": st.dictionaries(arg_keys, json_values, max_size=4) | json_values,
        "ts": json_values,
        "extra": json_values,
    },
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


payloads = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=60).map(lambda b: b"\xff\xfe\xc0" + b),  # invalid UTF-8
    json_values.map(_dumps),
    command_docs.map(_dumps),
    command_docs.map(lambda d: _dumps(d)[:-1]),  # truncated JSON
    st.sampled_from(
        [
            b"",
            b"null",
            b"{",
            b"[]",
            b'{"id":"a","id":"b"}',
            b'{"id":NaN}',
            b'{"id":"x","args":{"x":Infinity}}',
            b"[" * 5000 + b"]" * 5000,
        ]
    ),
)
verbs = st.sampled_from(sorted(VERBS)) | st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


def test_command_handlers_never_raise_and_always_reply(tmp_path: Path) -> None:
    with harness(tmp_path) as h:

        @FUZZ
        @given(verb=verbs, payload=payloads)
        def check(verb: str, payload: bytes) -> None:
            corr = h.send(f"{BASE}/cmd/{verb}", payload)
            replies = h.replies_to(corr)
            assert len(replies) == 1, (verb, payload[:80], replies)
            body = json.loads(replies[0].payload)
            assert body["status"] in ("ok", "accepted", "duplicate", "rejected", "error")

        check()
        # huge payloads: refused by size before anything is parsed
        for verb in sorted(VERBS):
            corr = h.send(f"{BASE}/cmd/{verb}", b'{"id":"' + b"a" * (2 << 20) + b'"}')
            (reply,) = h.replies_to(corr)
            assert json.loads(reply.payload)["code"] == "too_large"
        assert h.files_outside_state() == []
        rejected = [e for e in h.events() if e["kind"] == EventKind.INPUT_REJECTED]
        assert rejected and all(e["data"]["topic"].startswith(f"{BASE}/cmd/") for e in rejected)
        assert {e["code"] for e in rejected} >= {"malformed", "too_large", "unknown_verb"}


# ---- deploy with a valid signature but fuzzed unsigned arguments --------------------------------
def _signed(h: Harness, blob: bytes, release: int, chunk_size: int = 1024) -> dict[str, Any]:
    fields = model_fields(blob, chunk_size) | {"name": "blob", "version": "1", "release": release}
    return sign_manifest(fields, h.key).to_dict()


def test_deploy_with_fuzzed_arguments_never_raises(tmp_path: Path) -> None:
    blob = os.urandom(4096)
    with harness(tmp_path) as h:
        release = iter(range(1, 10**6))

        @FUZZ
        @given(args=st.dictionaries(st.sampled_from(["gates", "delegate", "y"]), json_values))
        def check(args: dict[str, Any]) -> None:
            doc = {
                "id": uuid.uuid4().hex,
                "args": args | {"manifest": _signed(h, blob, next(release))},
            }
            corr = h.send(f"{BASE}/cmd/deploy", canonical_json(doc))
            (reply,) = h.replies_to(corr)
            status = json.loads(reply.payload)["status"]
            assert status in ("accepted", "rejected"), reply.payload
            h.agent.installer.abort_for_rollback()  # next example starts idle
            assert h.agent.store.staged() == []

        check()
        assert h.files_outside_state() == []


# ---- chunks: duplicates, out-of-range indexes, corrupt data, foreign and odd topics -------------
def test_chunk_handler_never_raises_and_never_accepts_a_bad_chunk(tmp_path: Path) -> None:
    blob = os.urandom(8 * 1024)  # 8 chunks of 1 KiB; not a TFLite model
    sha = hashlib.sha256(blob).hexdigest()
    chunks = [blob[i : i + 1024] for i in range(0, len(blob), 1024)]
    with harness(tmp_path) as h:
        doc = {"id": "deploy-1", "args": {"manifest": _signed(h, blob, 1)}}
        (reply,) = h.replies_to(h.send(f"{BASE}/cmd/deploy", canonical_json(doc)))
        assert json.loads(reply.payload)["status"] == "accepted"
        index = st.integers(0, 9) | st.integers(0, 2**32 - 1)
        frames = st.one_of(
            # real data for chunks 0..6 (duplicates are harmless); chunk 7 is held back
            st.integers(0, 6).map(lambda i: encode_chunk(sha, i, chunks[i])),
            st.tuples(index, st.binary(max_size=2048)).map(lambda t: encode_chunk(sha, *t)),
            st.tuples(st.integers(0, 7), st.integers(0, 1023)).map(  # one flipped byte
                lambda t: encode_chunk(sha, t[0], _flip(chunks[t[0]], t[1]))
            ),
            st.binary(max_size=64),
            st.binary(max_size=40).map(lambda b: b"ELC1" + bytes.fromhex(sha[:16]) + b),
        )
        shas = st.just(sha) | st.sampled_from(
            ["0" * 64, "A" * 64, "..", "%2e%2e", sha[:-1], sha + "0", "..\\..\\x", ""]
        )

        @FUZZ
        @given(topic_sha=shas, payload=frames)
        def check(topic_sha: str, payload: bytes) -> None:
            active = h.agent.installer.active
            assert active is not None
            # more than MAX_BAD_CHUNK corrupt copies of one chunk end an install by design
            # (tests/test_e2e_security.py); here every example starts with a clean record
            active.bad_by_index.clear()
            h.send(f"{BASE}/chunks/{topic_sha}", payload, reply=False)
            assert h.agent.installer.active is not None
            missing = [i for r in h.agent.store.missing(sha) for i in r]
            assert 7 in missing and all(0 <= i < 8 for i in missing)

        check()
        assert h.files_outside_state() == []
        # the last chunk completes the transfer: the whole file hashes right, so no corrupt
        # chunk was ever accepted (it then fails model inspection: it is not a TFLite file)
        for i in range(8):
            h.send(f"{BASE}/chunks/{sha}", encode_chunk(sha, i, chunks[i]), reply=False)
        assert h.agent.installer.active is None
        installed = h.agent.store.model_path(sha)
        assert hashlib.sha256(installed.read_bytes()).hexdigest() == sha
        assert h.files_outside_state() == []


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


# ---- path traversal in signed names: refused before anything is written -----------------------
TRAVERSAL = [
    "../../../escape", "..", ".", "/tmp/escape", "a/../../escape", "..\\..\\escape",
    "escape\x00.tflite", "%2e%2e%2fescape", "~root", "-rf", ".hidden", "a" * 65,
]  # fmt: skip


def _raw_signed(h: Harness, blob: bytes, **override: Any) -> dict[str, Any]:
    """Sign a body directly (sign_manifest would refuse these names on the host)."""
    body = _signed(h, blob, 1)["manifest"] | override
    sig = h.key.sign(canonical_json(body, allow_floats=False))
    return {"manifest": body, "sig": base64.b64encode(sig).decode(), "key_id": body["key_id"]}


def test_traversal_names_in_signed_manifests_are_refused(tmp_path: Path) -> None:
    blob = os.urandom(2048)
    with harness(tmp_path) as h:
        key_id = key_id_of(h.key.public_key())
        absolute = str(tmp_path / "escape")

        @FUZZ
        @given(
            name=st.sampled_from([*TRAVERSAL, absolute])
            | st.builds(
                lambda a, b: a + b,
                st.sampled_from(["../", "/", "..\\", "./"]),
                st.text(max_size=20),
            ),
            where=st.sampled_from(["name", "version", "sha256", "key_id"]),
        )  # fmt: skip
        def check(name: str, where: str) -> None:
            override = {where: name} if where != "key_id" else {"name": name}
            doc = {"id": uuid.uuid4().hex, "args": {"manifest": _raw_signed(h, blob, **override)}}
            corr = h.send(f"{BASE}/cmd/deploy", canonical_json(doc))
            (reply,) = h.replies_to(corr)
            body = json.loads(reply.payload)
            assert body["status"] == "rejected", body
            assert body["code"] in ("invalid", "bad_signature", "malformed"), body
            assert h.agent.store.staged() == [] and h.agent.installer.active is None

        check()
        assert key_id  # the envelope names a trusted key: only the body's content is wrong
        assert h.files_outside_state() == []
        assert not list(tmp_path.rglob("escape*"))


# ---- inference requests ---------------------------------------------------------------------
def _npy(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_header(shape: str, descr: str = "<f4") -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    text = text.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


dtypes = (
    hnp.integer_dtypes() | hnp.unsigned_integer_dtypes() | hnp.floating_dtypes()
    | hnp.boolean_dtypes() | hnp.complex_number_dtypes() | hnp.datetime64_dtypes()
    | hnp.unicode_string_dtypes(max_len=3) | hnp.byte_string_dtypes(max_len=3)
)  # fmt: skip
shapes = st.sampled_from([(1, 8, 8, 1), (8, 8, 1), (64,), (8, 8), (0,), (1, 64, 1), (65,), ()])
arrays = st.tuples(dtypes, shapes).flatmap(lambda t: hnp.arrays(t[0], t[1]))
infer_payloads = st.one_of(
    arrays.map(_npy),
    arrays.map(lambda a: _npy(a)[: max(1, len(_npy(a)) // 2)]),  # truncated
    st.sampled_from(
        [
            _npy_header(s) + b"\0" * 16
            for s in [
                "(100000000000000,)",
                "(2**40,)",
                "(-1,)",
                "(4611686018427387904,)",
                "(10000, 10000, 10000)",
                "(1, 8, 8, 1)",
            ]
        ]
    ),
    st.binary(max_size=200).map(lambda b: b"\x93NUMPY" + b),
    arrays.map(lambda a: _dumps({"inputs": [a.tolist()]} if a.dtype.kind in "biuf" else [1])),
    json_values.map(lambda v: _dumps({"inputs": v})),
    json_values.map(_dumps),
    st.binary(max_size=200),
)
content_types = st.sampled_from([None, NPY_CONTENT_TYPE, "application/json", "text/plain\x00"])


def test_infer_handler_never_raises_and_bad_requests_never_count_as_failures(
    tmp_path: Path,
) -> None:
    with harness(tmp_path, serve=model("digits_fp32")) as h:
        server = h.agent.server
        assert server is not None

        @FUZZ
        @given(payload=infer_payloads, ctype=content_types)
        def check(payload: bytes, ctype: str | None) -> None:
            corr = h.send(f"{BASE}/infer", payload, content_type=ctype)
            replies = wait_for(lambda: h.replies_to(corr), 10, "the inference reply", step=0.001)
            assert len(replies) == 1
            if not replies[0].payload.startswith(b"\x93NUMPY"):  # a .npy answer, or JSON
                body = json.loads(replies[0].payload)
                assert body["ok"] is True or body["code"], body
            # a client's bad input is not a model fault: it must not fail a trial's gates
            snap = server.window.peek()
            assert snap.errors == 0 and snap.non_finite == 0, payload[:120]

        check()
        # a huge request is refused before it is parsed
        corr = h.send(f"{BASE}/infer", b"[" + b"0.5," * (1 << 20) + b"0.5]")
        (reply,) = wait_for(lambda: h.replies_to(corr), 10, "the reply to a huge request")
        assert json.loads(reply.payload) | {"message": ""} == {
            "ok": False, "code": "too_large", "message": "", "hint": ANY
        }  # fmt: skip
        # the worker still serves: a correct request gets the right class
        x, labels = digits_data()
        corr = h.send(f"{BASE}/infer", _dumps({"inputs": [x[0].tolist()]}))
        (reply,) = wait_for(lambda: h.replies_to(corr), 10, "a good inference reply")
        body = json.loads(reply.payload)
        assert body["ok"] is True and int(np.argmax(body["outputs"][0])) == int(labels[0])
        corr = h.send(f"{BASE}/infer", _npy(x[1:2]), content_type=NPY_CONTENT_TYPE)
        (reply,) = wait_for(lambda: h.replies_to(corr), 10, "a good .npy reply")
        out = np.load(io.BytesIO(reply.payload), allow_pickle=False)
        assert int(np.argmax(out)) == int(labels[1])
        assert h.files_outside_state() == []


# ---- nested JSON on every handler (issue 10) -----------------------------------------------
DEEP = [
    b"[" * 1000,  # unclosed: json's C parser raises RecursionError
    b"[" * 900 + b"]" * 900,  # parses, then nests past every limit
    b'{"id":"d","args":' + b'{"a":' * 200 + b"1" + b"}" * 201,
    b'{"inputs":' + b"[" * 40 + b"0.5" + b"]" * 41 + b"}",
]


def test_nested_json_on_every_handler_is_a_clear_rejection_with_an_event(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with harness(tmp_path, serve=model("digits_fp32")) as h:
        topics = [f"{BASE}/cmd/{verb}" for verb in sorted(VERBS)] + [f"{BASE}/infer"]
        for topic in topics:
            for payload in DEEP:
                before = len(h.events())
                corr = h.send(topic, payload)
                (reply,) = h.replies_to(corr)  # the handler replies before it returns
                body = json.loads(reply.payload)
                code = body.get("code")
                assert code in ("malformed", "bad_request"), (topic, payload[:20], body)
                assert "nested" in body["message"] or "JSON" in body["message"], body
                new = h.events()[before:]
                assert [e["kind"] for e in new] == [EventKind.INPUT_REJECTED], (topic, new)
                assert new[0]["code"] == code
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        x, labels = digits_data()  # and the model still serves
        corr = h.send(f"{BASE}/infer", _dumps({"inputs": [x[0].tolist()]}))
        (reply,) = wait_for(lambda: h.replies_to(corr), 10, "a good inference reply")
        assert int(np.argmax(json.loads(reply.payload)["outputs"][0])) == int(labels[0])


# ---- end to end: mosquitto_pub against a running agent --------------------------------------
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def _pub(broker: Broker, topic: str, payload_file: Path) -> None:
    subprocess.run(
        [MOSQUITTO_PUB, "-V", "mqttv5", "-h", broker.host, "-p", str(broker.port), "-q", "1",
         "-t", topic, "-f", str(payload_file),
         "-D", "publish", "response-topic", "test/e2e-replies",
         "-D", "publish", "correlation-data", "bad-input"],
        check=True, timeout=10, capture_output=True,
    )  # fmt: skip


@pytest.mark.broker
def test_mosquitto_pub_garbage_on_every_topic(
    broker: Broker,
    push_digits: Callable[..., PushResult],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    agent = start_agent(DEVICE)
    pid = agent.pid
    result = push_digits(DEVICE)
    assert result.ok, result
    bad = {
        "utf8": b"\xff\xfe\xfd{\xc0\xaf",
        "json": b'{"id": "x", "args": ',
        "types": b'{"id": 42, "args": [1, 2]}',
        "huge": b'{"id":"' + b"a" * (2 << 20) + b'"}',
        "npy": _npy_header("(99999999999999,)") + b"\0" * 16,
    }
    files = {}
    for name, data in bad.items():
        files[name] = tmp_path / f"{name}.bin"
        files[name].write_bytes(data)
    topics = [f"{BASE}/cmd/{v}" for v in sorted(VERBS)] + [
        f"{BASE}/cmd/selfdestruct",
        f"{BASE}/infer",
        f"{BASE}/chunks/not-a-sha",
        f"{BASE}/chunks/{'ab' * 32}",  # no transfer running: ignored as a stale chunk
    ]
    with observing(broker, DEVICE) as obs:
        for topic in topics:
            for f in files.values():
                _pub(broker, topic, f)

        def rejected_topics() -> set[str]:
            return {
                e["data"]["topic"]
                for e in obs.json_messages("/events")
                if e.get("kind") == EventKind.INPUT_REJECTED
            }

        expected = set(topics) - {f"{BASE}/chunks/{'ab' * 32}"}
        wait_for(lambda: rejected_topics() >= expected, 30, "input_rejected on every topic")
        assert agent.alive() and agent.pid == pid
        # still serving: a good request over MQTT gets the right answer
        x, labels = digits_data()
        with Observer(broker, ["test/ok-replies"]) as replies:
            obs.transport.publish(
                f"{BASE}/infer", _dumps({"inputs": [x[0].tolist()]}),
                response_topic="test/ok-replies", correlation_data=b"good",
            ).wait(5)  # fmt: skip
            msg = replies.wait_message(lambda m: m.correlation_data == b"good", 30, "reply")
            assert msg is not None
        body = json.loads(msg.payload)
        assert body["ok"] is True and int(np.argmax(body["outputs"][0])) == int(labels[0])
        state = agent.state()
        assert state is not None and state["online"] and state["model"]["sha256"] == result.sha256
