"""The command line as a newcomer meets it (issue 16.8): help on every option, one size rule,
`--module` for the user's own model, one-line errors for unknown names, `--help` without
torch, and node counts that agree between the report and `fxc demo`."""
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fxc import cli

ROOT = Path(__file__).resolve().parents[1]


def _subparsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


@pytest.mark.parametrize("cmd", ["demo", "compile", "dump", "bench"])
def test_every_option_has_help(cmd):
    p = _subparsers()[cmd]
    bare = [a.option_strings for a in p._actions if a.option_strings and not a.help]
    assert not bare, f"fxc {cmd}: options without help: {bare}"


@pytest.mark.parametrize("cmd", ["demo", "compile", "dump", "bench"])
def test_one_size_rule_for_every_command(cmd):
    extra = {"compile": ["--model", "mlp"], "dump": ["--model", "mlp", "--out", "x"],
             "bench": ["--model", "mlp"]}.get(cmd, [])
    args = cli.build_parser().parse_args([cmd, *extra])
    assert args.size is None
    assert cli.default_size(args, torch.device("cpu")) == "tiny"
    assert cli.default_size(SimpleNamespace(size=None), SimpleNamespace(type="cuda")) == "base"
    assert cli.default_size(SimpleNamespace(size="tiny"), SimpleNamespace(type="cuda")) == "tiny"
    assert "base on a GPU, tiny on a CPU" in " ".join(_subparsers()[cmd].format_help().split())


@pytest.mark.parametrize("argv", [
    ["compile", "--model", "resnet9000"],
    ["demo", "--models", "mlp,resnet9000", "--device", "cpu"],
    ["bench", "--model", "resnet9000", "--device", "cpu"],
    ["dump", "--model", "tv:nope", "--out", "unused"],
])
def test_an_unknown_model_is_one_line_listing_the_choices(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unknown model" in err and "resnet18" in err and "tv:swin_t" in err


def _write_package(root: Path) -> None:
    pkg = root / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "small.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(8, 3)
            def forward(self, x):
                return self.fc(x).relu()
        def make():
            return Net()
        example_inputs = (torch.randn(2, 8),)
    """))


@pytest.mark.parametrize("attr", ["Net", "make"])
def test_compile_takes_a_users_module_by_import_path(tmp_path, monkeypatch, capsys, attr):
    _write_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["compile", "--module", f"mynets.small:{attr}", "--device", "cpu",
                     "--backend", "torch"]) == 0
    assert "fxc compile report" in capsys.readouterr().out


def test_compile_module_errors_are_one_line(tmp_path, monkeypatch, capsys):
    _write_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for argv in (["compile", "--module", "no_such_pkg.mod:Net"],
                 ["compile", "--module", "mynets.small:Nope"],
                 ["compile", "--model", "mlp", "--module", "mynets.small:Net"],
                 ["compile"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fxc: FxcOptionError"), err


def test_help_loads_no_torch():
    """fxc.cli imports torch only inside commands. (`python -m fxc --help` still pays for
    torch while fxc/__init__.py imports fxc.api eagerly: 3.0 s against 0.2 s here.)"""
    code = textwrap.dedent(f"""
        import sys, types
        pkg = types.ModuleType("fxc"); pkg.__path__ = [{str(ROOT / "fxc")!r}]
        sys.modules["fxc"] = pkg
        import fxc.cli
        try:
            fxc.cli.main(["compile", "--help"])
        except SystemExit:
            pass
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_report_and_demo_count_the_same_nodes():
    row = cli._row("mlp", "tiny", 1, torch.device("cpu"), "fp32", "torch", 2, 1)
    from fxc import compile as fxc_compile
    from fxc.models import get
    model, inputs = get("mlp")
    text = str(fxc_compile(model, inputs, backend="torch").report())
    summary = next(line for line in text.splitlines() if "nodes after the passes" in line)
    nodes, kernels, views = (int(w) for w in
                             (summary.split()[0], summary.split("= ")[1].split()[0],
                              summary.split("+ ")[1].split()[0]))
    assert nodes == row["nodes_after"] == kernels + views
