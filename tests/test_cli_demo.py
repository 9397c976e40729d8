"""`fxc demo`, the README's first command: it runs, times every runner in interleaved rounds,
shows ONNX Runtime on torch.onnx.export's graph beside eager on a CPU, and says what tiny
sizes measure."""
from fxc import cli


def test_demo_on_cpu_shows_the_ort_peer_and_what_tiny_sizes_mean(capsys):
    assert cli.main(["demo", "--models", "mlp", "--iters", "6", "--rounds", "2",
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "size=tiny" in out and "2 interleaved rounds" in out
    header = next(line for line in out.splitlines() if line.startswith("model"))
    assert "ORT ms" in header and "vs ORT" in header and "vs eager" in header
    row = next(line for line in out.splitlines() if line.startswith("mlp"))
    assert row.count("x") >= 2  # both ratios printed
    assert "per-op dispatch" in out


def test_demo_defaults_to_base_size_on_a_gpu_only():
    args = cli.build_parser().parse_args(["demo"])
    assert args.size is None  # resolved per device in cmd_demo: base on CUDA, tiny on CPU
    assert cli.build_parser().parse_args(["demo", "--size", "tiny"]).size == "tiny"
