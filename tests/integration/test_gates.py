"""Quality gates on a real server (models/gates.py through services/core/operations.py): ModelInfo carries the gates
and the judged knob figures; Sample, Edit and Augment refuse a knob below its gate with INVALID_ARGUMENT
naming the knob, the figure and the judge, and accept it with allow_weak_knobs."""
from __future__ import annotations

import json
import shutil

import pytest

from latentserve.errors import ValidationError
from latentserve.client import LatentClient

JUDGED = {"judge": "geometric", "judge_doc": "pixel geometry of the rendered shape", "default_source": "prior",
          "sources": {"prior": {"class_accuracy": {"mean": 0.98, "per_class": {"square": 1.0, "ellipse": 0.97,
                                                                               "triangle": 0.9}},
                                "class_accuracy_checked": None, "knob_r2": {"brightness": 0.12}}},
          "gan_train": {"accuracy": 0.93, "source": "prior", "n_synthetic": 30}}


def test_a_weak_knob_is_refused_unless_the_request_opts_in(serve_app, tiny_repo, tmp_path, extra_app):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny-gan" / "2", repo / "tiny-gan" / "2")
    path = repo / "tiny-gan" / "2" / "manifest.json"
    manifest = json.loads(path.read_text())  # metrics are not checksummed: only the listed files are
    manifest["metrics"]["judged"] = JUDGED
    path.write_text(json.dumps(manifest))
    name = "gates"
    target, md, _ = extra_app(name, repository=str(repo), models=[], colocate=True, num_cpus=0.25,
                              ingress_num_cpus=0.25)
    with LatentClient(target, timeout=60, app_name=name if md else None) as c:
        info = c.get_model("tiny-gan")
        assert info.judge == "geometric" and not info.gates_passed
        gates = {g.name: g for g in info.gates}
        assert gates["class_fidelity.square"].passed and gates["gan_train"].passed
        assert not gates["class_fidelity.triangle"].passed and gates["class_fidelity.triangle"].value == 0.9
        assert not any(n.startswith("knob_r2") for n in gates)  # brightness is no gated knob: only the 0.5 bar
        assert gates["class_fidelity.square"].judge == "geometric"
        knob = next(k for k in info.knobs if k.name == "brightness")
        assert knob.r2_judged == pytest.approx(0.12) and not knob.usable
        assert all(k.usable for k in info.knobs if k.kind == "pca")

        refusals = [
            lambda allow: c.sample("tiny-gan", 2, seed=1, knobs={"brightness": 0.1}, allow_weak_knobs=allow),
            lambda allow: c.edit("tiny-gan", [([0.0] * 8, 0)], [("brightness", {"amount": 0.1})],
                                 allow_weak_knobs=allow),
            lambda allow: list(c.augment({"model": "tiny-gan", "count": 3, "seed": 1, "handles": False,
                                          "factors": {"brightness": 0.1}}, allow_weak_knobs=allow)),
        ]
        for call in refusals:
            with pytest.raises(ValidationError) as err:
                call(False)
            msg = str(err.value)
            assert msg.startswith("INVALID_ARGUMENT"), msg
            assert "knob 'brightness' of tiny-gan v2 is below its quality gate: R² 0.12 by the geometric judge " \
                   "(< 0.5)" in msg and "allow_weak_knobs" in msg
            assert call(True)  # the same request, opted in
        # a principal direction has no judged figure: never refused
        assert c.edit("tiny-gan", [([0.0] * 8, 0)], [("pc0", {"amount": 1.0})]).images.shape[0] == 1
