"""Topics, the strict JSON codec, chunk framing and typed messages (P12: bad input is a
ProtocolError, never anything else)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.wire.chunks import CHUNK_HEADER_SIZE, compact_ranges, decode_chunk, encode_chunk
from agent.wire.codec import MAX_COMMAND_BYTES, canonical_json, parse_json_object
from agent.wire.messages import (
    Command,
    CommandReply,
    Event,
    ModelRef,
    NeedRequest,
    State,
    Telemetry,
)
from agent.wire.reasons import Reason
from agent.wire.stream import StreamCursor, StreamPosition
from agent.wire.topics import (
    VERBS,
    ParsedTopic,
    Topics,
    host_subscriptions,
    model_stream_topic,
    parse_topic,
)

SHA = hashlib.sha256(b"model").hexdigest()


def code_of(fn: Callable[..., object], *args: object) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value.code


# --- topics --------------------------------------------------------------------------------


def test_topics_are_built_from_one_prefix_and_parse_back():
    t = Topics("acme/edge", "pi-01")
    assert t.state == "acme/edge/dev/pi-01/state"
    assert t.cmd("deploy") == "acme/edge/dev/pi-01/cmd/deploy"
    assert t.chunks(SHA) == f"acme/edge/dev/pi-01/chunks/{SHA}"
    for topic, parsed in [
        (t.state, ("pi-01", "state", None)),
        (t.telemetry, ("pi-01", "telemetry", None)),
        (t.events, ("pi-01", "events", None)),
        (t.need, ("pi-01", "need", None)),
        (t.infer, ("pi-01", "infer", None)),
        (t.cmd("rollback"), ("pi-01", "cmd", "rollback")),
        (t.chunks(SHA), ("pi-01", "chunks", SHA)),
    ]:
        assert t.parse(topic) == parse_topic(topic, "acme/edge") == ParsedTopic(*parsed)
    assert t.device_subscriptions() == [
        "acme/edge/dev/pi-01/cmd/+",
        "acme/edge/dev/pi-01/chunks/+",
        "acme/edge/dev/pi-01/infer",
    ]
    assert host_subscriptions("edgeloop", "hosts")[0] == "$share/hosts/edgeloop/dev/+/state"


@pytest.mark.parametrize("device", ["", "../x", "a/b", "+", "#", ".hidden", "x" * 65, "é", "a b"])
def test_invalid_device_ids_are_refused(device):
    assert code_of(Topics, "edgeloop", device) == "bad_topic"
    assert code_of(parse_topic, f"edgeloop/dev/{device}/state") == "bad_topic"


@pytest.mark.parametrize(
    "topic",
    [
        "edgeloop/dev/pi/state/extra",
        "edgeloop/dev/pi/chunks/abc",
        "edgeloop/dev/pi/chunks/" + SHA.upper(),
        "edgeloop/dev/pi/cmd/",
        "edgeloop/dev/pi/cmd/a/b",
        "edgeloop/dev/pi/unknown",
        "other/dev/pi/state",
        "edgeloop/dev/pi",
    ],
)
def test_non_protocol_topics_are_bad_topic(topic):
    assert code_of(parse_topic, topic) == "bad_topic"


def test_topics_for_another_device_or_bad_prefix_are_refused():
    assert code_of(Topics("edgeloop", "pi-01").parse, "edgeloop/dev/pi-02/state") == "bad_topic"
    for prefix in ["", "a/+", "#", "a//b", "$SYS"]:
        assert code_of(Topics, prefix, "pi") == "bad_topic"


# --- JSON codec ----------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8():
    assert (
        canonical_json({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()
    )
    assert code_of(canonical_json, {"x": float("nan")}) == "malformed"
    with pytest.raises(ProtocolError, match="floats"):
        canonical_json({"x": [1.5]}, allow_floats=False)


@pytest.mark.parametrize(
    "payload,code",
    [
        (b"x" * 101, "too_large"),
        (b'{"a": "\xff"}', "malformed"),
        (b'{"a": NaN}', "malformed"),
        (b'{"a": Infinity}', "malformed"),
        (b'{"a": 1, "a": 2}', "malformed"),
        (b"[" * 40 + b"]" * 40, "malformed"),
        (b'{"a": 1', "malformed"),
    ],
)
def test_strict_json_parse_refuses_what_it_should(payload, code):
    with pytest.raises(ProtocolError) as info:
        parse_json_object(payload, max_bytes=100, what="t")
    assert info.value.code == code


# --- messages ------------------------------------------------------------------------------


def test_commands_validate_verb_id_and_args():
    cmd = Command.from_json(b'{"id": "c-1", "args": {"manifest": {}}}', "deploy")
    assert (cmd.verb, cmd.id, cmd.args) == ("deploy", "c-1", {"manifest": {}})
    assert Command.from_json(cmd.to_json(), "deploy") == cmd
    assert Command.from_json(b'{"id": "c-2"}', "rebirth").args == {}
    cases = [
        (b'{"id": "c"}', "explode", "unknown_verb"),
        (b'{"args": {}}', "state", "malformed"),
        (b'{"id": ""}', "state", "malformed"),
        (b'{"id": 5}', "state", "malformed"),
        (b'{"id": "c", "args": []}', "state", "malformed"),
        (b'{"id": "c", "args": {}}', "deploy", "malformed"),
        (b'{"id": "c", "args": {"telemetry_interval_s": 0.01}}', "config", "malformed"),
        (b'{"id": "c", "args": {"runs": true}}', "bench", "malformed"),
        (b'{"id": "c", "args": {"loadgen": {"rate_hz": -1}}}', "config", "malformed"),
        (b" " * (MAX_COMMAND_BYTES + 1), "state", "too_large"),
    ]
    for payload, verb, code in cases:
        assert code_of(Command.from_json, payload, verb) == code, payload[:60]


def test_command_reply_and_event_round_trip():
    reply = CommandReply("c-1", "deploy", "rejected", Reason.ROLLBACK, "older release", {"seen": 5})
    assert CommandReply.from_json(reply.to_json()) == reply
    assert json.loads(reply.to_json())["code"] == "rollback"
    ev = Event(
        "rejected", "bad_signature", "manifest signature does not verify", {"sha256": SHA}, 1.5, 3
    )
    assert Event.from_json(ev.to_json()) == ev
    assert code_of(Event.from_json, b'{"kind": "party"}') == "malformed"


def test_need_requests_carry_half_open_ranges():
    need = NeedRequest.from_ranges(SHA, compact_ranges([0, 1, 2, 7, 9, 10]))
    assert need.ranges == ((0, 3), (7, 8), (9, 11))
    assert need.indexes() == [0, 1, 2, 7, 9, 10]
    assert NeedRequest.from_json(need.to_json()) == need
    for bad in (
        {"sha256": SHA, "ranges": [[3, 3]]},
        {"sha256": SHA, "ranges": [[-1, 2]]},
        {"sha256": SHA, "ranges": [[0, True]]},
        {"sha256": SHA, "ranges": [[0, 1, 2]]},
        {"sha256": SHA, "ranges": [[0, 1]] * 2000},
        {"sha256": "../x", "ranges": []},
    ):
        assert code_of(NeedRequest.from_json, json.dumps(bad).encode()) == "malformed"


def test_the_shared_stream_topic_and_the_stream_mark_of_a_need():
    t = Topics("acme/edge", "pi-01")
    assert t.model_stream(SHA) == model_stream_topic("acme/edge", SHA)
    assert t.model_stream(SHA) == f"acme/edge/models/{SHA}/chunks"
    assert t.stream_sha(t.model_stream(SHA)) == SHA
    for other in (t.chunks(SHA), f"edgeloop/models/{SHA}/chunks", "acme/edge/models/x/chunks"):
        assert t.stream_sha(other) is None
    assert code_of(model_stream_topic, "acme/edge", "../x") == "bad_topic"
    plain = NeedRequest.from_ranges(SHA, [range(0, 4)])
    assert b"stream" not in plain.to_json()  # a plain pull's need is what it always was
    marked = NeedRequest.from_ranges(SHA, [range(0, 4)], stream=True)
    assert NeedRequest.from_json(marked.to_json()) == marked and marked.stream
    bad = {"sha256": SHA, "ranges": [], "stream": "yes"}
    assert code_of(NeedRequest.from_json, json.dumps(bad).encode()) == "malformed"


def test_stream_rules_host_answers_only_what_it_streamed_device_asks_only_what_passed():
    cursor = StreamCursor(chunk_count=10, published=4)
    assert cursor.answer(NeedRequest.from_ranges(SHA, [range(2, 8)], stream=True)) == [2, 3]
    assert cursor.answer(NeedRequest.from_ranges(SHA, [range(2, 8)])) == list(range(2, 8))
    pos = StreamPosition()
    assert pos.lost([0, 1, 2]) == []  # nothing streamed yet: everything is still coming
    pos.passed(5)
    assert pos.lost([1, 3, 5, 6, 9]) == [1, 3, 5]
    fresh = StreamPosition(joined=True)
    assert [fresh.stalled() for _ in range(4)] == [True, True, True, False]  # join 3x, then pull
    assert not pos.stalled()  # the stream ran and stopped: pull the rest


def test_telemetry_and_state_round_trip():
    model = ModelRef(SHA, "digits", "1.2", 7, {"recipe": "int8"}, "cpu")
    tel = Telemetry(
        seq=12, ts=1.7e9, window_s=10.0, inferences=100, model=model,
        latency_ms={"p50": 1.0, "p90": 1.5, "p95": 2.0, "p99": 3.0, "max": 4.0, "mean": 1.2},
        throughput=10.0, rss_mb=40.0, temp_c=51.2, throttled=0, outbox_dropped=2,
    )  # fmt: skip
    assert Telemetry.from_json(tel.to_json()) == tel
    assert (
        code_of(Telemetry.from_json, b'{"seq": -1, "ts": 1, "window_s": 1, "inferences": 0}')
        == "malformed"
    )
    huge = b'{"seq": 1, "ts": 1%s, "window_s": 1, "inferences": 0}' % (b"0" * 400)
    assert code_of(Telemetry.from_json, huge) == "malformed"
    birth = State(
        True, ts=1.0, boot_id="b", agent_version="0.1.0", model=model, install={"state": "idle"}
    )
    assert State.from_json(birth.to_json()) == birth
    assert State.offline().to_json() == b'{"online":false}'
    assert State.offline("stopped").to_json() == b'{"online":false,"reason":"stopped"}'


# --- chunk framing -------------------------------------------------------------------------


def test_chunk_frames_round_trip_and_reject_mismatches():
    frame = encode_chunk(SHA, 7, b"hello")
    assert len(frame) == CHUNK_HEADER_SIZE + 5 == 21
    assert frame[:4] == b"ELC1" and frame[12:16] == (7).to_bytes(4, "big")
    got = decode_chunk(frame, SHA)
    assert (got.sha256, got.index, got.data) == (SHA, 7, b"hello")
    other = hashlib.sha256(b"other").hexdigest()
    assert code_of(decode_chunk, frame, other) == "malformed"
    assert code_of(decode_chunk, b"XXXX" + frame[4:], SHA) == "malformed"
    assert code_of(decode_chunk, frame[:10], SHA) == "malformed"
    assert decode_chunk(encode_chunk(SHA, 0, b""), SHA).data == b""


# --- P12: arbitrary bytes and JSON never raise anything but ProtocolError -------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=16,
)
PARSERS = [
    lambda b: Command.from_json(b, "deploy"),
    lambda b: Command.from_json(b, "config"),
    lambda b: Command.from_json(b, "bench"),
    NeedRequest.from_json,
    Event.from_json,
    Telemetry.from_json,
    State.from_json,
    CommandReply.from_json,
]


def _only_protocol_errors(payload: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(ProtocolError):
            parse(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_protocol_error(payload):
    _only_protocol_errors(payload)
    with contextlib.suppress(ProtocolError):
        decode_chunk(payload, SHA)


@settings(max_examples=300, deadline=None)
@given(
    json_values,
    st.sampled_from(
        ["id", "args", "sha256", "ranges", "kind", "seq", "model", "online", "latency_ms"]
    ),
)
def test_arbitrary_json_only_raises_protocol_error(value, key):
    _only_protocol_errors(json.dumps(value).encode())
    base = {"id": "c", "args": {}, "sha256": SHA, "ranges": [], "kind": "error", "seq": 1,
            "ts": 1, "window_s": 1, "inferences": 1, "online": True, "status": "ok",
            "verb": "deploy"}  # fmt: skip
    _only_protocol_errors(json.dumps({**base, key: value}).encode())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_topics_only_raise_protocol_error(topic):
    try:
        parsed = parse_topic(topic)
    except ProtocolError:
        return
    assert "/" not in parsed.device_id and parsed.device_id not in (".", "..")
    assert parsed.kind in {"state", "telemetry", "events", "need", "infer", "cmd", "chunks"}


@given(st.sampled_from(sorted(VERBS)))
def test_every_verb_has_a_topic(verb):
    assert parse_topic(Topics("edgeloop", "pi").cmd(verb)).arg == verb
