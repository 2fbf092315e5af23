"""The picture grids say what they show: the grid's title is the one given, not an image's."""

from PIL import Image

from tasks.core.records import Box
from tasks.evaluation.plots import predictions_grid_png


def test_a_grid_is_titled_as_asked_and_each_image_by_its_caption(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    said: dict[str, list[str]] = {"figure": [], "axes": []}
    original_suptitle, original_set_title = Figure.suptitle, Axes.set_title
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kw: (
        said["figure"].append(text), original_suptitle(self, text, **kw))[1])
    monkeypatch.setattr(Axes, "set_title", lambda self, text, **kw: (
        said["axes"].append(text), original_set_title(self, text, **kw))[1])
    items = [(Image.new("RGB", (40, 30), 90), f"image {n}", [Box(x1=1, y1=1, x2=9, y2=9, label="s")],
              [], []) for n in range(3)]
    predictions_grid_png(items, tmp_path / "grid.png", title="the grid")
    # The loop once reused the name `title` for each image's caption: the grid was titled by
    # its last image.
    assert said == {"figure": ["the grid"], "axes": ["image 0", "image 1", "image 2"]}
    assert (tmp_path / "grid.png").stat().st_size > 1000
