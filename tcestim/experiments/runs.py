"""What every command that writes a folder shares: argument types checked at parse time, output
folders that are never overwritten by accident, files written atomically, checkpoints loaded safely.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import io
import json
import os
import tempfile
from typing import Callable

import torch

CHECKPOINT_FORMAT = "tcestim-checkpoint"
CHECKPOINT_VERSION = 2


class CheckpointError(ValueError):
    """A file that is not a readable tcestim checkpoint of a version this code understands."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# argument types (argparse reports a bad value with the option's name and exits with status 2)


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


def float_in(low: float, high: float = float("inf"), *, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or value > high or value < low or (low_open and value == low):
            bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be in {bound}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def device(text: str) -> str:
    """A torch device that exists here: ``cpu``, ``cuda`` or ``cuda:N`` (checked when the line is read)."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this torch ({torch.__version__}) sees no CUDA device")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return text


def explicit_options(parser: argparse.ArgumentParser, argv: list) -> list:
    """The destinations given in ``argv`` (even when equal to their default), for ``parser``."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return sorted(vars(quiet.parse_known_args(argv)[0]))


positive_int = int_at_least(1)
non_negative_float = float_in(0.0)
positive_float = float_in(0.0, low_open=True)


# ----------------------------------------------------------------------------------------------
# output folders and files


def check_output(path: str, *, resume: bool = False, overwrite: bool = False, owned=()) -> None:
    """Refuse, before any work, what :func:`prepare_output` would refuse (it deletes nothing)."""
    if resume and overwrite:
        raise SystemExit("error: --resume and --overwrite exclude each other")
    if resume:
        if not os.path.isdir(path):
            raise SystemExit(f"error: --resume needs an existing run in {path!r}, which does not exist")
        return
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise SystemExit(f"error: the output folder {path!r} is not empty; pass --resume to continue the "
                             "run in it, --overwrite to replace it, or another --out")
        foreign = sorted(name for name in os.listdir(path) if not any(fnmatch.fnmatch(name, p) for p in owned))
        if foreign:
            raise SystemExit(f"error: --overwrite deletes only what this command writes, but {path!r} also holds "
                             f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}: choose another --out")


def prepare_output(path: str, *, resume: bool = False, overwrite: bool = False, owned=()) -> None:
    """Create the output folder ``path``, refusing to write into a non-empty one unless told.

    ``resume``: the folder holds a run to continue (it must exist). ``overwrite``: the files matching
    the patterns ``owned`` (what the command writes) are deleted first; a folder holding anything else
    is refused.
    Neither: it must be missing or empty. Call it after every other check, just before writing.
    """
    check_output(path, resume=resume, overwrite=overwrite, owned=owned)
    if resume:
        return
    if overwrite and os.path.isdir(path):
        for name in os.listdir(path):
            os.remove(os.path.join(path, name))
    os.makedirs(path, exist_ok=True)


def atomic_write(path: str, write: Callable[[io.IOBase], None], *, binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, flush it to disk and
    rename it over ``path``: a kill or a full disk leaves the previous file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it owner-only
        os.replace(temporary, path)
        _fsync_folder(folder)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def append_line(path: str, line: str) -> None:
    """Append one line and flush it to disk (a line cut short by a kill is dropped on resume)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json_lines(path: str) -> list[dict]:
    """The complete JSON lines of ``path`` (a torn last line is skipped); [] if it does not exist."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# ----------------------------------------------------------------------------------------------
# checkpoints: plain data only, loaded with torch.load(weights_only=True)


def save_checkpoint(state: dict, path: str) -> None:
    """Atomically write ``state`` (tensors, numbers, strings, lists and dicts only) with its format tag."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without running any code from the file.

    Raises:
        CheckpointError: missing, empty, truncated, not a torch file, not a tcestim checkpoint, or of
            another version; the message says which.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path!r} is empty (an interrupted write?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path!r} is not a readable weights-only torch file ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path!r} is not a tcestim checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path!r} is a version {state.get('version')!r} tcestim checkpoint; this code "
                              f"reads version {CHECKPOINT_VERSION}")
    return state
