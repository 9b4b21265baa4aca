"""Converting a trajectory store to another number format (other tools' files: :mod:`.replay`)."""

from __future__ import annotations

import json
from pathlib import Path

from distillkit.experts.store import TrajectoryStore, store_dtype_of


def convert_store(source: TrajectoryStore, root: Path, store_dtype: str) -> TrajectoryStore:
    """Re-encode every finished expert of ``source`` into a new store with another ``store_dtype``.

    Shrinks stores trained (or imported from MTT) as float32 without retraining;
    the new key differs only in ``store_dtype``, so distillation accepts either store.
    """
    key = json.loads(json.dumps(source.key))
    key["store_dtype"] = store_dtype
    if isinstance(key.get("experts"), dict) and "store_dtype" in key["experts"]:
        key["experts"]["store_dtype"] = store_dtype
    store_dtype_of(key)
    target = TrajectoryStore.create_or_open(Path(root), key)
    done = set(target.finished())
    for entry in source.manifest.experts:
        index = int(entry["index"])
        if index in done:
            continue
        info = {k: entry[k] for k in ("test_acc", "seconds") if k in entry}
        target.write_expert(index, source.load(index), info)
    return target
