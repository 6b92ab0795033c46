"""Dual attention wired into the stages: frame maps in the features store, the data path, train/eval/report, PNGs."""

from __future__ import annotations

import numpy as np
import torch

from hoitool.extract.features import map_content, pooled_cells
from hoitool.settings.features import FeaturesSettings


def test_pooled_cells_are_the_mean_of_each_grid_cell_row_major():
    fmap = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    cells = pooled_cells(fmap, 2)
    assert cells.shape == (2, 4, 3)
    for frame in range(2):
        for channel in range(3):
            grid = fmap[frame, channel].numpy()
            by_hand = [grid[r : r + 2, c : c + 2].mean() for r in (0, 2) for c in (0, 2)]  # row-major cells
            np.testing.assert_allclose(cells[frame, :, channel].numpy(), by_hand)


def test_frame_map_keys_guard_a_store_only_when_maps_are_on():
    off = map_content(FeaturesSettings().model_dump())
    assert "frame_maps" not in off and "frame_map_grid" not in off  # a store made before the option resumes
    on = map_content(FeaturesSettings(frame_maps=True, frame_map_grid=4).model_dump())
    assert on["frame_maps"] is True and on["frame_map_grid"] == 4
