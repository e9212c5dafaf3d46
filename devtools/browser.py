"""The headless Chromium of the browser tests and the screenshots: the OS's package, driven by Playwright."""

import os
import shutil

# Quiet and offline: no sandbox (containers), no GPU, nothing fetched in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def chromium_path():
    """``$CHROMIUM``, or the ``chromium`` (``chromium-browser``) on PATH; None if there is none."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright, executable_path):
    return playwright.chromium.launch(executable_path=executable_path, args=CHROMIUM_ARGS, headless=True)
