"""Child process for the store crash tests: installs one model through the whole store path
(begin, every chunk, finish, set_trial, commit_trial) so a test can kill it at a crash point
(EDGELOOP_CRASH_AT) and inspect the state directory afterwards.

Usage: python -m tests.store_child STATE_DIR MODEL_FILE MANIFEST_JSON [sync|background]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agent.delivery.store import ModelStore
from agent.wire.manifest import Manifest


def main(argv: list[str]) -> int:
    state_dir, model_file, manifest_file, *mode = argv
    data = Path(model_file).read_bytes()
    manifest = Manifest.from_dict(json.loads(Path(manifest_file).read_bytes()))
    background = mode != ["sync"]
    store = ModelStore(state_dir, fsync_every_bytes=1, background_persist=background)
    store.recover()
    store.check_release(manifest)
    for r in store.begin(manifest):
        for i in r:
            chunk = data[i * manifest.chunk_size : (i + 1) * manifest.chunk_size]
            store.write_chunk(manifest.sha256, i, chunk)
    store.record_release(manifest)
    store.finish(manifest.sha256)
    store.set_trial(manifest.sha256, manifest)
    store.commit_trial()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
