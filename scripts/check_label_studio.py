"""Check the Label Studio export against a real Label Studio: is the generated config accepted, do the tasks and
their predictions import, and does an answer made there come back through ``autolabel import-reviews``?

    python scripts/check_label_studio.py [--venv /tmp/autolabel-ls-venv] [--report ls-check.json]

Installs a pinned ``label-studio`` (``VERSION``) into its own virtual environment under /tmp (pip from PyPI; it is
not a dependency of autolabel), starts it on loopback with a throwaway user and a legacy API token (``Authorization:
Token ...``; ``--enable-legacy-api-token``, as new organisations get personal access tokens only since 1.18), and
for each built-in spec with a demo (``psy-insight``, ``mi-talk``, ``support-strategy``): labels the demo with the
scripted loopback server (``tests/fake_openai.py``), exports it (``autolabel export --format label-studio``),
validates the config (``POST /api/projects/validate/``; a copy with a dangling ``toName`` must be refused, so
that the check can fail), creates a project with it, imports the tasks with their
predictions (``POST /api/projects/<id>/import``), answers one task as predicted (``POST /api/tasks/<id>/annotations/``),
exports the project (``GET /api/projects/<id>/export?exportType=JSON``) and imports that file back with
``import_reviews``. Prints one line per spec and writes the details as JSON (``--report``). Exit 1 if any step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autolabel import Annotator  # noqa: E402
from autolabel.demo import demo_path  # noqa: E402
from autolabel.interop.export import export  # noqa: E402
from autolabel.interop.tools import ROLE, import_reviews  # noqa: E402
from tests.fake_openai import FakeOpenAIServer  # noqa: E402

VERSION = "1.23.2"
SPECS = {"psy-insight": demo_path(), "mi-talk": REPO / "schemas/tasks/mi-talk.demo.jsonl",
         "support-strategy": demo_path()}


def ensure_venv(venv: Path) -> Path:
    """The ``label-studio`` executable of a venv holding label-studio ``VERSION`` (made or upgraded here)."""
    python, exe = venv / "bin" / "python", venv / "bin" / "label-studio"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != VERSION:
        print(f"installing label-studio=={VERSION} into {venv} (a few minutes)", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"label-studio=={VERSION}"], check=True)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """Label Studio's HTTP API with a legacy token."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")[:500]


@contextmanager
def label_studio(exe: Path, root: Path) -> Iterator[Api]:
    """Label Studio on a free loopback port with a throwaway user, until the block ends."""
    port, token = free_port(), secrets.token_hex(20)
    env = {**os.environ, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "DJANGO_DB": "sqlite",
           "LABEL_STUDIO_BASE_DATA_DIR": str(root)}
    log = (root / "label-studio.log").open("wb")
    proc = subprocess.Popen([str(exe), "start", "--no-browser", "--data-dir", str(root / "data"),
                             "--internal-host", "127.0.0.1", "--host", f"http://127.0.0.1:{port}",
                             "--port", str(port), "--username", "check@autolabel.local",
                             "--password", secrets.token_urlsafe(16), "--user-token", token,
                             "--enable-legacy-api-token", "--log-level", "WARNING"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    api = Api(f"http://127.0.0.1:{port}", token)
    try:
        deadline = time.monotonic() + 600  # the first start migrates its database: minutes on a busy machine
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"label-studio exited ({proc.returncode}); see {root / 'label-studio.log'}")
            try:
                if api.call("GET", "/api/projects")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"label-studio did not answer in time; see {root / 'label-studio.log'}")
            time.sleep(2)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def exported(task: str, dialogues: Path, root: Path, srv: FakeOpenAIServer) -> tuple[Path, Path, Path]:
    """A run of ``task`` on ``dialogues`` and its Label Studio export: (store, tasks JSON, config XML)."""
    db = root / f"{task}.db"
    run_id = Annotator(task, model="openai:check", base_url=srv.base_url, db=db).run(dialogues).run_id
    out = root / f"{task}.label-studio.json"
    export(db, "label-studio", out, run_id=run_id)
    return db, out, out.with_name(out.stem + ".label_config.xml")


