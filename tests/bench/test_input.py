"""labkit.bench.input: the ladder command runs end to end and prints every rung and the ceiling."""
import argparse
import json

from labkit.bench import input as bench
from labkit.data import pipeline


def test_bench_input_prints_the_ladder(tiny, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["--data", str(tiny), "--batch-size", "4", "--image-size", "16", "--seconds", "0.05",
                              "--warmup", "1", "--json", str(out)])
    assert bench.run(args) == 0
    text = capsys.readouterr().out
    for name, _ in pipeline.LADDER:
        assert f"| {name} |" in text
    assert "ceiling" in text and "x naive" in text and "not an accelerator host" in text
    results = json.loads(out.read_text())
    assert [r["name"] for r in results["rungs"]] == [n for n, _ in pipeline.LADDER]
    assert all(r["img_s"] > 0 for r in results["rungs"]) and len(results["ceiling"]) == 2
