"""`dvflnet bench` (dvflnet/tools/bench.py): the per-backend inference timing a user runs on their CPU."""
import pytest

import dvfl_kernels


@pytest.mark.skipif("cpu" not in dvfl_kernels.available_backends("spatial_context"), reason="the C++ CPU kernels are not built")
def test_cli_bench_times_each_backend(capsys):
    from dvflnet.cli import main

    argv = ["bench", "vfl_net_nano", "--size", "32", "--frames", "2", "--rounds", "1", "--warmup", "0",
            "--dtype", "fp32", "bf16-weights"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[1].split()[:2] == ["reference", "fp32"] and lines[4].split()[:2] == ["cpu", "bf16-weights"]
    with pytest.raises(SystemExit):
        main(argv[:6] + ["--rounds", "0"])
    assert "argument --rounds: expected a positive number, got '0'" in capsys.readouterr().err
