"""tools/report.py on fabricated results.json / eval.json files of the runner's format."""

import json

import pytest

from helpers_tools import load_tool


def write_run(root, name, dataset, nets, mode, accs=None, eval_members=None, eval_mean=None, **config):
    run = root / name
    run.mkdir(parents=True)
    cfg = {"dataset": dataset, "nets": list(nets), "mode": mode, "mimicry": "kl", "entropy_weight": 0.0,
           "feature_l2_weight": 0.0, "pretrained": None, "labeled_fraction": 1.0, "labeled_ids": None,
           "model_dir": str(run)}
    cfg.update(config)
    accs = accs or [None] * len(nets)
    results = {"config": cfg,
               "members": [{"index": k, "net": n, "name": f"{n}_{k}", "file": f"member_{k}.keras",
                            "trainable": True, "test_accuracy": a} for k, (n, a) in enumerate(zip(nets, accs))],
               "test": {f"accuracy_{k}": a for k, a in enumerate(accs) if a is not None},
               "ensemble_test_accuracy": None, "history": {}, "wall_time_s": 1.0}
    (run / "results.json").write_text(json.dumps(results))
    if eval_members is not None:
        ev = {"members": [{"index": k, "single_query": {"mAP": m, "rank1": 0.5}, "multi_query": None}
                          for k, m in enumerate(eval_members)],
              "mean": eval_mean, "ensemble": {}}
        (run / "eval.json").write_text(json.dumps(ev))
    return run


@pytest.fixture()
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "c100_dml", "cifar100", ["mobilenet", "resnet32"], "dml", [0.7713, 0.7010])
    write_run(root, "c100_dml_swapped", "cifar100", ["resnet32", "wrn_28_10"], "dml", [0.70, 0.80])
    write_run(root, "c10_ind", "cifar10", ["resnet32", "wrn_28_10"], "independent", [0.9300, 0.9400])
    write_run(root, "c100_distil", "cifar100", ["wrn_28_10", "resnet32"], "distill", [0.78, 0.6948],
              teacher=["t.keras"])
    mean = {"single_query": {"mAP": 0.5500, "rank1": 0.8000}, "multi_query": {"mAP": 0.6400, "rank1": 0.86}}
    write_run(root / "market", "dml", "market1501", ["mobilenet", "mobilenet"], "dml",
              eval_members=[0.56, 0.54], eval_mean=mean)
    write_run(root / "market", "l2", "market1501", ["mobilenet", "mobilenet"], "dml", feature_l2_weight=0.1,
              eval_members=[0.5, 0.5], eval_mean={"single_query": {"mAP": 0.5, "rank1": 0.7}, "multi_query": None})
    write_run(root / "market", "pre_ind_noeval", "market1501", ["mobilenet", "mobilenet"], "independent",
              pretrained="imagenet")
    write_run(root, "digits_tiny", "digits", ["tiny_cnn", "tiny_cnn"], "dml", [0.5, 0.25])
    write_run(root, "c100_semi", "cifar100", ["resnet32", "resnet32"], "dml", [0.5, 0.5], labeled_fraction=0.5)
    return root


def by(rows, run, metric):
    [row] = [r for r in rows if r["run"] == run and r["metric"] == metric]
    return row


