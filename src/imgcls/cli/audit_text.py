"""Plain-text rendering of an audit report (imgcls.data.audit.audit) for the terminal.

The report dict is the full record (`--format json`); this view bounds every list so a dataset
with thousands of duplicates still fits on a screen.
"""
from __future__ import annotations

import os

MAX_LISTED = 20  # items shown per list before "... and N more"
MAX_PER_GROUP = 5  # files shown per duplicate group, so 20 groups stay on one screen


def _bounded(lines: list[str], limit: int = MAX_LISTED, indent: str = "  ") -> list[str]:
    shown = [indent + line for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"{indent}... and {len(lines) - limit} more (see --format json)")
    return shown


def _table(rows: list[list]) -> list[str]:
    """First column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(str(row[column])) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(str(value).ljust(width) if column == 0 else str(value).rjust(width)
                      for column, (value, width) in enumerate(zip(row, widths))).rstrip() for row in rows]


def _counts_section(report: dict) -> list[str]:
    counts, splits = report["counts"], list(report["counts"])
    rows = [["class", *splits, "total"]]
    rows += [[name, *(counts[split][name] for split in splits), sum(counts[split][name] for split in splits)]
             for name in report["classes"]]
    rows.append(["total", *(sum(counts[split].values()) for split in splits), report["total_images"]])
    small, large = report["smallest_class"], report["largest_class"]
    return _table(rows) + [
        "",
        f"imbalance (train): {report['imbalance_ratio']:g}x  "
        f"(largest '{large}' {counts['train'][large]}, smallest '{small}' {counts['train'][small]})",
    ]


def _tally(counter: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in counter.items()) or "none readable"


def _stats_section(stats: dict) -> list[str]:
    sizes = [f"{axis:<6} " + (f"min {stats[axis]['min']}  median {stats[axis]['median']:g}  max {stats[axis]['max']} px"
                              if stats[axis] else "none readable") for axis in ("width", "height")]
    return ["image sizes:", *("  " + line for line in sizes),
            f"modes:   {_tally(stats['modes'])}", f"formats: {_tally(stats['formats'])}"]


def _relative(path: str, root: str) -> str:
    relative = os.path.relpath(path, root)
    return path if relative.startswith("..") else relative


def _group_lines(group: dict, root: str) -> list[str]:
    flags = [flag for flag, key in (("cross-split", "cross_split"), ("conflicting labels", "conflicting_labels"))
             if group[key]]
    members = [f"{_relative(path, root)}  ({split}, {name})"
               for path, split, name in zip(group["paths"], group["splits"], group["classes"])]
    header = f"  - {len(members)} files" + (f" [{', '.join(flags)}]" if flags else "") + ":"
    return [header, *_bounded(members, MAX_PER_GROUP, indent="      ")]


def _groups_section(title: str, groups, root: str) -> list[str]:
    if groups is None:
        return [f"{title} groups: not checked"]
    if not groups:
        return [f"{title} groups: none"]
    lines = [f"{title} groups ({len(groups)}):"]
    lines += [line for group in groups[:MAX_LISTED] for line in _group_lines(group, root)]
    if len(groups) > MAX_LISTED:
        lines.append(f"  ... and {len(groups) - MAX_LISTED} more groups (see --format json)")
    return lines


def _suspects_section(report: dict) -> list[str]:
    """The label check's three lists, most suspicious first, and where the review page is."""
    root, check = report["root"], report["label_check"]
    issues = [f"{_relative(item['path'], root)}  given '{item['given']}', looks like '{item['suggested']}' "
              f"(score {item['score']:.2f})" for item in report["label_issues"]]
    outliers = [f"{_relative(item['path'], root)}  ({item['given']}, further from its neighbours than "
                f"{100 * item['score']:.1f}% of images)" for item in report["outliers"]]
    quality = [f"{_relative(item['path'], root)}  ({item['given']}): {', '.join(item['problems'])}"
               for item in report["quality"]]
    noise = check["estimated_label_noise"]
    lines = [f"Label check of {check['images']} images ({check['features']}, {check['folds']}-fold, {check['seconds']:g}s)"
             + (f": about {100 * noise:.1f}% of labels look wrong" if noise is not None else "")]
    if not check["label_issues_checked"]:
        lines.append("  label issues: not checked (single-label data only)")
    for title, items in (("Label issues", issues), ("Outliers (off-topic)", outliers), ("Quality", quality)):
        lines += ["", *([f"{title} ({len(items)}):", *_bounded(items)] if items else [f"{title}: none"])]
    if report.get("review_page"):
        lines += ["", f"Review them: {report['review_page']} (open in a browser; save decisions.csv, then "
                      f"imgcls train {root} --manifest decisions.csv)"]
    return lines


def render_audit(report: dict) -> str:
    """The audit report as a plain-text table and sections, ending with the warnings."""
    root = report["root"]
    corrupt = [f"{_relative(item['path'], root)}: {item['reason']}" for item in report["corrupt"]]
    leakage = report["leakage"]
    lines = [
        f"Dataset audit of {root} ({report['layout']}, {len(report['classes'])} classes, "
        f"{report['total_images']} images)",
        "",
        *_counts_section(report),
        "",
        *_stats_section(report["image_stats"]),
        "",
        *([f"Corrupt files ({len(corrupt)}):", *_bounded(corrupt)] if corrupt else ["Corrupt files: none"]),
        "",
        *_groups_section("Exact duplicate", report["exact_duplicates"], root),
        "",
        *_groups_section("Near duplicate", report["near_duplicates"], root),
        "",
        f"Leakage (duplicate groups spanning train and validation/test): {leakage}" if leakage else "Leakage: none found",
        "",
        *(["Warnings:", *_bounded([f"- {w}" for w in report["warnings"]])] if report["warnings"] else ["Warnings: none"]),
        *(["", *_suspects_section(report)] if "label_check" in report else []),
    ]
    return "\n".join(lines) + "\n"
