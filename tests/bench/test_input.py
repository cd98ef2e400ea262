"""labkit.bench.input: the ladder command runs end to end; the load-robust statistic (best of interleaved rounds,
paired round-by-round ratios) on synthetic timings, checked against values worked out by hand."""
import argparse
import json

import pytest

from labkit.bench import input as bench
from labkit.data import pipeline


def test_bench_input_prints_the_ladder(tiny, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["--data", str(tiny), "--batch-size", "4", "--image-size", "16", "--seconds", "0.05",
                              "--rounds", "2", "--warmup", "1", "--json", str(out)])
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    for name, _ in pipeline.LADDER:
        assert f"| {name} |" in text
    assert "ceiling" in text and "x naive" in text and "not an accelerator host" in text
    assert "within noise of the rung before" in text and "2 interleaved rounds" in text
    results = json.loads(out.read_text())
    assert [r["name"] for r in results["rungs"]] == [n for n, _ in pipeline.LADDER]
    for mode in results["rungs"] + [results["ceiling"]]:  # best of rounds, every round kept
        assert len(mode["rounds"]) == 2 and mode["img_s"] == max(mode["rounds"]) > 0
    assert len(results["load"]) == 3  # before each round and at the end
    assert len(results["others_cores"]) == 2 and all(0 <= c <= results["cores"] for c in results["others_cores"])
    prov = results["provenance"]
    assert prov["machine"]["cores"] >= 1 and prov["command"].startswith("labkit bench input")
    assert prov["date_utc"].endswith("Z") and "timings" in prov and "tensorflow" in prov


def test_best_of_rounds_is_the_fastest_round():
    # A neighbour's load slowed round 2 to half speed: the best round is the undisturbed one.
    assert bench.best_of_rounds([1000.0, 500.0, 980.0]) == 1000.0
    with pytest.raises(ValueError, match="no rounds measured"):
        bench.best_of_rounds([])


def test_upper_half_ignores_one_disturbed_round():
    # A neighbour halved round 2: the median (of 5) and the best do not move.
    assert bench.upper_half([800.0, 400.0, 810.0, 820.0, 805.0]) == (805.0, 820.0)
    assert bench.upper_half([600.0, 500.0]) == (550.0, 600.0)  # an even count: the middle two averaged
    with pytest.raises(ValueError, match="no rounds measured"):
        bench.upper_half([])


def test_compare_tells_a_real_step_from_noise():
    naive = [500.0, 250.0, 510.0, 505.0, 490.0]          # upper half 500-510
    assert bench.compare([820.0, 430.0, 800.0, 810.0, 815.0], naive) == "faster"   # 810-820: clear of it
    assert bench.compare([505.0, 480.0, 520.0, 470.0, 300.0], naive) == "within noise"  # 480-520 overlaps
    assert bench.compare([400.0, 380.0, 420.0], naive) == "slower"
    # One or two rounds have no spread to judge by: nothing is claimed, however far apart the numbers are.
    assert bench.compare([900.0], naive) == bench.compare([900.0, 910.0], naive) == "within noise"


def _results(rounds: dict, ceiling: list) -> dict:
    return {"rungs": [{"name": n, "img_s": max(r), "rounds": r} for n, r in rounds.items()],
            "ceiling": {"name": "ceiling", "img_s": max(ceiling), "rounds": ceiling}}


def test_summarize_names_exactly_the_steps_within_noise():
    results = _results({"naive": [600.0, 300.0, 580.0],     # upper half 580-600
                        "+ a": [660.0, 280.0, 590.0],        # 590-660: overlaps naive's, within noise
                        "+ b": [1320.0, 700.0, 1300.0],      # 1300-1320: faster than + a
                        "+ c": [1200.0, 650.0, 1210.0]},     # 1200-1210: slower than + b
                       [1500.0, 700.0, 1310.0])              # ceiling 1310-1500: overlaps + b's 1300-1320
    s = bench.summarize(results)
    assert s["within_noise"] == ["+ a"]
    assert [r.get("vs_previous") for r in s["rows"]] == [None, "within noise", "faster", "slower"]
    assert s["full_x_naive"] == pytest.approx(1210 / 600) and s["full_x_ceiling"] == pytest.approx(1210 / 1500)
    assert s["above_ceiling"] == [] and s["ceiling_clear_of"] == ["naive", "+ a", "+ c"]
    assert "within noise of the rung before (their upper halves of rounds overlap): + a\n" in s["text"]
    assert s["slower"] == ["+ c"] and "steps slower than the rung before (upper halves apart): + c\n" in s["text"]
    assert "the ceiling is at or above every rung; within noise of it: + b" in s["text"]


def test_summarize_says_when_a_rung_beats_the_ceiling():
    # upper halves: naive 500-500, + a 850-900, + b 950-1000; the ceiling 840-850 overlaps + a's, not + b's
    s = bench.summarize(_results({"naive": [500.0, 500.0, 500.0], "+ a": [900.0, 800.0, 850.0],
                                  "+ b": [1000.0, 900.0, 950.0]}, [850.0, 820.0, 840.0]))
    assert s["above_ceiling"] == ["+ a", "+ b"] and s["ceiling_clear_of"] == ["naive"] and s["within_noise"] == []
    assert "rungs above the ceiling's best but within noise of it: + a\n" in s["text"]
    assert s["text"].endswith("rungs faster than the ceiling (it is not a bound in this run): + b")
