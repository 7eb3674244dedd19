"""`rlr serve`: the API scores real uploads on 127.0.0.1 and refuses bad ones clearly; the page drives it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rlr
from rlr.cli import main
from rlr.data.demo import generate_demo
from rlr.deploy.api import Limits, create_app
from rlr.deploy.calibrate import calibrate
from rlr.deploy.model import Model
from rlr.deploy.scoring_queue import QueueFull, ScoringQueue
from rlr.deploy.serve import IDLE_TIMEOUT_S, bind, serving_in_thread
from rlr.engine.train import train

from .conftest import tiny_config

LIMIT = 3 << 20
MAX_PIXELS = 600 * 600
TOKEN = "test-token-0123456789abcdef"
CHROMIUM = Path(os.environ.get("RLR_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RLR_CHROMEDRIVER", "/usr/bin/chromedriver"))


@pytest.fixture(scope="module")
def run_dir(tiny_demo, feature_cache_dir, tmp_path_factory):
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    run_dir = train(config, tmp_path_factory.mktemp("runs") / "tiny")
    normal = generate_demo(
        tmp_path_factory.mktemp("normal") / "data", seed=2, image_size=128, n_train=3, n_test_good=1, n_test_defect=1
    )
    calibrate(Model.load(run_dir, "cpu", use_thresholds=False), normal)
    return run_dir


@pytest.fixture(scope="module")
def model(run_dir):
    return rlr.load(run_dir, "cpu")


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, Limits(max_upload_bytes=LIMIT, max_pixels=MAX_PIXELS, request_timeout_s=120))
    with serving_in_thread(app, bind("127.0.0.1", 0)) as url:
        yield url


@pytest.fixture(scope="module")
def guarded(model):
    with serving_in_thread(create_app(model, Limits(), token=TOKEN), bind("127.0.0.1", 0)) as url:
        yield url


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, Message]:
    """(status, JSON answer, response headers) of a GET (no body) or POST."""
    method = "GET" if body is None else "POST"
    call = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    chunks = []
    for name, value in (fields or {}).items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        chunks.append(head.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def decoded_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text.split(",", 1)[-1])))


def path_copy(path: Path, folder: Path) -> Path:
    """The file outside the run's dataset, so it gets the global threshold, as an upload does."""
    copy = folder / path.name
    copy.write_bytes(path.read_bytes())
    return copy


def test_page_health_model_and_docs_are_served(server, model):
    with urllib.request.urlopen(server, timeout=30) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    settings = json.loads(page.split("const SETTINGS = ", 1)[1].split(";\n", 1)[0])
    assert settings["maxUpload"] == LIMIT and "brick" in settings["classes"] and settings["run"] == model.config.name
    assert settings["colourBar"].startswith("data:image/png;base64,") and 'id="overlay"' in page

    assert request(server + "health")[:2] == (200, {"status": "ok", "queue": {"pending": 0, "capacity": 64}})
    status, info, _ = request(server + "model")
    assert status == 200 and info["run"]["name"] == model.config.name and info["classes"] == model.class_names
    assert info["thresholds"]["global"] == model.thresholds.global_threshold
    assert info["preprocessing"]["image_size"] == 128 and info["limits"]["max_pixels"] == MAX_PIXELS

    status, schema, _ = request(server + "openapi.json")
    assert status == 200 and "/predict" in schema["paths"] and "multipart/form-data" in json.dumps(schema)
    with urllib.request.urlopen(server + "docs", timeout=30) as response:
        assert "swagger" in response.read().decode().lower()


def test_a_good_image_as_raw_bytes_gets_score_threshold_and_decision(server, model, tiny_demo):
    path = next(tiny_demo.glob("gravel/test/good/*.png"))
    status, answer, headers = request(
        server + "predict?class=gravel", path.read_bytes(), {"X-Filename": "part%201.png"}
    )
    assert status == 200 and headers["Cache-Control"] == "no-store"
    [result] = answer["results"]
    expected = model.predict(path, class_name="gravel")
    assert result["score"] == pytest.approx(expected.score, rel=1e-6)
    assert result["threshold"] == expected.threshold and result["decision"] == expected.decision != ""
    assert result["normalised_score"] == pytest.approx(expected.score / (expected.score + expected.threshold))
    assert result["name"] == "part 1.png" and result["class"] == "gravel" and result["size"] == [128, 128]
    assert answer["run"] == model.config.name and "map" not in result and "overlay" not in result


