"""A PNG of TensorBoard's scalars dashboard for a study's pretraining runs (the curves every run writes
beside its metrics.jsonl, sslstudy.curves).

    PYTHONPATH=ssl .venv/bin/python benchmarks/tensorboard_screenshot.py results --out docs/tensorboard.png \
        [--tags 'train/loss|train/lr|effective_rank|views_per_s'] [--size 1400,1000] [--chromium PATH]

Starts `tensorboard --logdir <results>/runs` on 127.0.0.1 at a port the system picks, waits until it
serves the runs' scalars, has headless Chromium load the scalars dashboard (its JavaScript comes from
the TensorBoard server: no internet needed) with the --tags filter and no smoothing, writes the PNG
(temp name, then rename) and stops TensorBoard. Chromium: /usr/bin/chromium (Debian: apt-get install -y
chromium), or --chromium.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_TAGS = "train/loss|train/lr|effective_rank|views_per_s"
SERVING = re.compile(r"TensorBoard \S+ at (http://\S+?)/? ")  # the line TensorBoard prints once it listens
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder: its runs/ holds the pretraining runs")
    ap.add_argument("--out", type=Path, default=None, help="the PNG (default <results>/tensorboard.png)")
    ap.add_argument("--tags", default=DEFAULT_TAGS, help="the dashboard's tag filter (a regex; '' shows all)")
    ap.add_argument("--size", default="1400,1000", help="the window, width,height in pixels")
    ap.add_argument("--chromium", default=None, help=f"the browser (default the first of {', '.join(BROWSERS)})")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for TensorBoard, then for Chromium")
    a = ap.parse_args(argv)
    runs = a.results / "runs"
    if not any(runs.rglob("*tfevents*")):
        sys.exit(f"error: no TensorBoard event files under {runs}; give the results folder of a study")
    browser = a.chromium or next((p for p in map(shutil.which, BROWSERS) if p), None)
    if not browser:
        sys.exit("error: no Chromium found; install it (apt-get install -y chromium) or give --chromium PATH")
    out = a.out or a.results / "tensorboard.png"
    with serve(runs, a.timeout) as url:
        screenshot(browser, f"{url}/#scalars&_smoothingWeight=0&tagFilter={urllib.parse.quote(a.tags)}", out, a)
    print(f"wrote {out}")
    return out


class serve:
    """`with serve(logdir, timeout) as url:` TensorBoard on 127.0.0.1 (a port the system picks), once its
    scalars API lists a run; stopped (SIGTERM, then SIGKILL) on leaving."""

    def __init__(self, logdir: Path, timeout: float):
        self.logdir, self.timeout, self.lines = logdir, timeout, []

    def __enter__(self) -> str:
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*cmd, "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        try:
            url = self._wait(lambda: next((m.group(1) for m in map(SERVING.search, self.lines) if m), None))
            self._wait(lambda: _scalar_runs(url))
        except BaseException:
            self.__exit__()
            raise
        return url

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def _wait(self, ready):
        """ready()'s first truthy value, polled until the timeout; exits with TensorBoard's output if it ends."""
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            if found := ready():
                return found
            if self.proc.poll() is not None:
                sys.exit(f"error: tensorboard exited ({self.proc.returncode}):\n{''.join(self.lines[-20:])}")
            time.sleep(0.5)
        sys.exit(f"error: tensorboard did not serve {self.logdir} in {self.timeout:g} s:\n{''.join(self.lines[-20:])}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _scalar_runs(url: str) -> list[str] | None:
    """The runs with scalars TensorBoard serves now (None while it does not answer)."""
    try:
        with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=5) as r:
            return list(json.load(r))
    except OSError:
        return None


def screenshot(browser: str, url: str, out: Path, a) -> None:
    """Headless Chromium's PNG of `url` (after its virtual time budget: the dashboard's requests done) at out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tb-chromium-") as tmp:
        png = Path(tmp) / "shot.png"
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={a.size}",
            "--virtual-time-budget=15000",
            f"--screenshot={png}",
            url,
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
        if p.returncode or not png.is_file():
            sys.exit(f"error: {browser} wrote no screenshot ({p.returncode}):\n{p.stderr[-2000:]}")
        tmp_out = out.with_name(f".{out.name}.tmp")
        shutil.move(png, tmp_out)
        tmp_out.replace(out)


if __name__ == "__main__":
    main()
