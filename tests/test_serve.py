"""`rlr serve`: the page scores a dropped image; non-images and oversized uploads get clear refusals."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rlr
from rlr.calibrate import calibrate
from rlr.data.demo import generate_demo
from rlr.engine.train import train
from rlr.inference import Model
from rlr.serve import PredictServer

from .conftest import tiny_config

LIMIT = 256 * 1024
CHROMIUM = Path(os.environ.get("RLR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RLR_CHROMEDRIVER", "/usr/bin/chromedriver"))


@pytest.fixture(scope="module")
def model(tiny_demo, feature_cache_dir, tmp_path_factory):
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    run_dir = train(config, tmp_path_factory.mktemp("runs") / "tiny")
    normal = generate_demo(tmp_path_factory.mktemp("normal") / "data", seed=2, image_size=128, n_train=3,
                           n_test_good=1, n_test_defect=1)
    calibrate(Model.load(run_dir, "cpu", use_thresholds=False), normal)
    return rlr.load(run_dir, "cpu")


@pytest.fixture(scope="module")
def server(model):
    server = PredictServer(model, port=0, max_upload_bytes=LIMIT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def post(server, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + "predict", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def path_copy(path: Path, folder: Path) -> Path:
    """The file outside the run's dataset, so it gets the global threshold, as an upload does."""
    copy = folder / path.name
    copy.write_bytes(path.read_bytes())
    return copy


def test_page_is_served_with_the_upload_limit(server):
    with urllib.request.urlopen(server.url, timeout=30) as response:
        page = response.read().decode()
    assert response.headers["Content-Type"].startswith("text/html")
    assert f"const MAX_UPLOAD = {LIMIT};" in page and 'id="file"' in page and '"brick"' in page


def test_an_image_upload_returns_score_decision_and_overlay(server, model, tiny_demo):
    path = next(tiny_demo.glob("gravel/test/*/*.png"))
    status, answer = post(server, path.read_bytes(), {"X-Filename": "part%201.png", "X-Class": "gravel"})
    assert status == 200
    expected = model.predict(path, class_name="gravel")
    assert answer["score"] == pytest.approx(expected.score, rel=1e-6)
    assert answer["threshold"] == expected.threshold and answer["decision"] == expected.decision != ""
    assert answer["name"] == "part 1.png" and answer["size"] == [128, 128]
    assert answer["overlay"].startswith("data:image/png;base64,")
    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay"].split(",", 1)[1])))
    assert overlay.size == (128, 128)


@pytest.mark.parametrize(
    "body,headers,status,message",
    [
        (b"just some text, not a picture", {"X-Filename": "notes.txt"}, 400, "notes.txt: not an image file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), {"X-Filename": "cut.png"}, 400, "cut.png: truncated or corrupt image"),
        (b"", {}, 400, "empty upload"),
        (bytes(LIMIT + 1), {"X-Filename": "huge.png"}, 413, "exceeds the 0.25 MB limit"),
        (b"x", {"X-Class": "nope"}, 400, "unknown class 'nope'"),
    ],
)
def test_bad_uploads_are_refused_with_a_clear_message(server, body, headers, status, message):
    code, answer = post(server, body, headers)
    assert code == status
    assert message in answer["error"]
    assert "/tmp" not in answer["error"] and "rlr-serve-" not in answer["error"]


def test_server_still_answers_after_refusals(server, tiny_demo):
    post(server, bytes(LIMIT * 3))
    path = next(tiny_demo.glob("brick/test/good/*.png"))
    assert post(server, path.read_bytes())[0] == 200


def test_unknown_paths_are_404(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url + "admin", timeout=30)
    assert info.value.code == 404


@pytest.mark.browser
def test_page_in_headless_chromium_shows_heatmap_score_and_decision(server, model, tiny_demo, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}; "
                    "apt-get install chromium chromium-driver, or set RLR_CHROMIUM / RLR_CHROMEDRIVER)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver path below, Selenium Manager downloads nothing
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        path = next(tiny_demo.glob("tissue/test/*/*.png"))
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "result")))
        expected = model.predict(path_copy(path, tmp_path))
        assert driver.find_element(By.ID, "decision").text == expected.decision
        assert float(driver.find_element(By.ID, "score").text) == pytest.approx(expected.score, rel=1e-4)
        overlay = driver.find_element(By.ID, "overlay")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) == 128)

        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(big)
        driver.find_element(By.ID, "file").send_keys(str(big))
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "error")))
        assert "exceeds the 0.3 MB upload limit" in driver.find_element(By.ID, "error").text
        assert not driver.find_element(By.ID, "result").is_displayed()
    finally:
        driver.quit()
