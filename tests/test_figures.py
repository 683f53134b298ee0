"""What every figure shares: line colours readable on white, whole-number ticks on counting axes."""
import numpy as np
import pytest

from rf_bench import reporting
from rf_bench.probes import cka, hessian


def _relative_luminance(hex_colour: str) -> float:
    """WCAG 2.1's relative luminance of an sRGB colour."""
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_every_line_colour_has_3_to_1_contrast_on_white_and_they_differ():
    colours = reporting.line_colors(8)
    assert len(set(colours)) == 8
    for colour in colours:
        assert 1.05 / (_relative_luminance(colour) + 0.05) >= 3.0, colour  # WCAG 2.1, non-text contrast
    # the first four (k = 1..4) are Okabe & Ito's colour-blind-safe set
    assert colours[:4] == ["#0072B2", "#D55E00", "#009E73", "#CC79A7"]


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures the reports' plot functions save, kept open for inspection (nothing is written)."""
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: figures.append(fig))
    plt = reporting.pyplot()
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    yield figures
    for fig in figures:
        plt.close(fig)


def _ticks_are_whole(axis) -> bool:
    lo, hi = axis.get_view_interval()
    ticks = [t for t in axis.get_ticklocs() if lo - 1e-9 <= t <= hi + 1e-9]
    return len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def test_spectra_have_whole_ranks_and_labels_that_do_not_overlap(saved_figures, tmp_path):
    curves = {stage: {(k, 100 * k): np.geomspace(1e3 * k, 1.0, 5) for k in (1, 2, 3)} for stage in ("init", "final")}
    hessian._plot_spectra(curves, ("init", "final"), "spectra", tmp_path / "unused.png")
    (fig,) = saved_figures
    fig.canvas.draw()
    left, right = fig.axes[:2]
    assert all(_ticks_are_whole(ax.xaxis) for ax in (left, right))
    renderer = fig.canvas.get_renderer()
    left_box = left.get_tightbbox(renderer)
    label_box = right.yaxis.label.get_window_extent(renderer)
    assert label_box.x0 >= left_box.x1  # the right panel's y label clears the left panel


def test_cka_layers_are_whole_numbers(saved_figures, tmp_path):
    import torch

    matrix = torch.rand(5, 5)
    cka._plot_cka([(1, 107, matrix, matrix), (2, 212, matrix, None)], "cka", tmp_path / "unused.png")
    (fig,) = saved_figures
    fig.canvas.draw()
    image_axes = [ax for ax in fig.axes if ax.images]
    assert image_axes and all(_ticks_are_whole(ax.xaxis) and _ticks_are_whole(ax.yaxis) for ax in image_axes)
