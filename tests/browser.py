"""Headless Chromium for the HTML-view tests: load a page offline, read its DOM after scripts ran, collect
console errors, take a screenshot. Tests skip (saying how to enable them) when no Chromium is installed."""
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SKIP_REASON = ("no headless Chromium: install Debian's `chromium` (apt-get install -y chromium) to run the "
               "browser checks of the HTML views; .ci/run installs it")


def find_browser() -> str | None:
  return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


requires_browser = pytest.mark.skipif(find_browser() is None, reason=SKIP_REASON)


def _run(page: Path, *args, timeout: int = 60) -> subprocess.CompletedProcess:
  profile = page.parent / ".chromium-profile"
  cmd = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
         "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any network fetch fails (and logs an error)
         "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def console_errors(stderr: str) -> list[str]:
  """Console messages at error level, and failed loads, from Chromium's stderr log."""
  lines = [line for line in stderr.splitlines() if "CONSOLE" in line or "net::ERR" in line]
  return [line for line in lines if "net::ERR" in line or "Uncaught" in line or ":ERROR:" in line
          or "error" in line.lower()]


def dump_dom(page: Path) -> tuple[str, list[str]]:
  """(the DOM after the page's scripts ran, console errors)."""
  proc = _run(page, "--dump-dom", "--virtual-time-budget=2000")
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout, console_errors(proc.stderr)


def screenshot(page: Path, png: Path, size=(1100, 900)) -> list[str]:
  """Writes png; returns console errors."""
  proc = _run(page, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars")
  assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
  return console_errors(proc.stderr)


def pixel_summary(png: Path) -> dict:
  """Share of non-white pixels, of green-dominated and of red-dominated pixels."""
  import matplotlib.image
  rgb = matplotlib.image.imread(png)[..., :3]
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  return {"ink": float((rgb.min(-1) < 0.95).mean()),
          "green": float(((g - r > 0.15) & (g - b > 0.15)).mean()),
          "red": float(((r - g > 0.15) & (r - b > 0.15)).mean())}
