"""The multi-family generalisation study (models/generalisation.py): its ruler (the geometric judge's radius) on
real disks, the refusals before any training, and the table and PNG plots of a report."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL")

from latentserve.errors import ValidationError  # noqa: E402
from latentserve.models.generalisation import (  # noqa: E402
    VARIANTS, StudySettings, _radius, format_study, generalisation, write_plots)


def test_radius_ruler_on_real_disks():
    from latentserve.models.data import disks
    from latentserve.models.data.base import to_model

    true_r = np.linspace(0.1, 0.35, 12)[:, None]
    r, is_disk = _radius(to_model(disks.render(true_r, image_size=16)))
    assert is_disk.all()
    assert np.abs(r - true_r[:, 0]).max() < 0.01
    blank, _ = _radius(-np.ones((1, 3, 16, 16), np.float32))
    assert np.isnan(blank[0])  # no blob: a miss, not a radius


@pytest.mark.parametrize("kw", [{"band": (0.05, 0.12)}, {"variants": ("ae", "pixelcnn")}])
def test_refuses_before_training(tmp_path, kw):
    with pytest.raises(ValidationError):
        generalisation(tmp_path, StudySettings(**kw))
    assert not any(tmp_path.iterdir())  # nothing trained


def _row(i: int) -> dict:
    rng = np.random.default_rng(i)
    true_r = rng.uniform(0.1, 0.35, 50)
    return {"family": "ae", "recon_in": 0.03, "recon_out": 0.01, "recon_missed": 0.0, "recon_disk": 0.9,
            "mid_lerp": 0.02, "mid_lerp_in_band": 0.5, "mid_slerp": 0.02, "mid_slerp_in_band": 0.5,
            "mid_geodesic": 0.01, "mid_geodesic_in_band": 0.75, "sample_source": "latent_gmm",
            "sample_in_band": 0.1, "band_bins_covered": 0.6, "sample_missed": 0.0, "sample_disk": 0.8,
            "plot": {"true_r": true_r.tolist(), "recon_r": (true_r + 0.01).tolist(),
                     "sample_r": [*rng.uniform(0.1, 0.35, 40).tolist(), float("nan")]}}


def test_table_and_plots(tmp_path):
    s = StudySettings()
    rep = {"settings": {**vars(s), "radius_range": [0.1, 0.35]}, "band": [0.2, 0.25], "true_share_in_band": 0.2,
           "rows": {v: _row(i) for i, v in enumerate(VARIANTS)}, "seconds": 1.0}
    table = format_study(rep)
    assert all(v in table for v in VARIANTS) and "75%" in table and "20%" in table
    files = write_plots(rep, tmp_path)
    assert [f.name for f in files] == ["generalisation-recon.png", "generalisation-samples.png"]
    from PIL import Image

    assert Image.open(files[0]).size == (220 * len(VARIANTS), 200)


def test_cli_names_an_unknown_variant(tmp_path, capsys):
    from latentserve.cli import main

    code = main(["latent-report", "--disks-holdout", "--disks-families", "ae,pixelcnn", "--disks-runs", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--disks-families" in err and "pixelcnn" in err
