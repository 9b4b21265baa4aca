"""matplotlib is optional (the ``[plots]`` extra); this is the one place that imports it.

Figures are drawn on the file-only Agg backend, so no display is ever needed.
"""

from __future__ import annotations

from types import ModuleType

#: What to install for figures; every message about a missing matplotlib names it.
PLOTS_HINT = "pip install 'distillkit[plots]'"


def pyplot() -> ModuleType | None:
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
