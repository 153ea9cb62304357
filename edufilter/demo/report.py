"""The demo report: one self-contained HTML file (plots embedded as base64 PNG,
CSS inline, no external resource) rendered from the demo's `summary.json`.

`render_report(summary)` is a pure function of the summary dict, so the report
can be re-rendered from a `summary.json` at any time
(`python -m edufilter.demo.report WORKDIR/summary.json`), and every section
renders what it has: a demo that stopped at step 4 still gets a report of
steps 1-3 with the failure shown at the top.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

LABELS = list(range(6))
DOMAIN_COLOURS = {"web": "#2563eb", "code": "#059669", "stackoverflow": "#d97706"}
SOURCE_COLOURS = ["#2563eb", "#7c3aed", "#059669", "#d97706", "#dc2626", "#0891b2"]


DOMAIN_ORDER = ("web", "code", "stackoverflow")


def _ordered(mapping: dict[str, Any]) -> list[tuple[str, Any]]:
    """Items in the pipeline's domain order (summary.json stores keys sorted)."""
    def rank(key: str) -> tuple[int, str]:
        head = key.split("/")[0].split("+")[0]
        return (DOMAIN_ORDER.index(head) if head in DOMAIN_ORDER else len(DOMAIN_ORDER), key)

    return sorted(mapping.items(), key=lambda kv: rank(kv[0]))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


# --------------------------------------------------------------------------- plots (matplotlib -> base64 PNG)

