"""GET /: the playground page, served by the handler and driven in a real browser.

The page tests use Debian's ``chromium`` and ``chromedriver`` through selenium,
headless, against the local API and a loopback file server. Nothing is
downloaded: without those packages the browser tests skip (``.ci/run``
installs them and sets PLAYGROUND_BROWSER_REQUIRED=1, which makes them
required).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from pydicom import dcmread

import lambda_function
import local_api
from settings import Settings, load_settings
from tests import servers
from tests.corpus import bundled_file, env_flag

PROJECT = Path(__file__).resolve().parents[1]
SCREENSHOT = PROJECT / "docs" / "playground.png"
BROWSER_HINT = (
    "browser tests need Debian's chromium and chromium-driver "
    "(apt-get install chromium chromium-driver), or run .ci/run"
)


def multi_frame_file(folder: Path, frames: int = 13) -> Path:
    """A 13-frame CT built from a bundled slice, each frame a little brighter."""
    ds = dcmread(bundled_file("CT_small.dcm"))
    pixels = ds.pixel_array.astype(np.int16)
    stack = np.stack([pixels + 40 * i for i in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = stack.tobytes()
    path = folder / "cine.dcm"
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.HttpServer]:
    root = tmp_path_factory.mktemp("playground-files")
    server = servers.HttpServer(root)
    server.put("ct.dcm", bundled_file("CT_small.dcm"))
    server.put("cine.dcm", multi_frame_file(tmp_path_factory.mktemp("cine")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(
        {
            "temp_root": str(tmp_path_factory.mktemp("playground-temp")),
            "allowed_hosts": "127.0.0.1:*",
            "download_retries": 0,
            "download_deadline_seconds": 10,
        },
        environ={},
    )


@contextmanager
def local_server(event_format: str, api_settings: Settings) -> Iterator[str]:
    """The local API on a free loopback port, for the length of the block."""
    handler = functools.partial(lambda_function.handle, settings=api_settings)
    server = local_api.make_server("127.0.0.1", 0, event_format, handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api(api_settings: Settings) -> Iterator[str]:
    with local_server("rest", api_settings) as url:
        yield url


# ---------------------------------------------------------------------------
# The page as served (no browser)
# ---------------------------------------------------------------------------


def test_the_page_is_served_with_a_strict_policy(api: str) -> None:
    answer = requests.get(api + "/", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    page = answer.text
    # Every inline script and style is allowed by its hash, and nothing else is loaded.
    for tag in ("script", "style"):
        for body in re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S):
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    for element_id in (
        "url", "render", "image", "window-center", "window-width", "preset",
        "frame", "format", "width", "info", "error", "copy-curl",
    ):  # fmt: skip
        assert f'id="{element_id}"' in page
    assert '<option value="lung">lung</option>' in page


def test_the_page_is_served_under_a_stage_and_through_every_event_shape(
    api_settings: Settings,
) -> None:
    for event_format in local_api.EVENT_FORMATS:
        with local_server(event_format, api_settings) as url:
            answer = requests.get(url + "/", timeout=10)
        assert answer.status_code == 200, event_format
        assert 'id="render"' in answer.text


# ---------------------------------------------------------------------------
# In a browser
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not chromium or not driver_path:
        if env_flag("PLAYGROUND_BROWSER_REQUIRED"):
            pytest.fail(f"PLAYGROUND_BROWSER_REQUIRED is set but {BROWSER_HINT}")
        pytest.skip(BROWSER_HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Any, seconds: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition)


def text_of(driver: Any, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def open_page(driver: Any, api: str) -> None:
    driver.get(api + "/")
    driver.get_log("browser")  # start each test with an empty console
    driver.get_log("performance")


def render(driver: Any, url: str) -> None:
    field = driver.find_element("id", "url")
    field.clear()
    field.send_keys(url)
    driver.find_element("id", "render").click()


def show(driver: Any, api: str, url: str, expected: str) -> None:
    """Open the page, render `url`, and wait until the info line says `expected`."""
    open_page(driver, api)
    render(driver, url)
    wait_for(driver, lambda d: expected in text_of(d, "info"))


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def request_urls(driver: Any) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_paste_a_url_render_and_see_the_image_and_window(
    browser: Any, api: str, files: servers.HttpServer
) -> None:
    show(browser, api, files.url("ct.dcm"), "frame 1 of 1")
    image = browser.find_element("id", "image")
    assert image.get_attribute("src").startswith("data:image/jpeg;base64,")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 128
    info = text_of(browser, "info")
    assert re.search(r"window -?[\d.]+ / [\d.]+ LINEAR \((file|min_max)\)", info), info
    assert "128 \u00d7 128" in info
    assert text_of(browser, "error") == ""
    assert console_errors(browser) == []
    origin = api.rstrip("/")
    leaving = [u for u in request_urls(browser) if not u.startswith((origin, "data:"))]
    assert leaving == []
    if env_flag("PLAYGROUND_SCREENSHOT"):  # refreshes the README's picture
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))


def test_dragging_on_the_image_changes_the_window_and_the_image(
    browser: Any, api: str, files: servers.HttpServer
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    show(browser, api, files.url("ct.dcm"), "frame 1 of 1")
    image = browser.find_element("id", "image")
    before_src = image.get_attribute("src")
    ActionChains(browser).click_and_hold(image).move_by_offset(60, -30).release().perform()
    wait_for(browser, lambda d: "(request)" in text_of(d, "info"))
    center = float(browser.find_element("id", "window-center").get_attribute("value"))
    width = float(browser.find_element("id", "window-width").get_attribute("value"))
    info = text_of(browser, "info")
    assert f"window {center:g} / {width:g} LINEAR (request)" in info.replace(".0 ", " ")
    wait_for(browser, lambda d: d.find_element("id", "image").get_attribute("src") != before_src)
    assert console_errors(browser) == []


def test_a_preset_is_applied(browser: Any, api: str, files: servers.HttpServer) -> None:
    from selenium.webdriver.support.ui import Select

    show(browser, api, files.url("ct.dcm"), "frame 1 of 1")
    Select(browser.find_element("id", "preset")).select_by_value("lung")
    wait_for(browser, lambda d: "window -600 / 1500 LINEAR (preset)" in text_of(d, "info"))
    assert console_errors(browser) == []


def test_frame_7_of_13_from_the_keyboard(browser: Any, api: str, files: servers.HttpServer) -> None:
    from selenium.webdriver.common.keys import Keys

    show(browser, api, files.url("cine.dcm"), "frame 1 of 13")
    slider = browser.find_element("id", "frame")
    assert slider.is_displayed()
    for _ in range(6):
        slider.send_keys(Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: "frame 7 of 13" in text_of(d, "info"))
    assert text_of(browser, "frame-value") == "7"
    assert console_errors(browser) == []


def test_a_missing_file_shows_the_api_message(
    browser: Any, api: str, files: servers.HttpServer
) -> None:
    open_page(browser, api)
    render(browser, files.url("missing.dcm"))
    wait_for(browser, lambda d: text_of(d, "error") != "")
    error = text_of(browser, "error")
    # The API's own message, as the JSON answer carries it.
    document = requests.get(
        api + "/convert", params={"url": files.url("missing.dcm")}, timeout=10
    ).json()
    assert error == f"{document['message']} (HTTP 404)"
    assert "there is no file at that URL" in error
    # The failed fetch is logged by the network layer; the page's script raised nothing.
    scripts = [m for m in console_errors(browser) if "Failed to load resource" not in m]
    assert scripts == []


def test_copy_curl_gives_the_same_request(
    browser: Any, api: str, files: servers.HttpServer
) -> None:
    show(browser, api, files.url("ct.dcm"), "frame 1 of 1")
    browser.find_element("id", "copy-curl").click()
    command = wait_for(browser, lambda d: text_of(d, "curl"))
    assert command.startswith("curl -sS -H 'Accept: image/jpeg' '")
    address = re.search(r"'(http[^']+)'", command)
    assert address is not None
    answer = requests.get(address.group(1), headers={"Accept": "image/jpeg"}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/jpeg"
