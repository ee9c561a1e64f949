"""The page of `poetvae serve` in a real browser: the command started as a user starts it, on a
free loopback port, and the page driven in headless Chromium by Playwright.

The browser is the system's Chromium (Debian's `chromium`, or the one POETVAE_CHROMIUM
names), never a build Playwright downloads; without it, or without the `browser` and `web`
extras, these tests are skipped with the reason. `.ci/run` installs it.

The screenshots are written to POETVAE_SCREENSHOTS when it is set (the README's are made
with POETVAE_SCREENSHOTS=docs), else to a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import Server

from poetvae.form import FORM, is_han
from poetvae.models import bundled_model

pytest.importorskip("fastapi", reason='the web extra is not installed (pip install -e ".[web]")')
pytest.importorskip("uvicorn", reason='the web extra is not installed (pip install -e ".[web]")')
NO_PLAYWRIGHT = 'playwright is not installed (pip install -e ".[browser]")'
sync_api = pytest.importorskip("playwright.sync_api", reason=NO_PLAYWRIGHT)

CHROMIUM = os.environ.get("POETVAE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no system Chromium (apt-get install chromium, or set POETVAE_CHROMIUM); Playwright's own builds are "
        "never downloaded",
        allow_module_level=True,
    )

# Headless, and nothing that reaches out: without the background-networking flags Chromium
# tries to reach its update and sync services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENGGUANQUE = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
THREE_LINES = "床前明月光，疑是地上霜。举头望明月。"
TIMEOUT_MS = 60_000  # a busy 2-core CI machine decodes slowly


@pytest.fixture(scope="module")
def server(tmp_path_factory, request) -> Server:
    """`poetvae serve` in a folder without runs: the bundled model, as right after install."""
    args = [] if bundled_model() is not None else ["-m", str(request.getfixturevalue("trained_run"))]
    server = Server.start(*args, cwd=tmp_path_factory.mktemp("serve"))
    yield server
    code, err = server.stop()
    assert code == 130 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    path = Path(os.environ.get("POETVAE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_page(browser, server: Server, viewport: dict):
    """A fresh page on the server; script errors are collected in page.errors."""
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector("#model b")  # /api/model has answered: the page is ready
    return page


def card_lines(page, selector: str) -> list[list[str]]:
    """Each quatrain under `selector` as its lines of characters (the spans, not the punctuation)."""
    return page.eval_on_selector_all(
        selector,
        "cards => cards.map(c => [...c.querySelectorAll('.line')]"
        ".map(l => [...l.querySelectorAll('.ch')].map(s => s.textContent).join('')))",
    )


def submit(page, button: str) -> None:
    """Press a button of a panel and wait until its request has been answered (the panel
    is aria-busy while it waits; the click sets that before it returns)."""
    page.click(button)
    page.wait_for_selector(f"section[aria-busy='false']:has({button})", state="attached")


def write(page, n: int, seed: int, **fields: str) -> None:
    page.click("#tab-write")
    page.fill("#write-n", str(n))
    page.fill("#write-seed", str(seed))
    for name, value in fields.items():
        page.fill(f"#write-{name}", value)
    submit(page, "#write-go")
    assert page.inner_text("#write-error") == ""


def walk(page, a: str, b: str, steps: int) -> None:
    page.click("#tab-walk")
    page.fill("#walk-a", a)
    page.fill("#walk-b", b)
    page.fill("#walk-steps", str(steps))
    submit(page, "#walk-go")
    assert page.inner_text("#walk-error") == ""


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_write_shows_n_well_formed_quatrains(browser, server):
    page = open_page(browser, server, LAPTOP)
    write(page, 4, seed=1)
    poems = card_lines(page, "#write-poems .card")
    assert len(poems) == 4
    for lines in poems:
        assert len(lines) == FORM.lines
        assert all(len(line) == FORM.chars_per_line and all(map(is_han, line)) for line in lines), lines
    # the poems of the API for the body the page sends: the page shows what the server wrote
    status, body = server.post("/api/sample", {"n": 4, "temp": 0.8, "seed": 1, "rhyme": False, "tones": False})
    assert status == 200 and [p["lines"] for p in body["poems"]] == poems
    assert "4 poems, seed 1" in page.inner_text("#write-status")

    write(page, 2, seed=2, acrostic="春夏秋冬")  # a control from the form reaches the decoder
    assert [[line[0] for line in lines] for lines in card_lines(page, "#write-poems .card")] == [list("春夏秋冬")] * 2
    assert page.errors == []


def test_walk_slider_moves_along_the_path(browser, server):
    page = open_page(browser, server, LAPTOP)
    walk(page, JINGYESI, DENGGUANQUE, steps=6)
    status, body = server.post("/api/interpolate", {"poem_a": JINGYESI, "poem_b": DENGGUANQUE, "steps": 6})
    assert status == 200
    path = body["path"]
    assert path[0]["text"] != path[-1]["text"]  # so that moving to the end must change the poem

    def shown() -> tuple[str, str, int]:
        text = "".join(card_lines(page, "#walk-stage .card")[0])
        current = page.get_attribute("#walk-rows .row.current", "data-i")
        return text, page.inner_text("#walk-tval"), int(current)

    assert shown() == ("".join(path[0]["lines"]), "t 0.00", 0)
    page.focus("#walk-t")
    page.keyboard.press("End")
    assert shown() == ("".join(path[-1]["lines"]), "t 1.00", 5)
    page.keyboard.press("ArrowLeft")
    assert shown() == ("".join(path[4]["lines"]), "t 0.80", 4)
    # each character marked as A's, B's, both or neither, as the API compares them
    marks = page.eval_on_selector_all("#walk-stage .poem .ch", "s => s.map(e => e.className)")
    same = zip(path[4]["same_a"], path[4]["same_b"])
    expected = ["ab" if a and b else "a" if a else "b" if b else "" for a, b in same]
    assert [m.replace("ch", "").strip() for m in marks] == expected
    page.click("#walk-rows .row[data-i='2']")  # a row of the table moves the slider too
    assert shown() == ("".join(path[2]["lines"]), "t 0.40", 2)
    assert page.input_value("#walk-t") == "2"
    assert page.errors == []


def test_a_bad_poem_shows_a_one_line_error(browser, server):
    page = open_page(browser, server, LAPTOP)
    page.click("#tab-read")
    page.fill("#read-poem", THREE_LINES)
    submit(page, "#read-rec")
    message = page.inner_text("#read-error")
    status, body = server.post("/api/reconstruct", {"poems": [THREE_LINES]})
    assert status == 400 and message == body["error"] == "poem 1: expected 4 lines of 5 characters, got 3 lines"
    one_line = page.evaluate(
        "(() => { const e = document.querySelector('#read-error'); const s = getComputedStyle(e);"
        " return e.clientHeight - parseFloat(s.paddingTop) - parseFloat(s.paddingBottom)"
        " < 1.5 * parseFloat(s.lineHeight); })()"
    )
    assert one_line, "the error takes more than one line"
    # a good poem clears it and shows the reconstruction
    page.fill("#read-poem", JINGYESI)
    submit(page, "#read-rec")
    assert page.inner_text("#read-error") == "" and len(card_lines(page, "#read-rec-out .card")) == 2

    page.click("#tab-walk")  # the walk says so in its own panel
    page.fill("#walk-a", THREE_LINES)
    submit(page, "#walk-go")
    walk_error = page.inner_text("#walk-error")
    assert re.fullmatch(r"expected 4 lines of 5 characters, got 3 lines", walk_error), walk_error
    assert page.errors == []


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_screenshots_and_no_sideways_scrolling(browser, server, shots, viewport):
    """The screenshots of the README, and what a phone-width screen needs: every tab fits
    its width (no horizontal scrolling)."""
    page = open_page(browser, server, viewport)
    name = "serve" if viewport is LAPTOP else "serve-phone"
    page.check("#write-rhyme")
    write(page, 6 if viewport is LAPTOP else 4, seed=1)
    assert no_horizontal_scroll(page)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    page.click("#tab-read")
    submit(page, "#read-rec")
    page.fill("#read-seed", "1")
    submit(page, "#read-vary")
    assert len(card_lines(page, "#read-vary-out .card")) == 4
    assert no_horizontal_scroll(page)

    walk(page, JINGYESI, DENGGUANQUE, steps=8)
    page.focus("#walk-t")
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    assert no_horizontal_scroll(page)
    page.screenshot(path=str(shots / f"{name}-walk.png"), full_page=True)
    assert page.errors == []
