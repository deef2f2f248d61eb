"""bench/gpu_check.py, the prepared GPU check, runs on CPU with --smoke (so it cannot rot before a GPU is lent):
every eager section writes its figures, and BENCHMARKS.md's GPU section renders from the JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_the_gpu_check_smoke_run_writes_every_eager_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rep = json.loads(out.read_text())
    s = rep["sections"]
    assert not any("error" in sec for sec in s.values()), s
    steps = s["steps"]["batch_16"]
    assert [(r["step"], r.get("budget")) for r in steps] == [("plain", None), ("cascade N=1", "flops"),
                                                              ("cascade N=2", "flops"), ("cascade N=1", "filters"),
                                                              ("cascade N=2", "filters")]
    assert all(0 < r["mask_share"] < 1 for r in steps[1:])
    for key in ("teacher", "joint_N2", "finetune_N2", "joint_N4"):
        row = s["epochs"][key]
        assert row["epoch_s"] > 0 and row["x_floor"] > 1, (key, row)
    assert 0.70 < s["epochs"]["finetune_N2"]["student_flops_reduction"] < 0.74
    assert [s["packing"][k]["processes"] for k in ("k1", "k2")] == [1, 2]
    assert s["packing"]["k1"]["speedup_vs_one"] == 1.0
    md = subprocess.run([sys.executable, str(SCRIPT), "--report", str(out)], capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}, check=True).stdout
    assert "| joint, 4 members |" in md and "| processes | images/s (all) |" in md