def check(api: Api, task: str, db: Path, tasks_file: Path, config_file: Path, root: Path) -> dict[str, Any]:
    """Every step for one spec; ``ok`` is whether all passed."""
    config, tasks = config_file.read_text(encoding="utf-8"), json.loads(tasks_file.read_text(encoding="utf-8"))
    predictions = sum(len(t.get("predictions", [])) for t in tasks)
    out: dict[str, Any] = {"task": task, "tasks": len(tasks), "predictions": predictions, "steps": {}}
    steps = out["steps"]
    status, body = api.call("POST", "/api/projects/validate/", {"label_config": config})
    steps["validate_config"] = {"status": status, "ok": status in (200, 204), "detail": body}
    broken = config.replace('toName="dialogue"', 'toName="nowhere"', 1)  # the control: this must be refused
    status, body = api.call("POST", "/api/projects/validate/", {"label_config": broken})
    steps["refuses_a_broken_config"] = {"status": status, "ok": status == 400, "detail": body}
    status, project = api.call("POST", "/api/projects", {"title": f"autolabel {task}", "label_config": config})
    steps["create_project"] = {"status": status, "ok": status == 201,
                               "detail": None if status == 201 else project}
    if status != 201:
        return {**out, "ok": False}
    pid = project["id"]
    status, body = api.call("POST", f"/api/projects/{pid}/import", tasks)
    counts = body if isinstance(body, dict) else {}
    steps["import_tasks"] = {"status": status, "ok": status == 201 and counts.get("task_count") == len(tasks)
                             and counts.get("prediction_count") == predictions, "detail": body}
    status, page = api.call("GET", f"/api/tasks?project={pid}&page_size=100&fields=all")
    read = (page.get("tasks") if isinstance(page, dict) else None) or []
    stored = [t for t in read if len(t.get("predictions") or []) == 1]
    labeled = [t for t in stored if any(r["from_name"] != ROLE for r in t["predictions"][0]["result"])]
    steps["read_back"] = {"status": status, "ok": status == 200 and len(stored) == len(read) > 0 and bool(labeled)}
    if labeled:  # the first task with a label to answer: answered as the model predicted
        result = labeled[0]["predictions"][0]["result"]
        status, body = api.call("POST", f"/api/tasks/{labeled[0]['id']}/annotations/", {"result": result})
        steps["annotate"] = {"status": status, "ok": status == 201, "detail": None if status == 201 else body}
        status, dump = api.call("GET", f"/api/projects/{pid}/export?exportType=JSON")
        done = [t for t in dump if t.get("annotations")] if isinstance(dump, list) else []
        steps["export_project"] = {"status": status, "ok": status == 200 and len(done) == 1}
        back = root / f"{task}.from-label-studio.json"
        back.write_text(json.dumps(dump, ensure_ascii=False), encoding="utf-8")
        imported = import_reviews(db, back, format="label-studio", reviewer="ls-check")
        steps["import_reviews"] = {"ok": imported.answers == imported.applied == 1 and not imported.errors,
                                   "answers": imported.answers, "applied": imported.applied, "errors": imported.errors,
                                   "skipped": imported.skipped}
    return {**out, "ok": all(s["ok"] for s in steps.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/autolabel-ls-venv"))
    parser.add_argument("--report", type=Path, default=None, help="write the details as JSON here")
    args = parser.parse_args()
    exe = ensure_venv(args.venv)
    results = []
    with tempfile.TemporaryDirectory(prefix="autolabel-ls-check-") as tmp:
        root = Path(tmp)
        with FakeOpenAIServer(seed=3) as srv:
            runs = {task: exported(task, dialogues, root, srv) for task, dialogues in SPECS.items()}
        with label_studio(exe, root) as api:
            for task, (db, tasks_file, config_file) in runs.items():
                result = check(api, task, db, tasks_file, config_file, root)
                results.append(result)
                failed = [name for name, s in result["steps"].items() if not s["ok"]]
                print(f"{task}: {'accepted' if result['ok'] else 'FAILED ' + ', '.join(failed)}"
                      f" ({result['tasks']} tasks, {result['predictions']} predictions; label-studio {VERSION})",
                      flush=True)
    if args.report:
        args.report.write_text(json.dumps({"label_studio": VERSION, "results": results}, indent=2, default=str),
                               encoding="utf-8")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
