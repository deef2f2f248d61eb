"""MLflow's UI as a new user sees it: `mlflow ui` on a search's store, opened in a fresh headless Chromium at
the link the search prints; a screenshot, and assertions on what the page shows.

    python bench/mlflow_ui_check.py results/smoke [--out docs/mlflow_ui.png]

Asserts that the page is the experiment's runs as model training (not MLflow 3's GenAI overview), the trials
listed flat with their names and the chosen metric columns. Needs Debian's `chromium` (apt-get install
chromium); exits 2 without it. tests/test_search.py runs it on its smoke search where Chromium is installed.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000", "--virtual-time-budget=20000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(run_dir: Path, out: Path | None = None) -> dict:
    """Serve ``run_dir``'s MLflow store, open the search's link; returns what was seen, raises on a wrong page."""
    from search.results import load_result
    from search.tracking import ui_url

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FileNotFoundError("no chromium here (apt-get install chromium)")
    result = load_result(run_dir)
    names = [t.name for t in result.trials if t.name]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", result.tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):  # the server's start, on a loaded machine too
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        url = ui_url(base, result.experiment_id)
        with tempfile.TemporaryDirectory() as profile:  # a fresh browser: no remembered workflow type
            flags = CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]
            dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True,
                                 timeout=180).stdout
            if out is not None:
                subprocess.run([browser, *flags, f"--screenshot={out}", url], capture_output=True, timeout=180)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    seen = {"url": url, "trial_names": [n for n in names if n in text],
            "columns": [c for c in ("val_accuracy", "test_accuracy", "flops") if c in text],
            "genai_overview": any(k in text for k in ("Token usage", "Trace latency", "Log traces"))}
    assert seen["trial_names"] == names, f"the trials are not listed: {seen}"
    assert len(seen["columns"]) == 3, f"the metric columns are not shown: {seen}"
    assert not seen["genai_overview"], f"the GenAI overview opened: {seen}"
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a search's directory (<results_dir>/<experiment>)")
    ap.add_argument("--out", type=Path, help="also save a screenshot here")
    args = ap.parse_args()
    try:
        print(check(Path(args.run_dir), args.out))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
