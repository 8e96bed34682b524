"""What `pip install` puts into site-packages: the project's own names only, and a library that stands alone.

The folders stay where users look for them (stt_keras/ training/ export/ edge_demo/), but
training/ and export/ install as `stt_keras.training` and `stt_keras.export`, and edge_demo/ as
`stt_edge_demo` (it runs without TensorFlow, so it cannot live under `stt_keras`, whose import
loads TensorFlow). Generic names such as `training` or `export` would collide with anyone's.
"""

import ast
import configparser
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALLED_AS = {"stt_keras": "stt_keras", "training": "stt_keras.training", "export": "stt_keras.export",
                "edge_demo": "stt_edge_demo", "stt_keras_cli": "stt_keras_cli"}
# stt_keras_cli: the commands' parsers, which must import without TensorFlow (`stt-train --help` at once).
OWN_TOP_LEVEL = {"stt_keras", "stt_edge_demo", "stt_keras_cli"}


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def _packages_on_disk():
    names = set()
    for folder, installed in INSTALLED_AS.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "node_modules")]
            if "__init__.py" in filenames:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
                names.add(installed if rel == "." else installed + "." + rel.replace(os.sep, "."))
    return names


def test_setup_cfg_lists_every_package_under_the_projects_names():
    options = _setup_cfg()["options"]
    listed = set(options["packages"].split())
    assert listed == _packages_on_disk(), "setup.cfg [options] packages differs from the package folders"
    assert {name.split(".")[0] for name in listed} == OWN_TOP_LEVEL
    mapping = dict(line.split(" = ") for line in options["package_dir"].strip().splitlines())
    assert mapping == {installed: folder for folder, installed in INSTALLED_AS.items()}
    scripts = _setup_cfg()["options.entry_points"]["console_scripts"]
    for line in scripts.strip().splitlines():
        target = line.split("=")[1].strip().split(":")[0]
        assert target.split(".")[0] in OWN_TOP_LEVEL, line


def _imports(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def _python_files(folder):
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "node_modules")]
        yield from (os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))


