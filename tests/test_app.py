"""dinat_m2f.app, the web demo's logic, without a browser: each task's result files equal demo/demo.py's for the
same image and the segments table describes them (ids, classes, scores, areas at the image's size, also for an
image larger than the test size); unreadable uploads, unknown tasks and bad thresholds are refused with a message
naming them; each request replaces the previous one's files; the page offers the config's tasks and the /segment
endpoint; --model / --config-file configs; the package imports without Gradio.

The model is the synthetic panoptic config with random seeded weights saved by the project's checkpointer, and
lowered panoptic thresholds, so that it returns segments and instances. The synthetic dataset's category ids are
not contiguous (1-3 things, 21-22 stuff), so the id mapping of the files is exercised."""
import json
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from panopticapi.utils import rgb2id
from PIL import Image
from project_paths import CONFIGS, REPO, import_script
from random_weights import random_synthetic_opts
from test_predictor import smooth_image

from dinat_m2f import Predictor, model_zoo
from dinat_m2f.app import SEGMENT_COLUMNS, RequestError, WebDemo, app_config, build_page

# pycocotools' decode warns under numpy 2 (its own __array__ call); not this project's concern
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

CONFIG = str(CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml")
TASKS = ("panoptic", "instance", "semantic")
THRESHOLD = 0.2


@pytest.fixture(scope="module")
def opts(tmp_path_factory):
    """--opts of a random synthetic model that returns segments, small test size (64, at most 96)."""
    return [*random_synthetic_opts(tmp_path_factory.mktemp("weights")), "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96"]


@pytest.fixture(scope="module")
def web_demo(opts, tmp_path_factory):
    return WebDemo(Predictor(app_config(CONFIG, opts=opts)), results_root=str(tmp_path_factory.mktemp("results")))


def upload(folder, name, height, width, seed):
    """An image file as Gradio stores an upload: <cache>/<hash>/<the uploaded file's name>."""
    path = folder / "gradio" / f"{seed:064x}" / name
    path.parent.mkdir(parents=True)
    Image.fromarray(smooth_image(height, width, seed)).save(path)
    return path


def expected_rows(task, files, metadata, size):
    """The table rows computed from the files alone, with the dataset's id maps."""
    pixels = size[0] * size[1]
    files = {path.name.split("_", 1)[1]: path for path in files}
    if task == "panoptic":
        ids = rgb2id(np.asarray(Image.open(files["panoptic.png"])))
        assert ids.shape == size
        segments = json.loads(files["panoptic.json"].read_text())["segments_info"]
        assert {s["id"] for s in segments} == set(np.unique(ids).tolist()) - {0}
        return [[s["id"], metadata.stuff_classes[metadata.stuff_dataset_id_to_contiguous_id[s["category_id"]]], None,
                 int((ids == s["id"]).sum()), round(100 * (ids == s["id"]).sum() / pixels, 2)] for s in segments]
    if task == "instance":
        rows = []
        for index, record in enumerate(json.loads(files["instances.json"].read_text())):
            area = int(mask_util.decode(record["segmentation"]).sum())
            assert record["segmentation"]["size"] == list(size) and record["score"] >= THRESHOLD
            name = metadata.thing_classes[metadata.thing_dataset_id_to_contiguous_id[record["category_id"]]]
            rows.append([index, name, round(record["score"], 3), area, round(100 * area / pixels, 2)])
        return rows
    labels = np.asarray(Image.open(files["sem_seg.png"]))
    assert labels.shape == size
    names = {dataset_id: metadata.stuff_classes[contiguous]
             for dataset_id, contiguous in metadata.stuff_dataset_id_to_contiguous_id.items()}
    return [[int(label), names[int(label)], None, int(count), round(100 * count / pixels, 2)]
            for label, count in zip(*np.unique(labels, return_counts=True))
            if int(label) in names]  # sorted by label: the contiguous order of the synthetic classes


@pytest.mark.parametrize("height, width", [(48, 60), (150, 200)])  # kept (enlarged for the model); made smaller
def test_results_equal_the_demo_files_and_the_table_describes_them(tmp_path, opts, web_demo, height, width):
    path = upload(tmp_path, "my photo.png", height, width, seed=1)
    demo = import_script(REPO / "demo" / "demo.py", "demo")
    np.random.seed(0)  # detectron2's Visualizer jitters the colours of things at random
    assert demo.main(["--config-file", CONFIG, "--input", str(path), "--output", str(tmp_path / "demo"),
                      "--confidence-threshold", str(THRESHOLD), "--opts", *opts]) == 0
    for task in TASKS:
        result = web_demo.segment(str(path), task, THRESHOLD)
        names = {"panoptic": ["my photo_panoptic.png", "my photo_panoptic.json"],
                 "instance": ["my photo_instances.json"], "semantic": ["my photo_sem_seg.png"]}[task]
        assert [file.name for file in result.files] == names
        for file in result.files:
            assert file.read_bytes() == (tmp_path / "demo" / file.name).read_bytes(), file.name
        rows = expected_rows(task, result.files, web_demo.predictor.metadata, (height, width))
        assert result.rows == rows and all(len(row) == len(SEGMENT_COLUMNS) for row in rows)
        assert len(rows) >= (1 if task == "semantic" else 2)  # the random model's semantic map may be one class
        if task != "instance":  # instances may overlap; segments and labels do not
            assert sum(row[3] for row in rows) <= height * width
        test_size = web_demo.predictor.output_size(height, width)
        assert result.visualization.shape == (*test_size, 3) and result.visualization.dtype == np.uint8
        processed = f", processed at {test_size[1]}x{test_size[0]} (the model's test size)" if test_size != (height, width) else ""
        assert result.summary.startswith(f"**{task}**: {len(rows)} segments in ")
        assert result.summary.endswith(f" s on cpu; my photo.png, {width}x{height}{processed}")
    # the demo draws the richest result, the panoptic one: the page's drawing for the panoptic task
    np.random.seed(0)
    panoptic = web_demo.segment(str(path), "panoptic", THRESHOLD).visualization
    np.testing.assert_array_equal(panoptic, np.asarray(Image.open(tmp_path / "demo" / "my photo.png")))


def test_the_upload_name_names_the_files_and_each_request_replaces_the_last(tmp_path, web_demo):
    path = upload(tmp_path, "image.png", 40, 56, seed=2)
    first = web_demo.segment(str(path), "semantic", name="Straße photo.v2.png")
    assert [file.name for file in first.files] == ["Straße photo.v2_sem_seg.png"]
    second = web_demo.segment(str(path), "panoptic", name="second.jpg")
    assert json.loads(second.files[1].read_text())["image_id"] == "second"
    assert not first.files[0].exists() and all(file.exists() for file in second.files)
    assert first.files[0].parent.parent == second.files[0].parent.parent == web_demo.results_root


def test_the_results_folder_goes_with_the_demo(tmp_path, web_demo):
    other = WebDemo(web_demo.predictor, results_root=str(tmp_path))
    other.segment(str(upload(tmp_path, "photo.png", 40, 56, seed=3)), "semantic")
    folder = other.results_root
    assert folder.parent == tmp_path and any(folder.rglob("photo_sem_seg.png"))
    del other
    assert not folder.exists()


def test_unreadable_uploads_are_refused_naming_the_upload(tmp_path, web_demo):
    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    for name in ("broken.png", "notes.txt"):
        with pytest.raises(RequestError, match=f"Cannot read image file {name}: ") as error:
            web_demo.segment(str(folder / name), "panoptic")
        assert str(tmp_path) not in str(error.value)  # the server's upload folder means nothing to the user
    with pytest.raises(RequestError, match="Cannot read image file holiday.png"):
        web_demo.segment(str(folder / "broken.png"), "panoptic", name="holiday.png")


@pytest.mark.parametrize("task, threshold, match", [
    ("depth", 0.5, "Task 'depth': this model offers panoptic, instance, semantic"),
    ("panoptic", 1.5, r"score threshold must be a number in \[0, 1\], got 1.5"),
    ("panoptic", "0.5", r"got '0.5'"),
    ("panoptic", None, "got None"),
])  # fmt: skip
def test_bad_requests_are_refused_before_reading(tmp_path, web_demo, task, threshold, match):
    with pytest.raises(RequestError, match=match):
        web_demo.segment(str(tmp_path / "never_read.png"), task, threshold)


def test_the_page_offers_the_config_tasks_and_the_segment_endpoint(tmp_path):
    pytest.importorskip("gradio", reason="the web demo's extra is not installed: pip install '.[app]'")
    import gradio as gr

    instance_only = str(CONFIGS / "synthetic" / "instance" / "dinat_mini.yaml")
    web_demo = WebDemo(Predictor(app_config(instance_only)), results_root=str(tmp_path))
    assert web_demo.tasks == ("instance",)
    page = build_page(web_demo, "synthetic/instance/dinat_mini", 0.3)
    (segment,) = [fn for fn in page.fns.values() if fn.api_name == "segment"]
    image, task, threshold = segment.inputs
    assert isinstance(image, gr.Image) and isinstance(task, gr.Radio) and isinstance(threshold, gr.Slider)
    assert [choice[1] for choice in task.choices] == ["instance"] and task.value == "instance"
    assert threshold.value == 0.3
    assert [type(block) for block in segment.outputs] == [gr.Image, gr.Dataframe, gr.File, gr.Markdown]
    assert segment.concurrency_limit == 1  # one request at a time per model


def test_configs_from_a_file_or_the_model_zoo(opts):
    cfg = app_config(CONFIG, opts=opts)
    assert cfg.MODEL.WEIGHTS == opts[1] and cfg.INPUT.MIN_SIZE_TEST == 64 and cfg.is_frozen()
    released = "coco/panoptic/dinat_l"
    assert app_config(model=released).MODEL.WEIGHTS == model_zoo.get_checkpoint_url(released)  # nothing read yet
    assert app_config(model=released, opts=["MODEL.WEIGHTS", "mine.pth"]).MODEL.WEIGHTS == "mine.pth"
    assert app_config(model="synthetic/panoptic/dinat_mini", opts=opts).MODEL.WEIGHTS == opts[1]
    with pytest.raises(ValueError, match="synthetic/panoptic/dinat_mini has no released checkpoint"):
        app_config(model="synthetic/panoptic/dinat_mini")
    with pytest.raises(ValueError, match="No model 'coco/panoptic/dinat_xl' in the model zoo"):
        app_config(model="coco/panoptic/dinat_xl")
    for both_or_neither in [{"config_file": CONFIG, "model": released}, {}]:
        with pytest.raises(ValueError, match="either a config file or a model zoo name"):
            app_config(**both_or_neither)


def test_the_package_imports_without_gradio():
    code = ("import sys; sys.modules['gradio'] = None\n"  # import gradio now raises ImportError
            "import dinat_m2f, dinat_m2f.app\n"
            "assert 'gradio' not in [name for name, module in sys.modules.items() if module is not None]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
