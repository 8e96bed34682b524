"""benchmarks/int8_common.py: what the two int8 benchmarks (int8_block.py, int8_float_head.py) share."""

import argparse
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import int8_common  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(prog="bench")
    int8_common.add_model_arguments(p, repeats=7)
    args = p.parse_args(argv)
    return args, int8_common.check_model_arguments(p, args)


def test_the_model_arguments_and_their_checks(capsys):
    args, size = parse(["--preset", "stt_psp_tiny", "--size", "32x64"])
    assert size == (32, 64) and args.repeats == 7 and (args.rounds, args.threads, args.save) == (5, 2, None)
    assert parse(["--model", "m.keras"])[1] == (64, 128)
    for argv, message in ((["--size", "32x64"], "give exactly one of --model and --preset"),
                          (["--model", "a", "--preset", "b"], "give exactly one of --model and --preset"),
                          (["--preset", "p", "--size", "32"], "--size 32: expected HxW, both at least 16"),
                          (["--preset", "p", "--size", "8x64"], "--size 8x64: expected HxW, both at least 16"),
                          (["--preset", "p", "--repeats", "0"], "--repeats must be at least 1")):
        with pytest.raises(SystemExit) as error:
            parse(argv)
        assert error.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"bench: error: {message}", argv


def test_the_latency_rounds_interleave_the_models_and_compare_within_a_round():
    calls = []

    def runner(name):
        def run(**inputs):
            assert inputs == {"frame": 1}
            calls.append(name)
        return run

    medians = int8_common.interleaved_latency({"a": runner("a"), "b": runner("b")}, {"frame": 1}, rounds=3, repeats=2)
    # Every round: a warm-up and 2 timed steps of a, then of b.
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert sorted(medians) == ["a", "b"] and all(len(v) == 3 and min(v) > 0 for v in medians.values())
    ratios = int8_common.ratios_to({"base": [1.0, 2.0, 4.0], "x": [1.5, 2.0, 2.0]}, "base")
    assert ratios == {"base": (1.0, 1.0, 1.0), "x": (1.0, 0.5, 1.5)}


@pytest.mark.slow  # two int8 conversions per script at 32x64: ~30 s
def test_both_benchmarks_run_on_a_tiny_preset(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    common = ["--preset", "stt_psp_tiny", "--size", "32x64", "--rounds", "1", "--repeats", "1"]
    runs = {"int8_block.py": ["--variants", "none,query+output", "--sequences", "1", "--calibration", "1x2"],
            "int8_float_head.py": ["--float-heads", "0,1", "--steps", "0", "--gpu", "off"]}
    for script, extra in runs.items():
        save = tmp_path / script
        result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *common, *extra,
                                 "--save", str(save)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.splitlines()
        names = ["none", "query+output"] if script == "int8_block.py" else ["float_head=0", "float_head=1"]
        for name in names:
            assert any(line.startswith(f"{name}: ") and " MB, converted in " in line for line in lines), (name, lines)
            assert any(line.startswith(f"{name}: labels vs Keras") for line in lines), (name, lines)
        assert "XNNPACK, 2 threads, 1 rounds x 1 steps" in result.stdout
        saved = sorted(os.listdir(save))
        assert saved == (["stt_int8_none.tflite", "stt_int8_query_output.tflite"] if script == "int8_block.py"
                         else ["stt_int8_head0.tflite", "stt_int8_head1.tflite"])
