"""Screenshots of the review UI for the README: the real review server on a small real run, in Chromium.

    python scripts/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

Makes a store in a temporary folder: the bundled demo dialogues labeled with ``psy-insight`` and the ``mi-talk``
demo (1-5 session ratings) labeled by a scripted OpenAI-compatible server on loopback (``tests/fake_openai.py``:
valid answers, most turns flagged by the critic); a session goes to the queue as a spot check, and two reviewers
disagree on two items so that they wait for adjudication. It starts ``autolabel review serve`` on that store (a
subprocess on a free loopback port, a shared token), drives headless Chromium with Playwright at 1366x850 and
writes, quantized to 256 colours:

- ``review-item.png``: the item view (dialogue, proposal, the fields with their keys);
- ``review-rating.png``: a session's ratings with their anchors on the page;
- ``review-browse.png``: the queue in the browse view;
- ``review-adjudicate.png``: adjudication of two reviewers' disagreement.

Needs the dev extra (Playwright, the fake server's dependencies), Pillow and Chromium. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autolabel import Annotator  # noqa: E402
from autolabel.demo import demo_path  # noqa: E402
from autolabel.review.queue import ReviewQueue  # noqa: E402
from tests.fake_openai import FakeOpenAIServer  # noqa: E402

TOKEN = "screenshots"
WIDTH, HEIGHT = 1366, 850
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def build_store(db: Path) -> dict[str, int]:
    """Label the two demos into ``db`` and set the scene; returns the item of each screenshot."""
    with FakeOpenAIServer(seed=11) as srv:
        runs = {}
        for task, path in (("psy-insight", demo_path()), ("mi-talk", REPO / "schemas/tasks/mi-talk.demo.jsonl")):
            annotator = Annotator(task, model="openai:demo", base_url=srv.base_url, db=db)
            runs[task] = annotator.run(path).run_id
    with ReviewQueue.open(db) as q:
        psy = [i for i in q.items("pending", run_id=runs["psy-insight"]) if i.kind == "turn"]
        first = next(q.store.dialogue_meta(runs["mi-talk"]))[0]  # the model was sure of it: a spot check
        session = q.enqueue(runs["mi-talk"], first, "session", -1, "dana", reason="spot_check")
        q.claim("alice", 3600, item_id=psy[0].id)  # what alice and dana find open when they arrive
        q.claim("dana", 3600, item_id=session.id)
        q.require_reviews(2, run_id=runs["psy-insight"])
        for item in psy[1:3]:  # bob takes the model's answer, carol changes the first field: adjudication
            for reviewer in ("bob", "carol"):
                held = q.claim(reviewer, 600, item_id=item.id)
                assert held is not None and held.proposal is not None
                labels = dict(held.proposal["labels"])
                if reviewer == "carol":
                    fields = q.fields(held)
                    assert fields is not None
                    field = fields.labels[0]
                    other = next(o.name for o in field.options if o.name not in [labels[field.name]])
                    labels[field.name] = [other] if field.multi else other
                q.submit(held.id, reviewer, held.version, labels)
        waiting = q.items("adjudication")
    return {"item": psy[0].id, "rating": session.id, "adjudicate": waiting[0].id}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def review_server(db: Path) -> Iterator[str]:
    """``autolabel review serve`` on the store, on a free loopback port, until the block ends."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autolabel", "review", "serve", "--db", str(db), "--port",
                             str(port), "--token", TOKEN], cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the review server did not start (exit {proc.poll()})") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def save(png: bytes, path: Path) -> int:
    """Write a screenshot quantized to 256 colours (a third of the bytes, the UI's flat colours survive)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    return path.stat().st_size


def shoot(url: str, items: dict[str, int], out: Path, chromium: Path) -> dict[str, int]:
    from playwright.sync_api import sync_playwright

    sizes = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)

        def page_of(reviewer: str, path: str) -> Any:
            page = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, color_scheme="light").new_page()
            page.goto(f"{url}{path}?token={TOKEN}&reviewer={reviewer}")
            page.wait_for_load_state("networkidle")
            return page

        page = page_of("alice", "/")
        page.wait_for_url(f"**/item/{items['item']}")
        sizes["review-item.png"] = save(page.screenshot(), out / "review-item.png")
        page = page_of("dana", "/")
        page.wait_for_url(f"**/item/{items['rating']}")
        page.locator("#labels").evaluate("e => e.scrollIntoView({block: 'start'})")  # the ratings and anchors
        sizes["review-rating.png"] = save(page.screenshot(), out / "review-rating.png")
        page = page_of("erin", "/browse")
        sizes["review-browse.png"] = save(page.screenshot(), out / "review-browse.png")
        page = page_of("erin", f"/adjudicate/{items['adjudicate']}")
        sizes["review-adjudicate.png"] = save(page.screenshot(), out / "review-adjudicate.png")
        browser.close()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--chromium", type=Path, default=Path(os.environ.get("AUTOLABEL_CHROMIUM",
                                                                             "/usr/bin/chromium")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="autolabel-screens-") as tmp:
        db = Path(tmp) / "review.db"
        items = build_store(db)
        with review_server(db) as url:
            sizes = shoot(url, items, args.out, args.chromium)
    for name, size in sizes.items():
        print(f"{args.out / name}  {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
