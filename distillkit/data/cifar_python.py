"""CIFAR's python version (``cifar-10-batches-py``, ``cifar-100-python``) without running pickle code.

Those files are Python 2 pickles of dicts holding one numpy array, lists, strings and
ints. :class:`_CifarUnpickler` admits exactly the globals such a file names (numpy's
array reconstructor, ``numpy.ndarray``, ``numpy.dtype``) and refuses every other one
before it is looked up, so a tampered file cannot import or call anything.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.errors import DataError

_CIFAR_PIXELS = 3 * 32 * 32
_HINT = "Replace it with an intact copy of the original CIFAR python archive (re-download it)."


def _admitted() -> dict[tuple[str, str], Any]:
    """The globals of the original files: numpy 1.x names them ``numpy.core``, numpy 2 ``numpy._core``."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler whose only importable names are :func:`_admitted`'s; nothing is imported."""

    def __init__(self, file: Any, path: Path) -> None:
        # latin1: Python 2 str become str, and numpy reads its array bytes back from them.
        super().__init__(file, encoding="latin1")
        self._path = path
        self._globals = _admitted()

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        if found is None:
            raise DataError(
                f"{self._path}: distillkit refuses to unpickle {module}.{name}; CIFAR files hold "
                "only numpy arrays, lists, dicts, strings and numbers.",
                hint=f"The file is not an original CIFAR file. {_HINT}",
            )
        return found


def unpickle_dict(path: Path) -> dict[str, Any]:
    """The dict stored in ``path``, with ``bytes`` keys (written under Python 3) decoded to ``str``."""
    try:
        with path.open("rb") as file:
            loaded = _CifarUnpickler(file, path).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can fail in many ways; all are one bad file
        raise DataError(f"Cannot read CIFAR file {path}: {type(exc).__name__}: {exc}.", hint=_HINT) from None
    if not isinstance(loaded, dict):
        raise DataError(f"CIFAR file {path} holds a {type(loaded).__name__}, not a dict.", hint=_HINT)
    return {_text(key): value for key, value in loaded.items()}


def _text(value: object) -> object:
    return value.decode("latin1") if isinstance(value, bytes) else value


def read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: uint8 ``[N, 3, 32, 32]`` pixels (R, G, B planes) and int64 labels."""
    batch = unpickle_dict(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"CIFAR file {path} has no uint8 'data' array of images.", hint=_HINT)
    if data.shape[1] != _CIFAR_PIXELS:
        raise DataError(
            f"CIFAR file {path} holds rows of {data.shape[1]} values, expected {_CIFAR_PIXELS} (3×32×32).",
            hint=_HINT,
        )
    if not isinstance(labels, list | np.ndarray) or not all(
        isinstance(label, int | np.integer) for label in labels
    ):
        raise DataError(f"CIFAR file {path} has no '{label_key}' list of integers.", hint=_HINT)
    if len(labels) != len(data):
        raise DataError(
            f"CIFAR file {path} holds {len(data)} images but {len(labels)} '{label_key}'.", hint=_HINT
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def read_label_names(path: Path, key: str, count: int) -> tuple[str, ...]:
    """The ``count`` class names listed under ``key`` in the meta file ``path``."""
    names = unpickle_dict(path).get(key)
    if not isinstance(names, list) or not all(isinstance(n, str | bytes) for n in names):
        raise DataError(f"CIFAR meta file {path} has no '{key}' list of names.", hint=_HINT)
    if len(names) != count:
        raise DataError(f"CIFAR meta file {path} lists {len(names)} '{key}', expected {count}.", hint=_HINT)
    return tuple(str(_text(n)) for n in names)
