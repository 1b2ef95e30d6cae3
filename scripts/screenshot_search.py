"""The screenshot of ``cliplab serve``'s page in ``docs/search.png``: a real server on a real
collection, driven by headless Chromium (the same set-up as ``tests/test_serve.py``)::

    python scripts/screenshot_search.py runs/demo/search/all --query "a red heart" \
        --sort date --relevance 0.5 --out docs/search.png

Needs Chromium and chromedriver (``apt-get install chromium chromium-driver``) and the
``browser`` extra (selenium). The duplicate groups shown are the collection's ``dedup.json``
(run ``cliplab dedup COLLECTION`` first to have some).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer {url} within {seconds:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("collection", type=Path)
    ap.add_argument("--query", default="a red heart")
    ap.add_argument("--sort", default="", choices=("", "date", "oldest"))
    ap.add_argument("--relevance", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=Path("docs/search.png"))
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cliplab", "serve", str(args.collection), "--port", str(port)]
    )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(url + "/health")
        driver = webdriver.Chrome(
            service=webdriver.ChromeService(shutil.which("chromedriver")), options=options
        )
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        wait.until(lambda d: "images" in d.find_element(By.ID, "status").text)
        set_value = (
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'))"
        )
        driver.find_element(By.ID, "q").send_keys(args.query, Keys.ENTER)
        wait.until(lambda d: "results for" in d.find_element(By.ID, "summary").text)
        if args.sort:
            driver.execute_script(set_value, driver.find_element(By.ID, "sort"), args.sort)
        if args.relevance:
            driver.execute_script(
                set_value, driver.find_element(By.ID, "relevance"), str(args.relevance)
            )
        time.sleep(1.0)

        def loaded(d) -> bool:
            images = d.find_elements(By.CSS_SELECTOR, "#grid img, #dups img")
            return all(d.execute_script("return arguments[0].complete", i) for i in images)

        driver.find_element(By.ID, "show-dups").click()
        wait.until(lambda d: d.find_element(By.ID, "dups").text.strip() != "")
        wait.until(loaded)
        time.sleep(0.5)
        broken = driver.execute_script(
            "return [...document.querySelectorAll('img')].filter(i => !i.naturalWidth)"
            ".map(i => i.src)"
        )
        if broken:
            print(f"{len(broken)} image(s) did not load: {broken[:5]}", file=sys.stderr)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"wrote {args.out}: {driver.find_element(By.ID, 'summary').text}")
        return 0
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