def _figure(draw: Callable, width: float = 6.0, height: float = 3.4) -> str:
    """Run `draw(ax)` on a fresh figure; return an <img> tag with the PNG inlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    try:
        draw(ax)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(colors="#374151", labelsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def plot_confusion(matrix: list[list[int]], title: str) -> str:
    import numpy as np

    m = np.asarray(matrix, dtype=float)

    def draw(ax):
        ax.imshow(m, cmap="Blues")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if m[i, j] > m.max() / 2 else "#111827")
        ax.set_xticks(LABELS)
        ax.set_yticks(LABELS)
        ax.set_xlabel("predicted score", fontsize=8)
        ax.set_ylabel("LLM label", fontsize=8)
        ax.set_title(title, fontsize=9)

    return _figure(draw, 2.8, 2.7)


def plot_histograms(histograms: dict[str, list[int]]) -> str:
    """Bars of documents per integer score, one group per source."""
    import numpy as np

    names = list(histograms)
    width = 0.8 / max(len(names), 1)

    def draw(ax):
        x = np.arange(6)
        for k, name in enumerate(names):
            counts = np.asarray(histograms[name], dtype=float)
            share = counts / counts.sum() if counts.sum() else counts
            ax.bar(x - 0.4 + width * (k + 0.5), share, width, label=f"{name} ({int(counts.sum())})",
                   color=SOURCE_COLOURS[k % len(SOURCE_COLOURS)])
        ax.set_xticks(x)
        ax.set_xlabel("classifier score (rounded)", fontsize=8)
        ax.set_ylabel("share of documents", fontsize=8)
        ax.legend(fontsize=7, frameon=False)

    return _figure(draw, 6.4, 3.0)


def plot_threshold_curves(curves: dict[str, dict[str, Any]]) -> str:
    """Tokens kept as a function of the score threshold, the chosen threshold marked."""

    def draw(ax):
        for k, (name, curve) in enumerate(curves.items()):
            colour = SOURCE_COLOURS[k % len(SOURCE_COLOURS)]
            total = max(curve["tokens"][0], 1)
            ax.plot(curve["thresholds"], [100 * t / total for t in curve["tokens"]], color=colour,
                    label=f"{name} ({total:,} tokens)")
            chosen = curve.get("chosen")
            if chosen is not None:
                kept = curve.get("chosen_tokens", 0)
                ax.axvline(chosen, color=colour, linestyle="--", linewidth=1)
                ax.plot([chosen], [100 * kept / total], "o", color=colour)
                ax.annotate(f"{chosen:.2f}", (chosen, 100 * kept / total), textcoords="offset points",
                            xytext=(5, 5), fontsize=7, color=colour)
        ax.set_xlabel("score threshold", fontsize=8)
        ax.set_ylabel("% of tokens kept", fontsize=8)
        ax.set_xlim(0, 5)
        ax.set_ylim(0, 105)
        ax.legend(fontsize=7, frameon=False)

    return _figure(draw, 6.4, 3.0)


def plot_loss(train: list[list[float]], evals: list[list[float]]) -> str:
    def draw(ax):
        if train:
            ax.plot([p[0] for p in train], [p[1] for p in train], color="#2563eb", label="training loss")
        if evals:
            ax.plot([p[0] for p in evals], [p[1] for p in evals], "o-", color="#dc2626", label="held-out loss")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("cross-entropy (nats/token)", fontsize=8)
        ax.legend(fontsize=7, frameon=False)

    return _figure(draw, 6.4, 3.0)


def plot_timings(steps: list[dict[str, Any]]) -> str:
    done = [s for s in steps if s.get("seconds") is not None]

    def draw(ax):
        names = [s["name"] for s in done][::-1]
        secs = [s["seconds"] for s in done][::-1]
        colours = ["#dc2626" if s["status"] == "failed" else "#2563eb" for s in done][::-1]
        ax.barh(names, secs, color=colours)
        for y, v in enumerate(secs):
            ax.text(v, y, f" {v:.1f}s", va="center", fontsize=7)
        ax.set_xlabel("seconds", fontsize=8)

    return _figure(draw, 6.4, 0.22 * max(len(done), 3) + 0.7)


# --------------------------------------------------------------------------- sections

CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --card:#fff; --accent:#2563eb;
        --ok:#059669; --bad:#dc2626; --warn:#d97706; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; color:var(--fg);
       background:var(--bg); }
header.top { background:linear-gradient(120deg,#1e3a8a,#2563eb 60%,#0891b2); color:#fff; padding:28px 40px 22px; }
header.top h1 { margin:0 0 4px; font-size:24px; font-weight:650; letter-spacing:-0.01em; }
header.top p { margin:0; opacity:.9; }
.badge { display:inline-block; padding:2px 10px; border-radius:999px; font-size:12px; font-weight:600; }
.badge.ok { background:#d1fae5; color:#065f46; } .badge.failed { background:#fee2e2; color:#991b1b; }
.badge.skipped, .badge.not-run { background:#f3f4f6; color:#4b5563; }
main { max-width:1120px; margin:0 auto; padding:24px 28px 60px; }
section { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:18px 22px; margin:18px 0;
          box-shadow:0 1px 2px rgba(0,0,0,.04); }
section h2 { margin:0 0 4px; font-size:17px; } section p.lead { margin:0 0 14px; color:var(--muted); }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(160px,1fr)); gap:12px; }
.kpi { border:1px solid var(--line); border-radius:10px; padding:10px 14px; background:var(--bg); }
.kpi b { display:block; font-size:20px; } .kpi span { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-size:13px; margin:6px 0 10px; }
th, td { text-align:right; padding:6px 8px; border-bottom:1px solid var(--line); }
th:first-child, td:first-child { text-align:left; } th { color:var(--muted); font-weight:600; font-size:12px; }
td.left, th.left { text-align:left; }
.plots { display:flex; flex-wrap:wrap; gap:12px; align-items:flex-start; }
img.plot { max-width:100%; border:1px solid var(--line); border-radius:8px; background:#fff; }
.failure { border-color:#fecaca; background:#fef2f2; } .failure h2 { color:var(--bad); }
.notes li { color:var(--warn); } p.facts { margin:0; } p.facts b { color:var(--accent); }
.examples { display:grid; grid-template-columns:1fr 1fr; gap:14px; }
.example { border:1px solid var(--line); border-radius:10px; padding:10px 12px; background:var(--bg); }
.example .meta { font-size:12px; color:var(--muted); margin-bottom:4px; }
.example .snippet { font-size:12.5px; white-space:pre-wrap; max-height:9.5em; overflow:hidden; }
.score { font-weight:700; } .keep { color:var(--ok); } .drop { color:var(--bad); }
.term { display:inline-block; margin:2px 3px 0 0; padding:0 6px; border-radius:6px; font-size:11.5px; }
.term.up { background:#d1fae5; color:#065f46; } .term.down { background:#fee2e2; color:#991b1b; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12px; }
pre.box { background:#0f172a; color:#e2e8f0; padding:10px 12px; border-radius:8px; overflow:auto; max-height:360px; }
td.nowrap { white-space:nowrap; }
.glance .kpi b { color:var(--accent); }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
@media (max-width: 800px) { .examples { grid-template-columns:1fr; } main { padding:12px; } }
"""


def _section(title: str, lead: str, body: str, anchor: str, css_class: str = "") -> str:
    return (f'<section id="{anchor}" class="{css_class}"><h2>{_e(title)}</h2>'
            + (f'<p class="lead">{lead}</p>' if lead else "") + body + "</section>")