def test_several_images_in_one_multipart_request_with_maps(server, model, tiny_demo, tmp_path):
    good = next(tiny_demo.glob("brick/test/good/*.png"))
    defect = next(p for p in tiny_demo.glob("brick/test/*/*.png") if p.parent.name != "good")
    jpeg = io.BytesIO()
    Image.open(defect).convert("RGB").save(jpeg, format="JPEG", quality=95)
    (tmp_path / "defect.jpg").write_bytes(jpeg.getvalue())
    body, headers = multipart(
        [("good.png", good.read_bytes()), ("looks-like.png", jpeg.getvalue())], {"class": "brick"}
    )
    status, answer, _ = request(server + "predict?map=array&map_size=16", body, headers)
    assert status == 200, answer
    expected = model.predict([good, tmp_path / "defect.jpg"], class_name="brick")  # a JPEG named .png is a JPEG
    for result, reference in zip(answer["results"], expected):
        assert result["score"] == pytest.approx(reference.score, rel=1e-5) and result["class"] == "brick"
        values = np.array(result["map"]["values"])
        assert values.shape == (16, 16) and result["map"]["encoding"] == "array"
        assert values.max() == pytest.approx(reference.map.reshape(16, 8, 16, 8).mean(axis=(1, 3)).max(), rel=1e-4)
    assert [r["name"] for r in answer["results"]] == ["good.png", "looks-like.png"]

    status, answer, _ = request(server + "predict?map=png", defect.read_bytes())
    amap = answer["results"][0]["map"]
    levels = np.asarray(decoded_png(amap["png"])).astype(np.float64)
    restored = amap["min"] + levels / 65535.0 * (amap["max"] - amap["min"])
    reference = model.predict(path_copy(defect, tmp_path)).map
    assert levels.shape == (128, 128) and np.abs(restored - reference).max() <= (amap["max"] - amap["min"]) / 65535


def test_overlay_original_and_colour_scale_for_the_page(server, model, tiny_demo, tmp_path):
    path = next(tiny_demo.glob("tissue/test/*/*.png"))
    status, answer, _ = request(server + "predict?overlay=true", path.read_bytes())
    [result] = answer["results"]
    assert status == 200 and decoded_png(result["overlay"]).size == (128, 128)
    assert decoded_png(result["original"]).size == (128, 128)
    threshold = model.predict(path_copy(path, tmp_path)).threshold
    assert result["colour_scale"] == pytest.approx([threshold / 2, threshold])


def noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "query,body,headers,status,message",
    [
        ("", b"just some text, not a picture", {"X-Filename": "notes.png"}, 400, "notes.png: not an image file"),
        ("", b"\x89PNG\r\n\x1a\n" + bytes(64), {"X-Filename": "cut.png"}, 400, "cut.png: truncated or corrupt image"),
        ("", b"", {}, 400, "empty upload"),
        ("", bytes(LIMIT + 1), {"X-Filename": "huge.png"}, 413, "exceeds the 3 MB limit"),
        ("", noise_png(700), {"X-Filename": "big.png"}, 400, "big.png: image too large (700 x 700 = 490000 pixels"),
        ("?class=nope", b"x", {}, 400, "unknown class 'nope'"),
        ("?map=jpeg", b"x", {}, 422, "query.map: Input should be"),
        ("", b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}, 400, "malformed multipart"),
    ],
)
def test_bad_uploads_are_refused_with_a_clear_message(server, query, body, headers, status, message):
    code, answer, _ = request(server + "predict" + query, body, headers)
    assert code == status, answer
    assert message in answer["error"]
    assert "/tmp" not in answer["error"]


def test_uploads_are_never_written_to_disk(server, tiny_demo, monkeypatch):
    """Starlette spools multipart files over 1 MB to temporary files; the API must not."""

    def refuse(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    big = noise_png(590)  # about 1 MB, under the pixel limit
    body, headers = multipart([("a.png", big), ("b.png", next(tiny_demo.glob("brick/test/good/*.png")).read_bytes())])
    status, answer, _ = request(server + "predict", body, headers)
    assert status == 200 and len(body) > 1 << 20 and len(answer["results"]) == 2


def test_server_still_answers_after_refusals_and_404_is_json(server, tiny_demo):
    request(server + "predict", bytes(LIMIT * 3))
    assert request(server + "predict", next(tiny_demo.glob("brick/test/good/*.png")).read_bytes())[0] == 200
    status, answer, _ = request(server + "admin")
    assert status == 404 and "GET /admin" in answer["error"]


def test_fifty_concurrent_clients_queue_instead_of_failing(server):
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: request(server + "health")[0], range(50)))
    assert statuses == [200] * 50


