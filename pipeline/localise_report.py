"""The localisation comparison in metrics.json and on the report page (evaluate stage).

* :func:`read_localisation` -- the three blocks of ``localisation.json`` (written by the localise stage),
  checked against the contract (:func:`pipeline.localisation.check_block`), for ``metrics.json``;
* :func:`sections` -- the report's sections: the share of truth boxes found at IoU > T beside Wang et al.
  2017 Table 7, the same by IoBB, AUC beside CLN 2025's figures, and the multiscale CAM's learned
  relevance weights per class;
* :func:`localisation_page` -- the whole evaluate step of a run whose only predictions are the localise
  stage's (no detector, no train_cls classifier).
"""
from __future__ import annotations

import json
import math

import pandas as pd

from pipeline.errors import PipelineError

KEYS = ("localisation", "localisation_reference", "localisation_run")


def read_localisation(paths) -> dict:
    """``{"localisation": ..., "localisation_reference": ..., "localisation_run": ...}`` or ``{}`` when the
    run has no ``localisation.json``."""
    from pipeline.localisation import check_block

    path = paths.localisation_json
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        check_block(data["localisation"])
        return {k: data[k] for k in KEYS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a localisation comparison ({exc}); run the localise stage again.") from None


def _share_table(loc: dict, measure: str, with_wang: bool) -> pd.DataFrame:
    from pipeline.localisation import BOX_CLASSES, SHORT, THRESHOLDS, WANG2017_TABLE7_IOU, key

    sources = dict(loc)
    if with_wang:
        sources["Wang 2017 (Table 7)"] = {"iou": WANG2017_TABLE7_IOU}
    rows = {}
    for t in THRESHOLDS:
        for method, block in sources.items():
            r = block[measure][key(t)]
            rows[f"{method}, T = {key(t)}"] = {**{SHORT[c]: r[c] for c in BOX_CLASSES}, "mean": r["mean"]}
    table = pd.DataFrame(rows).T.apply(pd.to_numeric, errors="coerce")
    table.index.name = "method, threshold"
    return table


def _auc_table(loc: dict) -> pd.DataFrame:
    from pipeline.localisation import BOX_CLASSES, CLN2025, SHORT

    rows = {m: {**{SHORT[c]: b["auc"][c] for c in BOX_CLASSES}, "mean": b["auc"]["mean"]} for m, b in loc.items()}
    rows["CLN 2025 (published)"] = {"mean": CLN2025["auc_mean"]}
    table = pd.DataFrame(rows).T.apply(pd.to_numeric, errors="coerce")
    table.index.name = "method"
    return table


def relevance_table(run: dict) -> pd.DataFrame | None:
    """Class x stage relevance weights of multiscale CAM, averaged over its folds (None without them)."""
    mean = ((run.get("methods") or {}).get("multiscale") or {}).get("relevance_mean")
    if not mean:
        return None
    table = pd.DataFrame(mean).T
    table.index.name = "class (mean over folds)"
    return table


def sections(metrics: dict) -> list[tuple[str, str]]:
    """The report's localisation sections ([] when the metrics have none)."""
    import html

    from pipeline.localisation import CLN2025
    from pipeline.report import table_html

    loc, run = metrics.get("localisation"), metrics.get("localisation_run") or {}
    if not loc:
        return []
    ms = run.get("methods") or {}
    def missing(r) -> str:
        return f" (missing {r['folds_missing']})" if r.get("folds_missing") else ""

    how = "".join(f"<li>{html.escape(m)}: folds {r.get('folds')}{missing(r)}, "
                  f"{r.get('n_images')} images, {r.get('n_boxes')} boxes, {r.get('seconds', 0):.0f} s; "
                  f"{html.escape(json.dumps(r.get('settings'), default=str))}</li>" for m, r in ms.items())
    intro = (f"<p>Out-of-fold on {run.get('n_images')} boxed ChestX-ray14 images ({run.get('n_boxes')} BBox_List "
             f"boxes), {run.get('n_splits')} patient-grouped folds. A truth box is found at T when one of the "
             f"{run.get('max_boxes')} best predicted boxes of its image and class has IoU (IoBB) &gt; T. Wang et al. "
             "2017 scored their own (official) test boxes with their own model: read beside, not as the same test. "
             f"CLN 2025 (published, its own protocol): mean AUC {CLN2025['auc_mean']}, mean IoU accuracy "
             f"{CLN2025['iou_accuracy_mean']}.</p><ul>{how}</ul>")
    out = [("Localisation: share of truth boxes found at IoU > T, beside Wang et al. 2017 Table 7",
            intro + table_html(_share_table(loc, "iou", True), "{:.3f}")),
           ("Localisation: share found at IoBB > T (intersection over the predicted box)",
            table_html(_share_table(loc, "iobb", False), "{:.3f}")),
           ("Localisation methods: AUC per class (out-of-fold), CLN 2025 beside", table_html(_auc_table(loc), "{:.3f}"))]
    rel = relevance_table(run)
    if rel is not None:
        out.append(("Multiscale CAM: learned layer relevance weights per class (softmax, each row sums to 1)",
                    table_html(rel, "{:.3f}")))
    return out


def console(metrics: dict) -> str:
    """The IoU table beside Wang 2017 and the AUC table, as markdown for the log."""
    from pipeline.localisation import format_auc, format_table

    loc = metrics.get("localisation")
    return "" if not loc else format_table(loc, "iou") + "\n\n" + format_auc(loc)


def write_metrics(paths, metrics: dict) -> dict:
    """``metrics`` with the localise stage's comparison added (when the run has one), written to metrics.json."""
    from pipeline.io import write_json_atomic

    metrics.update(read_localisation(paths))
    write_json_atomic(paths.metrics_json, metrics)
    return metrics


def print_tables(metrics: dict) -> None:
    """The console tables of :func:`console`, when the metrics have a localisation block."""
    if metrics.get("localisation"):
        print(console(metrics))


def localisation_page(cfg, paths, rule: dict) -> dict:
    """metrics.json and report.html of a run whose predictions are the localise stage's only."""
    from pipeline.io import write_json_atomic
    from pipeline.report import write_report

    loc = read_localisation(paths)
    best = max(loc["localisation"].items(), key=lambda kv: kv[1]["iou"]["0.1"]["mean"] or -math.inf)
    summary = {"headline": f"ChestX-ray14 localisation: best mean share found at IoU > 0.1: {best[0]} "
                           f"{best[1]['iou']['0.1']['mean']:.3f} (T = 0.5: {best[1]['iou']['0.5']['mean']:.3f})",
               **{f"loc_{m}_iou_0.1": b["iou"]["0.1"]["mean"] for m, b in loc["localisation"].items()}}
    rule = {**rule, "rules": [r for r in rule["rules"] if r and not r.startswith("detector")] +
            ["localisation: every method trains for a fixed number of epochs and predicts with its last weights; "
             "the CAM threshold is fixed; nothing is chosen on a held-out fold"]}
    metrics = {"run": paths.name, "dataset": cfg.data.format, "detector": None,
               "note": "localise stage only: no detector or train_cls predictions in this run",
               "out_of_fold_rule": rule, "summary": summary, **loc}
    write_json_atomic(paths.metrics_json, metrics)
    out = {"headline": summary["headline"], "metrics": str(paths.metrics_json)}
    if cfg.evaluate.plots:
        import html

        from pipeline.report_page import _rule_section

        write_report(paths.report, f"Run {paths.name}: ChestX-ray14 localisation",
                     [("Summary", f"<p>{html.escape(summary['headline'])}</p>"), _rule_section(rule), *sections(metrics)],
                     [])
        out["report"] = str(paths.report)
    print(console(metrics))
    print(f"[evaluate] {summary['headline']}")
    return out


__all__ = ["console", "localisation_page", "print_tables", "read_localisation", "relevance_table", "sections",
           "write_metrics"]
