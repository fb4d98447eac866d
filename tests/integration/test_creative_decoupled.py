"""Issue #24's CAN GAN (shapes) and decoupled shape / texture GAN (textured) through train -> export -> serve over
real gRPC, served next to the session app (`extra_app`, the session's Ray Serve). Tiny nets and 3 training steps:
the point is the pipeline -- Sample works on the CAN model; on the decoupled one Sample picks shape and texture
independently (factor_classes), an Edit swapping the texture keeps the shape's mask exactly, and swapping back
gives the first image; bad factor_classes are INVALID_ARGUMENT naming the field. ModelInfo lists the class factors,
and `latentserve edit --class-factor` swaps a class of a handle / saved latent (one-line errors, exit 2, for bad names
and for a model without class factors)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentserve.client import LatentClient  # noqa: E402
from latentserve.errors import ValidationError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NET = {"z_dim": 8, "g_width": 4, "d_width": 4, "e_width": 4, "e_hidden": 16, "e_batch": 8, "g_embed": 4,
       "g_hidden": 16}
RUNS = {
    "shapes-can": ("shapes", {**NET, "can_form": "binary", "can_weight": 1.0, "w_ac": 0.0}),
    "textured-decoupled": ("textured", {**NET, "g_arch": "decoupled", "z_shape": 3}),
}
DATA = {"image_size": 16, "n_train": 96, "n_test": 24, "seed": 0}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from latentserve.models.data import load_dataset
    from latentserve.models.export import export_run
    from latentserve.models.train import TrainConfig, train

    torch.set_num_threads(1)
    root, runs = tmp_path_factory.mktemp("repo24"), tmp_path_factory.mktemp("runs24")
    for name, (data_name, fam_args) in RUNS.items():
        data = load_dataset(data_name, **DATA)
        cfg = TrainConfig(family="gan", data=data_name, data_args=dict(DATA), steps=3, batch_size=16,
                          out=str(runs / name), ckpt_every=3, eval_every=3, grid_every=10**6, threads=1,
                          device="cpu", family_args=fam_args, eval_size=16)
        export_run(train(cfg, progress=False, dataset=data), name, repo_root=root, max_latent_fit=100, data=data)
    return root


def test_exported_manifests(repo):
    from latentserve.models.repository import Repository

    rec = Repository(repo).load("textured-decoupled")
    assert rec.manifest["class_factors"]["texture"] == ["solid", "stripes", "dots", "checks"]
    assert rec.manifest["latent_branches"]["shape"]["latent"] == [0, 3]
    knobs = {k["name"] for k in rec.manifest["knobs"]}
    assert knobs, "no factor knobs fitted"
    arrays = np.load(rec.path / rec.manifest["latent_space"])
    for name in knobs & {"scale", "x", "y", "rotation"}:  # shape knobs move only the shape branch
        assert not np.any(arrays[f"knob_{name}"][3:])
    for name in knobs & {"hue", "hue2", "period", "orientation"}:
        assert not np.any(arrays[f"knob_{name}"][:3])
    assert "class_factors" not in Repository(repo).load("shapes-can").manifest


def test_served(repo, extra_app, tmp_path, capsys):
    target, md, _ = extra_app("issue24", repository=str(repo), models=[], colocate=True, num_cpus=0.25,
                              ingress_num_cpus=0.25)
    with LatentClient(target, timeout=120, app_name="issue24" if md else None) as c:
        assert sorted(m.name for m in c.list_models()) == ["shapes-can", "textured-decoupled"]
        s = c.sample("shapes-can", 4, seed=5)
        assert s.images.shape == (4, 16, 16, 3)

        info = c.get_model("textured-decoupled")
        assert "triangle+dots" in info.class_names and len(info.class_names) == 12
        assert info.class_factors == {"shape": ("square", "ellipse", "triangle"),
                                      "texture": ("solid", "stripes", "dots", "checks")}
        assert (info.output_sizes.min_px, info.output_sizes.max_px) == (16, 16)  # raster: its native size only
        assert c.get_model("shapes-can").class_factors == {}
        s = c.sample("textured-decoupled", 6, seed=2, factor_classes={"texture": "dots"}, format="float32")
        assert all(info.class_names[y].endswith("+dots") for y in s.labels)
        s = c.sample("textured-decoupled", 3, seed=2, factor_classes={"shape": "square", "texture": "stripes"},
                     format="float32")
        assert s.labels.tolist() == [1, 1, 1]

        swapped = c.edit("textured-decoupled", [(s.latents[i], int(s.labels[i])) for i in range(3)],
                         factor_classes={"texture": "checks"}, format="float32")
        assert swapped.labels.tolist() == [3, 3, 3]
        np.testing.assert_allclose(swapped.latents, s.latents)
        back = c.edit("textured-decoupled", [(swapped.latents[i], int(swapped.labels[i])) for i in range(3)],
                      factor_classes={"texture": "stripes"}, format="float32")
        np.testing.assert_allclose(back.images, s.images, atol=1e-6)  # swapping back: the first images again
        moved = c.edit("textured-decoupled", [(s.latents[0], 1)], factor_classes={"shape": "ellipse"},
                       moves=[], format="float32")
        assert moved.labels.tolist() == [5]

        for kwargs, needle in (({"factor_classes": {"colour": "red"}}, "factor_classes: unknown class factor"),
                               ({"factor_classes": {"texture": "plaid"}}, "factor_classes['texture']: unknown class"),
                               ({"factor_classes": {"texture": "dots"}, "class_name": "square+dots"},
                                "factor_classes")):
            with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("]", r"\]")):
                c.sample("textured-decoupled", 1, **kwargs)
        with pytest.raises(ValidationError, match="model shapes-can v1 has no class factors"):
            c.sample("shapes-can", 1, factor_classes={"texture": "dots"})
        with pytest.raises(ValidationError, match="factor_classes"):
            c.edit("shapes-can", [(s.latents[0], 0)], factor_classes={"shape": "square"})
        handle = c.sample("textured-decoupled", 1, seed=4, factor_classes={"shape": "square", "texture": "stripes"},
                          return_handles=True).handles[0]

    from latentserve.cli import main  # the CLI: `models` lists the class factors, `edit --class-factor` swaps one

    np.savez(tmp_path / "s.npz", latents=s.latents, labels=s.labels)
    conn = ["--target", target, "--timeout", "120"] + (["--app", "issue24"] if md else [])
    assert main(["models", "textured-decoupled", *conn]) == 0
    shown = capsys.readouterr().out
    assert "class factors (--class-factor FACTOR=CLASS)" in shown
    assert "texture      solid, stripes, dots, checks" in shown
    assert main(["edit", "textured-decoupled", "--input", f"{tmp_path / 's.npz'}:0", "--input", handle,
                 "--class-factor", "texture=checks", "-o", str(tmp_path / "e.png"),
                 "--save-latents", str(tmp_path / "e.npz"), *conn]) == 0
    assert "classes now: square+checks, square+checks" in capsys.readouterr().out
    saved = np.load(tmp_path / "e.npz")
    assert saved["labels"].tolist() == [3, 3]  # square+stripes (1) -> square+checks (3): shape kept
    np.testing.assert_allclose(saved["latents"][0], s.latents[0])  # the latent kept
    knob = info.knobs[0].name  # a tiny model's knobs are below the gate: --allow-weak-knobs
    assert main(["edit", "textured-decoupled", "--input", f"{tmp_path / 's.npz'}:0", "--class-factor", "shape=ellipse",
                 "--knob", knob, "--sweep", "0:0.1:2", "--relative", "--allow-weak-knobs",
                 "-o", str(tmp_path / "k.png"), "--save-latents", str(tmp_path / "k.npz"), *conn]) == 0
    assert np.load(tmp_path / "k.npz")["labels"].tolist() == [5, 5]  # ellipse+stripes in both columns
    capsys.readouterr()
    for model, factor, needle in (
            ("textured-decoupled", "colour=red",
             "--class-factor: unknown class factor 'colour' for textured-decoupled; factors: shape, texture"),
            ("textured-decoupled", "texture=plaid", "--class-factor: unknown texture class 'plaid' for "
                                                    "textured-decoupled; classes: solid, stripes, dots, checks"),
            ("shapes-can", "texture=dots", "--class-factor: shapes-can has no class factors")):
        assert main(["edit", model, "--input", handle, "--class-factor", factor, "-o", str(tmp_path / "x.png"),
                     *conn]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
