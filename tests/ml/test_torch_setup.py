"""b2luca.ml without PyTorch: one clear line that says what to install (never a silent skip)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def test_require_torch_without_torch(monkeypatch):
    from b2luca.errors import MLDependencyError, UserError
    from b2luca.ml import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" raises ImportError
    with pytest.raises(MLDependencyError) as info:
        require_torch("ECLMuPiCNN")
    message = str(info.value)
    assert "\n" not in message and "install b2luca[ml]" in message and "ECLMuPiCNN" in message
    assert isinstance(info.value, UserError) and info.value.exit_code == 2


def test_calibration_without_torch_fails_before_reading_data(monkeypatch, tmp_path):
    from b2luca.conditions import DatabaseChain, LocalDatabase
    from b2luca.contract import CalibrationJob
    from b2luca.errors import MLDependencyError
    from b2luca.iov import ExpRun, IoV
    from calibrations import ecl_mupi_cnn

    monkeypatch.setitem(sys.modules, "torch", None)
    missing = [(tmp_path / "does_not_exist.root", ExpRun(26, 1))]
    job = CalibrationJob(name="ECLMuPiCNN", input_files={"radmumu_calib": missing, "hadron_calib": missing},
                         requested_iov=IoV(26, 1, 26, 1), expert_config=dict(ecl_mupi_cnn.settings.expert_config),
                         output_db=LocalDatabase(tmp_path / "out").create(), database_chain=DatabaseChain([]),
                         work_dir=tmp_path, log=logging.getLogger("test"))
    with pytest.raises(MLDependencyError, match=r"install b2luca\[ml\]"):
        ecl_mupi_cnn.calibrate(job)
    assert not (tmp_path / "out" / "database.txt").exists() or "ECLMuPiCNN" not in (tmp_path / "out" / "database.txt").read_text()


def test_resolve_device_rejects_unknown_names():
    torch = pytest.importorskip("torch")
    from b2luca.ml import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expert_config.device"):
        resolve_device("tpu")
