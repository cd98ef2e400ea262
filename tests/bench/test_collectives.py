"""labkit.bench.collectives: ``labkit bench collectives`` writes its JSON and telemetry events (tiny sizes)."""
import json

from labkit import cli, telemetry
from labkit.bench import collectives as bench


def test_bench_collectives_cli_writes_json_and_telemetry(tmp_path, capsys):
    out, run_dir = tmp_path / "bench.json", tmp_path / "run"
    rc = cli.main(["bench", "collectives", "--max-bytes", "4096", "--repeats", "3", "--warmup", "1",
                   "--algorithms", "xla,ring,torus2d,torus2d_bidir", "--json", str(out), "--workdir", str(run_dir)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "simulation" in printed and "busbw" in printed and "projection" in printed
    doc = json.loads(out.read_text())
    assert doc["simulated"] is True and doc["replicas"] == 8 and "simulation" in doc["machine"]
    sizes = sorted({r["bytes"] for r in doc["results"]})
    assert sizes == [1024, 4096]
    for r in doc["results"]:
        assert r["busbw"] == r["algbw"] * 2 * 7 / 8 and r["algbw"] == r["bytes"] / r["time_s"]
    assert set(doc["fits"]) == {"xla", "ring", "torus2d", "torus2d_bidir"}
    odd = doc["fusion_overhead"]["odd_sizes"]
    assert odd["algorithm"] == "torus2d" and odd["leaves"] == 161 and odd["bytes"] == 4096
    assert doc["fusion_overhead"]["resnet50"] is None  # only measured when the sweep reaches ResNet-50's size

    assert {p["algorithm"] for p in doc["projection"]} == {"ring", "torus2d", "torus2d_bidir"}
    prov = doc["provenance"]  # what a committed reference run carries (03 shows one beside the learner's)
    assert prov["command"].startswith("labkit bench collectives") and prov["machine"]["cores"] >= 1
    assert prov["date_utc"].endswith("Z") and "simulation" in prov["timings"] and len(doc["load"]) == 2

    events, skipped = telemetry.read_events(run_dir)
    assert skipped == 0
    coll = [e for e in events if e["kind"] == "collective"]
    models = [e for e in events if e["kind"] == "cost_model"]
    assert len(coll) == 8 and all(e["source"] == "bench" and e["replicas"] == 8 for e in coll)
    assert {e["algorithm"] for e in models} == {"xla", "ring", "torus2d", "torus2d_bidir"}
    for e in models:
        assert len(e["bytes"]) == len(e["time_s"]) >= 2 and e["alpha_s"] >= 0 and e["beta_s_per_byte"] >= 0
    assert telemetry.current().run_dir is None  # the process-wide stream is restored


def test_bad_algorithm_is_a_clear_cli_error(capsys):
    assert cli.main(["bench", "collectives", "--algorithms", "xla,nope", "--max-bytes", "1024"]) == 2
    assert "allowed values" in capsys.readouterr().err


def test_sweep_sizes_include_resnet50_and_are_pre_padded():
    sizes = bench.sweep_sizes(1024, 128 << 20, 4, True, 64)
    assert sizes[0] == 1024 and sizes[-1] == 128 << 20
    assert 4 * 25_557_032 <= [s for s in sizes if 100e6 < s < 110e6][0] < 4 * 25_557_032 + 64
    assert all(s % 64 == 0 for s in sizes)
    assert bench.sweep_sizes(1024, 4096, 4, True) == [1024, 4096]
    leaves = bench._odd_leaf_sizes(10_001)
    assert sum(leaves) == 10_001 and len(leaves) == 161 and sum(s % 2 for s in leaves) >= 150


def test_resnet50_leaf_sizes_are_the_published_parameter_count():
    from labkit.bench.collectives import resnet50_leaf_sizes
    sizes = resnet50_leaf_sizes()
    assert len(sizes) == 161 and sum(sizes) == 25_557_032
