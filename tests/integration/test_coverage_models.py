"""The issue-23 models through train -> export -> serve over real gRPC: a GAN with the mixed-batch discriminator
on the many-modes data set, and a VAE with the autoregressive (PixelCNN) decoder on shapes, served next to the
session app (`extra_app`, the session's Ray Serve). Tiny nets and 3 training steps: the point is the pipeline.
The VAE's Decode runs the pixel-by-pixel loop on the server and must equal the same loop run offline on the
exported graphs (models/evaluate.decoder_fn), row for row, whatever batch a row is decoded in."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentserve.client import LatentClient  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RUNS = {
    "modes-gan-mixed": ("gan", "modes", {"image_size": 32, "n_train": 128, "n_test": 32, "seed": 0},
                        {"z_dim": 8, "g_width": 4, "d_width": 4, "e_width": 4, "e_hidden": 16, "e_batch": 8,
                         "d_kind": "mixed", "mix_set_size": 4}),
    "shapes-vae-ar": ("vae", "shapes", {"image_size": 16, "n_train": 128, "n_test": 32, "seed": 0},
                      {"z_dim": 8, "widths": [4, 8], "hidden": 16, "embed_dim": 4, "decoder": "pixelcnn",
                       "ar_width": 8, "ar_layers": 2}),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from latentserve.models.data import load_dataset
    from latentserve.models.export import export_run
    from latentserve.models.train import TrainConfig, train

    torch.set_num_threads(1)
    root, runs = tmp_path_factory.mktemp("repo23"), tmp_path_factory.mktemp("runs23")
    for name, (fam, data_name, data_args, fam_args) in RUNS.items():
        data = load_dataset(data_name, **data_args)
        cfg = TrainConfig(family=fam, data=data_name, data_args=data_args, steps=3, batch_size=16,
                          out=str(runs / name), ckpt_every=3, eval_every=3, grid_every=10**6, threads=1,
                          device="cpu", family_args=fam_args, eval_size=16)
        export_run(train(cfg, progress=False, dataset=data), name, repo_root=root, max_latent_fit=100, data=data)
    return root


def test_new_models_are_served(repo, extra_app):
    """Both models on one app deployed from the exported repository (`extra_app`, deleted afterwards)."""
    target, metadata, _ = extra_app("coverage23", frontend="native", repository=str(repo))
    assert not metadata
    _check_vae_ar(target, repo)
    _check_gan_mixed(target)


def _check_vae_ar(served, repo):
    from latentserve.models.data import load_dataset
    from latentserve.models.evaluate import decoder_fn
    from latentserve.models.repository import Repository

    record = Repository(repo).load("shapes-vae-ar")
    assert record.manifest["autoregressive"]["kind"] == "pixelcnn"
    with LatentClient(served, timeout=120) as c:
        info = c.get_model("shapes-vae-ar")
        assert info.family == "vae"
        s = c.sample("shapes-vae-ar", 5, seed=3, format="float32")
        assert s.images.shape == (5, 3, 16, 16) and np.abs(s.images).max() <= 1.0
        offline = decoder_fn(record)(s.latents, s.labels)
        np.testing.assert_allclose(s.images, offline, atol=1e-5)  # the served loop is the offline loop
        one = c.decode("shapes-vae-ar", s.latents[2:3], s.labels[2:3], format="float32")
        np.testing.assert_allclose(one[0], s.images[2], atol=1e-5)  # a row decodes alike alone or batched
        real = load_dataset("shapes", image_size=16, n_train=1, n_test=4).test.images
        enc = c.encode("shapes-vae-ar", real)
        assert enc.latents.shape == (4, 8)
        frames = list(c.interpolate("shapes-vae-ar", (enc.latents[0], int(enc.labels[0])),
                                    (enc.latents[1], int(enc.labels[0])), steps=3))
        assert len(frames) == 3 and frames[0].image.shape == (16, 16, 3)


def _check_gan_mixed(served):
    from latentserve.models.data import load_dataset

    with LatentClient(served, timeout=120) as c:
        s = c.sample("modes-gan-mixed", 4, seed=1)
        assert s.images.shape == (4, 32, 32, 3)
        enc = c.encode("modes-gan-mixed", load_dataset("modes", n_train=1, n_test=2).test.images)
        assert enc.latents.shape == (2, 8) and (enc.labels == 0).all()


def test_tradeoff_table_command_runs_tiny(tmp_path, capsys):
    """`latentserve latent-report --tradeoff --quick` end to end (2 steps, tiny nets, two variants): the table,
    its JSON and markdown."""
    import json

    from latentserve.cli import main

    rc = main(["latent-report", "--tradeoff", "--quick", "--tradeoff-data", "modes", "--tradeoff-variants",
               "gan_mixed,vae_ar", "--tradeoff-steps", "2", "--tradeoff-samples", "24", "--tradeoff-runs",
               str(tmp_path / "runs"), "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "md")])
    out = capsys.readouterr().out
    assert rc == 0 and "gan_mixed" in out and "vae_ar" in out and "/100" in out
    table = json.loads((tmp_path / "t.json").read_text())["tradeoff"]
    assert [r["variant"] for r in table["rows"]] == ["gan_mixed", "vae_ar"]
    ar = table["rows"][1]
    assert ar["bits_per_dim"] > 0 and ar["modes"]["modes"] == 100 and table["rows"][0]["bits_per_dim"] is None
    assert "| modes | vae_ar | 1 |" in (tmp_path / "md" / "tradeoff.md").read_text()
