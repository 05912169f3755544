"""Hostile bucket files: every one a ConfigError naming the file and the key/line, never a traceback or a hang."""

import re
import time
from pathlib import Path

import pytest

from b2luca.cli import main
from b2luca.config import ConfigError, load_config
from b2luca.config_checks import MAX_CONFIG_BYTES, MAX_DEPTH

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def _demo_text() -> str:
    text = DEMO.read_text()
    return text.replace("../", f"{REPO}/")  # absolute paths: the file may live in tmp_path


def _write(tmp_path: Path, text: "str | bytes") -> Path:
    path = tmp_path / "bucket.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 5000])
def test_deep_nesting_is_refused_not_recursion_error(tmp_path, depth):
    path = _write(tmp_path, _demo_text() + "extra: " + "[" * depth + "]" * depth + "\n")
    line = _demo_text().count("\n") + 1  # the appended key's line
    assert re.search(rf"line {line}\b.*(nested more than {MAX_DEPTH} levels|exceeded maximum nesting depth)", _error(path))


def test_invalid_utf8_names_the_line(tmp_path):
    text = _demo_text().encode().replace(b"name: demo", b"name: d\xffmo")
    assert re.search(r"line 7: invalid UTF-8 byte 0xff", _error(_write(tmp_path, text)))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16_file_is_refused(tmp_path, encoding):
    message = _error(_write(tmp_path, _demo_text().encode(encoding)))
    assert "UTF-16" in message and "save it as UTF-8" in message


def test_alias_bomb_refused_quickly(tmp_path):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "\n".join(lines) + "\n" + _demo_text().replace("name: demo", "name: *a9")
    start = time.perf_counter()
    message = _error(_write(tmp_path, text))
    assert time.perf_counter() - start < 2
    assert "alias bomb" in message


def test_recursive_alias_refused(tmp_path):
    path = _write(tmp_path, _demo_text() + "extra: &x [*x]\n")
    assert "recursive alias" in _error(path)


def test_duplicate_keys_at_every_level_all_reported(tmp_path):
    text = _demo_text().replace("bucket:\n", "schema_version: 1\nbucket:\n  experiment: 3\n", 1)
    message = _error(_write(tmp_path, text))
    lines = message.splitlines()
    assert any(re.search(r"line \d+: schema_version: duplicate key \(first at line 4\)", line) for line in lines)
    assert any(re.search(r"line \d+: bucket\.experiment: duplicate key \(first at line 8\)", line) for line in lines)


@pytest.mark.parametrize("old,new,key", [
    ("last_run: 8", "last_run: 99999999999999999999", r"bucket\.last_run: must be <= 999999"),
    ("seed: 20261124", f"seed: {2 ** 70}", r"simulation\.seed: must be <= "),
    ("hadron_calib: 600", "hadron_calib: 1000000000000", r"simulation\.events\.hadron_calib: must be <= "),
    ("max_file_size_mb: 5", "max_file_size_mb: .nan", r"archive\.max_file_size_mb: must be a finite number"),
    ("max_file_size_mb: 5", "max_file_size_mb: .inf", r"archive\.max_file_size_mb: must be"),
])
def test_numbers_beyond_sane_bounds(tmp_path, old, new, key):
    text = _demo_text()
    assert old in text
    assert re.search(key, _error(_write(tmp_path, text.replace(old, new))))


def test_all_schema_problems_in_one_run(tmp_path):
    text = _demo_text().replace("last_run: 8", "last_run: 99999999999999999999")
    text = text.replace("workers: 2", "workers: 0").replace("type: native", "type: slurm")
    lines = _error(_write(tmp_path, text)).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{tmp_path / 'bucket.yaml'}: ") for line in lines)


def test_big_file_refused_by_size_quickly(tmp_path):
    path = _write(tmp_path, _demo_text())
    with open(path, "a") as handle:
        handle.write(("# " + "y" * 97 + "\n") * (50 * 1024 * 1024 // 100))
    start = time.perf_counter()
    assert f"at most {MAX_CONFIG_BYTES} bytes" in _error(path)
    assert time.perf_counter() - start < 1


def _with_expert_config(entries: str) -> str:
    """The demo config with ``entries`` (YAML lines) added under calibrations.expert_config."""
    text = _demo_text()
    assert "\n  expert_config:\n" in text
    return text.replace("\n  expert_config:\n", "\n  expert_config:\n" + entries, 1)


def test_expert_config_checked_against_script_defaults(tmp_path, capsys):
    text = _with_expert_config(
        "    CDCTimeZeros: {max_iterations: many, max_iteration: 3, initial_sigma_mm: 0.2}\n"
        "    BeamSpot: {min_events: 2.5}\n")
    path = _write(tmp_path, text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "calibrations.expert_config.CDCTimeZeros.max_iterations: must be a number" in err
    assert "calibrations.expert_config.CDCTimeZeros.max_iteration: is not a setting of CDCTimeZeros" in err
    assert "calibrations.expert_config.BeamSpot.min_events: must be an integer" in err
    assert "initial_sigma_mm:" not in err
    assert "Traceback" not in err


def test_valid_overrides_still_pass(tmp_path, capsys):
    text = _with_expert_config("    CDCTimeZeros: {max_iterations: 12, initial_sigma_mm: 1}\n")
    assert main(["check", str(_write(tmp_path, text))]) == 0


def test_anchors_within_bounds_still_work(tmp_path):
    text = _demo_text().replace("  workers: 2", "  workers: 2\n  resources: {default: &res {cpus: 2}, per_task: {Sim: *res}}")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.batch.resources_for("Sim").cpus == 2 and cfg.batch.default_resources.cpus == 2
