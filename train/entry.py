"""The `whale-train` command's entry point: checks for the train extra before the CLI loads.

`train.cli` and every subcommand in it import torch (model defaults come from `train.net`), so
without the extra a plain import would end in a ModuleNotFoundError traceback. Checking here,
before `train.cli` is imported, covers every subcommand, present and future, with one line.
"""

import importlib.util
import sys

EXTRA_MODULES = ("torch", "librosa", "matplotlib")  # the train extra's packages train/ imports
INSTALL_HINT = "pip install 'whale-listen[train]'"


def missing_modules() -> list[str]:
    """The train extra's modules that are not installed (looked up, not imported: librosa and
    matplotlib are slow to import and most subcommands load them late or never)."""
    missing = []
    for name in EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder that refuses it; sys.modules[name] = None
            found = False
        if not found:
            missing.append(name)
    return missing


def main() -> None:
    """Run `whale-train`, or say in one line (exit 2) which extra to install."""
    missing = missing_modules()
    if missing:
        print(
            f"whale-train: error: needs the train extra ({', '.join(missing)} not installed): "
            f"{INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)
    from train.cli import main as cli

    cli()
