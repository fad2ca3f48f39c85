"""Every meter on captured or protocol-built data, without ptys or threads."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.energy import open_meter
from agent.energy.base import GARBAGE, GONE, UNSUPPORTED, WRONG_MODEL, EnergyCounter, MeterSpec
from agent.energy.estimate import BOARDS, EstimateMeter, board_from_model, estimate_watts
from agent.energy.hwmon import HwmonMeter
from agent.energy.pi5_pmic import Pi5PmicMeter, parse_pmic
from agent.energy.powercap import PowercapMeter
from agent.energy.serial_lines import LineParser, SerialLinesMeter, parse_fields
from agent.energy.um25c import RECORD_LEN, find_record, parse_record
from agent.errors import ConfigError, MeterError
from tests.sim_meters import um_record

CAPTURED = Path(__file__).parent / "captured" / "energy"


# -- spec parsing and the factory ---------------------------------------------------------------


def test_spec_splits_kind_at_first_colon_and_keeps_colons_in_the_path():
    spec = MeterSpec.parse("powercap:/sys/class/powercap/intel-rapl:0?interval=0.2")
    assert (spec.kind, spec.arg, dict(spec.options)) == (
        "powercap",
        "/sys/class/powercap/intel-rapl:0",
        {"interval": "0.2"},
    )
    assert MeterSpec.parse("pi5_pmic").arg == ""


def test_open_meter_builds_every_documented_spec_without_io():
    specs = {
        "um25c:/dev/rfcomm0": "um25c",
        "serial_lines:/dev/ttyACM0?format=csv&fields=ms,mV,mA": "serial_lines",
        "hwmon:/sys/class/hwmon/hwmon2": "hwmon",
        "powercap:/sys/class/powercap/intel-rapl:0": "powercap",
        "pi5_pmic": "pi5_pmic",
        "estimate:rpi4b": "estimate",
    }
    for spec, kind in specs.items():
        meter = open_meter(spec)
        assert meter.kind == kind
        assert meter.source == spec.split("?")[0]
    assert open_meter("estimate:rpi4b").measured is False
    assert open_meter("um25c:/dev/rfcomm0").measured is True


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nosuch:/dev/x", "unknown meter kind"),
        ("um25c:/dev/x?bogus=1&other=2", "bogus, other"),
        ("um25c:/dev/x?interval=fast", "interval"),
        ("um25c", "serial port"),
        ("um25c:/dev/x?model=um99", "um99"),
        ("serial_lines:/dev/x?fields=ms,parsecs", "parsecs"),
        ("serial_lines:/dev/x?fields=mV", "power column"),
        ("serial_lines:/dev/x?format=xml", "xml"),
        ("estimate:rpi9", "unknown board"),
        ("", "empty"),
    ],
)
def test_bad_specs_are_config_errors_that_name_the_problem(spec, words):
    with pytest.raises(ConfigError) as err:
        open_meter(spec)
    assert words in str(err.value)


# -- UM24C / UM25C / UM34C records --------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "volts", "amps"),
    [("UM25C", 5.123, 0.4567), ("UM24C", 5.12, 0.456), ("UM34C", 9.05, 1.234)],
)
def test_um_record_scaling_per_model(model, volts, amps):
    rec = parse_record(um_record(model, volts, amps, temp_c=31, group=3))
    assert rec.model == model
    assert rec.volts == pytest.approx(volts, abs=1e-9)
    assert rec.amps == pytest.approx(amps, abs=1e-9)
    assert rec.watts == pytest.approx(volts * amps, rel=1e-9)
    assert rec.watts_field == pytest.approx(volts * amps, abs=0.001)
    assert (rec.temp_c, rec.data_group) == (31, 3)


def test_um25c_resolution_is_0_1_ma_not_1_ma():
    # the same raw current counts mean 10x less current on a UM25C than on a UM24C
    assert parse_record(um_record("UM25C", 5.0, 0.0123)).amps == pytest.approx(0.0123)
    assert parse_record(um_record("UM24C", 5.0, 0.012)).amps == pytest.approx(0.012)


def test_um_record_with_unknown_model_id_is_wrong_model():
    with pytest.raises(MeterError) as err:
        parse_record(um_record("UM25C", 5, 1, model_id=0x1234))
    assert err.value.code == WRONG_MODEL and "0x1234" in str(err.value)


def test_um_record_with_bad_trailer_or_checksum_is_garbage():
    bad = bytearray(um_record("UM25C", 5, 1))
    bad[129] ^= 0xFF
    bad34 = bytearray(um_record("UM34C", 5, 1))
    bad34[3] ^= 0x01  # a checksummed position
    for record in (bytes(bad), bytes(bad34)):
        with pytest.raises(MeterError) as err:
            parse_record(record)
        assert err.value.code == GARBAGE


def test_find_record_resyncs_past_garbage_and_a_false_model_id():
    good = um_record("UM25C", 5.1, 0.5)
    false_start = b"\x09\xc9" + bytes(40)  # a model id in noise, no valid trailer 130 on
    buf = bytearray(b"\x00\x13\x37" + false_start + good + b"\x09")
    record, drop = find_record(buf)
    assert record is not None and record.amps == pytest.approx(0.5)
    assert drop == 3 + len(false_start) + RECORD_LEN


def test_find_record_waits_for_a_record_still_arriving():
    good = um_record("UM25C", 5.1, 0.5)
    record, drop = find_record(bytearray(b"\xaa\xbb" + good[:70]))
    assert record is None and drop == 2  # the noise is dropped, the partial record kept


# -- serial line formats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "line", "watts"),
    [
        ("ms,mV,mA", "123456,5012.5,420.0", 5.0125 * 0.42),
        ("V,A", "5.0125, 0.42", 5.0125 * 0.42),
        ("W", "2.5", 2.5),
        ("t:s,bus:mV,p:mW", "1.5,5000,2104.2", 2.1042),  # power column wins over V x I
        ("mV,uA", "5000,420000", 2.1),
    ],
)
def test_csv_lines_convert_units(fields, line, watts):
    parser = LineParser("csv", parse_fields(fields, json_keys=False))
    assert parser.parse(line) == pytest.approx(watts)


def test_json_lines_use_configured_keys_and_units():
    parser = LineParser("json", parse_fields("bus_mv:mV,current_ma:mA", json_keys=True))
    assert parser.parse('{"bus_mv": 5000, "current_ma": 400, "shunt": 1}') == pytest.approx(2.0)
    default = SerialLinesMeter("/dev/x", {"format": "json"}).parser
    assert default.parse('{"v": 5.01, "i": 0.42}') == pytest.approx(5.01 * 0.42)


@pytest.mark.parametrize(
    "line",
    ["", "INA219 ready", "ms,mV,mA", "1,2", "1,abc,3", "1,2,3,4", "nan,nan,nan", '{"v": 5}'],
)
def test_lines_that_are_not_readings_are_rejected(line):
    assert LineParser("csv", parse_fields("ms,mV,mA", json_keys=False)).parse(line) is None
    assert LineParser("json", parse_fields("v:V,i:A", json_keys=True)).parse(line) is None


# -- hwmon and powercap -------------------------------------------------------------------------


def _hwmon(root: Path, n: int, name: str, files: dict[str, str]) -> Path:
    d = root / f"hwmon{n}"
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    for fname, value in files.items():
        (d / fname).write_text(value + "\n")
    return d


def test_hwmon_power_input_is_microwatts(tmp_path):
    d = _hwmon(tmp_path, 2, "ina3221", {"power1_input": "3250000", "in1_input": "5000"})
    [sample] = HwmonMeter(str(d)).read()
    assert sample.watts == pytest.approx(3.25)


def test_hwmon_finds_the_device_by_name(tmp_path):
    _hwmon(tmp_path, 0, "cpu_thermal", {"temp1_input": "45000"})
    _hwmon(tmp_path, 1, "ina219", {"power1_input": "1500000"})
    [sample] = HwmonMeter(str(tmp_path), {"name": "ina219"}).read()
    assert sample.watts == pytest.approx(1.5)


def test_hwmon_energy_counter_gives_average_power_at_interval_start(tmp_path):
    d = _hwmon(tmp_path, 3, "amd_energy", {"energy1_input": "1000000"})
    meter = HwmonMeter(str(d))
    assert meter.read() == []  # the first counter value only primes
    (d / "energy1_input").write_text("3000000\n")
    [sample] = meter.read()
    assert sample.watts > 0  # 2 J over the (short, real) interval between the two reads


def test_energy_counter_arithmetic_and_wraparound():
    counter = EnergyCounter(wrap_uj=1_000_000)
    assert counter.update(10.0, 900_000) == []
    [s] = counter.update(12.0, 100_000)  # wrapped: 100_000 + 1_000_000 - 900_000 = 0.2 J
    assert s.t == 10.0
    assert s.watts == pytest.approx(0.1)
    assert counter.wraps == 1
    plain = EnergyCounter()
    plain.update(0.0, 5_000_000)
    assert plain.update(1.0, 1_000) == []  # backwards without a known range: a reset


def test_hwmon_without_sensors_or_directory_is_a_labelled_meter_error(tmp_path):
    d = _hwmon(tmp_path, 4, "cpu_thermal", {"temp1_input": "45000"})
    with pytest.raises(MeterError) as err:
        HwmonMeter(str(d)).read()
    assert err.value.code == UNSUPPORTED and "cpu_thermal" in str(err.value)
    with pytest.raises(MeterError) as err:
        HwmonMeter(str(tmp_path / "hwmon9")).read()
    assert err.value.code == GONE


def test_powercap_wraps_at_max_energy_range(tmp_path, monkeypatch):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    (zone / "energy_uj").write_text("262143000000\n")
    clock = iter([100.0, 102.0])
    monkeypatch.setattr("agent.energy.powercap.time.monotonic", lambda: next(clock))
    meter = PowercapMeter(str(zone))
    assert meter.read() == []
    (zone / "energy_uj").write_text("19671150\n")  # wrapped past the range
    [sample] = meter.read()
    joules = (262143328850 - 262143000000 + 19671150) / 1e6
    assert sample.t == 100.0 and sample.watts == pytest.approx(joules / 2.0)
    assert meter.wraps == 1 and meter.describe()["domain"] == "package-0"
    (zone / "energy_uj").unlink()
    with pytest.raises(MeterError) as err:
        meter.read()
    assert err.value.code == GONE


# -- Raspberry Pi 5 PMIC -------------------------------------------------------------------------

# totals cross-checked with an awk one-liner over the same files (sum of V x I per rail name)
PMIC_TOTALS = {
    "pi5_pmic_core_1a.txt": 2.282210,
    "pi5_pmic_core_5a.txt": 5.921612,
    "pi5_pmic_second_board.txt": 2.947977,
}


@pytest.mark.parametrize(("name", "total"), sorted(PMIC_TOTALS.items()))
def test_pmic_captures_sum_v_times_i_over_paired_rails(name, total):
    reading = parse_pmic((CAPTURED / name).read_text())
    assert reading.total_w == pytest.approx(total, abs=1e-6)
    assert len(reading.rails) == 12
    assert set(reading.voltage_only) == {"EXT5V", "BATT"}  # reported, never summed
    assert reading.input_v is not None and 4.9 < reading.input_v < 5.2


def test_pmic_vdd_core_dominates_under_load():
    rails = parse_pmic((CAPTURED / "pi5_pmic_core_5a.txt").read_text()).rails
    v, a = rails["VDD_CORE"]
    assert v * a == pytest.approx(0.89369880 * 5.03652000)


def test_pmic_format_variants_nul_separators_crlf_and_nan():
    text = (CAPTURED / "pi5_pmic_core_1a.txt").read_text()
    expected = PMIC_TOTALS["pi5_pmic_core_1a.txt"]
    assert parse_pmic(text.replace("\n", "\x00")).total_w == pytest.approx(expected)
    assert parse_pmic(text.replace("\n", "\r\n")).total_w == pytest.approx(expected)
    with_nan = text.replace("BATT_V volt(25)=0.00000000V", "BATT_V volt(25)=nanV")
    assert parse_pmic(with_nan).total_w == pytest.approx(expected)
    renamed = text.replace("0V8_SW_", "0V8_SYS_")  # early firmware's rail name
    assert parse_pmic(renamed).total_w == pytest.approx(expected)


def test_pmic_outputs_that_cannot_give_power_are_labelled_errors():
    with pytest.raises(MeterError) as err:
        parse_pmic((CAPTURED / "pmic_not_registered.txt").read_text())
    assert err.value.code == UNSUPPORTED and "Pi 5" in str(err.value)
    with pytest.raises(MeterError) as err:  # published excerpt: currents only
        parse_pmic((CAPTURED / "pi5_pmic_early_firmware_excerpt.txt").read_text())
    assert err.value.code == GARBAGE and "9 current" in str(err.value)


def test_pmic_meter_runs_the_injected_command():
    calls = []

    def runner(args):
        calls.append(list(args))
        return (CAPTURED / "pi5_pmic_second_board.txt").read_text()

    meter = Pi5PmicMeter("", {"cmd": "/opt/vc/bin/vcgencmd"}, runner=runner)
    [sample] = meter.read()
    assert calls == [["/opt/vc/bin/vcgencmd", "pmic_read_adc"]]
    assert sample.watts == pytest.approx(PMIC_TOTALS["pi5_pmic_second_board.txt"])
    assert meter.describe()["last"]["rails"]["VDD_CORE"]["v"] == pytest.approx(0.90659250)


def test_pmic_meter_without_vcgencmd_is_unsupported():
    meter = Pi5PmicMeter("", {"cmd": "/nonexistent/vcgencmd"})
    with pytest.raises(MeterError) as err:
        meter.read()
    assert err.value.code == UNSUPPORTED


# -- the CPU-utilisation estimate ---------------------------------------------------------------


def test_estimate_is_linear_in_utilisation_and_clamped():
    pi4 = BOARDS["rpi4b"]
    assert estimate_watts(pi4, 0.0) == pi4.idle_w == 2.7
    assert estimate_watts(pi4, 1.0) == pi4.load_w == 6.4
    assert estimate_watts(pi4, 0.5) == pytest.approx(4.55)
    assert estimate_watts(pi4, 1.7) == 6.4


def test_estimate_meter_reports_interval_average_at_its_start():
    utils = iter([0.0, 0.25, 1.0])
    meter = EstimateMeter("rpi4b", cpu_util=lambda: next(utils))
    assert meter.read() == []
    [a] = meter.read()
    [b] = meter.read()
    assert a.watts == pytest.approx(2.7 + 3.7 * 0.25) and b.watts == pytest.approx(6.4)
    assert a.t < b.t
    assert meter.describe()["constants_source"].startswith("pidramble")


def test_estimate_auto_detects_the_board_from_the_devicetree(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert EstimateMeter("auto", {"root": str(tmp_path)}).board_key == "rpi4b"
    assert board_from_model("Raspberry Pi 5 Model B Rev 1.0") == "rpi5"
    assert board_from_model("Raspberry Pi Zero 2 W Rev 1.0") == "rpizero2w"
    assert board_from_model("QEMU") == "generic"
    custom = EstimateMeter("generic", {"idle_w": "1", "load_w": "2"})
    assert (custom.board.idle_w, custom.board.load_w, custom.board.source) == (1, 2, "configured")
