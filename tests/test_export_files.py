"""The one description of an exported file (stt_keras.export.files): names, their inverse, and the plan."""

import pytest

from stt_keras.export import cli
from stt_keras.export.files import ExportedFile, every_file, plan

# The files `stt-export --help` and docs/export.md name, written out by hand (the reference).
STREAMING_DEFAULT = ["saved_model/1", "stt_dynamic_range.tflite", "stt_float16.tflite", "stt_float32.tflite",
                     "stt_gpu_dynamic_range.tflite", "stt_gpu_float16.tflite", "stt_gpu_float32.tflite",
                     "stt_gpu_step.onnx", "stt_int8.tflite", "stt_step.onnx"]
ALL = {"saved_model/1"} | {
    f"{prefix}{edge}_{q}.tflite" for prefix in ("stt", "stt_gpu", "frame") for edge in ("", "_edge")
    for q in ("float32", "float16", "dynamic_range")} | {
    f"{base}{edge}_int8.tflite" for base in ("stt", "frame") for edge in ("", "_edge")} | {
    f"{prefix}{edge}_step.onnx" for prefix in ("stt", "stt_gpu", "frame") for edge in ("", "_edge")}


def test_the_names_cover_what_the_step_and_the_converter_build():
    """files.py imports no TensorFlow, so it spells the vocabularies again: they must stay those of step.py and tflite.py."""
    from stt_keras.export import files, step, tflite

    assert files.INTERFACES == step.INTERFACES and files.QUANTIZATIONS == tflite.QUANTIZATIONS
    assert files.GRAPH_FORMS == (*step.FORMS, "frame")
    assert set(files.DEFAULT_QUANTIZATIONS.split(",")) == set(files.QUANTIZATIONS)


def test_every_file_has_its_own_name_and_reads_back():
    names = [file.name for file in every_file()]
    assert sorted(names) == sorted(ALL) and len(names) == len(set(names)) == 1 + 18 + 4 + 6
    for file in every_file():
        assert ExportedFile.parse(file.name) == file
    assert ExportedFile.parse("stt_int8.tflite") == ExportedFile("tflite", "dense_masked", "full", "int8")
    assert ExportedFile.parse("frame_edge_int8.tflite") == ExportedFile("tflite", "frame", "edge", "int8")
    assert ExportedFile.parse("stt_gpu_edge_step.onnx") == ExportedFile("onnx", "dense_masked", "edge")
    assert ExportedFile.parse("saved_model/1/") == ExportedFile("savedmodel")
    assert ExportedFile("tflite", "dense_masked", "edge", "float16").metadata_name == "stt_gpu_edge_float16.json"
    assert ExportedFile("onnx", "frame").metadata_name == "frame_step.json"


@pytest.mark.parametrize("name", ["stt_gpu_int8.tflite", "stt.tflite", "stt_gpu.tflite", "stt_float32.onnx",
                                  "stt_step.tflite", "stt_edge_edge_float32.tflite", "frame_int8.onnx", "model.keras",
                                  "stt_float32.json", "saved_model", "STT_float32.tflite", "stt_bfloat16.tflite"])
def test_names_stt_export_never_writes_are_refused(name):
    with pytest.raises(ValueError, match="not a model file stt-export writes"):
        ExportedFile.parse(name)


@pytest.mark.parametrize("args, message", [
    (("tflite", "default", "full", "int8"), "is one of"),  # int8 is built from the loop-free graph only
    (("onnx", "dense_masked", "full", "float16"), "is one of"),
    (("tflite", "cpu"), "form must be"),
    (("tflite", "dense_masked", "phone"), "interface must be"),
    (("keras",), "format must be"),
])
def test_files_stt_export_cannot_build_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        ExportedFile(*args)


