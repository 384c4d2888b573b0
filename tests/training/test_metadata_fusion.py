"""Metadata fusion: the encoder (fitted on train only, stored as plain data, never failing on a value)
and the fused model through train, the feature cache, the checkpoint and evaluate."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from skincls import TrainConfig, Trainer, fetch
from skincls.cli import main
from skincls.data.dataset import ManifestDataset, build_transform
from skincls.data.images import load_image
from skincls.data.patient_context import CONTEXT_COLUMNS
from skincls.data.splits import load_manifest
from skincls.data.tabular import MetadataEncoder, metadata_columns
from skincls.errors import ConfigError, ModelError
from skincls.evaluation.evaluator import Evaluator
from skincls.models.checkpoint import load_checkpoint
from skincls.models.classifier import create_model
from tests.conftest import TINY_TRAIN

ROWS = [
    {"age": "40", "sex": "male", "site": "back"},
    {"age": "60", "sex": "female", "site": "back"},
    {"age": "50", "sex": "male", "site": "face"},
    {"age": "", "sex": "female", "site": "back"},
    {"age": "30", "sex": "male", "site": "face"},
    {"age": "70", "sex": "female", "site": "face"},
]


def test_encoder_standardises_one_hots_and_marks_missing():
    enc = MetadataEncoder.fit(ROWS, ["age", "sex", "site"], min_count=2)
    assert [c.kind for c in enc.columns] == ["numeric", "categorical", "categorical"]
    assert enc.columns[0].mean == pytest.approx(50.0)  # the recorded ages only
    assert enc.feature_names() == [
        "age", "age:missing", "sex=female", "sex=male", "sex=unknown", "sex:missing",
        "site=back", "site=face", "site=unknown", "site:missing",
    ]  # fmt: skip
    x = enc.encode([{"age": "50", "sex": "Male", "site": "back"}])
    assert x.dtype == np.float32 and x.shape == (1, enc.width)
    assert x[0].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]


def test_unseen_and_missing_values_are_unknown_never_a_crash():
    enc = MetadataEncoder.fit(ROWS, ["age", "sex", "site"], min_count=2)
    x = enc.encode([{"age": "old", "sex": "other", "site": "scalp"}, {}])
    unseen, empty = x.tolist()
    assert unseen == [0, 1, 0, 0, 1, 0, 0, 0, 1, 0]  # unknown level, not missing
    assert empty == [0, 1, 0, 0, 1, 1, 0, 0, 1, 1]  # unknown and missing


def test_rare_levels_are_folded_into_unknown():
    enc = MetadataEncoder.fit([*ROWS, {"site": "scalp"}], ["site"], min_count=2)
    assert enc.columns[0].levels == ("back", "face")
    assert enc.encode([{"site": "scalp"}])[0].tolist() == [0, 0, 1, 0]


def test_encoder_round_trips_as_plain_data():
    enc = MetadataEncoder.fit(ROWS, ["age", "sex", "site"])
    data = json.loads(json.dumps(enc.to_dict()))
    again = MetadataEncoder.from_dict(data)
    assert again == enc
    np.testing.assert_array_equal(again.encode(ROWS), enc.encode(ROWS))
    with pytest.raises(ConfigError, match="malformed"):
        MetadataEncoder.from_dict({**data, "width": 3})


def test_metadata_columns_auto_none_and_named():
    have = ["age", "sex", "site", "dx_type", "ita"]
    assert metadata_columns("none", have) == []
    assert metadata_columns("auto", have) == ["age", "sex", "site"]  # never dx_type: a label leak
    assert metadata_columns("age, sex", have) == ["age", "sex"]
    with pytest.raises(ConfigError, match="no column weight; its metadata columns are: age"):
        metadata_columns("age,weight", have)
    with pytest.raises(ConfigError, match="records none of age, sex, site"):
        metadata_columns("auto", ["ita"])


def test_fused_model_splits_for_the_cache_and_needs_its_metadata():
    meta = {"width": 5, "hidden": 4}
    model = create_model("smallcnn", weights="none", head=(8,), freeze="backbone", metadata=meta)
    model.eval()
    x, m = torch.randn(3, 3, 32, 32), torch.randn(3, 5)
    extractor, rest = model.split_for_cache()
    torch.testing.assert_close(model(x, m), rest(extractor(x, m)))
    assert extractor(x, m).shape[1] == model.image_dim + 5
    assert "meta.0.weight" in model.state_dict()
    with pytest.raises(ModelError, match=r"model\(images, metadata\)"):
        model(x)
    only = create_model("smallcnn", weights="none", head=(), metadata={**meta, "image": False})
    only.eval()
    torch.testing.assert_close(only(x, m), only(torch.zeros_like(x), m))  # ignores the image


@pytest.fixture(scope="module")
def ham_data(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("ham") / "data"
    fetch(data_dir, synthetic=60, dataset="ham10000", seed=2, val_fraction=0.2)
    return data_dir


def _train(data_dir: Path, out: Path, *extra: str) -> None:
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(data_dir), *TINY_TRAIN, "--out", str(out), *extra]
    )
    assert r.exit_code == 0, r.output


def test_train_with_metadata_fits_the_encoder_on_train_only(ham_data, tmp_path):
    _train(ham_data, tmp_path / "run", "--metadata", "auto")
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    settings = ckpt.model_config["metadata"]
    assert settings["columns"] == ["age", "sex", "site"]
    train = load_manifest(ham_data).select("train")
    expected = MetadataEncoder.fit([dict(r.attributes) for r in train], ["age", "sex", "site"])
    assert MetadataEncoder.from_dict(settings["encoder"]) == expected
    everything = MetadataEncoder.fit(
        [dict(r.attributes) for r in load_manifest(ham_data).records], ["age", "sex", "site"]
    )
    assert expected != everything  # the test split's values would have moved it
    ev = Evaluator(ckpt, device="cpu")
    out = ev.outputs(ham_data, "test")
    assert out.logits.shape == (len(load_manifest(ham_data).select("test")), 2)


def test_default_trains_on_images_only(ham_data, tmp_path):
    _train(ham_data, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "metadata" not in ckpt.model_config
    assert not any(k.startswith("meta.") for k in ckpt.data["state_dict"])


def test_named_column_the_data_lacks_is_one_clear_error(ham_data, tmp_path):
    args = ["train", "--data-dir", str(ham_data), *TINY_TRAIN, "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(main, [*args, "--metadata", "age,weight"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "Error: --metadata: the data has no column weight; its metadata columns are:" in r.output
    r = CliRunner().invoke(main, [*args, "--no-image"])
    assert (
        r.exit_code == 1 and "--no-image needs metadata to learn from: give --metadata" in r.output
    )
    assert not (tmp_path / "r").exists()


def test_frozen_fused_model_trains_its_head_on_cached_features(ham_data):
    manifest = load_manifest(ham_data)
    enc = MetadataEncoder.fit(
        [dict(r.attributes) for r in manifest.select("train")], ["age", "sex"]
    )
    runs = []
    for mode in ("memory", "off"):
        torch.manual_seed(0)
        model = create_model(
            "smallcnn", weights="none", head=(8,), freeze="backbone",
            metadata={"width": enc.width}, preprocessing={"resize_size": 32, "crop_size": 32},
        )  # fmt: skip
        tf = build_transform(model.preprocessing)
        train = ManifestDataset(manifest, "train", tf, metadata=enc)
        val = ManifestDataset(manifest, "val", tf, metadata=enc)
        cfg = TrainConfig(epochs=2, batch_size=8, device="cpu", precision="fp32", seed=1,
                          cache_features=mode)  # fmt: skip
        history = Trainer(model, cfg).fit(train, val)
        runs.append((history, model))
    (cached, cached_model), (plain, plain_model) = runs
    assert cached.cache == {"train": "computed", "val": "computed"}
    assert plain.cache == {"train": "off", "val": "off"}
    for a, b in zip(cached.epochs, plain.epochs):  # the same training, with and without the cache
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
    image, meta, _ = train[0]
    torch.testing.assert_close(
        cached_model(image[None], meta[None]),
        plain_model(image[None], meta[None]),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def fused_run(ham_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fused") / "run"
    _train(ham_data, out, "--metadata", "auto")
    return out


def test_predict_with_all_some_and_none_of_the_columns(fused_run, ham_data, tmp_path):
    images = sorted((ham_data / "images").rglob("*.jpg"))[:3]
    table = tmp_path / "meta.csv"
    table.write_text(f"image,age,sex\n{images[0].name},70,male\n{images[1].stem},,female\n")
    args = ["predict", str(fused_run), *map(str, images), "--device", "cpu", "--quiet"]
    r = CliRunner().invoke(main, [*args, "--metadata", str(table), "--json"])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.stdout)
    assert [p["missing_inputs"] for p in preds] == [
        ["site"],
        ["age", "site"],
        ["age", "sex", "site"],
    ]
    assert r.stderr.count(f"note: {table} has no site column: unknown for every image") == 1
    assert f"1 image(s) have no row in {table}" in r.stderr
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "without --metadata CSV every image's is unknown" in r.stderr
    assert "missing inputs" in r.stdout


def test_evaluate_says_which_metadata_columns_the_data_lacks(fused_run, ham_data, tmp_path):
    import csv
    import shutil

    data = tmp_path / "nosite"
    shutil.copytree(ham_data, data)
    with (data / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (data / "manifest.csv").open("w", newline="") as f:  # no site column, every age empty
        fields = [c for c in rows[0] if c != "site"]
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "age": ""} for r in rows)
    args = ["evaluate", str(fused_run), "--data-dir", str(data), "--device", "cpu", "--quiet"]
    r = CliRunner().invoke(main, [*args, "--bootstrap", "0", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["missing_inputs"] == ["age", "site"]
    note = (
        "note: the model also takes metadata, and no test image has age, site: unknown for every "
        "image, so these metrics are for the model without age, site"
    )
    assert r.stderr.count(note) == 1
    card = tmp_path / "card.md"
    r = CliRunner().invoke(main, [*args, "--bootstrap", "0", "--model-card", str(card)])
    assert r.exit_code == 0 and r.stdout.count(note) == 1, r.output
    assert "**Metadata missing:** no image of this split has age, site" in card.read_text()
    ev = Evaluator(load_checkpoint(fused_run / "best.pt"), device="cpu")
    assert ev.evaluate(ham_data, n_bootstrap=0).missing_inputs == []  # its own data has them all


def test_metadata_changes_the_prediction_and_unseen_values_do_not_crash(fused_run, ham_data):
    from skincls.inference.predict import Predictor

    predictor = Predictor.from_checkpoint(fused_run, device="cpu", precision="fp32")
    image = sorted((ham_data / "images").rglob("*.jpg"))[0]
    rows = [{"age": "85", "sex": "male", "site": "face"}, {"age": "5", "sex": "female", "site": "back"},
            {"age": "very old", "sex": "?", "site": "the moon"}]  # fmt: skip
    preds = predictor.predict([image] * 3, metadata=rows)
    assert all(p.error is None for p in preds)
    assert preds[0].probability != preds[1].probability  # the metadata is used
    assert preds[2].missing_inputs == ["age", "sex"]  # unparseable age and "?" count as missing
    with pytest.raises(ConfigError, match="2 metadata rows for 3 images"):
        predictor.predict([image] * 3, metadata=rows[:2])


def test_model_card_says_which_inputs_the_model_needs(fused_run, ckpt):
    from skincls.evaluation.modelcard import inputs_line

    line = inputs_line(load_checkpoint(fused_run / "best.pt"))
    assert line.startswith("- **Inputs:** the image and the metadata columns age (numeric); sex")
    assert "encoded as `unknown`" in line
    assert inputs_line(load_checkpoint(ckpt)) == "- **Inputs:** the image only"


def test_cv_with_metadata_pools_image_features_and_appends_each_folds_metadata(ham_data, tmp_path):
    import skincls

    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    config = skincls.RunConfig.model_validate(
        {"data": {"data_dir": ham_data},
         "model": {"arch": "custom", "head": [8], "freeze": "backbone", "metadata": "auto"},
         "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "precision": "fp32", "seed": 1},
         "out": tmp_path / "cv"}
    )  # fmt: skip
    pre = {"resize_size": 32, "crop_size": 32}
    result = skincls.cross_validate(
        config, 2, backbone=body, preprocessing=pre, progress=False, n_bootstrap=0
    )
    assert result.ensemble == tmp_path / "cv" / "ensemble.pt"
    state = json.loads((tmp_path / "cv" / "cv_state.json").read_text())
    entries = state["completed"]
    assert [e["oof_source"] for e in entries] == ["head on the pooled features"] * 2
    for e in entries:  # the pooled head's numbers are the model's own on the images + metadata
        ckpt = load_checkpoint(tmp_path / "cv" / e["checkpoint"])
        with np.load(tmp_path / "cv" / e["oof"]) as z:
            rows, logits = z["rows"], z["logits"]
        model = ckpt.build_model(copy.deepcopy(body))
        enc = MetadataEncoder.from_dict(ckpt.model_config["metadata"]["encoder"])
        records = [r for r in load_manifest(ham_data).records if r.split != "test"]
        recs = [records[i] for i in rows]
        tf = build_transform(ckpt.preprocessing)
        from skincls.data.images import load_image

        x = torch.stack([tf(load_image(ham_data / r.path)) for r in recs])
        m = torch.from_numpy(enc.encode(dict(r.attributes) for r in recs))
        with torch.no_grad():
            np.testing.assert_allclose(model(x, m).numpy(), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_two_input_export_matches_pytorch(fused_run, ham_data, tmp_path, fmt):
    from skincls.inference.export import export_model
    from skincls.inference.predict import Predictor

    result = export_model(fused_run, tmp_path / f"m.{fmt}", format=fmt)
    assert result.max_abs_diff <= 1e-4
    enc = MetadataEncoder.from_dict(result.metadata["metadata_encoding"])
    predictor = Predictor.from_checkpoint(fused_run, device="cpu", precision="fp32")
    path = sorted((ham_data / "images").rglob("*.jpg"))[0]
    row = {"age": "85", "sex": "male", "site": "face"}
    want = predictor.predict([path], metadata=[row])[0].probabilities
    image = build_transform(predictor.checkpoint.preprocessing)(load_image(path))
    pre = predictor.checkpoint.preprocessing
    x = (image * torch.tensor(pre.std)[:, None, None] + torch.tensor(pre.mean)[:, None, None])[None]
    m = enc.encode([row])
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["images", "metadata"]
        got = session.run(None, {"images": x.numpy(), "metadata": m})[0][0]
    else:
        got = torch.jit.load(str(result.path))(x, torch.from_numpy(m))[0].detach().numpy()
    np.testing.assert_allclose(got, [want[c] for c in predictor.classes], atol=1e-4)


def test_patient_context_counts_distances_and_ranks_within_the_given_images():
    from skincls.data.patient_context import patient_contexts

    emb = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.5, 0.5], [3.0, 4.0]])
    rows = patient_contexts(emb, ["a", "a", "a", "b", ""])
    assert {r["patient_images"] for r in rows[:3]} == {f"{np.log1p(3):.6g}"}
    ranks = [float(r["patient_rank"]) for r in rows[:3]]
    assert sorted(ranks) == [0.0, 0.5, 1.0] and ranks[2] == 1.0  # image 2: the "ugly duckling"
    unit = emb[:3] / np.linalg.norm(emb[:3], axis=1, keepdims=True)
    assert float(rows[2]["patient_distance"]) == pytest.approx(
        np.linalg.norm(unit[2] - unit[:2].mean(0)), rel=1e-5
    )
    assert rows[3] == {"patient_images": f"{np.log1p(1):.6g}", "patient_distance": "",
                       "patient_rank": ""}  # fmt: skip
    assert rows[4] == {"patient_images": "", "patient_distance": "", "patient_rank": ""}


def test_a_test_images_patient_context_uses_test_images_only(ham_data):
    from dataclasses import replace

    from skincls.data.splits import Manifest
    from skincls.inference.metadata import context_rows

    manifest = load_manifest(ham_data)
    model = create_model("smallcnn", weights="none", head=(4,), freeze="backbone").eval()
    tf = build_transform(model.preprocessing.with_size(32))
    before = context_rows(model, manifest, "test", tf, torch.device("cpu"))
    test_patients = [r.patient_id for r in manifest.select("test")]
    target = max(set(test_patients), key=test_patients.count)
    n_test = test_patients.count(target)
    # Give every training image the same patient: were training images used, the counts,
    # distances and ranks of that patient's test images would change.
    leaky = Manifest(
        manifest.root,
        manifest.classes,
        [replace(r, patient_id=target) if r.split == "train" else r for r in manifest.records],
    )
    after = context_rows(model, leaky, "test", tf, torch.device("cpu"))
    assert after == before
    mine = [row for row, p in zip(after, test_patients) if p == target]
    assert {row["patient_images"] for row in mine} == {f"{np.log1p(n_test):.6g}"}


def test_train_and_evaluate_with_patient_context(ham_data, tmp_path):
    import skincls

    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    config = skincls.RunConfig.model_validate(
        {"data": {"data_dir": ham_data},
         "model": {"arch": "custom", "head": [8], "freeze": "backbone", "metadata": "auto",
                   "patient_context": True},
         "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "precision": "fp32", "seed": 1},
         "out": tmp_path / "run"}
    )  # fmt: skip
    pre = {"resize_size": 32, "crop_size": 32}
    result = skincls.train_from_config(config, backbone=body, preprocessing=pre, progress=False)
    ckpt = load_checkpoint(result.best_checkpoint)
    settings = ckpt.model_config["metadata"]
    assert settings["patient_context"] is True
    assert settings["columns"] == ["age", "sex", "site", *CONTEXT_COLUMNS]
    enc = MetadataEncoder.from_dict(settings["encoder"])
    assert enc.columns[3].kind == "numeric" and enc.columns[3].mean > 0  # fitted on train's counts
    ev = Evaluator(ckpt, backbone=copy.deepcopy(body), device="cpu")
    assert len(ev.outputs(ham_data, "test").labels) == len(load_manifest(ham_data).select("test"))
    from skincls.inference.predict import Predictor

    predictor = Predictor(ckpt, "cpu", backbone=copy.deepcopy(body), precision="fp32")
    images = sorted((ham_data / "images").rglob("*.jpg"))[:3]
    rows = [{"age": "50", "sex": "male", "site": "back", "patient_id": p} for p in "AAB"]
    missing = [p.missing_inputs for p in predictor.predict(images, metadata=rows)]
    # Patient A has two images here (its context is defined), B one (no other image to compare).
    assert missing == [[], [], ["patient_distance", "patient_rank"]]
    from skincls.errors import CheckpointError
    from skincls.experiments.ensemble import create_ensemble

    with pytest.raises(CheckpointError, match="takes patient context; ensembles of models with"):
        create_ensemble([ckpt], tmp_path / "e.pt", backbone=body)
    assert not (tmp_path / "e.pt").exists()
    model = config.model.model_copy(update={"freeze": "none"})
    config = config.model_copy(update={"model": model, "out": tmp_path / "other"})
    with pytest.raises(ConfigError, match="frozen backbone"):
        skincls.train_from_config(config, backbone=body, preprocessing=pre, progress=False)


def test_serve_takes_metadata_as_optional_form_fields(fused_run, ham_data):
    pytest.importorskip("starlette")
    pytest.importorskip("multipart")
    from starlette.testclient import TestClient

    from skincls.serve.app import create_app
    from skincls.serve.service import ModelService

    service = ModelService.from_checkpoint(fused_run, device="cpu", precision="fp32")
    image = sorted((ham_data / "images").rglob("*.jpg"))[0].read_bytes()
    files = [("images", ("a.jpg", image, "image/jpeg"))]
    with TestClient(create_app(service)) as client:
        assert client.get("/api/model").json()["metadata_columns"] == ["age", "sex", "site"]
        given = client.post("/api/predict", files=files, data={"age": "80", "site": "face"})
        none = client.post("/api/predict", files=files)
    assert given.status_code == none.status_code == 200, given.text
    a, b = given.json()["results"][0], none.json()["results"][0]
    assert a["missing_inputs"] == ["sex"] and b["missing_inputs"] == ["age", "sex", "site"]
    assert a["probability"] != b["probability"]
    assert a["heatmap"] and b["heatmap"]  # Grad-CAM through the fused model


def test_cv_compare_metadata_runs_three_models_on_the_same_folds(ham_data, tmp_path):
    out = tmp_path / "cmp"
    train = [a for a in TINY_TRAIN if a not in ("--epochs", "2")] + ["--epochs", "1"]
    args = ["cv", "--data-dir", str(ham_data), *train, "--folds", "2", "--out", str(out)]
    r = CliRunner().invoke(main, [*args, "--compare", "metadata", "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    assert "out-of-fold ROC-AUC, 2 folds, the same for every model" in r.output
    report = json.loads((out / "compare_report.json").read_text())
    assert set(report["values"]) == {"image", "metadata", "fused"}
    assert set(report["paired"]) == {"fused-image", "fused-metadata"}
    for pair in report["paired"].values():
        assert pair["ci"][0] <= pair["diff"] <= pair["ci"][1] and pair["n_bootstrap"] == 20
    for k in (0, 1):  # the same held-out images in every arm's fold k
        rows = [np.load(out / arm / f"fold{k}" / "oof.npz")["rows"] for arm in report["values"]]
        assert all(np.array_equal(rows[0], x) for x in rows[1:])
    fused = load_checkpoint(out / "fused" / "fold0" / "best.pt").model_config["metadata"]
    only = load_checkpoint(out / "metadata" / "fold0" / "best.pt").model_config["metadata"]
    assert fused["image"] is True and only["image"] is False
    assert "metadata" not in load_checkpoint(out / "image" / "fold0" / "best.pt").model_config


def test_cv_compare_metadata_resamples_the_groups_the_folds_held_out(ham_data, tmp_path):
    # With --group-by site the folds hold out whole sites; the paired CI must resample sites too,
    # not single lesions (which would treat one site's images as independent).
    out = tmp_path / "cmp"
    train = [a for a in TINY_TRAIN if a not in ("--epochs", "2")] + ["--epochs", "1"]
    args = ["cv", "--data-dir", str(ham_data), *train, "--folds", "2", "--out", str(out)]
    r = CliRunner().invoke(
        main, [*args, "--compare", "metadata", "--bootstrap", "5", "--group-by", "site"]
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "compare_report.json").read_text())
    rows = list(csv.DictReader((out / "image" / "folds.csv").read_text().splitlines()))
    sites, lesions = {r["fold_group"] for r in rows}, {r["group"] for r in rows}
    assert report["bootstrap_groups"] == len(sites) < len(lesions)


def test_an_ensemble_of_fused_models_averages_each_members_own_encoding(ham_data, tmp_path):
    import skincls
    from skincls.models.ensemble import EnsembleClassifier

    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    config = skincls.RunConfig.model_validate(
        {"data": {"data_dir": ham_data},
         "model": {"arch": "custom", "head": [8], "freeze": "backbone", "metadata": "auto"},
         "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "precision": "fp32", "seed": 1},
         "out": tmp_path / "cv"}
    )  # fmt: skip
    pre = {"resize_size": 32, "crop_size": 32}
    skincls.cross_validate(config, 2, backbone=body, preprocessing=pre, progress=False,
                           n_bootstrap=0, calibrate=True)  # fmt: skip
    ens = load_checkpoint(tmp_path / "cv" / "ensemble.pt")
    members = [load_checkpoint(tmp_path / "cv" / f"fold{k}" / "best.pt") for k in (0, 1)]
    encoders = [MetadataEncoder.from_dict(m.model_config["metadata"]["encoder"]) for m in members]
    assert encoders[0] != encoders[1]  # each fold's own, fitted on its own training images
    assert ens.model_config["metadata"]["columns"] == ["age", "sex", "site"]
    model = ens.build_model(copy.deepcopy(body))
    temps = model.temperatures.tolist()
    ev = Evaluator(ens, backbone=copy.deepcopy(body), device="cpu", precision="fp32")
    got = ev.outputs(ham_data, "test").probs(1.0)
    expected = np.mean(
        [Evaluator(m, backbone=copy.deepcopy(body), device="cpu", precision="fp32")
         .outputs(ham_data, "test").probs(t) for m, t in zip(members, temps)], axis=0
    )  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # Members run whole (no shared backbone) give the same; without metadata: one clear error.
    whole = EnsembleClassifier(list(model.members), temps, share_backbones=False).eval()
    ds = ManifestDataset(load_manifest(ham_data), "test", build_transform(ens.preprocessing),
                         metadata=MetadataEncoder.from_dict(ens.model_config["metadata"]["encoder"]))  # fmt: skip
    x = torch.stack([ds[i][0] for i in range(3)])
    m = torch.stack([ds[i][1] for i in range(3)])
    with torch.no_grad():
        np.testing.assert_allclose(whole(x, m).exp().numpy(), expected[:3], rtol=1e-4, atol=1e-6)
    with pytest.raises(ModelError, match="call it as model\\(images, metadata\\)"):
        model(x)
    from skincls.inference.predict import Predictor

    predictor = Predictor(ens, "cpu", backbone=copy.deepcopy(body), precision="fp32")
    rows = [{"age": "50"}, {"age": "80", "sex": "male", "site": "face"}]
    images = [ham_data / r.path for r in ds.records[:2]]
    preds = predictor.predict(images, metadata=rows, cam_dir=tmp_path / "cams")
    assert [p.missing_inputs for p in preds] == [["sex", "site"], []]  # each column named once
    assert len(list((tmp_path / "cams").glob("*.png"))) == 2  # Grad-CAM with the metadata held
    from skincls.evaluation.modelcard import inputs_line

    assert inputs_line(ens).startswith(
        "- **Inputs:** the image and the metadata columns age, sex, site (each member encodes"
    )


def test_generate_from_rows_keeps_the_rows_and_draws_each_lesion_once(tmp_path):
    import csv

    from skincls.data.synthetic_metadata import generate_from_rows

    rows = [
        {"lesion_id": "L1", "image_id": "ISIC_1", "dx": "mel", "age": "70", "sex": "male",
         "localization": "back"},
        {"lesion_id": "L1", "image_id": "ISIC_2", "dx": "mel", "age": "70", "sex": "male",
         "localization": "back"},
        {"lesion_id": "L2", "image_id": "ISIC_3", "dx": "nv", "age": "", "sex": "female",
         "localization": "face"},
    ]  # fmt: skip
    counts = generate_from_rows(tmp_path / "a", rows, signal=0.5, seed=1, size=32)
    assert counts == {"mel": 2, "nv": 1}
    with (tmp_path / "a" / "HAM10000_metadata.csv").open(newline="") as fh:
        assert list(csv.DictReader(fh)) == rows
    generate_from_rows(tmp_path / "b", rows, signal=0.5, seed=1, size=32)
    for name in ("ISIC_1", "ISIC_3"):  # seeded: the same bytes again
        a = next((tmp_path / "a").rglob(f"{name}.jpg")).read_bytes()
        assert a == next((tmp_path / "b").rglob(f"{name}.jpg")).read_bytes()