def _steps_section(summary: dict[str, Any]) -> str:
    rows = []
    for i, step in enumerate(summary.get("steps", []), 1):
        status = step.get("status", "not-run")
        rows.append(
            f"<tr><td>{i}. <b>{_e(step['name'])}</b></td><td class='left'>{_e(step.get('title', ''))}</td>"
            f"<td><span class='badge {status}'>{_e(status)}</span></td><td class='nowrap'>{_seconds(step.get('seconds'))}</td>"
            f"<td class='left'>{_e(step.get('detail') or step.get('reason') or '')}</td></tr>")
    table = ("<table><tr><th>step</th><th class='left'>what it does</th><th>status</th><th>time</th>"
             "<th class='left'>result</th></tr>" + "".join(rows) + "</table>")
    total = summary.get("total_seconds")
    plot = plot_timings(summary.get("steps", [])) if any(s.get("seconds") for s in summary.get("steps", [])) else ""
    lead = f"Total {_seconds(total)} on {_e(summary.get('machine', {}).get('cpus', '?'))} CPU core(s)."
    return _section("Steps and timings", lead, table + plot, "steps")


def _labels_section(summary: dict[str, Any]) -> str:
    labels = summary.get("labels")
    if not labels:
        return ""
    rows = []
    for domain, info in _ordered(labels):
        hist = info.get("histogram", {})
        cells = "".join(f"<td>{hist.get(str(k), 0)}</td>" for k in LABELS)
        rows.append(f"<tr><td>{_e(domain)}</td><td>{info.get('n', 0)}</td>{cells}"
                    f"<td class='left'><code>{_e(info.get('annotator', ''))}</code> · prompt "
                    f"<code>{_e(info.get('prompt_version', ''))}</code></td></tr>")
    table = ("<table><tr><th>domain</th><th>labels</th>" + "".join(f"<th>{k}</th>" for k in LABELS)
             + "<th class='left'>annotator</th></tr>" + "".join(rows) + "</table>")
    lead = ("LLM labels (0-5, additive rubric) replayed from the recorded answer cache by "
            "<code>edufilter label --backend replay</code>; every label keeps its rationale.")
    return _section("1 · Labels", lead, table, "labels")


def _evaluation_section(summary: dict[str, Any]) -> str:
    evaluation = summary.get("evaluation")
    if not evaluation:
        return ""
    keys = [("n", "held-out"), ("f1_at_3", "F1 @3"), ("precision_at_3", "precision @3"), ("recall_at_3", "recall @3"),
            ("macro_f1", "macro-F1"), ("accuracy", "accuracy"), ("spearman", "Spearman"), ("mse", "MSE")]
    rows = []
    for domain, m in _ordered(evaluation):
        rows.append(f"<tr><td>{_e(domain)}</td>" + "".join(f"<td>{_fmt(m.get(k))}</td>" for k, _ in keys)
                    + f"<td class='left'><code>{_e(m.get('model_id', ''))}</code></td></tr>")
    table = ("<table><tr><th>domain</th>" + "".join(f"<th>{_e(t)}</th>" for _, t in keys)
             + "<th class='left'>model</th></tr>" + "".join(rows) + "</table>")
    plots = "".join(plot_confusion(m["confusion_matrix"], f"{domain}: confusion matrix")
                    for domain, m in _ordered(evaluation) if m.get("confusion_matrix"))
    lead = ("fastText classifiers trained per domain on a stratified 80% of the labels and evaluated on the "
            "held-out 20% (binary metrics at the keep threshold 3, as FineWeb-Edu reports them). "
            "The bundled sample is small: read these as a smoke test, not as the classifier's quality.")
    return _section("2 · Classifier evaluation", lead, table + f'<div class="plots">{plots}</div>', "evaluation")


def _scoring_section(summary: dict[str, Any]) -> str:
    scoring = summary.get("scoring")
    if not scoring:
        return ""
    rows = []
    for name, s in _ordered(scoring.get("sources", {})):
        rows.append(f"<tr><td>{_e(name)}</td><td>{_fmt(s.get('shards'))}</td><td>{_fmt(s.get('documents_in'))}</td>"
                    f"<td>{_fmt(s.get('bad_documents'))}</td><td>{_fmt(s.get('tokens'))}</td>"
                    f"<td>{_fmt(s.get('mean_score'), 2)}</td><td>{_fmt(s.get('preview_kept'))}</td></tr>")
    table = ("<table><tr><th>source</th><th>shards</th><th>documents</th><th>bad</th><th>tokens</th>"
             "<th>mean score</th><th>score ≥ 3</th></tr>" + "".join(rows) + "</table>")
    hist = {n: s["histogram"] for n, s in _ordered(scoring.get("sources", {})) if s.get("histogram")}
    lead = (f"Every shard scored by <code>edufilter score</code> on an embedded local Ray "
            f"({_e(scoring.get('ray', ''))}); scored shards keep every document with its score.")
    return _section("3 · Scoring the shards", lead, table + (plot_histograms(hist) if hist else ""), "scoring")


