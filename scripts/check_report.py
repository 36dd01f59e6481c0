"""Open a Snakemake report in headless Chromium and check that it renders: no script error, every figure the
workflow marked for the report listed, and each one, opened from the list, decoded as an image.

    python scripts/check_report.py results/default/report.html [--expect-figures N] [--screenshots DIR]

Needs Chromium (Debian: ``apt-get install chromium-headless-shell``; or set ``CHROMIUM`` to any Chromium or
Chrome binary) and the ``playwright`` Python package (``pip install playwright``; only its driver is used,
not its browser downloads). ``make report-check`` installs the package and runs this on the default report.
Exit status 0 when everything renders, 1 with the list of problems otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MIN_PIXELS = 100  # a decoded figure is at least this wide; the report's icons are 58 px


def chromium_binary() -> str:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in CANDIDATES:
        found = shutil.which(name) or (Path("/usr/lib/chromium") / name if name.startswith("chromium") else None)
        if found and Path(found).exists():
            return str(found)
    sys.exit("error: no Chromium found: `apt-get install chromium-headless-shell` (Debian/Ubuntu) or set CHROMIUM "
             "to a Chromium/Chrome binary")


def check(report: Path, expect_figures: int | None, screenshots: Path | None) -> list[str]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("error: the playwright package is missing: `pip install playwright` (no browser download needed)")
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_binary(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        page.get_by_text("Figures", exact=True).first.click()
        page.wait_for_timeout(500)
        rows = page.locator("tr").filter(has_text=".png")
        names = [rows.nth(i).locator("td").first.inner_text().strip() for i in range(rows.count())]
        if not names:
            problems.append("the report's Figures category lists no figure")
        if expect_figures is not None and len(names) != expect_figures:
            problems.append(f"{len(names)} figures listed, {expect_figures} expected: {names}")
        for i, name in enumerate(names):
            rows.nth(i).locator("a[iconname=eye]").click()
            base = Path(name).name
            try:
                page.wait_for_function(
                    """([base, minWidth]) => [...document.images].some(
                        im => im.src.startsWith('data:image/png') && im.src.includes(base)
                              && im.complete && im.naturalWidth >= minWidth)""",
                    arg=[base, MIN_PIXELS], timeout=10_000)
            except Exception:  # playwright's TimeoutError
                problems.append(f"{name}: opened from the list but no decoded image of it appeared")
                continue
            if screenshots:
                screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshots / f"{base}.report.png"))
        page.get_by_text("Results", exact=True).first.click()
        page.wait_for_timeout(300)
        if page.get_by_text("Tables", exact=True).count() == 0:
            problems.append("the report has no Tables category")
        browser.close()
    print(f"{report}: {len(names)} figures rendered" if not problems else f"{report}: {len(problems)} problem(s)")
    return problems


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("--expect-figures", type=int, help="number of figures the report must list")
    p.add_argument("--screenshots", type=Path, help="save a screenshot of every opened figure here")
    args = p.parse_args(argv)
    if not args.report.exists():
        sys.exit(f"error: {args.report} does not exist: make it with `snakemake report` (or `snakemake --report`)")
    problems = check(args.report, args.expect_figures, args.screenshots)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
