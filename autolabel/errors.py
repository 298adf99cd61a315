"""Every error autolabel raises on purpose.

The hierarchy::

    AutolabelError                 base; the CLI turns any of these into a one-line message and an exit code
    ├── TaskSpecError(path, detail, problems)   a task spec that does not load or does not validate
    ├── InputError(source, line, detail, field) a dialogue record that cannot be read (file + line/record)
    ├── ConfigError(detail)                     settings that cannot work (missing key, bad --model, bad URL)
    ├── StoreError(detail)                      the database cannot be opened or written (read-only, disk full)
    │   └── LeaseLost(run_id, dialogue_id, worker)  a queued dialogue's lease passed to another worker:
    │                                            its result is not stored
    ├── LLMError(detail)                        the endpoint failed for good (unreachable, auth, deadline passed):
    │   │                                        the run stops and can be resumed
    │   ├── RequestRefused(detail)              the endpoint refused one request (HTTP 400): that item fails
    │   └── RetryExhausted(attempts, last_output, usage)  valid output never came after the re-asks
    ├── BudgetExceeded(spent, limit)            ``--max-cost`` would be passed; the run stopped cleanly
    ├── Stopped(signum)                         SIGINT / SIGTERM stopped a run (exit 128 + signal); resumable
    └── ReviewError(detail)                     a review-queue action refused (stale version, lease lost, ...)
"""

from __future__ import annotations

from typing import Any


class AutolabelError(Exception):
    """Base class of every error autolabel raises on purpose."""

    exit_code = 1


class TaskSpecError(AutolabelError):
    """A task spec that cannot be loaded or does not validate against ``task.schema.json``."""

    exit_code = 2

    def __init__(self, path: str, detail: str, problems: list[str] | None = None) -> None:
        self.path = path
        self.detail = detail
        self.problems = list(problems or [])
        super().__init__(f"{path}: {detail}")


class InputError(AutolabelError):
    """A dialogue record that cannot be read. ``line`` is the 1-based line (JSONL/CSV) or record index (JSON)."""

    exit_code = 3

    def __init__(self, source: str, line: int | None, detail: str, field: str | None = None) -> None:
        self.source = source
        self.line = line
        self.detail = detail
        self.field = field
        where = source if line is None else f"{source}:{line}"
        what = f"{field}: {detail}" if field else detail
        super().__init__(f"{where}: {what}")


class ConfigError(AutolabelError):
    """Settings that cannot work: a missing API key, an unknown model family, a bad URL."""

    exit_code = 2

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class StoreError(AutolabelError):
    """The database cannot be opened, migrated or written."""

    exit_code = 4

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class LeaseLost(StoreError):
    """A job-queue worker tried to store a dialogue whose lease another worker has taken over: nothing is written."""

    def __init__(self, run_id: str, dialogue_id: str, worker: str) -> None:
        self.run_id, self.dialogue_id, self.worker = run_id, dialogue_id, worker
        super().__init__(f"{worker} no longer holds dialogue {dialogue_id} of run {run_id}: its result was not stored")


class LLMError(AutolabelError):
    """The model endpoint failed for good (after the transport retries)."""

    exit_code = 5

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class RequestRefused(LLMError):
    """The endpoint refused one request (e.g. HTTP 400, prompt too long): the item fails, the run goes on."""


class RetryExhausted(LLMError):
    """The model never produced output that passed validation within the allowed re-asks."""

    def __init__(self, attempts: int, last_output: str | None, usage: dict[str, int] | None = None,
                 detail: str = "") -> None:
        self.attempts = attempts
        self.last_output = last_output
        self.usage = dict(usage or {})
        super().__init__(detail or f"no valid output after {attempts} attempts")


class BudgetExceeded(AutolabelError):
    """A call was refused: its worst-case cost would pass ``--max-cost``; the run stopped, resumable."""

    exit_code = 6

    def __init__(self, spent: float, limit: float) -> None:
        self.spent = spent
        self.limit = limit
        super().__init__(f"cost budget reached: ${spent:.4f} spent of ${limit:.4f}")


class Stopped(AutolabelError):
    """A signal (Ctrl-C's SIGINT, SIGTERM) stopped a run: the calls in flight were abandoned, what was finished is
    stored, and the same command resumes it. Exits 128 + the signal's number (130, 143), as shells do."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__("stopped: run the same command again to resume")


class ReviewError(AutolabelError):
    """A review-queue action that was refused (stale version, lease lost, unknown item or reviewer)."""

    exit_code = 7

    def __init__(self, detail: str, **fields: Any) -> None:
        self.detail = detail
        self.fields = fields
        super().__init__(detail)
