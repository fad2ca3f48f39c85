"""Reason codes: every code edgeloop puts in events, command replies and errors
(docs/protocol.md)."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Every reason code edgeloop puts in events, command replies and errors."""

    # manifest acceptance, in the order the checks run (docs/protocol.md)
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    INVALID = "invalid"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    ROLLBACK = "rollback"
    INCOMPATIBLE = "incompatible"
    NO_SPACE = "no_space"
    # transfer and store
    BAD_CHUNK = "bad_chunk"
    CHUNK_RANGE = "chunk_range"
    NOT_STAGED = "not_staged"
    INCOMPLETE = "incomplete"
    BAD_MODEL = "bad_model"
    NOT_INSTALLED = "not_installed"
    NO_TRIAL = "no_trial"
    NO_LAST_GOOD = "no_last_good"
    NO_INSTALL = "no_install"  # cmd/rollback with no install or trial to abandon
    IO_ERROR = "io_error"
    # protocol
    BAD_TOPIC = "bad_topic"
    UNKNOWN_VERB = "unknown_verb"
    # signed commands (agent/wire/signed.py)
    UNSIGNED = "unsigned"
    WRONG_TARGET = "wrong_target"
    WRONG_SLOT = "wrong_slot"  # a manifest for another model slot than the device serves
    # install outcome (the daemon)
    PROBE_FAILED = "probe_failed"
    HEALTH_FAILED = "health_failed"
    CRASHED_IN_TRIAL = "crashed_in_trial"
    BUSY = "busy"
