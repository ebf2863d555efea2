"""whale-train as a person types it: help, version, and a machine without the train extra."""

import subprocess
import sys
from pathlib import Path

import click
import pytest

SCRIPT = Path(sys.executable).with_name("whale-train")
HIDE_TORCH = '''
import sys


class HideTorch:
    """Acts as if torch were not installed, as in a venv without the train extra."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HideTorch())
'''


def whale_train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} not installed (pip install -e '.[train,test]')")
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["demo", "x.flac"], []])
def test_without_torch_one_line_names_the_extra(tmp_path, args):
    (tmp_path / "sitecustomize.py").write_text(HIDE_TORCH)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "HOME": str(tmp_path)}
    result = whale_train(*args, env=env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "whale-train: error: needs the train extra (torch not installed): "
        "pip install 'whale-listen[train]'"
    ]
    assert not (tmp_path / "x.flac").exists()


def test_the_guard_sees_torch_hidden_in_process(monkeypatch):
    from train import entry

    monkeypatch.setitem(sys.modules, "torch", None)  # how Python marks a blocked module
    assert entry.missing_modules()[:1] == ["torch"]


def test_help_version_and_examples():
    pytest.importorskip("torch", reason="whale-train's help needs the train extra")
    from detector import __version__

    version = whale_train("--version")
    assert version.returncode == 0 and version.stdout == f"whale-train, version {__version__}\n"
    short, long = whale_train("-h"), whale_train("--help")
    assert short.returncode == 0 and short.stdout == long.stdout
    assert "Examples:" in short.stdout and "whale-train demo " in short.stdout
    for name in ("train", "evaluate", "demo"):
        assert f"  {name}  " in short.stdout
        assert "..." not in short.stdout.split("Commands:")[1].split("Examples:")[0]
        sub = whale_train(name, "-h")
        assert sub.returncode == 0 and "-h, --help" in sub.stdout, sub.stderr
    assert "No such option" in whale_train("train", "--bogus").stderr


def test_every_option_of_every_subcommand_has_help():
    pytest.importorskip("torch", reason="whale-train needs the train extra")
    from train.cli import main

    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"whale-train {name} {param.opts[0]} has no help"
    train = {p.name: p.help for p in main.commands["train"].params}
    assert "samples at 2 kHz" in train["frame_hop"] and "ms" in train["frame_hop"]
    assert "samples at 2 kHz" in train["n_fft"]
    assert "Folder" in train["out"] and "steps" in train["steps"].lower()
