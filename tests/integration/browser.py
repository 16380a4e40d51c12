"""A headless Chromium for the console's tests: the Debian package's browser, driven by playwright.

No browser is ever downloaded: playwright launches /usr/bin/chromium (`executable_path`). The switches
keep it from reaching out (updates, sync, metrics, safe browsing) and let it run as root in a container
(no sandbox there, and a small /dev/shm). Screenshots go to FERRY_TEST_ARTIFACTS (default
`test-artifacts/`, which git ignores), where CI keeps them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--safebrowsing-disable-auto-update",
]
REPO = Path(__file__).resolve().parents[2]


def artifacts() -> Path:
    folder = Path(os.environ.get("FERRY_TEST_ARTIFACTS") or REPO / "test-artifacts") / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page: Any, name: str) -> Path:
    """A full-page screenshot, kept as a test artefact."""
    path = artifacts() / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def chromium() -> Iterator[Any]:
    """The browser, or a skip when this machine has no Chromium or no playwright."""
    sync_api = pytest.importorskip("playwright.sync_api")
    path = os.environ.get("FERRY_CHROMIUM") or CHROMIUM
    if not (Path(path).exists() or shutil.which(path)):
        pytest.skip(f"no Chromium at {path}: apt-get install chromium (scripts/system-deps.sh)")
    with sync_api.sync_playwright() as play:
        browser = play.chromium.launch(executable_path=path, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
