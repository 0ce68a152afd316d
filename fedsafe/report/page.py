"""The report as files: ``report.md`` and ``report.html`` of a finished run (``write_report``), the live page
while a run goes (``write_live_report``), a report rebuilt from a run folder (``rebuild``), and the sections
``fedsafe report RUN --print`` gives as Markdown (``sections``)."""

from __future__ import annotations

import base64
import re
import time
from html import escape
from pathlib import Path

import markdown
import nh3
from markdown.extensions import Extension

from fedsafe.analysis import analyse
from fedsafe.errors import ConfigError
from fedsafe.files import refuse_links, write_whole
from fedsafe.records import RunResults
from fedsafe.report.behaviour import behaviour_section, detection_table
from fedsafe.report.notes import data_note, disagreement_samples, disagreement_table, judges_note, provenance
from fedsafe.report.plots import PLOTS, plot_progress
from fedsafe.report.records import RunRecords, read_records
from fedsafe.report.tables import (
    calibration_table,
    claims_section,
    lora_section,
    matrix_table,
    paired_table,
    power_table,
    rounds_table,
    timing_table,
    twins_note,
)

# the report's sections that ``fedsafe report RUN --print`` gives as Markdown (docs/results.md pastes them),
# each a function of the results and the run's records
SECTIONS = {
    "provenance": lambda results, records: provenance(results),
    "table": lambda results, records: matrix_table(results),
    "paired": lambda results, records: paired_table(results),
    "same-model": lambda results, records: twins_note(results),
    "power": lambda results, records: power_table(results),
    "judges": lambda results, records: disagreement_table(results),
    "claims": lambda results, records: claims_section(results),
    "notes": lambda results, records: judges_note(results),
    "calibration": lambda results, records: calibration_table(results),
    "detection": lambda results, records: detection_table(results),
    "behaviour": behaviour_section,
    "lora": lora_section,
}


def sections(results: dict, names: list[str], records: RunRecords | None = None) -> str:
    """The named sections (``SECTIONS``) of a run's report, in that order (``records``: read from the run
    folder when not given)."""
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown report section(s) {unknown}; known: {', '.join(SECTIONS)}")
    records = read_records(results) if records is None else records
    return "\n\n".join(SECTIONS[n](results, records).strip() for n in names)


def report_markdown(results: dict, records: RunRecords, plots: list[tuple[str, str]]) -> str:
    """The whole report as Markdown; ``plots``: the (file stem, title) of each plot drawn under ``plots/``."""
    return (
        f"# fedsafe report: {results['name']}\n\n"
        f"{results['num_clients']} clients ({results['num_malicious']} malicious in attacked arms), "
        f"{results['clients_per_round']} per round, {results['rounds']} rounds, model `{results['model']}`. "
        f"Wall time {results['wall_s']:.1f} s (arm-seed runs computed now: {len(results['computed'])} of "
        f"{sum(len(a.get('runs', [a])) for a in results['arms'].values())}).\n\n{matrix_table(results)}\n\n"
        f"{judges_note(results)}\n{data_note(results)}\n\n"
        + (f"Made by:\n{provenance(results)}\n\n" if results.get("invocations") else "")
        + f"## Paired tests\n\n{paired_table(results)}\n\n{twins_note(results)}{power_table(results)}"
        f"{disagreement_table(results)}"
        f"## The paper's four claims\n\n{claims_section(results)}\n\n"
        f"{detection_table(results)}"
        f"{behaviour_section(results, records)}"
        f"{lora_section(results, records)}"
        f"## Judge calibration against human labels\n\n{calibration_table(results)}\n\n"
        f"{disagreement_samples(records)}{timing_table(results)}"
        + "".join(f"## {title}\n\n![{title}](plots/{name}.png)\n\n" for name, title in plots)
    )


def plots_folder(run_dir: Path) -> Path:
    """``run_dir/plots``, made if missing; a link there or in it is refused (the plots are written over)."""
    plots = run_dir / "plots"
    refuse_links(plots, run_dir)
    plots.mkdir(exist_ok=True)
    for plot in plots.iterdir():
        refuse_links(plot, run_dir)
    return plots


def write_report(run_dir: Path, results: dict) -> str:
    """Write report.md, report.html and plots/; returns the result table."""
    run_dir = Path(run_dir)
    plots = plots_folder(run_dir)
    records = read_records(results)
    made = [(name, title) for name, plot, title in PLOTS if plot(results, records, plots / f"{name}.png")]
    body = report_markdown(results, records, made)
    write_whole(run_dir / "report.md", body)
    write_html(run_dir, f"fedsafe {results['name']}", body)
    return matrix_table(results)


