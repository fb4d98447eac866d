"""The latent explorer page in a real browser: Debian's headless Chromium driven by Selenium (chromedriver)
against the real `latentserve serve` of `http_server` (tiny repository, API token on).

Checks what a user sees: the token is asked once and kept for the tab; the page loads with no console errors;
moving the brightness knob redraws the image brighter (pixels read back from the page), with a burst of
slider positions coalesced into fewer requests whose last one is the newest position; an uploaded image comes
back reconstructed (the flow's round trip is exact); the interpolation strip has the requested frames and the
animation plays; a wrong token shows the error in plain words. Screenshots go to LATENTSERVE_SCREENSHOTS (a
directory) or the test's tmp dir.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(300)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# mean pixel value (0..255) of an <img> on the page, read back through a canvas
PIXELS_JS = """
const img = document.getElementById(arguments[0]);
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
return Array.from(g.getImageData(0, 0, c.width, c.height).data);
"""


def _pixels(driver, element_id: str) -> np.ndarray:
    rgba = np.array(driver.execute_script(PIXELS_JS, element_id), dtype=np.float64).reshape(-1, 4)
    return rgba[:, :3]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("LATENTSERVE_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium + chromium-driver are not installed (scripts/test.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra) is not installed")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout_s: float = 60.0, what: str = ""):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            value = condition(driver)
        except Exception:  # noqa: BLE001 - the element is not there yet
            value = None
        if value:
            return value
        time.sleep(0.1)
    error = driver.execute_script("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent")
    raise TimeoutError(f"timed out waiting for {what or condition} (page error: {error!r})")


def _severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _count(driver, css: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", css)


@pytest.fixture(scope="module")
def page(browser, http_server, shots):
    """The page after the token was typed once into its form; the browser log is emptied."""
    from selenium.webdriver.common.by import By

    browser.get(http_server.url)
    _wait(browser, lambda d: d.find_element(By.ID, "token-form").is_displayed(), what="the token form")
    browser.find_element(By.ID, "token").send_keys(http_server.token)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    _wait(browser, lambda d: _count(d, "#grid img") == 8, what="8 samples")
    browser.get_log("browser")
    return browser


def test_page_loads_with_no_console_errors_and_keeps_the_token(page, http_server, shots):
    from selenium.webdriver.common.by import By

    page.refresh()  # the token is kept in session storage: no form again
    _wait(page, lambda d: _count(d, "#grid img") == 8, what="8 samples after reload")
    assert not page.find_element(By.ID, "token-form").is_displayed()
    assert page.execute_script("return sessionStorage.getItem('latentserve-token')") == http_server.token
    assert page.find_element(By.ID, "model").get_attribute("value") == "tiny-flow"
    facts = page.find_element(By.ID, "facts-list").text
    assert "flow" in facts and "192" in facts and "square, ellipse, triangle" in facts
    assert _count(page, "#knobs input[type=range]") == 3  # brightness + 2 PCA directions
    assert not page.find_element(By.ID, "error").is_displayed()
    time.sleep(0.5)
    assert _severe(page) == []
    page.save_screenshot(str(shots / "explorer-loaded.png"))


def test_moving_a_knob_redraws_the_image_in_the_factors_direction(page, shots):
    set_knob = ("const s = document.getElementById('knob-brightness'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('input'));")
    draws = lambda d: d.execute_script("return window.latentExplorer.draws")  # noqa: E731
    means = {}
    for target in (-0.3, 0.3):
        before = draws(page)
        page.execute_script(set_knob, target)
        _wait(page, lambda d: draws(d) > before and not d.execute_script("return document.getElementById('error').hidden === false"),
              what="a redraw")
        _wait(page, lambda d: d.execute_script("return document.getElementById('current-image').complete"))
        means[target] = _pixels(page, "current-image").mean()
    # brightness is the mean pixel value on the [-1, 1] scale: 0.6 apart = 76.5 on 0..255
    assert means[0.3] - means[-0.3] == pytest.approx(76.5, abs=3.0), means

    # a burst of positions while dragging: fewer requests than positions, and the newest one wins
    before = draws(page)
    positions = np.linspace(-0.4, 0.4, 40).round(3).tolist()
    page.execute_script("for (const v of arguments[0]) {" + set_knob.replace("arguments[0]", "v") + "}", positions)
    _wait(page, lambda d: d.execute_script("return window.latentExplorer.lastMoves")[0]["target"] == positions[-1],
          what="the newest position drawn")
    assert draws(page) - before < len(positions)
    assert _pixels(page, "current-image").mean() == pytest.approx(127.5 * (1 + 0.4), abs=3.0)
    link = page.execute_script("return document.querySelector('a[data-for=current-image]')")
    assert link.get_attribute("href") == page.execute_script("return document.getElementById('current-image').src")
    assert link.get_attribute("download").endswith(".png") and link.is_displayed()
    page.save_screenshot(str(shots / "explorer-knob.png"))
    assert _severe(page) == []


def test_uploaded_image_comes_back_reconstructed(page, tmp_path, shots):
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(3)
    picture = (rng.uniform(60, 200, (8, 8, 3))).astype(np.uint8)
    path = tmp_path / "upload.png"
    Image.fromarray(picture).save(path)
    page.find_element(By.ID, "upload").send_keys(str(path))
    _wait(page, lambda d: d.find_element(By.ID, "current-image").get_attribute("data-reconstructed") == "1",
          what="the reconstruction")
    _wait(page, lambda d: d.execute_script("return document.getElementById('current-image').complete"))
    original = _pixels(page, "original")
    recon = _pixels(page, "current-image")
    assert np.array_equal(original, picture.reshape(-1, 3).astype(np.float64))  # 8x8 already: no scaling
    assert np.abs(recon - original).max() <= 2.0  # tiny-flow's decoder inverts its encoder exactly
    assert "reconstruction of upload.png" in page.find_element(By.ID, "current-caption").text
    page.save_screenshot(str(shots / "explorer-upload.png"))
    assert _severe(page) == []


def test_interpolation_strip_has_the_requested_frames(page, shots):
    from selenium.webdriver.common.by import By

    steps = page.find_element(By.ID, "interp-steps")
    steps.clear()
    steps.send_keys("5")
    methods = [o.get_attribute("value") for o in page.find_elements(By.CSS_SELECTOR, "#interp-method option")]
    assert {"lerp", "slerp"} <= set(methods)
    page.find_elements(By.CSS_SELECTOR, "#grid button[data-end=b]")[3].click()
    page.find_element(By.ID, "interpolate").click()
    _wait(page, lambda d: _count(d, "#strip img") == 5, what="5 frames")
    assert page.find_element(By.ID, "strip").get_attribute("data-frames") == "5"
    links = page.find_elements(By.CSS_SELECTOR, "#strip a")  # each frame downloads as PNG
    assert len(links) == 5 and all(a.get_attribute("download").endswith(".png") for a in links)
    first = _wait(page, lambda d: d.find_element(By.ID, "player").get_attribute("src"), what="the animation")
    _wait(page, lambda d: d.find_element(By.ID, "player").get_attribute("src") != first, what="the next frame")
    page.save_screenshot(str(shots / "explorer-interpolation.png"))
    assert _severe(page) == []


def test_a_bad_token_shows_an_error_in_plain_words(page, http_server, shots):
    from selenium.webdriver.common.by import By

    page.execute_script("sessionStorage.clear()")
    page.refresh()
    _wait(page, lambda d: d.find_element(By.ID, "token-form").is_displayed(), what="the token form")
    page.find_element(By.ID, "token").send_keys("not-the-token")
    page.find_element(By.CSS_SELECTOR, "#token-form button").click()
    error = _wait(page, lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error").text,
                  what="the error")
    assert error.startswith("The server needs a valid API token") and "wrong API token" in error, error
    assert "not-the-token" not in error and http_server.token not in error
    assert page.find_element(By.ID, "token-form").is_displayed()  # asked again
    page.save_screenshot(str(shots / "explorer-bad-token.png"))
    assert any("401" in e["message"] for e in _severe(page))  # the refused request, nothing else
    page.execute_script("sessionStorage.setItem('latentserve-token', arguments[0])", http_server.token)
