"""The evaluation report on disk: ``report.json`` and a self-contained ``report.html``.

The HTML page has no external references: plots (reliability diagram, risk–coverage curve, confusion matrix
per field) are PNGs drawn with matplotlib's Agg canvas and embedded as base64 ``data:`` URIs; every text that
comes from the data (paths, ids, option names) is HTML-escaped. matplotlib is imported only when a report is
written.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["summary_rows", "write_report"]


def summary_rows(report: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Per field: n, accuracy (exact match for multi-label), macro-F1, Cohen's κ (multi-label: the mean of the
    options' presence κ), AUROC, ECE and error recall at 20%."""
    for name, f in report["fields"].items():
        q, c = f["quality"] or {}, f["confidence"] or {}
        at20 = next((b for b in c.get("budgets", []) if math.isclose(b["budget"], 0.2)), None)
        yield {"field": name, "n": f["n_labeled"], "accuracy": q.get("accuracy"),
               "macro_f1": q.get("macro_f1"), "kappa": _kappa(q), "auroc": (c.get("auroc") or {}).get("value"),
               "ece": (c.get("ece") or {}).get("value"),
               "error_recall_20": at20["error_recall"]["value"] if at20 else None}


def _kappa(quality: Mapping[str, Any]) -> float | None:
    """Cohen's κ of a field; of a multi-label field, the mean of its options' presence κ (defined ones)."""
    if "cohen_kappa" in quality:
        return quality["cohen_kappa"]
    kappas = [o["cohen_kappa"] for o in quality.get("per_option", {}).values() if o.get("cohen_kappa") is not None]
    return sum(kappas) / len(kappas) if kappas else None


