"""`edge-deploy optimize | rollout | report | fleet --registry`, run as real commands.

Report and fleet read a registry the test fills in; optimize and rollout drive real agents over a
real Mosquitto (digitsnet converted with fp32 and int8). The service's re-evaluation rules are
checked on a real registry, and one service cycle for a class that appears later end to end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.fleet.registry import Registry
from deploy.fleet.registry_types import ModelRow, Variant
from deploy.fleet.rollout import Deployer
from deploy.loop.service import ClassWatch, LoopService
from deploy.loop.targets import parse_targets
from deploy.mqtt import BrokerAddress
from tests.agent_proc import AgentProcess, wait_for
from tests.records import telemetry

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "deploy" / "data"
HWTREES = DATA / "hwtrees"
PI4, PI5, NUC = (
    "rpi4b-cpu/ai-edge-litert",
    "rpi5-cpu/ai-edge-litert",
    "x86_64-edgetpu-pci/ai-edge-litert",
)
FP32_SHA, INT8_SHA = "a" * 64, "b" * 64

TARGETS = """model = "digits"
[targets]
max_accuracy_drop = 1.0
[class."rpi4b-cpu"]
p95_ms = 0.6
[class."rpi5-cpu"]
p95_ms = 2.0
[class."x86_64-edgetpu-pci"]
size_mb = 0.1
"""


def edge_deploy(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())", *args],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-deploy: error: "), proc.stderr
    return lines[0]


# ---- a registry filled by hand -------------------------------------------------------------------
def window(seq: int, sha: str, p95: float, ts: float, temp: float = 50.0) -> dict[str, Any]:
    return telemetry(seq, ts, sha=sha, p95=p95, inferences=50, window_s=1.0, temp_c=temp,
                     peak_rss_mb=70.0)  # fmt: skip


def state(name: str, sha: str, recipe: str, hw_class: str) -> dict[str, Any]:
    model = {"name": name, "version": "3", "sha256": sha, "variant": {"recipe": recipe}}
    return {"online": True, "hardware_class": hw_class, "model": model}


def fill(path: Path) -> Registry:
    """digits fp32 + int8; pi4-01 serves int8 and meets 0.6 ms; pi5-01 serves fp32 and misses
    2 ms; nuc-01 serves int8 (size over its 0.1 MB target) with one window only."""
    reg = Registry(path)
    reg.add_model(ModelRow("digits", "/src/digitsnet.keras", "f" * 64, {"accuracy": 0.98}))
    for vid, recipe, sha, size in (("fp32-a", "fp32", FP32_SHA, 1_038_000),
                                   ("int8-b", "int8", INT8_SHA, 278_000)):  # fmt: skip
        reg.add_variant(Variant(vid, "digits", recipe, f"/v/{vid}.tflite", sha, size, recipe,
                                accuracy=0.98))  # fmt: skip
    now = time.time()
    for dev, cid, sha, recipe, p95, n in (
        ("pi4-01", PI4, INT8_SHA, "int8", 0.4, 4),
        ("pi5-01", PI5, FP32_SHA, "fp32", 3.0, 4),
        ("nuc-01", NUC, INT8_SHA, "int8", 1.0, 1),
    ):
        reg.upsert_device(dev, hardware_class=cid, runtime="ai-edge-litert",
                          state=state("digits", sha, recipe, cid.partition("/")[0]))  # fmt: skip
        for seq in range(n):
            assert reg.record_telemetry(dev, window(seq, sha, p95, now - 60 + seq))
        dep = reg.record_deployment(dev, f"{recipe}-{sha[0]}", 3, sha, started=now - 70)
        reg.finish_deployment(dep, "committed", "ok", finished=now - 65)
    reg.record_decision(
        "digits", PI4, action="deploy", variant="int8-b", reason="size", evidence={}
    )
    reg.record_decision("digits", PI4, action="promote", variant="int8-b", reason="met",
                        evidence={})  # fmt: skip
    reg.record_decision("digits", PI5, action="deploy", variant="fp32-a", reason="first guess",
                        evidence={})  # fmt: skip
    return reg


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    reg = fill(tmp_path / "registry.sqlite")
    reg.close()
    targets = tmp_path / "targets.toml"
    targets.write_text(TARGETS)
    yield tmp_path / "registry.sqlite", targets


def test_fleet_with_registry_shows_class_target_status_and_optimizer_state(filled):
    reg, targets = filled
    proc = edge_deploy("fleet", "--registry", str(reg), "--targets", str(targets), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["device"]: r for r in json.loads(proc.stdout)}
    assert rows["pi4-01"]["class"] == PI4
    assert rows["pi4-01"]["variant"] == "int8"
    assert rows["pi4-01"]["targets"] == "meets"
    assert rows["pi4-01"]["optimizer"] == "promote int8"
    assert rows["pi5-01"]["targets"] == "misses: p95 3 ms > target 2 ms"
    assert rows["pi5-01"]["missed"] == ["p95_ms"]
    assert rows["pi5-01"]["optimizer"] == "deploy fp32"
    # size is known on the host: a miss at once, even before enough telemetry
    assert rows["nuc-01"]["targets"].startswith("misses: size 0.265 MB > target 0.1 MB")
    assert rows["nuc-01"]["optimizer"] == "-"

    table = edge_deploy("fleet", "--registry", str(reg), "--targets", str(targets))
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("pi5-01"))
    assert PI5 in line and "misses: p95" in line and "deploy fp32" in line

    no_targets = edge_deploy("fleet", "--registry", str(reg), "--json")
    assert {r["targets"] for r in json.loads(no_targets.stdout)} == {"-"}


def test_fleet_says_measuring_until_the_roll_up_is_enough(tmp_path):
    reg = fill(tmp_path / "r.sqlite")
    reg.close()
    t = tmp_path / "t.toml"
    t.write_text('[class."x86_64-edgetpu-pci"]\np95_ms = 5\n')
    rows = json.loads(edge_deploy("fleet", "--registry", str(tmp_path / "r.sqlite"),
                                  "--targets", str(t), "--json").stdout)  # fmt: skip
    nuc = next(r for r in rows if r["device"] == "nuc-01")
    assert nuc["targets"] == "measuring (1/3 windows)"


def test_report_writes_html_and_prints_its_path(filled, tmp_path):
    reg, targets = filled
    out = tmp_path / "out"
    proc = edge_deploy("report", "digits", "--registry", str(reg), "--targets", str(targets),
                       "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path == out / "digits.html" and path.is_file()
    page = path.read_text()
    for text in (PI4, PI5, "chosen: <b>int8</b>", "data:image/png;base64,", "misses: p95 3 ms"):
        assert text in page


def test_bad_input_is_one_line_on_stderr_and_exit_2(filled, tmp_path):
    reg, targets = filled
    bad = tmp_path / "bad.toml"
    bad.write_text("[targets]\np95_ms = 'fast'\n")
    assert "no such file" in one_error_line(edge_deploy("report", "digits", "--registry",
                                                        str(tmp_path / "none.sqlite")))  # fmt: skip
    assert "'nope' is not in" in one_error_line(
        edge_deploy("report", "nope", "--registry", str(reg))
    )
    one_error_line(edge_deploy("report", "digits", "--registry", str(reg), "--targets", str(bad)))
    one_error_line(edge_deploy("fleet", "--registry", str(reg), "--targets", str(bad)))
    keys = tmp_path / "keys"
    keys.mkdir()
    unknown = edge_deploy("rollout", "digits", "--variant", "int4", "--class", "rpi4b-cpu",
                          "--keys", str(keys), "--registry", str(reg))  # fmt: skip
    assert "no variant 'int4'" in one_error_line(unknown)
    missing = edge_deploy("optimize", "digits", "--source", str(tmp_path / "nope.keras"),
                          "--targets", str(targets), "--keys", str(keys),
                          "--registry", str(reg))  # fmt: skip
    assert "nope.keras: no such file" in one_error_line(missing)


# ---- the service's re-evaluation rules -----------------------------------------------------------
def test_service_re_runs_a_class_on_new_devices_and_when_targets_are_missed_again(tmp_path):
    reg = fill(tmp_path / "r.sqlite")
    now = [time.time()]
    deployer = Deployer(reg, BrokerAddress("127.0.0.1", 1), None, "digits")
    targets = parse_targets({"class": {"rpi4b-cpu": {"p95_ms": 0.6}}})
    svc = LoopService(reg, deployer, targets, clock=lambda: now[0])
    assert {t.class_id for t in svc.evaluate()} == {PI4, PI5, NUC}  # nothing optimized yet

    svc.watches = {
        PI4: ClassWatch(PI4, "done", "int8-b", frozenset({"pi4-01"}), now[0]),
        PI5: ClassWatch(PI5, "infeasible", "fp32-a", frozenset({"pi5-01"}), now[0]),
        NUC: ClassWatch(NUC, "done", "int8-b", frozenset({"nuc-01"}), now[0]),
    }
    assert svc.evaluate() == []  # the windows before the watch started are not judged
    for seq in range(10, 13):  # a judged window that meets: the window moves on
        reg.record_telemetry("pi4-01", window(seq, INT8_SHA, 0.5, now[0] + seq))
    now[0] += 20
    assert svc.evaluate() == []
    assert svc.watches[PI4].window_start == now[0]
    reg.record_telemetry("pi4-01", window(20, INT8_SHA, 0.9, now[0] + 1))
    reg.record_telemetry("pi4-01", window(21, INT8_SHA, 0.9, now[0] + 2))
    assert svc.evaluate() == []  # 2/3 windows: not judged yet
    reg.record_telemetry("pi4-01", window(22, INT8_SHA, 0.9, now[0] + 3))
    (trigger,) = svc.evaluate()
    assert trigger.class_id == PI4
    assert trigger.reason == "int8 misses targets again (p95 0.9 ms > target 0.6 ms)"

    reg.upsert_device("pi5-02", hardware_class=PI5, state=state("digits", FP32_SHA, "fp32",
                                                                "rpi5-cpu"))  # fmt: skip
    reasons = {t.class_id: t.reason for t in svc.evaluate()}
    assert reasons[PI5] == "new device(s) online: pi5-02"  # even an infeasible class
    assert NUC not in reasons
    reg.close()


# ---- real agents: optimize, rollout, the service -------------------------------------------------
def _host() -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")


def loop_args(registry: Path, targets: Path, keys: Path, broker: Any) -> list[str]:
    return [
        "--source", str(DATA / "digitsnet" / "digitsnet.keras"),
        "--calibration", str(DATA / "digitsnet" / "digits_data.npz"),
        "--validation", str(DATA / "digitsnet" / "digits_data.npz"),
        "--recipes", "fp32,int8", "--targets", str(targets), "--keys", str(keys),
        "--registry", str(registry), "--broker", broker.url, "--timeout", "150",
        "--judge-windows", "2", "--judge-inferences", "30",
        "--min-inferences", "10", "--min-seconds", "0.3",
    ]  # fmt: skip


def agent(start: Callable[..., AgentProcess], device: str, tree: str) -> AgentProcess:
    return start(device, hw_root=str(HWTREES / tree), ready_check=True,
                 extra_args=["--loadgen-rate", "40"])  # fmt: skip


def serving(a: AgentProcess) -> str | None:
    st = a.state() or {}
    sha = (st.get("model") or {}).get("sha256")
    return str(sha) if sha else None


SIZE_TARGETS = 'model = "digits"\n[targets]\nmax_accuracy_drop = 1.0\nsize_mb = 0.5\n'


@pytest.mark.host
@pytest.mark.broker
@pytest.mark.slow
def test_optimize_converges_then_rollout_moves_the_class_and_aborts_on_a_failing_canary(
    broker, keys_dir, start_agent, tmp_path
):
    _host()
    pi1, pi2 = agent(start_agent, "pi4-01", "rpi4b"), agent(start_agent, "pi4-02", "rpi4b")
    targets = tmp_path / "targets.toml"
    targets.write_text(SIZE_TARGETS)  # fp32 (0.99 MB) is over it, int8 (0.27 MB) is not
    registry = tmp_path / "registry.sqlite"
    proc = edge_deploy("optimize", "digits", *loop_args(registry, targets, keys_dir, broker),
                       "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = json.loads(proc.stdout)["classes"]
    assert summary["class"] == PI4 and summary["state"] == "done"
    assert summary["recipe"] == "int8" and summary["trials"] == 1
    assert summary["decisions"][0]["action"] == "deploy"
    assert summary["decisions"][-1]["action"] == "promote"
    assert f"{PI4}: deploy int8: " in proc.stderr  # each decision printed as it is made
    with Registry(registry) as reg:
        int8 = next(v for v in reg.variants_for("digits") if v.recipe == "int8")
        fp32 = next(v for v in reg.variants_for("digits") if v.recipe == "fp32")
    wait_for(lambda: serving(pi1) == serving(pi2) == int8.sha256, 20, "int8 on both devices")

    common = ["--keys", str(keys_dir), "--registry", str(registry), "--broker", broker.url,
              "--min-inferences", "10", "--min-seconds", "0.3"]  # fmt: skip
    done = edge_deploy("rollout", "digits", "--variant", "fp32", "--class", "rpi4b-cpu",
                       "--waves", "100%", *common)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done" in done.stdout and "committed: pi4-01, pi4-02" in done.stdout
    wait_for(lambda: serving(pi1) == serving(pi2) == fp32.sha256, 20, "fp32 on both devices")

    # the canary's own trial gate fails: the rollout aborts, nobody else is notified
    aborted = edge_deploy("rollout", "digits", "--variant", int8.id, "--class", PI4,
                          "--p95-gate", "0.0001", "--json", *common)  # fmt: skip
    assert aborted.returncode == 1, aborted.stdout + aborted.stderr
    out = json.loads(aborted.stdout)
    assert out["state"] == "aborted" and list(out["failed"]) == ["pi4-01"]
    assert out["committed"] == []
    assert "pi4-02: installing" not in aborted.stderr
    assert serving(pi1) == serving(pi2) == fp32.sha256


@pytest.mark.host
@pytest.mark.broker
@pytest.mark.slow
def test_optimize_service_runs_the_loop_again_for_a_class_that_appears(
    broker, keys_dir, start_agent, tmp_path
):
    _host()
    agent(start_agent, "pi4-01", "rpi4b")
    targets = tmp_path / "targets.toml"
    targets.write_text(SIZE_TARGETS)
    registry = tmp_path / "registry.sqlite"
    cmd = [sys.executable, "-c", "import sys; from deploy.cli import main; sys.exit(main())",
           "optimize", "digits", *loop_args(registry, targets, keys_dir, broker),
           "--service", "--poll", "1"]  # fmt: skip
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)

    def promoted(cid: str) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"service exited {proc.returncode}: {tail()}")
        if not registry.exists():
            return False
        with Registry(registry) as reg:
            return any(d.action == "promote" for d in reg.decisions("digits", cid))

    def tail() -> str:
        return str(log_path.read_text(errors="replace"))[-4000:]

    try:
        wait_for(lambda: promoted(PI4), 150, "the first class promoted", step=0.5)
        pi5 = agent(start_agent, "pi5-01", "rpi5")
        wait_for(lambda: promoted(PI5), 150, "the new class promoted", step=0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = tail()
    assert f"{PI5}: running the loop: hardware class not optimized yet" in text
    assert f"{PI5}: done, chosen int8" in text
    assert "service stopped after 2 cycle(s)" in text
    assert serving(pi5) is not None
