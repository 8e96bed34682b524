"""The web page's scripts type-check: `// @ts-check` with JSDoc types, checked by TypeScript's compiler
(pinned in edge_demo/web/package-lock.json as the page's only dev dependency) against LiteRT.js's own
type declarations. Needs npm (the check installs the lock file's packages, dev ones included)."""
import glob
import os
import shutil
import subprocess

import pytest

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "edge_demo", "web")
SCRIPTS = sorted(glob.glob(os.path.join(WEB_DIR, "static", "*.js")))
TSC = os.path.join(WEB_DIR, "node_modules", ".bin", "tsc")


@pytest.fixture(scope="module")
def tsc():
    """The pinned TypeScript compiler, installed with `npm ci` (dev dependencies included) if missing."""
    if not os.path.exists(TSC):
        if shutil.which("npm") is None:
            pytest.skip("npm is missing (apt-get install nodejs npm): the page's types are not checked")
        result = subprocess.run(["npm", "ci", "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
                                cwd=WEB_DIR, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    return TSC


def _check(project_dir, tsc):
    return subprocess.run([tsc, "-p", os.path.join(project_dir, "jsconfig.json")], cwd=project_dir,
                          capture_output=True, text=True, timeout=300)


def test_every_page_script_asks_to_be_checked():
    assert SCRIPTS
    for path in SCRIPTS:
        with open(path) as f:
            lines = f.read().split("\n")
        leading = lines[: next(i for i, line in enumerate(lines) if not line.startswith("//"))]
        assert "// @ts-check" in leading, f"{os.path.basename(path)} has no // @ts-check in its leading comments"


def test_page_scripts_type_check(tsc):
    result = _check(WEB_DIR, tsc)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_catches_a_wrong_call(tsc, tmp_path):
    """A copy of the page with one misspelt method and one wrong argument type fails the same check."""
    shutil.copytree(os.path.join(WEB_DIR, "static"), tmp_path / "static")
    shutil.copy(os.path.join(WEB_DIR, "jsconfig.json"), tmp_path)
    os.symlink(os.path.join(WEB_DIR, "node_modules"), tmp_path / "node_modules")
    testing = tmp_path / "static" / "testing.js"
    testing.write_text(testing.read_text().replace("segmenter.step(rgb)", "segmenter.stepp(rgb)"))
    frames = tmp_path / "static" / "frames.js"
    frames.write_text(frames.read_text() + "\nletterboxBox('64', 1, 2, 3);\n")
    result = _check(str(tmp_path), tsc)
    assert result.returncode != 0
    assert "'stepp' does not exist on type 'Segmenter'" in result.stdout, result.stdout
    assert "frames.js" in result.stdout and "not assignable to parameter of type 'number'" in result.stdout