def test_plan_is_in_writing_order_and_names_what_the_help_promises():
    files = plan({"savedmodel", "tflite", "onnx"}, ["default", "dense_masked"], ["float32", "float16", "dynamic_range",
                                                                              "int8"])
    assert [f.name for f in files] == [
        "saved_model/1", "stt_float32.tflite", "stt_float16.tflite", "stt_dynamic_range.tflite", "stt_step.onnx",
        "stt_gpu_float32.tflite", "stt_gpu_float16.tflite", "stt_gpu_dynamic_range.tflite", "stt_int8.tflite",
        "stt_gpu_step.onnx"]
    assert [f.name for f in files if f.gpu_checked] == ["stt_gpu_float32.tflite", "stt_gpu_float16.tflite"]
    assert cli.plan_files({"savedmodel", "tflite", "onnx"}, ["default", "dense_masked"], cli.DEFAULT_QUANTIZATIONS.split(","),
                          explicit_quantizations=False) == STREAMING_DEFAULT
    twice = plan({"tflite"}, ["dense_masked", "dense_masked"], ["int8", "int8"], ["edge", "full", "edge"])
    assert [f.name for f in twice] == ["stt_edge_int8.tflite", "stt_int8.tflite"]  # named twice, written once


def test_the_form_gpu_is_a_deprecated_alias_of_dense_masked():
    """One word for the loop-free STT step: "dense_masked" (the implementation it traces); "gpu" still answers."""
    from stt_keras.export.files import GRAPH_FORMS, form_name

    with pytest.warns(DeprecationWarning, match="'gpu' is named 'dense_masked'"):
        old = ExportedFile("tflite", "gpu", "edge", "float16")
    assert old == ExportedFile("tflite", "dense_masked", "edge", "float16") and old.form == "dense_masked"
    assert old.name == "stt_gpu_edge_float16.tflite" and old.gpu_checked  # the files keep their names
    with pytest.warns(DeprecationWarning):
        assert plan({"tflite"}, ["gpu"], ["int8"]) == plan({"tflite"}, ["dense_masked"], ["int8"])
    assert form_name("dense_masked") == "dense_masked" and form_name("frame") == "frame"
    assert "gpu" not in GRAPH_FORMS


def test_the_flag_value_gpu_warns_and_plans_the_dense_masked_files(capsys):
    args = cli.build_parser().parse_args(["--model", "m.keras", "--out", "x", "--forms", "default,gpu",
                                          "--formats", "tflite", "--quantizations", "float16,int8"])
    request = cli._Request(args)
    assert request.forms == ["default", "dense_masked"]
    assert "stt-export: warning: --forms gpu is named dense_masked now" in capsys.readouterr().err
    assert [f.name for f in request.files()] == ["stt_float16.tflite", "stt_gpu_float16.tflite", "stt_int8.tflite"]


def test_a_per_frame_model_has_the_one_form_frame():
    names = cli.plan_files({"tflite", "onnx"}, ["default", "dense_masked"], ["float16", "int8"], interfaces=("full", "edge"),
                           streaming=False)
    assert names == ["frame_edge_float16.tflite", "frame_edge_int8.tflite", "frame_edge_step.onnx",
                     "frame_float16.tflite", "frame_int8.tflite", "frame_step.onnx"]
    assert all(ExportedFile.parse(n).gpu_checked == n.endswith("float16.tflite") for n in names)


def test_the_names_other_programs_expect_are_files_stt_export_writes():
    """The edge demo's web server prefers edge-interface GPU-form float models by name (it imports no stt_keras),
    and the training report reads the int8 model's parity by name: both must stay names the export writes."""
    from stt_edge_demo.web.server import PREFERRED

    for name in PREFERRED:
        file = ExportedFile.parse(name)
        assert file.interface == "edge" and file.gpu_checked, name
    assert ExportedFile.parse("stt_int8.tflite").quantization == "int8"


