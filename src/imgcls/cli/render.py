"""Turning results into text for the terminal: tables, JSON, CSV. No logic beyond layout."""
from __future__ import annotations

import csv
import io
import json


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def predictions(results: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2, ensure_ascii=False)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["path", "labels", "rank", "label", "score", "error"])
        for r in results:
            rows = r["predictions"] or [{"label": "", "score": ""}]
            for rank, p in enumerate(rows, 1):
                writer.writerow([r["path"], ";".join(r["labels"]), rank if r["predictions"] else "", p["label"], p["score"], r["error"] or ""])
        return out.getvalue().rstrip("\n")
    rows = []
    for r in results:
        shown = "error: " + r["error"] if r["error"] else "  ".join(f"{p['label']} {100 * p['score']:.1f}%" for p in r["predictions"])
        rows.append([r["path"] or "<image>", ", ".join(r["labels"]) or "-", shown])
    return _table(rows, ["image", "prediction", "scores"])


def metrics_summary(metrics: dict) -> str:
    if metrics.get("task") == "multi-label":
        head = f"mAP {metrics['mAP']:.4f}   exact-match accuracy {metrics['accuracy']:.4f}   micro-F1 {metrics['micro_f1']:.4f}"
    else:
        topk = "   ".join(f"top-{k} {v:.4f}" for k, v in metrics.get("top_k_accuracy", {}).items())
        head = f"accuracy {metrics['accuracy']:.4f}   {topk}".rstrip()
    return f"{head}   ({metrics['n_images']} images)\n\n{metrics['classification_report'].rstrip()}"


def models(rows: list[tuple[str, str]]) -> str:
    return _table([list(r) for r in rows], ["model", "source"])


def unknown_trade_off(report: dict) -> str:
    columns = ["threshold", "in_distribution_kept", "accuracy_on_kept", "outliers_rejected"]
    rows = [[r[c] for c in columns] for r in report["trade_off"]]
    chosen = report["chosen"]
    verdict = (f"chosen threshold {chosen['threshold']:.4g}: keeps {100 * chosen['in_distribution_kept']:.1f}% of "
               f"in-distribution images, rejects {100 * chosen['outliers_rejected']:.1f}% of outliers "
               f"(AUROC {report['auroc']:.3f}; {report['n_in_distribution']} in-distribution, {report['n_outliers']} outliers)")
    saved = "stored in the bundle: predict now answers 'unknown' below it" if report["saved"] else "not stored (--no-save)"
    return f"{_table(rows, columns)}\n\n{verdict}\n{saved}"
