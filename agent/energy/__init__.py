"""Energy measurement: meters behind one interface, and energy per inference net of idle.

>>> sampler = EnergySampler(open_meter("um25c:/dev/rfcomm0")).start()
>>> sampler.wait_baseline(timeout=10)          # idle power over the first baseline_s
>>> t0 = time.monotonic(); run_inferences(n); t1 = time.monotonic()
>>> sampler.window(t0, t1, n).to_dict()        # avg_w, idle_w, mj_per_inference(_net), ...

See docs/energy.md for wiring each meter and what the figures mean.
"""

from agent.energy.base import EnergyCounter, Meter, MeterSpec, Sample, meter_kinds, open_meter
from agent.energy.sampler import EnergySampler, sampling
from agent.energy.window import EnergyWindow, integrate

__all__ = [
    "EnergyCounter",
    "EnergySampler",
    "EnergyWindow",
    "Meter",
    "MeterSpec",
    "Sample",
    "integrate",
    "meter_kinds",
    "open_meter",
    "sampling",
]