def test_matching_and_differences(runs_dir):
    tool = load_tool("report")
    rows, unmatched = tool.build(str(runs_dir))
    r = by(rows, "c100_dml", "net1 mobilenet top-1")
    assert (r["table"], r["paper"]) == ("2", 76.13) and r["ours"] == pytest.approx(77.13)
    assert r["diff"] == pytest.approx(1.0)
    assert by(rows, "c100_dml", "net2 resnet32 top-1")["diff"] == pytest.approx(70.10 - 71.10)
    # the pair in swapped order still finds WRN-28-10/ResNet-32, numbers swapped accordingly
    assert by(rows, "c100_dml_swapped", "net1 resnet32 top-1")["paper"] == 70.73
    assert by(rows, "c100_dml_swapped", "net2 wrn_28_10 top-1")["paper"] == 78.96
    assert by(rows, "c10_ind", "net2 wrn_28_10 top-1")["diff"] == pytest.approx(94.0 - 95.01)
    r = by(rows, "c100_distil", "student resnet32 top-1")
    assert (r["table"], r["paper"]) == ("4", 69.48) and r["diff"] == pytest.approx(0.0, abs=1e-9)
    assert by(rows, "market/dml", "mean SQ mAP")["diff"] == pytest.approx(55.00 - 54.71)
    assert by(rows, "market/dml", "mean MQ R1")["paper"] == 85.63
    assert by(rows, "market/dml", "net2 mobilenet SQ mAP")["diff"] == pytest.approx(54.0 - 54.13)
    r = by(rows, "market/l2", "mean SQ mAP")
    assert (r["table"], r["paper"]) == ("5", 51.01) and r["diff"] == pytest.approx(50 - 51.01)
    assert not [x for x in rows if x["run"] == "market/l2" and x["table"] == "3"]  # DML+L2 is not plain DML
    r = by(rows, "market/pre_ind_noeval", "mean SQ mAP")
    assert r["paper"] == 65.06 and r["ours"] is None and r["diff"] is None
    assert sorted(u["run"] for u in unmatched) == ["c100_semi", "digits_tiny"]
    assert [u for u in unmatched if u["run"] == "digits_tiny"][0]["member_top1"] == [50.0, 25.0]


def test_writes_markdown_json_png(runs_dir, tmp_path):
    tool = load_tool("report")
    out = tmp_path / "out" / "report.md"
    out.parent.mkdir()
    text = tool.compute(str(runs_dir), str(out), log=lambda s: None)
    assert out.read_text() == text
    assert "| 2 | cifar100 DML mobilenet+resnet32 | c100_dml | net1 mobilenet top-1 | 77.13 | 76.13 | +1.00 |" in text
    assert "CVPR 2018: Table 2 (CIFAR top-1), Table 3" in text and "Runs without a counterpart" in text
    assert "REFERENCE" not in text and tool.NO_MATCH not in text
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(data) == {"source", "units", "rows", "unmatched"} and len(data["rows"]) > 10
    assert (tmp_path / "out" / "report.png").stat().st_size > 1000


def test_no_plot_without_a_match(tmp_path):
    tool = load_tool("report")
    root = tmp_path / "runs"
    write_run(root, "digits_tiny", "digits", ["tiny_cnn", "tiny_cnn"], "dml", [0.5, 0.25])
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.png").write_bytes(b"an earlier report's plot")
    text = tool.compute(str(root), str(out / "report.md"), log=lambda s: None)
    assert text.endswith(tool.NO_MATCH + "\n\nRuns without a counterpart in the paper:\n\n"
                         "| Run | Dataset | Mode | Nets | Member top-1 | Ensemble top-1 |\n"
                         "|---|---|---|---|---|---:|\n"
                         "| digits_tiny | digits | dml | tiny_cnn,tiny_cnn | 50.00 / 25.00 | — |\n")
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # the stale plot is gone
    # a matched Market-1501 run without its eval.json has nothing to plot either
    write_run(root / "market", "ind", "market1501", ["mobilenet", "mobilenet"], "independent")
    text = tool.compute(str(root), str(out / "report.md"), log=lambda s: None)
    assert tool.NO_RESULT in text and not (out / "report.png").exists()


def test_usage_errors(tmp_path):
    from absl import app

    tool = load_tool("report")
    with pytest.raises(app.UsageError, match="--runs_dir is required"):
        tool.compute(None)
    with pytest.raises(app.UsageError, match="does not exist"):
        tool.compute(str(tmp_path / "nope"))
    with pytest.raises(app.UsageError, match="No results.json"):
        tool.compute(str(tmp_path))
