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
    prov = results["provenance"]
    assert prov["machine"]["cores"] >= 1 and prov["command"].startswith("labkit bench input")
    assert prov["date_utc"].endswith("Z") and "timings" in prov and "tensorflow" in prov


def test_best_of_rounds_is_the_fastest_round():
    # A neighbour's load slowed round 2 to half speed: the best round is the undisturbed one.
    assert bench.best_of_rounds([1000.0, 500.0, 980.0]) == 1000.0
    with pytest.raises(ValueError, match="no rounds measured"):
        bench.best_of_rounds([])


def test_paired_ratios_survive_load_that_hits_one_round():
    # Round 2 ran at half speed for both modes (the same load, seconds apart): every paired ratio is still 1.25.
    fast, slow = [1250.0, 625.0, 1250.0], [1000.0, 500.0, 1000.0]
    assert bench.paired_ratios(fast, slow) == (1.25, 1.25)
    # Unpaired, the spreads overlap (625 < 1000): only the pairing tells them apart.
    assert min(fast) < max(slow)
    with pytest.raises(ValueError, match="must pair up; got 3 and 2"):
        bench.paired_ratios(fast, slow[:2])


def _results(rounds: dict, ceiling: list) -> dict:
    return {"rungs": [{"name": n, "img_s": max(r), "rounds": r} for n, r in rounds.items()],
            "ceiling": {"name": "ceiling", "img_s": max(ceiling), "rounds": ceiling}}


def test_summarize_names_exactly_the_steps_within_noise():
    results = _results({"naive": [600.0, 300.0, 600.0],
                        "+ a": [660.0, 280.0, 590.0],     # 1.10, 0.93, 0.98 against naive: within noise
                        "+ b": [1320.0, 700.0, 1300.0],   # 2.00, 2.50, 2.20 against + a: faster
                        "+ c": [1200.0, 650.0, 1200.0]},  # 0.91, 0.93, 0.92 against + b: slower
                       [1500.0, 700.0, 1400.0])
    s = bench.summarize(results)
    assert s["within_noise"] == ["+ a"]
    assert s["full_x_naive"] == pytest.approx(1200 / 600) and s["full_x_ceiling"] == pytest.approx(1200 / 1500)
    assert s["rows"][2]["vs_previous"] == pytest.approx((2.0, 2.5))
    assert s["rows"][3]["vs_previous"] == pytest.approx((1200 / 1320, 650 / 700))
    # + b: 1320/1500, 700/700, 1300/1400: round 2 ties the ceiling, so the ceiling is not clear of it
    assert s["above_ceiling"] == [] and s["ceiling_clear_of"] == ["naive", "+ a", "+ c"]
    assert "within noise of the rung before (paired rounds on both sides of 1): + a" in s["text"]
    assert "the ceiling is at or above every rung; within noise of it: + b" in s["text"]


def test_summarize_says_when_a_rung_beats_the_ceiling():
    # + a: 900/850 and 800/820 straddle 1; + b: 1000/850 and 900/820 are both above it
    s = bench.summarize(_results({"naive": [500.0, 500.0], "+ a": [900.0, 800.0], "+ b": [1000.0, 900.0]},
                                 [850.0, 820.0]))
    assert s["above_ceiling"] == ["+ a", "+ b"] and s["within_noise"] == [] and s["ceiling_clear_of"] == ["naive"]
    assert "rungs above the ceiling's best but within noise of it: + a\n" in s["text"]
    assert s["text"].endswith("rungs faster than the ceiling in every round (it is not a bound in this run): + b")
