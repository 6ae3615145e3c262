"""`tunebench report`: the four pillars from a study's results store, as Markdown or self-contained HTML.

    quality        per task: zero-shot / few-shot / fine-tuned per model (Tables 1 and 3), sample efficiency
                   (Table 2, with a plot), model comparison (Table 4), LoRA ablation (table, r × dropout
                   heatmap, metric vs epochs)                                           -> quality.py
    time and cost  to train, per cell (Table 5)                                         -> training.py
    inference      the load tests' numbers, when the study ran them                     -> inference.py
    break-even     cost per 1K requests of each method and the requests after which
                   training pays back                                                   -> breakeven.py

Every number carries its n and 95% interval; with several seeds, mean ± std. Plots are PNG files beside the
report; the HTML page embeds them (base64), so it is one file that opens anywhere.

`document` holds the blocks and the formats every section shares; `assembly` builds, renders and writes the
report. A new section is a module of its own that `assembly.build_report` calls with one line.
"""

from tunebench.study.report.assembly import (
    build_report,
    save_report,
    study_report,
    to_html,
    to_markdown,
    write_report,
)
from tunebench.study.report.document import Figure, Heading, Para, Report, Table

__all__ = ["Figure", "Heading", "Para", "Report", "Table", "build_report", "save_report", "study_report",
           "to_html", "to_markdown", "write_report"]
