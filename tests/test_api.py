"""One smoke run through the Python API (``fedsafe.run``) with every tracker in its offline mode, then what a
user does with it: the table as a DataFrame, the live report it rewrote while running, TensorBoard, W&B and
MLflow holding the same per-round scalars and the result table, ``fedsafe report`` and ``fedsafe compare``
on its folder, and its report.html in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest

import fedsafe
from fedsafe import report
from fedsafe.cli import main
from fedsafe.tracking import round_scalars
from tests.conftest import SMOKE, read_metrics

ROUNDS = 2
SERIES = "fedavg/seed0"  # the smoke config's one arm, seed 0
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tracked_run(ray_cluster, model_cache, tmp_path_factory):
    """The smoke run with TensorBoard, W&B (offline) and MLflow (its local store); every live page it wrote."""
    pages: list[str] = []
    write_live_report = report.write_live_report

    def keep_page(*args, **kwargs):
        path = write_live_report(*args, **kwargs)
        pages.append(path.read_text())
        return path

    root = tmp_path_factory.mktemp("tracked")
    with mock.patch.dict("os.environ", {"WANDB_SILENT": "true"}), \
            mock.patch.object(report, "write_live_report", keep_page):
        res = fedsafe.run(SMOKE, overrides={
            "model.cache_dir": model_cache, "output.root": str(root), "federation.num_rounds": ROUNDS,
            "evaluation.num_prompts": 8, "evaluation.num_benign": 4,
            "output.trackers": ["tensorboard", "wandb", "mlflow"], "output.wandb.mode": "offline"})
    return res, pages


def test_the_api_returns_the_table_as_a_dataframe(tracked_run):
    res, _ = tracked_run
    table = res.table
    assert list(table.index) == ["fedavg"] and table.loc["fedavg", "aggregation"] == "fedavg"
    assert table.loc["fedavg", "rule_n_prompts"] == 8 and table.loc["fedavg", "seeds"] == 1
    assert table.loc["fedavg", "rule_low"] <= table.loc["fedavg", "rule"] <= table.loc["fedavg", "rule_high"]
    assert fedsafe.load(res.run_dir).table.equals(table) and res.report.is_file()


def test_every_results_file_the_run_wrote_round_trips_through_its_typed_record(tracked_run):
    """results.json, each arm-seed's result.json and every metrics.jsonl line read back as RunResults,
    ArmResult and RoundRecord and give the same JSON, key for key."""
    from fedsafe.records import ArmResult, RoundRecord, RunResults

    res, _ = tracked_run
    root = res.run_dir.parent
    results = json.loads((res.run_dir / "results.json").read_text())
    assert RunResults.from_dict(results).to_dict() == results and results["schema"] >= 2
    arms = list(root.rglob("result.json"))
    lines = [json.loads(line) for path in root.rglob("metrics.jsonl") for line in path.read_text().splitlines()]
    assert arms and len(lines) >= ROUNDS
    assert all(ArmResult.from_dict(d).to_dict() == d for d in (json.loads(p.read_text()) for p in arms))
    assert all(RoundRecord.from_dict(d).to_dict() == d for d in lines)


def test_the_live_report_was_rewritten_every_round_and_reloads_only_while_running(tracked_run):
    res, pages = tracked_run
    running = [p for p in pages if "(running)</title>" in p]
    assert len(running) == len(pages) >= ROUNDS + 2  # at the start, after each round, after the arm
    assert all("<meta http-equiv='refresh' content='10'>" in p for p in running)
    for done in range(1, ROUNDS + 1):  # each round's page shows it
        assert any(f"<td>{SERIES}</td>\n<td>{done} of {ROUNDS}</td>" in p for p in running), done
    assert "<td>fedavg</td>" in running[-1] and "<td>fedavg</td>" not in running[0]  # the finished arm's row
    final = res.report.read_text()
    assert "http-equiv='refresh'" not in final and "fedsafe report: smoke</h1>" in final


def test_tensorboard_has_every_round_and_the_results(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res, _ = tracked_run
    events = EventAccumulator(str(res.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    expected = [round_scalars(r)["train/loss"] for r in read_metrics(res.run_dir)]
    assert [e.value for e in events.Scalars(f"{SERIES}/train/loss")] == pytest.approx(expected)
    assert [e.step for e in events.Scalars(f"{SERIES}/train/loss")] == list(range(ROUNDS))
    plots = sorted(f"plots/{p.stem}" for p in (res.run_dir / "plots").glob("*.png") if p.stem != "progress")
    assert sorted(events.Tags()["images"]) == plots and len(plots) >= 2
    assert "results/text_summary" in events.Tags()["tensors"]


def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): a LevelDB-style log of 32 KiB blocks after a 7-byte
    header, each chunk a 7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_wandb_offline_run_has_every_round_the_table_and_the_plots(tracked_run):
    res, _ = tracked_run
    run_id = json.loads((res.run_dir / "trackers.json").read_text())["wandb_id"]
    (run_file,) = (res.run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(run_file) if r.WhichOneof("record_type") == "history"]
    per_round = {row[f"{SERIES}/round"]: row for row in rows if f"{SERIES}/round" in row}
    expected = {r["round"]: round_scalars(r)["train/loss"] for r in read_metrics(res.run_dir)}
    assert {k: row[f"{SERIES}/train/loss"] for k, row in per_round.items()} == pytest.approx(expected)
    (logged,) = [row for row in rows if "results/_type" in row]  # nested keys joined by "/"
    assert logged["results/_type"] == "table-file" and logged["results/nrows"] == 1
    table = json.loads((run_file.parent / "files" / logged["results/path"]).read_text())
    assert table["data"][0][table["columns"].index("arm")] == "fedavg"
    plots = {f"plots/{p.stem}" for p in (res.run_dir / "plots").glob("*.png") if p.stem != "progress"}
    assert {key[:-len("/_type")] for key, value in logged.items() if value == "image-file"} == plots
    assert all((run_file.parent / "files" / logged[f"{plot}/path"]).is_file() for plot in plots)


def test_mlflow_local_store_has_every_round_and_the_results(tracked_run):
    from mlflow.tracking import MlflowClient

    res, _ = tracked_run
    run_id = json.loads((res.run_dir / "trackers.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(res.run_dir / 'mlflow.db').resolve()}")
    history = client.get_metric_history(run_id, f"{SERIES}/train/loss")
    expected = [round_scalars(r)["train/loss"] for r in read_metrics(res.run_dir)]
    assert [m.step for m in history] == list(range(ROUNDS)) and [m.value for m in history] == pytest.approx(expected)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["federation.num_rounds"] == str(ROUNDS)
    assert {a.path for a in client.list_artifacts(run_id)} == {"plots", "results.json", "results.md"}
    table = json.loads(Path(client.download_artifacts(run_id, "results.json", str(res.run_dir / "mlflow-dl"))).read_text())
    assert "fedavg" in json.dumps(table)


def test_report_rebuilds_a_finished_run_and_shows_a_stopped_one(tracked_run, tmp_path, capsys):
    res, _ = tracked_run
    stopped = tmp_path / "stopped"
    shutil.copytree(res.run_dir, stopped)
    (stopped / "results.json").unlink()
    (stopped / "report.md").unlink()
    assert main(["report", str(stopped)]) == 0
    page = (stopped / "report.html").read_text()
    assert "(stopped)</title>" in page and "http-equiv='refresh'" not in page
    assert f"fedsafe run --resume {stopped}" in page and f"<td>{ROUNDS} of {ROUNDS}</td>" in page
    assert "<td>fedavg</td>" in page and not (stopped / "report.md").exists()

    finished = tmp_path / "finished"
    shutil.copytree(res.run_dir, finished)
    (finished / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(finished)]) == 0
    assert "| fedavg |" in capsys.readouterr().out
    assert (finished / "report.md").read_text() == (res.run_dir / "report.md").read_text()
    assert main(["report", str(finished), "--print", "provenance,paired"]) == 0  # sections to paste elsewhere
    out = capsys.readouterr().out
    assert "(code: commit " in out and "No arm has a reference arm" in out and "| fedavg |" not in out
    assert main(["report", str(finished), "--print", "table,nonsense"]) == 2


def test_compare_a_run_with_its_copy_pairs_every_prompt(tracked_run, tmp_path, capsys):
    res, _ = tracked_run
    copy = tmp_path / "copy"
    shutil.copytree(res.run_dir, copy)
    assert main(["compare", str(res.run_dir), str(copy)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| copy | fedavg |"))
    assert "+0.00 [+0.00, +0.00], p 1 (1), 1 (within this run)" in line  # the same answers: no difference


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium: make setup installs Debian's chromium "
                    "where it may run apt-get (as root)")
def test_the_report_renders_in_chromium_with_every_plot_and_row(tracked_run, tmp_path):
    from playwright.sync_api import sync_playwright

    res, pages = tracked_run
    live = tmp_path / "live.html"
    live.write_text(pages[-1])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            for html, shot in ((res.report, "report.png"), (live, "live.png")):
                page.goto(html.resolve().as_uri(), wait_until="load")
                images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
                assert images and all(loaded for _, loaded in images), images
                first_table_rows = page.locator("table").first.locator("tbody tr").count()
                page.screenshot(path=str(tmp_path / shot), full_page=True)
                if shot == "report.png":
                    plots = [p for p in (res.run_dir / "plots").glob("*.png") if p.stem != "progress"]
                    assert len(images) == len(plots) and first_table_rows == len(res.table)  # one row per arm
                    assert page.locator("meta[http-equiv=refresh]").count() == 0
                else:
                    assert [alt for alt, _ in images] == ["Progress"] and first_table_rows == 1  # one federated run
                    assert page.locator("meta[http-equiv=refresh]").count() == 1
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000 and (tmp_path / "live.png").stat().st_size > 10_000