def test_an_idle_connection_is_closed(server):
    host, port = server.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=IDLE_TIMEOUT_S + 10) as conn:
        started = time.monotonic()
        assert conn.recv(1) == b""  # closed by the server without a request ever being sent
        assert time.monotonic() - started < IDLE_TIMEOUT_S + 5


def test_token_is_required_on_every_request(guarded, tiny_demo):
    image = next(tiny_demo.glob("brick/test/good/*.png")).read_bytes()
    for path in ("predict", "health", "model", "", "docs", "openapi.json", "nowhere"):
        body = image if path == "predict" else None
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            status, answer, response_headers = request(guarded + path, body, headers)
            assert status == 401 and "API token" in answer["error"] and response_headers["www-authenticate"] == "Bearer"
    status, answer, _ = request(guarded + "predict", image, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and answer["results"][0]["score"] > 0

    with urllib.request.urlopen(f"{guarded}?token={TOKEN}", timeout=30) as response:  # a browser opening the page
        cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"rlr_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert request(guarded + "health", None, {"Cookie": cookie.split(";")[0]})[0] == 200


def test_scoring_queue_runs_one_job_at_a_time_and_refuses_when_full():
    queue, release = ScoringQueue(capacity=1), threading.Event()

    async def scenario():
        first = asyncio.ensure_future(queue.run(lambda: release.wait(10) and "done", timeout=20))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await queue.run(lambda: "never", timeout=5)
        release.set()
        assert await first == "done"
        with pytest.raises(asyncio.TimeoutError):
            await queue.run(lambda: time.sleep(0.5), timeout=0.05)
        await asyncio.sleep(0.6)
        return queue.pending

    assert asyncio.run(scenario()) == 0
    queue.close()


@pytest.mark.parametrize(
    "options,message",
    [
        (["--port", "70000"], "--port must lie in 0..65535"),
        (["--max-upload-mb", "nan"], "--max-upload-mb must be a finite number above 0, got nan"),
        (["--max-upload-mb", "inf"], "--max-upload-mb must be a finite number above 0, got inf"),
        (["--timeout", "0"], "--timeout must be a finite number above 0"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0 makes the server reachable from other machines"),
        (["--token", "short"], "at least 16 characters"),
    ],
)
def test_bad_serve_options_give_one_line(run_dir, options, message, capsys, monkeypatch):
    monkeypatch.delenv("RLR_SERVE_TOKEN", raising=False)
    assert main(["serve", str(run_dir), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlr: error: ") and message in err and err.count("\n") == 1


def test_a_port_in_use_gives_one_line(run_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(run_dir), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlr: error: port ") and "already in use" in err and err.count("\n") == 1


@pytest.mark.browser
def test_page_in_headless_chromium_shows_original_overlay_colour_bar_and_run(server, model, tiny_demo, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}; "
            "apt-get install chromium chromium-driver, or set RLR_CHROMIUM / RLR_CHROMEDRIVER)"
        )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver path below, Selenium Manager downloads nothing
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        assert driver.find_element(By.ID, "run").text == model.config.name
        path = next(tiny_demo.glob("tissue/test/*/*.png"))
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "result")))
        expected = model.predict(path_copy(path, tmp_path))
        assert driver.find_element(By.ID, "decision").text == expected.decision
        assert float(driver.find_element(By.ID, "score").text) == pytest.approx(expected.score, rel=1e-4)
        for element, width in (("original", 128), ("overlay", 128), ("colourbar", 256)):
            image = driver.find_element(By.ID, element)
            wait.until(lambda d, image=image, width=width: d.execute_script(loaded, image) == width)
            assert image.is_displayed()
        low, high = (float(driver.find_element(By.ID, f"scale-{end}").text) for end in ("low", "high"))
        assert (low, high) == pytest.approx((expected.threshold / 2, expected.threshold), rel=1e-2)

        big = tmp_path / "big.png"
        big.write_bytes(noise_png(1100))
        assert big.stat().st_size > LIMIT
        driver.find_element(By.ID, "file").send_keys(str(big))
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "error")))
        assert "exceeds the 3.0 MB upload limit" in driver.find_element(By.ID, "error").text
        assert not driver.find_element(By.ID, "result").is_displayed()
    finally:
        driver.quit()
