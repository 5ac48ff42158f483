"""The test session's own plumbing (tests/conftest.py): its temp folder does not pile up in /tmp."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")
# A test that writes where a real one would (a run folder under T2I_RUNS) and passes or fails on demand.
TEST = '''
import os
from pathlib import Path

def test_writes_a_run():
    run = Path(os.environ["T2I_RUNS"]) / "run"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("step,loss\\n1,0.5\\n")
    assert os.environ["OUTCOME"] == "pass"
'''


def _session(tmp_path: Path, outcome: str, **extra_env: str) -> tuple[subprocess.CompletedProcess, list[Path]]:
    """Runs a pytest session with the project's conftest; returns it and the temp folders it left."""
    project, tmpdir = tmp_path / "project", tmp_path / "tmp"
    project.mkdir()
    tmpdir.mkdir()
    shutil.copy(CONFTEST, project / "conftest.py")
    (project / "test_a.py").write_text(TEST)
    drop = {"T2I_DATA", "T2I_RUNS", "T2I_FIGURES", "T2I_KEEP_TEST_FILES"}  # the outer session's (its conftest set the first three)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(TMPDIR=str(tmpdir), OUTCOME=outcome, **extra_env)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:nbval",
                             "--rootdir", str(project), str(project)],
                            env=env, cwd=project, capture_output=True, text=True, timeout=120)
    return result, sorted(tmpdir.glob("t2i-tests-*"))


def test_a_passing_session_removes_its_temp_folder(tmp_path):
    result, left = _session(tmp_path, "pass")
    assert result.returncode == 0, result.stdout + result.stderr
    assert left == []


def test_a_failing_session_keeps_its_temp_folder_and_says_where(tmp_path):
    result, left = _session(tmp_path, "fail")
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(left) == 1
    assert (left[0] / "t2i_runs" / "run" / "metrics.csv").read_text().startswith("step,loss")
    assert f"kept in {left[0]}" in result.stdout


def test_keep_switch_keeps_a_passing_session(tmp_path):
    result, left = _session(tmp_path, "pass", T2I_KEEP_TEST_FILES="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(left) == 1 and (left[0] / "t2i_runs" / "run" / "metrics.csv").exists()