def test_the_markdown_report_and_the_gpu_verdict_read_as_written():
    """export_report.md from a hand-made report (export/report.py), compared line by line with what it must say."""
    from stt_keras.export.gpu_check import gpu_text
    from stt_keras.export.report import markdown_report

    gpu = {"num_ops": 40, "fully_accelerated": False, "ops_on_cpu": 3, "ops_on_gpu": 37,
           "label_agreement_with_cpu": 0.99871, "validation_errors": ["x" * 100]}
    report = {
        "model": "/runs/m/best.keras", "size": [64, 128], "classes_source": "built-in synthetic", "classes": ["road", "sky"],
        "calibration_data": "synthetic video", "parity_data": None, "warnings": ["not a synthetic model"],
        "gpu_accelerator": {"checked": True}, "saved_model": {"path": "saved_model/1", "signatures": ["step"]},
        "files": {
            "stt_gpu_float16.tflite": {"bytes": 1_870_000, "gpu_accelerator": gpu, "parity": {
                "label_agreement": 0.9989, "logits_max_abs_diff": 0.00183, "miou_reference": 0.5, "miou": 0.49}},
            "stt_step.onnx": {"bytes": 3_680_000, "tensorrt_issues": ["TopK"], "parity": {"label_agreement": 1.0}},
            "stt_int8.tflite": {"bytes": 1_020_000, "float_ops": {"ADD": 6, "EXP": 1}, "parity": {"label_agreement": 0.95}},
        },
    }
    assert gpu_text(None) == "" and gpu_text({"error": "refused"}) == "; GPU accelerator: error"
    verdict = f"3 ops on the CPU but WebGPU validation errors ({'x' * 80}), labels agree with the CPU 99.87%"
    assert gpu_text(gpu) == "; GPU accelerator: " + verdict
    assert markdown_report(report).splitlines() == [
        "# Export of best.keras at 64x128", "",
        "**WARNING: not a synthetic model**", "",
        "Classes (built-in synthetic): road, sky", "",
        "Int8 calibration data: synthetic video", "",
        "SavedModel: `saved_model/1`, signatures ['step']", "",
        "| file | size MB | label agreement | logits max abs diff | mIoU (Keras -> exported) | GPU accelerator |",
        "|---|---|---|---|---|---|",
        f"| stt_gpu_float16.tflite | 1.87 | 99.89% | 1.83e-03 | 50.0 -> 49.0 | {verdict} |",
        "| stt_step.onnx | 3.68 | 100.00% | n/a | n/a | TensorRT: 1 issue(s) |",
        "| stt_int8.tflite | 1.02 | 95.00% | n/a | n/a | n/a |", "",
        "Ops still computing in float32 inside `stt_int8.tflite`: ADD x6, EXP x1"]
    unchecked = {**report, "gpu_accelerator": {"checked": False, "reason": "--gpu-check off"}, "warnings": []}
    assert "GPU accelerator not checked: --gpu-check off" in markdown_report(unchecked).splitlines()


@pytest.mark.parametrize("preset", ["stt_psp_tiny", "psp_tiny"])
def test_the_export_takes_the_state_shape_from_the_model_and_it_is_the_traced_one(preset):
    """writers.ExportJob.state_shape is `model.state_shape(H, W, packed=True)` (nothing traced), equal to the
    state input of the step function the export traces; a per-frame model has none."""
    from stt_keras.export import step as step_lib, writers
    from stt_keras.models import STTSegmenter

    model = STTSegmenter.from_preset(preset, num_classes=5)
    job = writers.ExportJob(model=model, name="m", size=(48, 80), folder=None, class_names=[], palette=[], sequences=[],
                            parity_text="", miou_meaningful=False, threads=1, gpu=None)
    signature = step_lib.input_signature(model, 48, 80)
    if model.stt is None:
        assert job.state_shape is None and len(signature) == 1
        return
    traced = step_lib.make_step_function(model, 48, 80).get_concrete_function().structured_input_signature[0][1]
    assert job.state_shape == traced.shape.as_list() and job.state_shape[:3] == [1, 6, 10]  # stride 8
    assert job.state_shape[3] > 0 and job.state_shape[3] % model.num_key_frames == 0  # T * C
    assert all(type(d) is int for d in job.state_shape)