def _selection_section(summary: dict[str, Any]) -> str:
    sel = summary.get("selection")
    if not sel:
        return ""
    rows = []
    for name, s in _ordered(sel.get("per_source", {})):
        tin, tout = s.get("tokens_in", 0), s.get("tokens_out", 0)
        rows.append(f"<tr><td>{_e(name)}</td><td>{_fmt(s.get('documents_in'))}</td><td>{_fmt(s.get('documents_out'))}</td>"
                    f"<td>{_fmt(tin)}</td><td>{_fmt(tout)}</td><td>{(100 * tout / tin if tin else 0):.0f}%</td></tr>")
    table = ("<table><tr><th>source</th><th>documents in</th><th>documents out</th><th>tokens in</th>"
             "<th>tokens out</th><th>kept</th></tr>" + "".join(rows) + "</table>")
    keys = []
    for name, k in _ordered(sel.get("keys", {})):
        keys.append(f"<tr><td>{_e(name)}</td><td>{_fmt(k.get('budget'))}</td><td>{_fmt(k.get('tokens_kept'))}</td>"
                    f"<td>{_fmt(k.get('threshold'), 2)}</td></tr>")
    keys_table = ("<table><tr><th>budget key</th><th>token budget</th><th>tokens kept</th><th>effective threshold</th></tr>"
                  + "".join(keys) + "</table>") if keys else ""
    curves = dict(_ordered(sel.get("curves") or {}))
    lead = (f"<code>{_e(sel.get('command', ''))}</code><br>The phi-1.5-web recipe (88B web : 7B code+Q&amp;A tokens) "
            f"scaled by {_e(sel.get('scale', ''))} to fit the sample; budgets are solved per key from the token-weighted "
            "score histograms.")
    return _section("4 · Selection by token budget", lead,
                    keys_table + table + (plot_threshold_curves(curves) if curves else ""), "selection")


def _pretraining_section(summary: dict[str, Any]) -> str:
    pre = summary.get("pretraining")
    if not pre:
        return ""
    kpis = [("steps", pre.get("steps")), ("final loss", pre.get("final_loss")), ("held-out loss", pre.get("eval_loss")),
            ("tokens seen", pre.get("tokens")), ("tokens/s", pre.get("tokens_per_s")), ("parameters", pre.get("parameters"))]
    grid = '<div class="grid">' + "".join(f'<div class="kpi"><b>{_fmt(v, 3)}</b><span>{_e(k)}</span></div>'
                                          for k, v in kpis if v is not None) + "</div>"
    plot = plot_loss(pre.get("loss", []), pre.get("eval", [])) if pre.get("loss") else ""
    lead = (f"<code>edufilter pretrain --preset {_e(pre.get('preset', 'tiny'))}</code>: transformers' PhiForCausalLM "
            "trained from scratch on the selected corpus (byte-level BPE tokenizer trained on it).")
    return _section("5 · Pretraining a tiny Phi", lead, grid + plot, "pretraining")


def _service_section(summary: dict[str, Any]) -> str:
    svc = summary.get("service")
    if not svc:
        return ""
    body = (f"<p>Started <code>edufilter serve</code> on <code>{_e(svc.get('url', ''))}</code>, ready in "
            f"{_seconds(svc.get('ready_seconds'))}; one request answered in {_fmt(svc.get('latency_ms'), 1)} ms, "
            "then the server was stopped.</p>"
            f"<pre class='box'>POST /v1/score\n{_e(json.dumps(svc.get('request'), indent=2))}\n\n"
            f"→ {_e(svc.get('status_code', ''))}\n{_e(json.dumps(svc.get('response'), indent=2))}</pre>")
    return _section("6 · REST service", "", body, "service")


def _example_card(ex: dict[str, Any], kept: bool) -> str:
    terms = "".join(f"<span class='term {'up' if c > 0 else 'down'}'>{_e(t)} {c:+.2f}</span>"
                    for t, c in ex.get("top_words", []))
    where = ex.get("url") or ex.get("id", "")
    return (f"<div class='example'><div class='meta'>{_e(ex.get('source', ''))} · {_e(where)}</div>"
            f"<div>score <span class='score {'keep' if kept else 'drop'}'>{ex.get('score', 0):.2f}</span> · "
            f"{'kept' if kept else 'dropped'}</div><div class='snippet'>{_e(ex.get('snippet', ''))}</div>"
            f"<div>{terms}</div></div>")


