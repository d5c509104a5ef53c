import json
import os


def test_export_all_into_an_earlier_export_removes_its_stale_layouts(model, tmp_path):
    from keras_mdn.export import export_all

    directory = str(tmp_path / "export")
    first = export_all(model, directory, layouts=("saved_model", "folded"))
    folded = [os.path.join(directory, p) for p in first["layouts"]["folded"]["None"]["paths"]
              .values()]
    assert folded and all(os.path.isfile(p) for p in folded)
    mine = os.path.join(directory, "notes.txt")  # a user's file: never touched
    with open(mine, "w") as f:
        f.write("mine")

    second = export_all(model, directory, layouts=("saved_model",))
    assert set(second["layouts"]) == set() and second["saved_model"] == "saved_model"
    assert not any(os.path.exists(p) for p in folded)
    assert not os.path.exists(os.path.join(directory, "folded"))
    assert os.path.isdir(os.path.join(directory, "saved_model"))
    assert open(mine).read() == "mine"
    with open(os.path.join(directory, "manifest.json")) as f:
        assert json.load(f) == second


def test_a_manifest_path_outside_the_directory_is_never_removed(model, tmp_path):
    from keras_mdn.export import export_all

    outside = tmp_path / "outside.tflite"
    outside.write_text("keep")
    directory = tmp_path / "export"
    directory.mkdir()
    manifest = {"layouts": {"folded": {"None": {"paths": {"0": "../outside.tflite"}}}},
                "input": {"name": "image"}, "saved_model": "/"}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    export_all(model, str(directory), layouts=("saved_model",))
    assert outside.read_text() == "keep"
