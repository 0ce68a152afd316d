"""The report of a run: one table of arms x metrics (means with 95% intervals) beside the paper's figures,
the paired tests at the seed level, the paper's four claims with verdicts, the judges' calibration and where
they disagree, what rules and defenses did, plots; Markdown and one self-contained HTML page.

    report.md     the tables, the claims, the judges, the plots (PNG files under plots/)
    report.html   the same content in one page (plots inlined); while a run goes, a live page rewritten
                  after every round and every finished arm (``write_live_report``)

Modules: ``tables`` (pure Markdown tables of the results), ``notes`` (judges, seeds, data, provenance),
``behaviour`` (detection, screening, defense cost), ``plots``, ``paper`` (the published figures, as data),
``records`` (what a report reads from the run folder, read once), ``page`` (the files).
"""

from fedsafe.report.page import (
                                 LIVE_REFRESH_S,
                                 SECTIONS,
                                 rebuild,
                                 report_markdown,
                                 sections,
                                 write_html,
                                 write_live_report,
                                 write_report,
)
from fedsafe.report.paper import paper_row
from fedsafe.report.plots import mean_weights
from fedsafe.report.records import RunRecords, read_records
from fedsafe.report.tables import calibration_table, compare_table, matrix_table, timing_table

__all__ = ["LIVE_REFRESH_S", "SECTIONS", "RunRecords", "calibration_table", "compare_table", "matrix_table",
           "mean_weights", "paper_row", "read_records", "rebuild", "report_markdown", "sections", "timing_table",
           "write_html", "write_live_report", "write_report"]
