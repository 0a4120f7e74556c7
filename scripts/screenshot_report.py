#!/usr/bin/env python3
"""Screenshot a spikebridge report page headless, to look at it as a reader would.

    python scripts/screenshot_report.py runs/demo/report.html --out shots/demo.png
    python scripts/screenshot_report.py runs/cnn/report --out shots/cnn.png --height 5000

REPORT is report.html or the folder holding it. Takes the first screen (1280 x 900, what a
reader sees on opening the page) and, with --height, a taller capture of the whole page.
Needs Chromium (Debian: ``apt-get install -y chromium``; or --chromium PATH). CI has no
browser: the test suite checks the page's structure instead (tests/toolchain/test_report*.py).
The browser runs with a throw-away profile, no network services and no sandbox (the page is
our own self-contained file: no scripts, no external resources).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(explicit: str | None = None) -> str:
    for name in ((explicit,) if explicit else CANDIDATES):
        path = shutil.which(name) if name else None
        if path:
            return path
    sys.exit("error: no Chromium found; install it (Debian: apt-get install -y chromium) or pass --chromium PATH")


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 900, chromium: str | None = None,
               timeout: float = 120.0) -> Path:
    """Render ``page`` headless into ``out`` (PNG) at width x height; returns ``out``."""
    exe = find_chromium(chromium)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sb-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--screenshot={out.resolve()}", f"--window-size={width},{height}",
               page.resolve().as_uri()]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 or not out.is_file():
        sys.exit(f"error: chromium failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", help="report.html or the folder that holds it")
    ap.add_argument("--out", required=True, help="PNG to write (the first screen)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900, help="window height (900: the first screen)")
    ap.add_argument("--full", type=int, metavar="HEIGHT",
                    help="also write OUT-full.png, a capture HEIGHT pixels tall (most of the page)")
    ap.add_argument("--chromium", help="the browser binary (default: chromium on PATH)")
    a = ap.parse_args(argv)
    page = Path(a.report)
    if page.is_dir():
        page = page / "report.html"
    if not page.is_file():
        sys.exit(f"error: {page}: no report.html")
    out = Path(a.out)
    print(screenshot(page, out, a.width, a.height, a.chromium))
    if a.full:
        print(screenshot(page, out.with_name(out.stem + "-full.png"), a.width, a.full, a.chromium))
    return 0


if __name__ == "__main__":
    sys.exit(main())