def write_report(report: Mapping[str, Any], out_dir: Path) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` (created); return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out_dir / "report.json"), "html": str(out_dir / "report.html")}
    data = {**report, "files": paths}
    Path(paths["json"]).write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False),
                                   encoding="utf-8")
    Path(paths["html"]).write_text(_html(data), encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------------------------- plots

def _png(draw: Any, size: tuple[float, float] = (4.2, 3.6), margins: tuple[float, float] = (0.6, 0.5)) -> str:
    """Run ``draw(figure)`` on a fresh Agg figure; the PNG as a base64 data URI.

    Fixed margins (``margins``: left and bottom, in inches) instead of a layout engine, which draws every figure
    twice to measure it: half the time of a small evaluation went there."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    fig.subplots_adjust(left=margins[0] / size[0], bottom=margins[1] / size[1], right=1 - 0.25 / size[0],
                        top=1 - 0.35 / size[1])
    FigureCanvasAgg(fig)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _reliability(bins: Sequence[Mapping[str, Any]], title: str) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        conf = [b["mean_confidence"] for b in bins]
        acc = [b["accuracy"] for b in bins]
        sizes = sorted({b["count"] for b in bins})
        ax.plot(conf, acc, marker="o", color="tab:blue",
                label=f"equal-mass bins ({'–'.join(map(str, sizes[:: max(1, len(sizes) - 1)]))} labels each)")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="mean confidence", ylabel="accuracy", title=title)
        ax.legend(loc="upper left", fontsize=8)
    return _png(draw)


def _risk_coverage(curve: Mapping[str, Sequence[float]], title: str) -> str:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.step(curve["coverage"], curve["risk"], where="post", color="tab:red")
        ax.set(xlim=(0, 1), ylim=(0, max(0.05, max(curve["risk"], default=0) * 1.1)),
               xlabel="coverage (accepted)", ylabel="risk (error rate among accepted)", title=title)
        ax.grid(alpha=0.3)
    return _png(draw)


def _confusion(confusion: Mapping[str, Any], title: str) -> str:
    labels, matrix = confusion["labels"], confusion["matrix"]
    used = [i for i in range(len(labels)) if sum(matrix[i]) or sum(row[i] for row in matrix)]
    labels = [labels[i] for i in used]
    matrix = [[matrix[i][j] for j in used] for i in used]
    side = max(3.6, 0.45 * len(labels) + 2.2)
    margin = 0.35 + 0.055 * max(map(len, labels), default=0)  # room for the rotated option names at 7 pt

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.imshow(matrix, cmap="Blues")
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
        top = max((v for row in matrix for v in row), default=0)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                            color="white" if v > top / 2 else "black")
        ax.set(xlabel="predicted", ylabel="gold", title=title)
    return _png(draw, (side + margin, side + margin), (margin + 0.3, margin + 0.3))


# ------------------------------------------------------------------------------------------------ HTML

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.plots img{margin:.3em;border:1px solid #ddd}
.note{color:#555;font-size:.9em}"""


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _ci(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "–"
    low, high = entry.get("low"), entry.get("high")
    interval = f" [{_num(low)}, {_num(high)}]" if low is not None and high is not None else ""
    return _num(entry.get("value")) + interval


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; cells are HTML already (callers escape)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _field(name: str, f: Mapping[str, Any]) -> str:
    q, c = f["quality"], f["confidence"]
    kind = "multi-label" if f["multi"] else "single-label"
    parts = [f"<h2>{escape(name)}</h2><p class='note'>{escape(f['scope'])}, {kind}; {f['n_labeled']} labeled "
             f"of {f['n_gold']} with gold, {f['n_missing']} missing (failed)</p>"]
    if q:
        rows = [[escape(k), _ci(v)] for k, v in q["intervals"].items()]
        if "micro_f1" not in q["intervals"]:
            rows.append(["micro_f1", _num(q.get("micro_f1"))])
        parts.append(_table(["metric", "value [95% CI]"], rows))
        head = ["option", "precision", "recall", "F1", "support", "kappa (presence)" if f["multi"] else ""]
        parts.append(_table(head, [[escape(o), _num(v["precision"]), _num(v["recall"]), _num(v["f1"]),
                                    _num(v["support"]), _num(v.get("cohen_kappa")) if f["multi"] else ""]
                                   for o, v in q["per_option"].items()]))
    plots: list[tuple[str, str]] = []
    if c:
        rows = [[k, _ci(c[k])] for k in ("accuracy", "auroc", "aurc", "ece", "brier")]
        rows += [[f"error recall @{b['budget']:.0%} ({b['n_flagged']} flagged)", _ci(b["error_recall"])]
                 for b in c["budgets"]]
        rows += [[f"residual error @{b['budget']:.0%}", _ci(b["residual_error_rate"])] for b in c["budgets"]]
        parts.append("<h3>confidence</h3>" + _table(["metric", "value [95% CI]"], rows))
        plots.append((f"reliability: {name}", _reliability(c["reliability"], f"reliability: {name}")))
        plots.append((f"risk–coverage: {name}", _risk_coverage(c["risk_coverage"], f"risk–coverage: {name}")))
    if q:
        title = f"{q['confusion']['kind']}: {name}"
        plots.append((title, _confusion(q["confusion"], title)))
    parts.append("<div class='plots'>" + "".join(f"<img alt='{escape(alt, quote=True)}' src='{uri}'>"
                                                 for alt, uri in plots) + "</div>")
    return "\n".join(parts)


def _agreement(agreement: Mapping[str, Any] | None) -> str:
    if not agreement:
        return "<p class='note'>No item has reviews from two or more reviewers.</p>"
    rows = [[escape(name), _num(a["n_items"]), escape(", ".join(a["reviewers"])), _num(a["fleiss_kappa"]),
             _num(a["krippendorff_alpha"]) + f" ({escape(a['distance'])})",
             "; ".join(f"{escape(p['a'])}–{escape(p['b'])}: {_num(p['kappa'])} (n={p['n']})"
                       for p in a["cohen_pairs"])]
            for name, a in agreement.items()]
    return _table(["field", "items", "reviewers", "Fleiss κ", "Krippendorff α", "Cohen κ per pair"], rows)


def _html(report: Mapping[str, Any]) -> str:
    run = report["run"]
    cov = report["coverage"]
    summary = [[escape(r["field"]), _num(r["n"]), _num(r["accuracy"]), _num(r["macro_f1"]), _num(r["auroc"]),
                _num(r["ece"]), _num(r["error_recall_20"])] for r in summary_rows(report)]
    coverage = [[kind, *(_num(c[s]) for s in ("accepted", "flagged", "reviewed", "failed", "total"))]
                for kind, c in cov.items() if c["total"]]
    method = "".join(f"<li>{escape(k)}: {escape(v)}</li>" for k, v in report["method"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>autolabel evaluation: run {escape(run['id'])}</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation of run {escape(run['id'])}</h1>
<p>task {escape(run['task']['name'])} v{escape(run['task']['version'])} ({escape(run['task']['hash'])}),
model {escape(run['model'])}, input {escape(str(run['input']))}<br>gold: {escape(report['gold']['source'])},
{report['gold']['matched']} labels matched</p>
<h2>Summary</h2>
{_table(["field", "n", "accuracy / exact match", "macro-F1", "AUROC", "ECE", "error recall @20%"], summary)}
<h2>Coverage of the run</h2>
{_table(["kind", "accepted", "flagged", "reviewed", "failed", "total"], coverage)}
{"".join(_field(name, f) for name, f in report["fields"].items())}
<h2>Agreement between reviewers</h2>
{_agreement(report.get("agreement"))}
<h2>Method</h2><ul class="note">{method}</ul>
</body></html>
"""
