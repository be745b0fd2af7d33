"""The README's screenshot of the served search page: serves a work dir on loopback, opens the
page in headless Chromium (the system's, never a downloaded one), types a query and saves a PNG.

    python -m bench.screenshot [--work work/demo] [--run zero-shot] [--query TEXT]
                               [--out docs/serve.png]

Needs Playwright for Python and Debian's `chromium` (`apt-get install chromium`). The default
query is the first caption of the split searched.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

# this machine's closed network refuses Chromium's background connections; these keep it quiet
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
TIMEOUT_MS = 20_000


def chromium_path() -> str | None:
    """The system Chromium binary, or None."""
    for path in CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium")
    return found


def launch(playwright):
    """Headless system Chromium (no browser download)."""
    path = chromium_path()
    if path is None:
        raise RuntimeError("no system Chromium found; install it with `apt-get install chromium`")
    return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("work/demo"))
    parser.add_argument("--run", default="zero-shot")
    parser.add_argument("--split", default=None)
    parser.add_argument("--query", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from cli.serve_app import create_app, running
    from cli.serve_cmd import build_service

    service = build_service(args.work, args.run, args.split)
    service.warm()
    query = args.query or service.searcher(service.default_split).split.features.query_text[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with running(create_app(service)) as url, sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url + "/")
        page.fill("#q", query)
        page.press("#q", "Enter")
        page.wait_for_selector(".card")
        page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete)")
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"screenshot of {url}/?q=... ({query!r}) -> {args.out}")


if __name__ == "__main__":
    main()