def _examples_section(summary: dict[str, Any]) -> str:
    ex = summary.get("examples")
    if not ex:
        return ""
    kept = "".join(_example_card(e, True) for e in ex.get("kept", []))
    dropped = "".join(_example_card(e, False) for e in ex.get("dropped", []))
    body = (f"<div class='examples'><div><h3>Kept</h3>{kept}</div><div><h3>Dropped</h3>{dropped}</div></div>")
    lead = "Highest- and lowest-scoring documents, with the words that pushed their score up (green) or down (red)."
    return _section("7 · Examples", lead, body, "examples")


def _glance_section(summary: dict[str, Any]) -> str:
    """The headline numbers, one per stage that ran."""
    kpis = []
    for domain, m in _ordered(summary.get("evaluation") or {}):
        kpis.append((f"{m.get('f1_at_3', 0):.2f}", f"{domain} F1 @3 (held-out)"))
    sel = summary.get("selection") or {}
    if sel.get("tokens") is not None:
        total = sum(s.get("tokens_in", 0) for s in (sel.get("per_source") or {}).values())
        kpis.append((f"{sel['tokens']:,}", f"tokens selected of {total:,}"))
    pre = summary.get("pretraining") or {}
    if pre.get("loss"):
        kpis.append((f"{pre['loss'][0][1]:.2f} → {pre['loss'][-1][1]:.2f}", "pretraining loss"))
    svc = summary.get("service") or {}
    if svc.get("latency_ms") is not None:
        kpis.append((f"{svc['latency_ms']:.0f} ms", "one document over HTTP"))
    if summary.get("total_seconds") is not None:
        kpis.append((_seconds(summary["total_seconds"]), "whole demo"))
    if not kpis:
        return ""
    grid = '<div class="grid">' + "".join(f'<div class="kpi"><b>{_e(v)}</b><span>{_e(k)}</span></div>'
                                          for v, k in kpis) + "</div>"
    return _section("At a glance", "", grid, "glance", "glance")


def render_report(summary: dict[str, Any]) -> str:
    status = summary.get("status", "unknown")
    data = summary.get("data", {})
    failed = [s for s in summary.get("steps", []) if s.get("status") == "failed"]
    failure = ""
    if failed:
        s = failed[0]
        failure = _section(f"The demo stopped at step “{s['name']}”", "",
                           f"<pre class='box'>{_e(s.get('reason', ''))}</pre><p>Outputs of the earlier steps are kept "
                           f"in the work folder; the step's full log is <code>{_e(s.get('log', ''))}</code>.</p>",
                           "failure", "failure")
    notes = summary.get("notes") or []
    notes_html = _section("Notes", "", "<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>",
                          "notes") if notes else ""
    overview = ""
    stats = data.get("stats") or {}
    if stats:
        items = " · ".join(f"<b>{_fmt(v)}</b> {_e(k.replace('_', ' '))}" for k, v in stats.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool))
        overview = _section("Data", _e(data.get("description", "")), f"<p class='facts'>{items}</p>", "data")
    parts = [failure, _glance_section(summary), notes_html, overview, _labels_section(summary),
             _evaluation_section(summary), _scoring_section(summary), _selection_section(summary),
             _pretraining_section(summary), _service_section(summary), _examples_section(summary),
             _steps_section(summary)]
    title = "edufilter demo report"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{CSS}</style></head>
<body>
<header class="top"><h1>{title} <span class="badge {'ok' if status == 'ok' else 'failed'}">{_e(status)}</span></h1>
<p>label → train → evaluate → score (Ray) → select → pretrain → serve · data: {_e(data.get('kind', ''))}
{_e(data.get('path', ''))} · {_e(summary.get('finished', ''))}</p></header>
<main>{''.join(p for p in parts if p)}
<footer>edufilter {_e(summary.get('edufilter_version', ''))} · work folder {_e(summary.get('workdir', ''))}</footer>
</main></body></html>
"""


def write_report(summary: dict[str, Any], out_dir: str | Path) -> Path:
    """Write report.html and summary.json into `out_dir` (atomically); returns the report path."""
    from edufilter.io import write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    report = out_dir / "report.html"
    summary = {**summary, "report": str(report)}
    write_json_atomic(out_dir / "summary.json", summary)
    write_text_atomic(report, render_report(summary))
    return report


if __name__ == "__main__":  # re-render: python -m edufilter.demo.report WORKDIR/summary.json
    path = Path(sys.argv[1])
    print(write_report(json.loads(path.read_text(encoding="utf-8")), path.parent))
