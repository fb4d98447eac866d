"""Unit tests of the markdown latent-ops report (models/latent_report_markdown.py) and of the pair layout of the
disks held-out band experiment (models/disks_holdout.py), on a tiny deterministic torch decoder + probe."""
from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL")

from latentserve.models import latent_ops as lo  # noqa: E402
from latentserve.models.data.base import to_uint8  # noqa: E402
from latentserve.models.disks_holdout import pair_groups  # noqa: E402
from latentserve.models.latent_report import ReportSettings, geodesic_figures, guided_class_figures  # noqa: E402
from latentserve.models.latent_report_markdown import path_strips, write_markdown, write_strip  # noqa: E402

D, C, H = 4, 2, 4


class Decoder(torch.nn.Module):
    """x = tanh(W2 softplus(W1 z) + T[label]) as (N, 3, 4, 4) images."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.randn(8, D, generator=g)
        self.w2 = torch.randn(3 * H * H, 8, generator=g) / 3
        self.t = torch.randn(C, 3 * H * H, generator=g) * 0.5

    def forward(self, latent, label):
        h = torch.nn.functional.softplus(2.0 * latent @ self.w1.T)
        return torch.tanh(h @ self.w2.T + self.t[label]).reshape(-1, 3, H, H)


class Probe(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.randn(C, 3 * H * H, generator=torch.Generator().manual_seed(1))

    def forward(self, image):
        x = image.reshape(image.shape[0], -1)
        return 3.0 * x @ self.w.T, x.mean(1, keepdim=True), torch.tanh(x @ self.w.T)


class StandardNormal:
    """The part of LatentSpace the report uses: a standard-normal prior."""

    def sample_prior(self, labels, rng, temperature=1.0):
        return (temperature * rng.standard_normal((len(labels), D))).astype(np.float32)


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    return lo.Graphs(Decoder().eval(), Probe().eval(), factor_names=["brightness"])


def test_write_strip_puts_each_path_on_its_own_row(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = {k: rng.uniform(-1, 1, (5, 3, H, H)).astype(np.float32) for k in ("lerp", "slerp", "geodesic")}
    path = write_strip(rows, tmp_path / "s" / "a.png", scale=2, pad=1)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * (3 * (H + 1) + 1), 2 * (5 * (H + 1) + 1), 3)
    for r, v in enumerate(rows.values()):  # frame 3 of row r, top-left pixel, after 2x nearest upscaling
        y, x = 2 * (1 + r * (H + 1)), 2 * (1 + 3 * (H + 1))
        np.testing.assert_array_equal(img[y, x], to_uint8(v[3:4])[0, 0, 0])
    with pytest.raises(ValueError):
        write_strip({"lerp": rows["lerp"], "slerp": rows["slerp"][:4]}, tmp_path / "bad.png")


def test_path_strips_share_ends_and_the_geodesic_has_less_energy(graphs):
    strips = path_strips(graphs, StandardNormal(), C, 1.0, pairs=3, frames=6, iterations=60, learning_rate=0.05,
                         seed=0)
    assert len(strips) == 3
    for st in strips:
        assert list(st["rows"]) == ["lerp", "slerp", "geodesic"]
        lerp_x, slerp_x, geo_x = (st["rows"][k] for k in ("lerp", "slerp", "geodesic"))
        assert lerp_x.shape == (6, 3, H, H)
        for x in (slerp_x, geo_x):
            np.testing.assert_allclose(x[[0, -1]], lerp_x[[0, -1]], atol=1e-5)  # same decoded ends
        energy = lambda x: float((np.diff(x.reshape(6, -1), axis=0) ** 2).mean(1).sum())  # noqa: E731
        assert energy(geo_x) < energy(lerp_x)


def test_write_markdown_tables_and_strip_links(graphs, tmp_path):
    s = ReportSettings(pairs=2, steps=5, geodesic_iterations=5, n_per_class=3, guidance_steps=3, seed=0)
    rng = np.random.default_rng(0)
    space = StandardNormal()
    rep = {"model": "tiny gan", "version": 1, "family": "gan", "probe": "tiny-probe", "probe_problem": None,
           "settings": vars(s), "seconds": 0.1,
           "geodesic": geodesic_figures(graphs, space, C, 1.0, ["pixel", "probe"], s, rng),
           "guided_class": guided_class_figures(graphs, space, C, 1.0, s, rng)}
    strips = {"tiny gan": path_strips(graphs, space, C, 1.0, 2, 5, 5, 0.05, 0)}
    holdout = {"band": [0.2, 0.25], "settings": {"image_size": 16}, "train_radius_in_band": 0, "n_train": 100,
               "probe_mae_real": 0.001, "recon_mae_in_band": 0.002, "recon_mae_out_of_band": 0.001,
               "n_recon_in_band": 10, "seconds": 1.0,
               "groups": {"in band": {"pairs": 4, "gap": [0.2, 0.25], "end_low": 0.19, "end_high": 0.26,
                                      "target": 0.225, "mid_lerp": 0.2271, "mid_geodesic": 0.2262, "mae_lerp": 0.002,
                                      "mae_geodesic": 0.001, "in_gap_lerp": 0.75, "in_gap_geodesic": 1.0}},
               "strips": [{"title": "in band: radius 0.190 -> 0.260", "rows": strips["tiny gan"][0]["rows"]}]}
    (tmp_path / "strips").mkdir()
    (tmp_path / "strips" / "stale.png").write_bytes(b"old")  # from an earlier run: removed
    md_path = write_markdown(tmp_path, [rep], strips, holdout, command="latentserve latent-report x")
    md = md_path.read_text()
    g = rep["geodesic"]["pixel"]
    assert f"| pixel | {g['length_lerp']:.4f} | {g['length_geodesic']:.4f} |" in md
    assert f"| {rep['guided_class']['accuracy_prior']:.3f} | {rep['guided_class']['accuracy_guided']:.3f} |" in md
    assert "| in band | [0.200, 0.250) | 0.190 / 0.260 | 0.225 | 0.227 | 0.226 |" in md and "| 75% | 100% |" in md
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert links == ["strips/tiny-gan-0.png", "strips/tiny-gan-1.png", "strips/disks-holdout-0.png"]
    assert all((tmp_path / link).stat().st_size > 0 for link in links)
    assert sorted(p.name for p in (tmp_path / "strips").iterdir()) == sorted(link.split("/")[1] for link in links)
    assert "Generated by `latentserve latent-report x`" in md


def test_pair_groups_gaps_are_band_wide_and_stay_in_range():
    groups = pair_groups(0.2, 0.25, 0.02, 0.1, 0.35)
    assert list(groups) == ["below band", "in band", "above band"]
    assert groups["in band"][2] == (0.2, 0.25)
    for (wa, wb, gap) in groups.values():
        assert wa[1] == pytest.approx(gap[0]) and wb[0] == pytest.approx(gap[1])  # gap between the windows
        assert gap[1] - gap[0] == pytest.approx(0.05) and 0.1 <= wa[0] and wb[1] <= 0.35 + 1e-9
    for g in ("below band", "above band"):  # the controls' gaps miss the band
        assert groups[g][2][1] <= 0.2 + 1e-9 or groups[g][2][0] >= 0.25 - 1e-9
    assert list(pair_groups(0.12, 0.17, 0.02, 0.1, 0.35)) == ["in band", "above band"]  # no room below


def test_disks_holdout_refuses_a_band_without_room_for_pair_ends(tmp_path):
    from latentserve.errors import ValidationError
    from latentserve.models.disks_holdout import HoldoutSettings, disks_holdout

    with pytest.raises(ValidationError, match="no room for pair ends"):
        disks_holdout(tmp_path, HoldoutSettings(band=(0.05, 0.12)))  # before any training
    assert not any(tmp_path.iterdir())
