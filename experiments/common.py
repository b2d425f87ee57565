"""What every launcher shares: its flags as settings, its results folder, and flag validation."""

from __future__ import annotations

from absl import app, flags

from infodec.results import ResultsFolder

# Flags that say where and how to run, not what to compute: they never invalidate finished points (a
# mesh changes where rows run, not their tokens; tests/test_sharding.py checks that).
_NOT_SETTINGS = ("out", "overwrite", "mesh")


def settings(module_name: str) -> dict:
    """The values of the flags ``module_name`` defines, less ``--out``, ``--overwrite`` and ``--mesh``."""
    return {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(module_name) if f.name not in _NOT_SETTINGS}


def results_folder(module_name: str, out: str, overwrite: bool, growable=(), added=None, **extra) -> ResultsFolder:
    """The launcher's results folder, bound to its flag values (plus ``extra`` resolved settings);
    ``growable`` names list flags a rerun may extend, ``added`` flags newer than some folders with the
    value that means the old behaviour (``ResultsFolder``)."""
    try:
        return ResultsFolder(
            out, {**settings(module_name), **extra}, overwrite=overwrite, growable=growable, added=added
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def require(condition: bool, message: str) -> None:
    """A bad flag value ends the launcher with ``message`` and the usage text, not a stack trace."""
    if not condition:
        raise app.UsageError(message)


def parse_floats(name: str, text: str) -> list[float]:
    """``"0.5,1,2"`` -> ``[0.5, 1.0, 2.0]``, with a clear error naming the flag."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    require(bool(values), f"--{name} must list at least one number")
    return values
