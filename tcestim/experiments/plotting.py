"""Off-screen figures through matplotlib's object API: no pyplot state and no global backend change."""
from __future__ import annotations


def figure(rows: int = 1, cols: int = 1, **subplots_kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, without touching pyplot or the backend.

    ``figsize`` goes to the figure, everything else to ``Figure.subplots``.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib (pip install matplotlib)") from error
    fig = Figure(figsize=subplots_kwargs.pop("figsize", None))
    return fig, fig.subplots(rows, cols, **subplots_kwargs)


def save(fig, path: str, *, dpi: int = 90) -> str:
    """Write ``fig`` as a PNG at ``path`` atomically; returns ``path``."""
    from tcestim.experiments.runs import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"), binary=True)
    return path
