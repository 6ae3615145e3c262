"""Building the report from a study's results store (status, the four pillars, provenance) and writing it as
Markdown or self-contained HTML (plots embedded as base64, so it is one file that opens anywhere)."""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from pathlib import Path

from tunebench.study.report.breakeven import breakeven_section
from tunebench.study.report.document import Heading, Para, Report, Table
from tunebench.study.report.inference import inference_section
from tunebench.study.report.quality import quality_section
from tunebench.study.report.training import training_section
from tunebench.study.results import StudyResults


def overview(results: StudyResults, report: Report) -> None:
    statuses = Counter(stage["status"] for c in results.cells for stage in c.stages.values())
    description = results.study.get("description") or ""
    report.add(Para(f"{description}\n\n" if description else ""),
               Para(f"**{len(results.cells)} cells**; stages: " + ", ".join(f"{n} {s}" for s, n in sorted(
                   statuses.items())) + "."))
    if results.left_out:
        report.add(Para(f"{results.left_out} more cell(s) in the store are no longer in the study file and are left "
                        "out of this report (their results stay in results.db)."))
    notes = sorted({c.stages["eval"]["detail"] for c in results.cells
                    if c.stages.get("eval", {}).get("detail")})
    for note in notes:
        report.add(Para(f"Note: {note}"))
    failed = [(c.id, name, stage.get("error") or "") for c in results.cells for name, stage in c.stages.items()
              if stage["status"] == "failed"]
    if failed:
        report.add(Table(["cell", "stage", "error"], [list(f) for f in failed],
                         "Failed stages (rerun with --retry-failed after fixing the cause)."))


def provenance_section(results: StudyResults, report: Report) -> None:
    if not results.provenance:
        return
    report.add(Heading("Provenance"))
    devices = Counter(p["device"] for p in results.provenance)
    shas = Counter(p["git_sha"] or "unknown" for p in results.provenance)
    hashes = sorted({p["data_hash"] for p in results.provenance if p["data_hash"]})
    packages = results.provenance[-1]["packages"]
    report.add(Table(["what", "value"], [
        ["devices", ", ".join(f"{d} ({n} cells)" for d, n in devices.items())],
        ["git sha", ", ".join(f"{s} ({n} cells)" for s, n in shas.items())],
        ["data hashes", ", ".join(hashes) or "–"],
        ["python", results.provenance[-1]["python"] or "?"],
        ["packages", packages],
    ]))


def build_report(results: StudyResults, plots_dir: Path) -> Report:
    report = Report(title=f"tunebench study '{results.study.get('name')}'")
    overview(results, report)
    quality_section(results, report, plots_dir)
    training_section(results, report)
    inference_section(results, report)
    breakeven_section(results, report, plots_dir)
    provenance_section(results, report)
    return report


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report, base: Path) -> str:
    out = [f"# {report.title}", ""]
    for block in report.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            if block.text.strip():
                out += [block.text.strip(), ""]
        elif isinstance(block, Table):
            out += ["| " + " | ".join(map(md_cell, block.headers)) + " |",
                    "|" + "---|" * len(block.headers)]
            out += ["| " + " | ".join(map(md_cell, row)) + " |" for row in block.rows]
            out += ([f"\n*{block.caption}*"] if block.caption else []) + [""]
        else:
            rel = Path(block.path).resolve().relative_to(base.resolve()) if is_under(block.path, base) else block.path
            out += [f"![{block.caption}]({rel})", "", f"*{block.caption}*", ""]
    return "\n".join(out)


def is_under(path: Path, base: Path) -> bool:
    try:
        Path(path).resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


def inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
caption { caption-side: bottom; font-style: italic; text-align: left; padding-top: 0.3em; color: #555; }
figure { margin: 1em 0; } figcaption { font-style: italic; color: #555; }
img { max-width: 100%; } code { background: #f3f3f3; padding: 0 0.2em; }
"""


def to_html(report: Report) -> str:
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{html.escape(report.title)}</h1>"]
    for block in report.blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            if block.text.strip():
                out.append(f"<p>{inline_html(block.text.strip())}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
            out.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(Path(block.path).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def study_report(study_dir: Path, plots_dir: Path) -> Report:
    """Read the study's store and build its report, writing the plots into `plots_dir`."""
    from tunebench.study.results import load_results
    from tunebench.study.store import Store

    with Store.open_readonly(Path(study_dir)) as store:
        results = load_results(store)
    report = build_report(results, plots_dir)
    from tunebench.study.search.report import add_search_section  # a search's own section (its module)

    add_search_section(report, Path(study_dir), plots_dir)
    from tunebench.study.report.predicted import predicted_section  # predicted at launch against actual

    predicted_section(report, Path(study_dir))
    return report


def save_report(report: Report, fmt_name: str, out: Path) -> Path:
    from tunebench.rundir import write_atomic

    write_atomic(out, to_html(report) if fmt_name == "html" else to_markdown(report, out.parent))
    return out


def write_report(study_dir: Path, fmt_name: str = "md", out: Path | None = None) -> tuple[Path, Report]:
    """Build the report of the study in `study_dir`; returns its path and the report (for the headline)."""
    out = Path(out) if out else Path(study_dir) / f"report.{fmt_name}"
    report = study_report(study_dir, out.parent / f"{out.stem}-plots")
    return save_report(report, fmt_name, out), report
