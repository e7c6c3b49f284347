"""benchmarks/resume_check.py keeps working: it runs (tiny) and reports a bit-exact resume."""

from conftest import ROOT, run_python


def test_resume_check_runs_and_finds_the_same_steps():
    p = run_python(ROOT / "benchmarks" / "resume_check.py", "--steps", "4", "--save-at", "2", "--precision", "fp32",
                   "--block", "32")
    assert p.returncode == 0, p.stderr
    assert "first differing step None, largest weight difference at step 4: 0" in p.stdout, p.stdout