def test_the_library_imports_nothing_above_it():
    """stt_keras/ (the library folder) never imports training, export or the edge demo, by any name."""
    forbidden = ("training", "export", "edge_demo", "stt_keras.training", "stt_keras.export", "stt_edge_demo")
    offenders = [(os.path.relpath(path, ROOT), name)
                 for path in _python_files("stt_keras") for name in _imports(path)
                 if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert offenders == []


def test_no_generic_import_names_anywhere():
    """Every project import uses the installed names (a `from training ...` only works from the repo root)."""
    generic = ("training", "export", "edge_demo")
    offenders = []
    for folder in ("stt_keras", "training", "export", "edge_demo", "stt_keras_cli", "tests", "benchmarks"):
        for path in _python_files(folder):
            offenders += [(os.path.relpath(path, ROOT), name) for name in _imports(path)
                          if any(name == g or name.startswith(g + ".") for g in generic)]
    assert offenders == []


def test_the_edge_demo_needs_neither_tensorflow_nor_stt_keras():
    offenders = [(os.path.relpath(path, ROOT), name)
                 for path in _python_files("edge_demo") for name in _imports(path)
                 if name.split(".")[0] in ("tensorflow", "keras", "stt_keras")]
    assert offenders == []


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A real (non-editable) install of the project into an empty folder, without dependencies."""
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--target", str(target), ROOT], capture_output=True, text=True)
    if result.returncode != 0 and "setuptools" in result.stderr and "No module named" in result.stderr:
        pytest.skip(f"pip cannot build here without build isolation: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    return target


def test_install_puts_only_the_projects_names_into_site_packages(installed):
    top = {name for name in os.listdir(installed) if not name.endswith((".dist-info", ".egg-info"))
           and name not in ("bin", "__pycache__")}
    assert top == OWN_TOP_LEVEL
    for package in _packages_on_disk():
        assert os.path.isfile(os.path.join(installed, *package.split("."), "__init__.py")), package
    # The web demo's static files travel with it (package data).
    assert os.path.isfile(os.path.join(installed, "stt_edge_demo", "web", "package-lock.json"))


def test_the_installed_edge_demo_runs_without_tensorflow(installed, tmp_path):
    """`python -m stt_edge_demo --help` from the install, in a folder away from the clone, TensorFlow blocked."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tensorflow.py").write_text("raise ImportError('the edge demo must not import TensorFlow')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(installed)])}
    result = subprocess.run([sys.executable, "-m", "stt_edge_demo", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--model" in result.stdout


COMMANDS = {"stt-train": "stt_keras_cli.train", "stt-eval": "stt_keras_cli.evaluate", "stt-export": "stt_keras_cli.export",
            "stt-edge-demo": "stt_edge_demo.app"}


def test_the_commands_parse_without_tensorflow():
    """Every console script's module builds its parser and parses without importing TensorFlow, Keras or stt_keras."""
    scripts = dict(line.replace(" ", "").split("=") for line in
                   _setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines())
    assert {name: target.split(":")[0] for name, target in scripts.items()} == COMMANDS
    code = ("import sys, importlib\n"
            f"for name in {sorted(COMMANDS.values())!r}:\n"
            "    importlib.import_module(name).build_parser().format_help()\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'stt_keras', 'keras_hub'))\n"
            "print(heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def _best_of(command, runs=3):
    import time

    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
        assert result.returncode == 0, result.stderr[-2000:]
    return best, result


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_answers_at_once(command):
    """`CMD --help` (the installed console script) in under a second, and at most ~8x a bare `python -c pass`.

    Measured as the best of three runs (a loaded machine slows both alike); importing
    TensorFlow alone takes several seconds, so this fails if any command imports it.
    """
    script = os.path.join(os.path.dirname(sys.executable), command)
    if not os.path.isfile(script):
        pytest.skip(f"{command} is not installed next to {sys.executable} (pip install -e .)")
    bare, _ = _best_of([sys.executable, "-c", "pass"])
    seconds, result = _best_of([script, "--help"])
    assert "usage:" in result.stdout and result.stderr == ""
    assert seconds < max(1.0, 8 * bare), f"{command} --help took {seconds:.2f} s (python -c pass: {bare:.2f} s)"


def _installed_modules():
    """{module name: file} of every module of the installed packages, found where Python finds them (the
    package_dir mapping included: `stt_keras.training` lives in training/), not by folder names."""
    import importlib.util

    modules = {}
    for package in sorted(set(INSTALLED_AS.values())):
        spec = importlib.util.find_spec(package)
        for folder in spec.submodule_search_locations:
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "node_modules", "static")]
                rel = os.path.relpath(dirpath, folder)
                prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
                for name in filenames:
                    if name.endswith(".py"):
                        module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                        modules[module] = os.path.join(dirpath, name)
    return modules


def _import_graph(modules):
    """module -> the project modules it imports anywhere in its file (function-level imports too: a cycle
    through a lazy import is still a cycle of the design), resolved to the deepest module that exists."""
    def known(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package
                    for _ in range(node.level - 1):
                        up = up.rpartition(".")[0]
                    base = up + ("." + node.module if node.module else "")
                targets.update(known(f"{base}.{alias.name}") or known(base) for alias in node.names)
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_installed_packages():
    modules = _installed_modules()
    assert {"stt_keras.saving", "stt_keras.training.train", "stt_keras.export.cli", "stt_edge_demo.app",
            "stt_keras_cli.train"} <= set(modules)  # the walk found the packages where they are installed
    graph = _import_graph(modules)
    assert "stt_keras.saving" in graph["stt_keras.models.stt.stt_segmenter"]  # edges are seen, lazy ones too
    assert _cycles(graph) == []
    # It can fail: one import back closes a cycle.
    graph["stt_keras.saving"].add("stt_keras.models.stt.stt_segmenter")
    assert _cycles(graph) == [["stt_keras.models.stt.stt_builders", "stt_keras.models.stt.stt_segmenter",
                               "stt_keras.saving"]]  # the preset loaders read preset directories through saving


def _app_of(module, apps=("stt_keras.training", "stt_keras.export")):
    return next((app for app in apps if module == app or module.startswith(app + ".")), None)


def _crossings(graph):
    """(importer, imported) pairs where one of stt_keras.training and stt_keras.export imports the other."""
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if _app_of(module) and _app_of(target) and _app_of(module) != _app_of(target))


def test_training_and_export_never_import_each_other():
    """Training and export both stand on the library (stt_keras.data holds the data code they share); neither
    imports the other, in either direction, at module level or inside a function. Every module of the two
    installed packages is parsed (pkgutil over the installed packages, so the package_dir mapping is honoured)."""
    import importlib.util
    import pkgutil

    def walk(path, prefix):  # pkgutil over the folders Python imports the package from; nothing is imported
        for info in pkgutil.iter_modules(path, prefix):
            spec = info.module_finder.find_spec(info.name)
            yield info.name, spec.origin
            if info.ispkg:
                yield from walk(spec.submodule_search_locations, info.name + ".")

    modules = {}
    for app in ("stt_keras.training", "stt_keras.export"):
        spec = importlib.util.find_spec(app)
        modules[app] = spec.origin
        modules.update(walk(spec.submodule_search_locations, app + "."))
    assert {"stt_keras.training.evaluate", "stt_keras.export.calibration", "stt_keras.export.serve"} <= set(modules)
    graph = _import_graph({**_installed_modules(), **modules})
    assert _crossings(graph) == []
    # It can fail: an import of stt_keras.export from a training module is a crossing.
    graph["stt_keras.training.evaluate"].add("stt_keras.export.cli")
    assert _crossings(graph) == [("stt_keras.training.evaluate", "stt_keras.export.cli")]


def test_old_data_import_paths_are_the_new_modules(tmp_path):
    """stt_keras.training.data(.*), stt_keras.data.labels and stt_keras.export.labels, kept for old imports, are the stt_keras.data
    module objects themselves (imported first, in a fresh interpreter): a patch through an old path patches
    the module the library uses. The old command line `python -m stt_keras.training.data.synthetic` runs."""
    script = """
import importlib
from stt_keras.training.data.synthetic import SyntheticVideo
import stt_keras.training.data.readers as old_readers
from stt_keras.export import labels as old_labels
from stt_keras.training import data as old_data
import stt_keras.data, stt_keras.data.classes, stt_keras.data.labels, stt_keras.data.synthetic
assert old_data is stt_keras.data
assert SyntheticVideo is stt_keras.data.synthetic.SyntheticVideo
for name in ("cityscapes_ids", "files", "images", "pipeline", "readers", "scan", "synthetic", "video"):
    assert importlib.import_module("stt_keras.training.data." + name) is importlib.import_module("stt_keras.data." + name), name
assert old_labels is stt_keras.data.labels is stt_keras.data.classes  # the class sets' module, by its earlier names
assert stt_keras.data.classes.read_labels_file is stt_keras.data.classes.read_classes_file
from stt_keras.training.metrics import MeanIoU, TemporalConsistency  # the consistency module's earlier name
import stt_keras.metrics, stt_keras.training.consistency, stt_keras.training.metrics
assert stt_keras.training.metrics is stt_keras.training.consistency and MeanIoU is stt_keras.metrics.MeanIoU
assert TemporalConsistency is stt_keras.training.consistency.TemporalConsistency
old_readers.label_files = lambda folder: ["patched"]
assert stt_keras.data.readers.label_files("x") == ["patched"]
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    for module in ("stt_keras.training.data.synthetic", "stt_keras.data.synthetic"):  # the old and the documented
        video = str(tmp_path / f"{module}.avi")
        result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module,
                                 "--out", video, "--frames", "2", "--size", "32x64"], capture_output=True, text=True)
        assert result.returncode == 0 and os.path.getsize(video) > 0, (module, result.stderr[-2000:])


def test_the_utilities_keep_their_earlier_module_names(tmp_path):
    """stt_keras.errors, .fileio, .faults, .progress and .sizes are the stt_keras.utils modules themselves, imported
    first or after the package (a fresh interpreter), so an exception class or a patched function is the same."""
    code = textwrap.dedent("""
        import importlib, sys
        from stt_keras.fileio import atomic_file  # the earlier name first
        import stt_keras.utils.fileio
        names = ("errors", "faults", "fileio", "progress", "sizes")
        same = [importlib.import_module(f"stt_keras.{n}") is importlib.import_module(f"stt_keras.utils.{n}") for n in names]
        print(all(same) and atomic_file is stt_keras.utils.fileio.atomic_file
              and sys.modules["stt_keras.errors"].UserError.__module__ == "stt_keras.utils.errors")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True"
