"""The demo (`python -m numpy_ref.demo`, the fallback main job) runs, does its checks, and says so."""

from numpy_ref import demo


def test_demo_runs_and_passes_its_checks(capsys):
    assert demo.main(["--steps", "3"]) == 0
    out = capsys.readouterr().out
    for line in ("[1] Transformer", "[2] forward + loss + backward", "[3] finite differences",
                 "[4] blocked attention", "[5] 3 SGD steps", "all checks OK"):
        assert line in out, f"missing {line!r} in:\n{out}"