class _TextOnly(Extension):
    """Markdown with raw HTML off: a ``<`` in an arm name, a config value or a data record is shown as text,
    never parsed."""

    def extendMarkdown(self, md) -> None:
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")


def page_html(run_dir: Path, body: str) -> str:
    """The Markdown ``body`` as inert HTML: raw HTML shown as text, then sanitized (nh3: no script, no event
    handler, links and images only to http(s) or relative addresses), then the report's own plots (regular
    files under ``plots/``, never a link) inlined as data."""
    html = nh3.clean(markdown.markdown(body, extensions=["tables", _TextOnly()]), url_schemes={"http", "https"})

    def inline(match: re.Match) -> str:
        plot = run_dir / "plots" / match.group(1)
        if plot.is_symlink() or not plot.is_file():
            return 'src=""'
        return f'src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}"'

    return re.sub(r'src="plots/([A-Za-z0-9_-]+\.png)"', inline, html)


def write_html(run_dir: Path, title: str, body: str, refresh_s: int | None = None) -> Path:
    """``report.html``: the Markdown ``body`` as one self-contained, inert page (``page_html``), written whole
    (a reader never sees half a page); ``refresh_s``: the page reloads itself that often (a live report)."""
    html = page_html(run_dir, body)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #999;padding:3px 8px;text-align:right}td:first-child{text-align:left}")
    reload = f"<meta http-equiv='refresh' content='{refresh_s}'>" if refresh_s else ""
    path = run_dir / "report.html"
    write_whole(path, f"<!doctype html><html><head><meta charset='utf-8'>{reload}<title>{escape(title)}</title>"
                      f"<style>{style}</style></head><body>{html}</body></html>")
    return path


LIVE_REFRESH_S = 10


def write_live_report(run_dir: Path, results: dict, rounds: dict[str, list[dict]], runs_done: int, runs_total: int,
                      state: str = "running") -> Path:
    """``report.html`` while a run goes (``state`` "running": the page reloads every ``LIVE_REFRESH_S``
    seconds) or after it stopped: every federated run's rounds so far (``rounds``: its records by label) and
    the table of the arms finished so far (``results``: the run's results with those arms, analysed)."""
    run_dir = Path(run_dir)
    plotted = plot_progress(rounds, plots_folder(run_dir) / "progress.png")
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    status = (f"Running: {runs_done} of {runs_total} arm-seed runs finished (updated {when}; this page reloads "
              f"every {LIVE_REFRESH_S} s until the run ends)." if state == "running" else
              f"Stopped at {when} with {runs_done} of {runs_total} arm-seed runs finished; `fedsafe run --resume "
              f"{run_dir}` continues it.")
    finished = (f"{matrix_table(results)}\n\n## Paired tests so far\n\n{paired_table(results)}"
                if results["arms"] else "None yet.")
    body = (f"# fedsafe report: {results['name']} ({state})\n\n{status}\n\n"
            f"## Federated runs so far\n\n{rounds_table(rounds, results['rounds'])}\n\n"
            + ("![Progress](plots/progress.png)\n\n" if plotted else "")
            + f"## Finished arms\n\n{finished}\n")
    return write_html(run_dir, f"fedsafe {results['name']} ({state})", body,
                      LIVE_REFRESH_S if state == "running" else None)


def rebuild(run_dir: Path) -> str:
    """Recompute the analysis of a finished run folder from its ``results.json`` and the per-prompt verdicts
    it points to, rewrite ``results.json`` and the report; returns the table."""
    path = Path(run_dir) / "results.json"
    results = RunResults.load(path).to_dict()
    gone = [r["dir"] for arm in results["arms"].values() for r in arm.get("runs", []) if not Path(r["dir"]).is_dir()]
    if gone:
        raise ConfigError(f"{len(gone)} arm folder(s) that {path} names are missing (e.g. {gone[0]}): their per-prompt "
                          "verdicts are what the analysis rests on, so the report was not rebuilt and results.json "
                          "keeps the analysis it has; restore the folders (a run folder moves whole, with the cache "
                          "beside it)")
    results["arms"], results["analysis"] = analyse(results["arms"])
    write_whole(path, RunResults.from_dict(results).to_json(run_dir))
    return write_report(run_dir, results)
