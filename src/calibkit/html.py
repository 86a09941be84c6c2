"""One self-contained HTML page of a ``calibkit report`` (``calibkit report DUMP --html report.html``).

The page holds what a reviewer of a model wants to see, in this order:

1. the dump and its provenance (path, scores array, split, rows, classes,
   where the calibrators' validation rows came from);
2. the metrics before and after each calibrator (and each calibrator's
   fitted parameters when they are few);
3. the reliability diagrams with their confidence histograms;
4. for a dense dump (scores ``(N, K, *spatial)``), the uncertainty map of the
   first image next to its error map (:func:`calibkit.plot.uncertainty_map`);
5. the per-class table (rows labelled with the class, accuracy on them,
   class-wise ECE raw and after each calibrator), worst class first;
6. the selective-prediction (risk-coverage) curve with AURC and E-AURC.

Nothing is fetched over the network: the styles are inline and the figures
are PNG images embedded as base64 ``data:`` URIs, so the file can be mailed,
archived or opened offline. The figures are drawn on plain matplotlib Figures
(pyplot and the user's backend are not touched).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: The per-class table shows at most this many classes (the worst ones); the page says how many it left out.
MAX_CLASS_ROWS = 100

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 72em;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.raw td { font-weight: 600; }
img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
p.note { color: #555; font-size: 0.9em; }
"""


_METRICS_NOTE = ('<p class="note">ECE, MCE: equal-width bins (ECE over equal-mass bins with --strategy quantile); '
                 "ACE: equal-mass bins; class-wise ECE: mean over classes of each class's ECE (Kull et al. 2019); "
                 "Brier: mean squared error of the probability vector; NLL: mean negative log-likelihood. "
                 "Calibrators are fitted on the validation rows and evaluated on the others.</p>")
_RELIABILITY_NOTE = ('<p class="note">Top: accuracy per confidence bin, with the gap to the bin\'s mean confidence '
                     "(over-confident and under-confident bins in two colours). Bottom: the fraction of rows in "
                     "each bin (one scale for every panel), with the overall accuracy and mean confidence.</p>")
_SELECTIVE_NOTE = ('<p class="note">Predictions accepted from the most confident down (top probability of the raw '
                   "scores): the error rate among the accepted ones (risk) against the fraction accepted "
                   "(coverage). AURC: area under this curve (Geifman et al. 2019); E-AURC: AURC minus that of a "
                   "perfect ranking of the same predictions.</p>")


_MAP_NOTE = ('<p class="note">The first image of the dense dump. Left: the predictive entropy of each pixel '
             "(natural log; 0 for a certain prediction, log K for a uniform one). Right: the pixels whose "
             "top-scored class differs from the label (wrong), those where it is the label (correct), and those "
             "without ground truth (ignored: the ignore label or masked out, left out of every metric). For a "
             "volume, the middle section along the axes before the last two.</p>")


def _dense_provenance(dense) -> dict:
    """The provenance rows of a dense dump (none for a table of rows)."""
    if not dense:
        return {}
    out = {"dense scores": f"{tuple(dense['shape'])}, classes on axis {dense['class_axis']}",
           "pixels": f"{dense['pixels']:,}", "ignored pixels": f"{dense['ignored']:,}"}
    if dense.get("ignore_index") is not None:
        out["ignore_index"] = str(dense["ignore_index"])
    if dense.get("mask"):
        out["mask"] = "given (False = not counted)"
    return out


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(v, digits=5) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '<td class="num">&ndash;</td>'
    if isinstance(v, (int, np.integer)):
        return f'<td class="num">{int(v):,}</td>'
    return f'<td class="num">{float(v):.{digits}f}</td>'


def _png(fig) -> str:
    """The figure as an <img> with a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return data


def _img(data, alt) -> str:
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _table(head, rows, classes=None) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for j, cells in enumerate(rows):
        cls = f' class="{classes[j]}"' if classes and classes[j] else ""
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _params(params) -> str:
    """A calibrator's fitted parameters, in short (scalars in full, arrays by their size)."""
    if not params:
        return ""
    parts = []
    for k, v in params.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k} = {v:.6g}")
        elif isinstance(v, list):
            parts.append(f"{k}: {np.size(np.asarray(v, dtype=object))} values")
    return "; ".join(parts)


def figures(result) -> dict:
    """``{"reliability": png_base64, "risk_coverage": png_base64 or None, "uncertainty_map": png_base64 or None}``
    of a report result (the map when the dump is dense and the result has its ``"dense_map"``)."""
    from . import plot

    out = {"reliability": _png(plot.report_figure(result)), "risk_coverage": None}
    sel = result.get("selective")
    if sel is not None:
        fig, axes = plot._new_figure((6.0, 4.2), 100, True)
        plot.risk_coverage_plot(sel["curve"], aurc=sel["aurc"], n=result["rows"]["raw"]["n"], ax=axes[0, 0],
                                name="raw scores")
        n = result["rows"]["raw"]["n"]
        plot._suptitle(fig, f"{result['dump']}: risk-coverage, N = {n:,}", 10)
        fig.tight_layout()
        out["risk_coverage"] = _png(fig)
    maps = result.get("dense_map")
    out["uncertainty_map"] = None
    if maps is not None:
        n = 1 if maps["error"] is None else 2
        fig, axes = plot._new_figure((10.0 if n == 2 else 5.6, 4.2), 100, True, 1, n)
        plot._draw_uncertainty(fig, list(axes[0]), maps, "viridis")
        plot._suptitle(fig, f"{result['dump']}: first image", 10)
        fig.tight_layout()
        out["uncertainty_map"] = _png(fig)
    return out


