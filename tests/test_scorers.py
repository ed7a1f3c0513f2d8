"""Confidence scorers: each ranks a confident edge answer above an unsure one."""

import numpy as np
import pytest

from tandem.router.scorers import SCORERS, EdgeAnswer, confidence_features

SURE = EdgeAnswer("q", "a", logprobs=[-0.01, -0.02, -0.05], entropies=[0.05, 0.1, 0.2])
UNSURE = EdgeAnswer("q", "b", logprobs=[-1.5, -2.0, -0.7], entropies=[2.5, 3.1, 1.9])


def test_confidence_scorers_prefer_the_sure_answer():
    for name in ("mean_prob", "min_prob", "entropy"):
        sure, unsure = SCORERS[name]().score_many([SURE, UNSURE])
        assert 0.0 <= unsure < sure <= 1.0, name


def test_confidence_features_without_signals_count_as_unsure():
    features = confidence_features([EdgeAnswer("q", "", logprobs=[])])
    assert features.shape == (1, 5)
    np.testing.assert_allclose(features[0], [-10.0, -10.0, 0.0, 5.0, 5.0])
    assert SCORERS["entropy"]().score(EdgeAnswer("q", "", [])) < \
        SCORERS["entropy"]().score(SURE)


def test_cascade_report_judges_acceptability_at_the_bar(tmp_path):
    import json

    from tandem.router.eval.report import cascade_report

    rows = [{"prompt": f"Question {i}?", "edge_text": f"Answer {i}.", "cloud_tokens": 10,
             "edge_logprobs": [-0.1 * (i + 1)] * 4, "edge_entropies": [0.2 * (i + 1)] * 4,
             "rouge_l": agreement} for i, agreement in enumerate([0.9, 0.7, 0.45, 0.2, 0.1])]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = cascade_report(labels, "rouge_l", 0.5, "test", str(tmp_path / "plot.png"))
    assert report["edge_only_quality"] == 0.4  # two of five reach the bar
    assert abs(report["edge_only_agreement"] - 0.47) < 1e-9
    # Confidence falls as agreement falls here, so these rank exactly like the oracle.
    for name in ("mean_prob", "min_prob", "entropy"):
        assert report["scorers"][name]["apgr"] == report["oracle"]["apgr"] > 0.5
    assert report["apgr"] == report["scorers"]["mean_prob"]["apgr"]
    assert all(r["apgr"] <= report["oracle"]["apgr"] for r in report["scorers"].values())
    assert set(report["by_agreement"]) >= {"mean_prob", "random"}
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_cascade_report_grades_checkable_answers_and_counts_forward_passes(tmp_path):
    """--quality correct: each answer is right or wrong (the cloud's too); both cost axes
    and the cost model are in the report."""
    import json

    from tandem.router.eval.report import cascade_report

    rows = [{"prompt": f"What is {i + 10} plus 1? Answer with the number.",
             "answers": [str(i + 11)], "edge_text": f"It is {i + 11 if i < 2 else 0}.",
             "cloud_text": f"{i + 11}.",
             "cloud_tokens": 4, "edge_logprobs": [-0.1 * (i + 1)] * 4, "rouge_l": 0.5}
            for i in range(4)]
    rows[0]["cloud_text"] = "No idea."  # the cloud is wrong where the edge is right
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = cascade_report(labels, "correct", 0.5, "test", None)
    assert report["edge_only_quality"] == 0.5 and report["cloud_only_quality"] == 0.75
    assert report["cost_model"]["prefill_token_cost"] == 0.035
    for result in [report["oracle"], report["random"], *report["scorers"].values()]:
        assert {"apgr", "cost_reduction_at_95"} <= set(result["passes"])
    # Confidence falls with i: the wrong edge answers (i = 2, 3) are escalated first.
    assert report["scorers"]["mean_prob"]["apgr"] == report["oracle"]["apgr"]
    assert "mean_prob" in report["by_agreement"]


def test_eval_cascade_json_is_one_object_on_stdout(tmp_path, monkeypatch, capsys):
    """`tandem eval cascade --json` after collecting labels itself: stdout is the report
    alone (the collection's summary goes to stderr), so it pipes into a JSON reader."""
    import json
    import shutil
    import sys

    from tandem.router.scorers import DATA
    from tandem.shared.cli import evaluate
    from tandem.shared.cli.main import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "unused: the labels are copied in"}\n')

    def collect(args):  # stands in for starting the edge and cloud
        shutil.copy(DATA / "labels_q3km_heldout.jsonl", args.out)
        print("a summary for people", file=sys.stderr)
        return [], args.out

    monkeypatch.setattr(evaluate, "collect_labels", collect)
    assert main(["eval", "cascade", "--prompts", str(prompts), "--json",
                 "--plot", str(tmp_path / "curve.png")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0])["prompts"] == 59


