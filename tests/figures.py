"""A figure that shows something: a PNG with drawn data, not a blank or axes-only canvas."""

from __future__ import annotations

PNG = b"\x89PNG\r\n\x1a\n"


def coloured_share(path) -> float:
    """Share of the pixels that are coloured (not white, black or grey): data lines, bars, markers."""
    from matplotlib.image import imread

    rgb = imread(path)[..., :3]
    return float(((rgb.max(-1) - rgb.min(-1)) > 0.2).mean())


def assert_drawn(path, min_share: float = 0.003, min_height: int = 100) -> None:
    """PATH is a PNG at least `min_height` pixels high whose coloured pixels cover at least `min_share`
    of it: a legend alone covers under 0.1 %, an empty axes 0 %."""
    from matplotlib.image import imread

    assert open(path, "rb").read(8) == PNG, f"{path} is not a PNG"
    assert imread(path).shape[0] >= min_height
    share = coloured_share(path)
    assert share >= min_share, f"{path}: {share:.4%} of the pixels drawn in colour: a blank figure?"
