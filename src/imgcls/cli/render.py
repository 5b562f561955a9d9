"""Turning results into text for the terminal and files: tables, JSON, JSON lines, CSV (rows as they come). No logic beyond layout."""
from __future__ import annotations

import csv
import io
import json
import textwrap
from typing import Iterable, TextIO

CSV_COLUMNS = ["path", "labels", "rank", "label", "score", "error"]
TABLE_COLUMNS = ["image", "prediction", "scores"]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def table_widths(paths: Iterable, labels: Iterable[str]) -> list[int]:
    """Prediction table column widths, fixed before the first row from every input path and every label
    (the classes and 'unknown'), so that rows printed as they come line up, and so do the shards of a folder.
    A multi-label row naming several labels may run past its column."""
    return [max(map(len, ["image", *map(str, paths)])), max(map(len, ["prediction", "-", *labels])), len("scores")]


class PredictionWriter:
    """Writes prediction rows to `stream` as they come, as a table, json, jsonl or csv, flushing after each
    batch of rows. `head`: begin with the csv header or table header (False for every shard but the first,
    and when continuing a file). Whatever the batches, the text equals that of all the rows written at once;
    json writes a whole array (close() ends it), the other formats a line (csv: a line per rank) per row."""

    def __init__(self, stream: TextIO, fmt: str, widths: list[int] | None = None, head: bool = True):
        self.stream, self.fmt, self.widths, self.rows = stream, fmt, widths, 0
        if fmt == "json":
            self._write("[")
        elif head and fmt == "csv":
            self._write(_csv_lines([CSV_COLUMNS]))
        elif head and fmt == "table":
            self._write(self._table_line(TABLE_COLUMNS) + self._table_line(["-" * w for w in self.widths]))

    def write(self, results: list[dict]) -> None:
        if self.fmt == "json":  # json.dumps(all results, indent=2), an element at a time
            text = "".join(("," if self.rows or i else "") + "\n"
                           + textwrap.indent(json.dumps(r, indent=2, ensure_ascii=False), "  ") for i, r in enumerate(results))
        elif self.fmt == "jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
        elif self.fmt == "csv":
            text = _csv_lines(row for r in results for row in _csv_rows(r))
        else:
            text = "".join(self._table_line(_table_row(r)) for r in results)
        self.rows += len(results)
        self._write(text)

    def close(self) -> None:
        if self.fmt == "json":
            self._write("\n]\n" if self.rows else "]\n")

    def _table_line(self, cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, self.widths)).rstrip() + "\n"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _csv_lines(rows) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)  # lines end in \r\n, as RFC 4180 has them
    return out.getvalue()


def _csv_rows(result: dict) -> list[list]:
    shown = result["predictions"] or [{"label": "", "score": ""}]
    return [[result["path"], ";".join(result["labels"]), rank if result["predictions"] else "", p["label"], p["score"],
             result["error"] or ""] for rank, p in enumerate(shown, 1)]


def _table_row(result: dict) -> list[str]:
    shown = ("error: " + result["error"] if result["error"]
             else "  ".join(f"{p['label']} {100 * p['score']:.1f}%" for p in result["predictions"]))
    return [result["path"] or "<image>", ", ".join(result["labels"]) or "-", shown]


def predictions(results: list[dict], fmt: str) -> str:
    """All the rows at once (the table sized to them), without the final newline."""
    out = io.StringIO()
    widths = [max(len(str(c)) for c in column) for column in zip(TABLE_COLUMNS, *map(_table_row, results))]
    writer = PredictionWriter(out, fmt, widths)
    writer.write(results)
    writer.close()
    return out.getvalue().rstrip("\n")


def metrics_summary(metrics: dict) -> str:
    if metrics.get("task") == "multi-label":
        head = f"mAP {metrics['mAP']:.4f}   exact-match accuracy {metrics['accuracy']:.4f}   micro-F1 {metrics['micro_f1']:.4f}"
    else:
        topk = "   ".join(f"top-{k} {v:.4f}" for k, v in metrics.get("top_k_accuracy", {}).items())
        head = f"accuracy {metrics['accuracy']:.4f}   {topk}".rstrip()
    return f"{head}   ({metrics['n_images']} images)\n\n{metrics['classification_report'].rstrip()}"


def models(rows: list[tuple[str, str, str]], starting_points: dict[str, tuple] | None = None) -> str:
    """The models table, then (when given) the suggested starting points per device, last: what a terminal shows."""
    text = _table([list(r) for r in rows], ["model", "source", "pretrained weights"])
    if starting_points:
        width = max(len(name) for picks in starting_points.values() for name, _ in picks)
        text += "\n\ngood starting points (ImageNet weights; imgcls train DATA --model NAME):" + "".join(
            f"\n  {device:4} {name:{width}}  {why}" for device, picks in starting_points.items() for name, why in picks)
    return text


def layers(rows: list[dict]) -> str:
    """explain.layers.describe_layers' rows: name, output shape, map size, and the role of each layer."""
    lines = [f"{'layer':40} {'output':>16}  {'map':>11}  role"]
    for row in rows:
        role = ", ".join([name for name in ("default", "block") if row[name]]
                         + ([] if row["reaches_output"] else ["no gradient from the logits (Grad-CAM is blank)"]))
        lines.append(f"{row['name']:40} {'x'.join(map(str, row['shape'])):>16}  map {'x'.join(map(str, row['map'])):>7}  {role}".rstrip())
    return "\n".join(lines)


def unknown_trade_off(report: dict) -> str:
    columns = ["threshold", "in_distribution_kept", "accuracy_on_kept", "outliers_rejected"]
    rows = [[r[c] for c in columns] for r in report["trade_off"]]
    chosen = report["chosen"]
    verdict = (f"chosen threshold {chosen['threshold']:.4g}: keeps {100 * chosen['in_distribution_kept']:.1f}% of "
               f"in-distribution images, rejects {100 * chosen['outliers_rejected']:.1f}% of outliers "
               f"(AUROC {report['auroc']:.3f}; {report['n_in_distribution']} in-distribution, {report['n_outliers']} outliers)")
    saved = "stored in the bundle: predict now answers 'unknown' below it" if report["saved"] else "not stored (--no-save)"
    return f"{_table(rows, columns)}\n\n{verdict}\n{saved}"


def int8_check(record: dict) -> str:
    """The int8 export's check (export.quantize's int8_export record) in three lines."""
    return (f"top-1 {record['top1_int8']:.2f}% int8 vs {record['top1_fp32']:.2f}% fp32 ({record['drop_points']:+.2f} "
            f"points lost) on {record['validation_images']} validation images; {100 * record['agreement']:.1f}% same "
            f"class\nECE {record['ece_int8']:.4f} at the re-fitted temperature {record['temperature']:.3g} "
            f"(fp32 {record['ece_fp32']:.4f}; int8 before re-fitting {record['ece_int8_before_refit']:.4f})\n"
            f"calibrated on {record['calibration_images']} training images"
            + (f"; {len(record['float_layers'])} layers kept in float" if "float_layers" in record else "")
            + (f"; {record['speedup']:.2f}x the fp32 model's speed on this machine (batch {record['speed_batch']})"
               if "speedup" in record else ""))