def report_html(result: Mapping[str, Any], provenance: Mapping[str, object] | None = None) -> str:
    """The HTML page of a :func:`calibkit.report.report` result (computed with ``details=True`` for the per-class
    table and the risk-coverage curve).

    Parameters
    ----------
    result : ReportResult
    provenance : dict, optional
        Extra ``{label: value}`` rows of the provenance table (the CLI gives the
        path, split and where the validation rows came from).

    Returns
    -------
    str
        A complete HTML document with no external reference.

    Notes
    -----
    The per-class table lists at most ``MAX_CLASS_ROWS`` = 100 classes, the
    worst first (largest raw class-wise ECE; lowest accuracy for binary dumps).
    """
    from . import __version__

    pics = figures(result)
    raw = result["rows"]["raw"]
    kind = "logits" if result["from_logits"] else "probabilities"
    prov = {"dump": result["dump"]}
    prov.update(provenance or {})
    prov.update({"rows in the dump": f"{result['n_rows']:,}", "rows evaluated": f"{raw['n']:,}",
                 "classes": f"{result['n_classes']:,}", "scores read as": kind,
                 "validation rows": f"{result['n_val']:,}",
                 **_dense_provenance(result.get("dense")),
                 "bins": f"{result['n_bins']} ({result['strategy']})",
                 "calibkit": __version__,
                 "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>calibkit report: {_e(result['dump'])}</title>", f"<style>{_STYLE}</style>", "</head>",
             "<body>", "<h1>Calibration report</h1>", f'<p class="note">{_e(result["dump"])}</p>']

    parts += ['<section id="provenance">', "<h2>Dump</h2>",
              _table(["", ""], [[f"<th>{_e(k)}</th>", f"<td>{_e(v)}</td>"] for k, v in prov.items()]),
              "</section>"]

    from .report import COLUMNS

    cols = [c for c in COLUMNS if any(c in r for r in result["rows"].values())]
    rows, classes = [], []
    for name, r in result["rows"].items():
        rows.append([f"<td>{_e(name)}</td>"] + [_num(r.get(c)) for c in cols]
                    + [f"<td>{_e(_params(r.get('params')))}</td>"])
        classes.append("raw" if name == "raw" else "")
    parts += ['<section id="metrics">', "<h2>Metrics before and after calibration</h2>",
              _table(["calibration"] + cols + ["fitted parameters"], rows, classes),
              _METRICS_NOTE,
              "</section>"]

    parts += ['<section id="reliability">', "<h2>Reliability diagrams</h2>",
              _img(pics["reliability"], "reliability diagrams with confidence histograms, raw and after "
                                        "each calibrator"),
              _RELIABILITY_NOTE,
              "</section>"]

    if pics["uncertainty_map"] is not None:
        parts += ['<section id="uncertainty-map">', "<h2>Uncertainty map</h2>",
                  _img(pics["uncertainty_map"], "entropy map of the first image next to its error map"),
                  _MAP_NOTE, "</section>"]
    pc = result.get("per_class")
    if pc is not None:
        parts += ['<section id="per-class">', "<h2>Per class</h2>", _per_class(pc), "</section>"]
    sel = result.get("selective")
    if sel is not None:
        parts += ['<section id="selective">', "<h2>Selective prediction</h2>",
                  _table(["AURC", "E-AURC"], [[_num(sel["aurc"]), _num(sel["e_aurc"])]]),
                  _img(pics["risk_coverage"], "risk-coverage curve of the raw scores"),
                  _SELECTIVE_NOTE,
                  "</section>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _per_class(pc) -> str:
    ece = pc["classwise_ece"]
    names = list(ece)
    count, accuracy = pc["count"], pc["accuracy"]
    k = len(count)
    if names:
        key = np.nan_to_num(ece["raw"], nan=-1.0)
        order = sorted(range(k), key=lambda c: (-key[c], c))
        how = "largest class-wise ECE of the raw scores first"
    else:
        key = np.nan_to_num(accuracy, nan=2.0)
        order = sorted(range(k), key=lambda c: (key[c], c))
        how = "lowest accuracy first"
    shown = order[:MAX_CLASS_ROWS]
    head = ["class", "rows labelled", "accuracy on them (raw)"] + [f"class-wise ECE ({n})" for n in names]
    rows = [[f"<td>{int(pc['class'][c])}</td>", _num(int(count[c])), _num(float(accuracy[c]))]
            + [_num(float(ece[n][c])) for n in names] for c in shown]
    note = f"Sorted worst first ({how})."
    if len(shown) < k:
        note += f" The {len(shown)} worst of {k} classes are shown."
    return _table(head, rows) + f'\n<p class="note">{_e(note)} Accuracy: the fraction of the rows labelled with ' \
                                f"the class whose top-scored class (raw scores) is that class.</p>"


__all__ = ["MAX_CLASS_ROWS", "report_html"]
