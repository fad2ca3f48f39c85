"""A fleet simulator that speaks the real protocol (``edge-deploy simulate``).

Thousands of lightweight devices in a few processes, each device with its own MQTT v5
connection (so the broker keeps its retained birth and publishes its last will), all built on the
agent's own wire code: :mod:`agent.wire.topics`, the typed messages of
:mod:`agent.wire.messages`, :func:`agent.wire.manifest_signing.verify_manifest` and the chunk
framing of :mod:`agent.wire.chunks`.

    device.py   one simulated device: births, telemetry windows, commands, the pull transfer
    mux.py      many paho clients driven by one selector thread (no thread per device)
    fleet.py    the devices of one process, their schedule and counters
    launch.py   several worker processes and their summed counters
"""