def test_a_cloud_judged_scorer_calibrates_to_a_budget(tmp_path):
    """`tandem eval train-scorer --scorer cloud_mean_prob --budget 0.3` on labels the cloud
    judged: the threshold escalates at most 30 % of the requests, and says whose it is."""
    import json

    from tandem.router.embeddings import SentenceEncoder
    from tandem.router.eval.collect import read_jsonl
    from tandem.router.eval.train import answers_of, train
    from tandem.router.scorers import DATA, SCORERS

    rows = read_jsonl(DATA / "labels_q3km_heldout.jsonl")  # carries the cloud's judgement
    report = train(rows, SentenceEncoder(), tmp_path, budget=0.3, scorer="cloud_mean_prob")
    scores = SCORERS["cloud_mean_prob"]().score_many(answers_of(rows))
    escalated = float(np.mean(np.asarray(scores) < report["threshold"]))
    assert 0.25 <= escalated <= 0.3
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["scorer"] == "cloud_mean_prob" and saved["threshold"] == report["threshold"]
    unjudged = [{k: v for k, v in r.items() if not k.startswith("cloud_l")} for r in rows]
    with pytest.raises(ValueError, match="needs the cloud's judgement"):
        train(unjudged, SentenceEncoder(), tmp_path, scorer="cloud_top1_share")


def test_cloud_combined_trains_on_judged_labels_and_calibrates_to_a_budget(tmp_path):
    """`tandem eval train-scorer --scorer cloud_combined`: on judged labels its head is
    fitted and saved beside the others, its threshold calibrated from out-of-fold scores;
    the head ranks acceptable answers above the rest; unjudged labels are refused."""
    import json

    from tandem.router.embeddings import SentenceEncoder
    from tandem.router.eval.collect import read_jsonl
    from tandem.router.eval.train import acceptable, answers_of, train
    from tandem.router.head import LogisticHead
    from tandem.router.scorers import DATA, CloudCombinedScorer

    rows = read_jsonl(DATA / "labels_q3km_heldout.jsonl")  # carries the cloud's judgement
    report = train(rows, SentenceEncoder(), tmp_path, budget=0.3, scorer="cloud_combined")
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["scorer"] == "cloud_combined" and 0 < saved["threshold"] < 1
    assert report["judge_l2"] > 0
    scorer = CloudCombinedScorer(LogisticHead.load(tmp_path / "judge_head.npz"))
    scores, labels = scorer.score_many(answers_of(rows)), acceptable(rows, "rouge_l", 0.5)
    assert scores[labels == 1].mean() > scores[labels == 0].mean() + 0.2
    unjudged = [{k: v for k, v in r.items() if not k.startswith("cloud_l")} for r in rows]
    with pytest.raises(ValueError, match="needs the cloud's judgement"):
        train(unjudged, SentenceEncoder(), tmp_path, scorer="cloud_combined")


def test_leniency_calibrates_to_a_pass_budget():
    from tandem.router.eval.train import leniency_for_budget

    curve = [{"tau": 1.0, "quality": 1.0, "cloud_pass_reduction": 0.73},
             {"tau": 0.9, "quality": 0.91, "cloud_pass_reduction": 0.75},
             {"tau": 0.5, "quality": 0.71, "cloud_pass_reduction": 0.79}]
    assert leniency_for_budget(curve, 0.3)["tau"] == 1.0
    chosen = leniency_for_budget(curve, 0.25)
    assert chosen["tau"] == 0.9 and chosen["cloud_pass_share"] == 0.25
    assert leniency_for_budget(curve, 0.1) is None


def test_the_cli_lists_every_registered_scorer():
    from tandem.router.scorers import SCORERS
    from tandem.shared.cli.evaluate import SCORER_NAMES

    assert sorted(SCORER_NAMES) == sorted(SCORERS)


def test_the_agreed_prefix_counts_tokens_the_cloud_would_pick_itself():
    from tandem.router.scorers import agreed_prefix

    assert agreed_prefix([0, 0, 3, 0]) == 2
    assert agreed_prefix([1, 0]) == 0
    assert agreed_prefix([0, 0]) == 2 and agreed_prefix([]) == 0
