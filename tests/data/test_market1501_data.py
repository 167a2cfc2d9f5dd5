"""dml_tf.data.market1501 on a tiny generated Market-1501 folder."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from dml_tf.data import market1501
from dml_tf.errors import DataError, DatasetNotFoundError
import helpers_market
from helpers_data import collect
from paths import ROOT

SIZE = (8, 4)  # tiny network input for speed


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("market") / "Market-1501-v15.09.15"
    written = helpers_market.write_market1501(root)
    return str(root), written


def _split_pixels(split):
    return np.concatenate([b.numpy() for b in split.images])


def _reference_image(data_dir, split, name, size=SIZE):
    folder = market1501.FOLDERS[split]
    return market1501.preprocess(tf.io.read_file(os.path.join(data_dir, folder, name)), size).numpy()


# --------------------------------------------------------------------------------------
# File names.
# --------------------------------------------------------------------------------------
def test_parse_filename():
    assert market1501.parse_filename("0002_c1s1_000451_03.jpg") == (2, 1, 1, 451, 3)
    assert market1501.parse_filename("/x/1501_c6s4_001877_00.jpg") == (1501, 6, 4, 1877, 0)
    junk = market1501.parse_filename("-1_c1s1_000401_03.jpg")
    assert junk.person_id == -1 and junk.camera == 1 and junk.frame == 401
    assert market1501.parse_filename("0000_c3s2_000100_01.jpg").person_id == 0  # distractor
    for bad in [
        "0002_c7s1_000451_03.jpg",  # camera 7
        "0002_c0s1_000451_03.jpg",
        "2_c1s1_000451_03.jpg",
        "0002_c1s1_451_03.jpg",
        "-2_c1s1_000401_03.jpg",
        "0002_c1s1_000451_03.png",
        "Thumbs.db",
        "0002_c1s1_000451_03.jpg.bak",
    ]:
        with pytest.raises(DataError, match="PPPP_cCsS_FFFFFF_BB"):
            market1501.parse_filename(bad)


def test_list_split_sorted_and_ignores_non_jpg(market):
    data_dir, written = market
    gallery = market1501.list_split(data_dir, "gallery")
    assert list(gallery.filenames) == written["gallery"]  # Thumbs.db left out
    assert gallery.filenames[0].startswith("-1_")  # junk, as spelled in the real set
    assert set(gallery.ids) == {-1, 0, 1, 3, 5}
    assert gallery.cams.min() >= 1 and gallery.cams.max() <= 6
    parsed = [market1501.parse_filename(n) for n in gallery.filenames]
    np.testing.assert_array_equal(gallery.ids, [p.person_id for p in parsed])
    np.testing.assert_array_equal(gallery.cams, [p.camera for p in parsed])


# --------------------------------------------------------------------------------------
# The folder loader.
# --------------------------------------------------------------------------------------
def test_load_folders(market):
    data_dir, written = market
    bundle = market1501.load(data_dir, batch_size=4, image_size=SIZE, source="folders")
    train_ids = sorted(helpers_market.TRAIN)
    assert bundle.name == "market1501" and bundle.test is None
    assert bundle.num_classes == len(train_ids) == 4
    assert bundle.input_shape == (8, 4, 3)
    assert bundle.train_size == len(written["train"]) == 10
    np.testing.assert_array_equal(bundle.info["train_ids"], train_ids)  # label k <-> original id
    images, labels = collect(bundle.train)
    assert images.shape == (10, 8, 4, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < -0.5 and images.max() > 0.5
    expected = sorted(train_ids.index(pid) for pid, cams in helpers_market.TRAIN.items() for _ in cams)
    assert sorted(labels.tolist()) == expected
    # every training image is its file, preprocessed, flipped or not -- and both happen
    references = {}
    for name in written["train"]:
        label = train_ids.index(market1501.parse_filename(name).person_id)
        references.setdefault(label, []).append(_reference_image(data_dir, "train", name))
    flipped = []
    for image, label in zip(images, labels):
        plain = [np.allclose(image, r, atol=1e-6) for r in references[label]]
        mirrored = [np.allclose(image, r[:, ::-1], atol=1e-6) for r in references[label]]
        assert any(plain) or any(mirrored)
        flipped.append(any(mirrored))
    assert 0 < sum(flipped) < len(flipped)
    # evaluation splits: fixed order, unaugmented
    assert set(bundle.extras) == {"query", "gallery", "gt_bbox", "train_labels", "standardisation"}
    assert bundle.extras["standardisation"] == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # images in [-1, 1]
    for split in ("query", "gallery", "gt_bbox"):
        extra = bundle.extras[split]
        assert list(extra.filenames) == written[split]
        assert len(extra) == len(written[split])
        pixels = _split_pixels(extra)
        assert pixels.shape == (len(extra), 8, 4, 3)
        np.testing.assert_allclose(pixels[0], _reference_image(data_dir, split, extra.filenames[0]), atol=1e-6)
    assert -1 in bundle.extras["gallery"].ids and 0 in bundle.extras["gallery"].ids


def test_default_image_size_and_batches(market):
    data_dir, _ = market
    bundle = market1501.load(data_dir, batch_size=16)
    assert bundle.input_shape == (224, 224, 3)
    x, y = next(iter(bundle.train))
    assert x.shape == (10, 224, 224, 3) and y.dtype == tf.int32
    with pytest.raises(ValueError, match="image_size"):
        market1501.load(data_dir, image_size=(224,))
    assert market1501.parse_image_size("256,128") == (256, 128)


def test_shuffle_and_flips_are_seeded(market):
    data_dir, _ = market
    first = collect(market1501.load(data_dir, batch_size=3, seed=5, image_size=SIZE).train)
    again = collect(market1501.load(data_dir, batch_size=3, seed=5, image_size=SIZE).train)
    other = collect(market1501.load(data_dir, batch_size=3, seed=6, image_size=SIZE).train)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    # a new epoch reshuffles (deterministically)
    dataset = market1501.load(data_dir, batch_size=3, seed=5, image_size=SIZE).train
    epoch1, epoch2 = collect(dataset), collect(dataset)
    np.testing.assert_array_equal(epoch1[0], first[0])
    assert not np.array_equal(epoch1[0], epoch2[0])


def test_junk_and_distractors_never_enter_training(tmp_path):
    extra = ["-1_c1s1_000401_03.jpg", "0000_c2s1_000402_01.jpg"]
    helpers_market.write_market1501(tmp_path, train_extra_names=extra)
    bundle = market1501.load(str(tmp_path), batch_size=32, image_size=SIZE)
    assert bundle.info["dropped"] == {"junk": 1, "distractor": 1}
    assert bundle.train_size == 10 and bundle.num_classes == 4
    _, labels = collect(bundle.train)
    assert len(labels) == 10 and labels.min() >= 0


def test_labeled_ids(market):
    data_dir, _ = market
    first = market1501.load(data_dir, image_size=SIZE, labeled_ids=2, labeled_selection="first")
    assert first.num_classes == 2
    np.testing.assert_array_equal(first.info["labeled_ids"], [2, 7])
    _, labels = collect(first.train)
    assert sorted(labels.tolist()) == [-1] * 5 + [0, 0, 0, 1, 1]  # ids 2 (3 images), 7 (2)
    assert first.train_size == 10 and first.labeled_size == 5
    rand = market1501.load(data_dir, image_size=SIZE, labeled_ids=2, seed=3)
    again = market1501.load(data_dir, image_size=SIZE, labeled_ids=2, seed=3)
    np.testing.assert_array_equal(rand.info["labeled_ids"], again.info["labeled_ids"])
    assert len(rand.info["labeled_ids"]) == 2 and rand.num_classes == 2
    assert market1501.load(data_dir, image_size=SIZE, labeled_fraction=0.5).num_classes == 2
    with pytest.raises(ValueError, match="labeled_ids"):
        market1501.load(data_dir, image_size=SIZE, labeled_ids=5)


# --------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------
def test_missing_data_dir_says_how_to_get_it(tmp_path):
    for data_dir in (None, str(tmp_path / "nowhere")):
        with pytest.raises(DatasetNotFoundError, match="Market-1501-v15.09.15.zip"):
            market1501.load(data_dir)


def test_missing_split_folder_names_it(tmp_path):
    helpers_market.write_market1501(tmp_path)
    shutil.rmtree(tmp_path / "query")
    with pytest.raises(DataError, match=r"query is missing.*bounding_box_train"):
        market1501.load(str(tmp_path), image_size=SIZE)
    with pytest.raises(FileNotFoundError):
        market1501.load(str(tmp_path), image_size=SIZE)


def test_parent_folder_gets_a_hint(tmp_path):
    outer = tmp_path / "outer"
    helpers_market.write_market1501(outer / "Market-1501-v15.09.15")
    with pytest.raises(DatasetNotFoundError, match="did you mean --data_dir=.*Market-1501-v15.09.15"):
        market1501.load(str(outer), image_size=SIZE)


def test_missing_gt_bbox_only_disables_multi_query(tmp_path):
    helpers_market.write_market1501(tmp_path, gt_bbox=False)
    bundle = market1501.load(str(tmp_path), image_size=SIZE)
    assert set(bundle.extras) == {"query", "gallery", "train_labels", "standardisation"} and not bundle.info["multi_query"]


def test_unparsable_names_fail_or_are_skipped(tmp_path):
    bad = ["0001_c9s1_000100_01.jpg", "person.jpg"]
    helpers_market.write_market1501(tmp_path, gallery_extra_names=bad)
    with pytest.raises(DataError, match=r"2 file name\(s\).*0001_c9s1_000100_01.jpg, person.jpg"):
        market1501.load(str(tmp_path), image_size=SIZE)
    bundle = market1501.load(str(tmp_path), image_size=SIZE, skip_unparsable=True)
    assert bundle.info["unparsable_skipped"]["gallery"] == 2
    assert len(bundle.extras["gallery"]) == len(helpers_market.GALLERY)


# --------------------------------------------------------------------------------------
# TFRecords.
# --------------------------------------------------------------------------------------
def test_tfrecords_match_folders(market, tmp_path):
    data_dir, _ = market
    out = tmp_path / "records"
    manifest = market1501.write_tfrecords(data_dir, str(out), shard_size=4)
    assert len(manifest["splits"]["train"]["shards"]) == 3  # 10 images, 4 per shard
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    folders = market1501.load(data_dir, batch_size=4, seed=2, image_size=SIZE, source="folders")
    records = market1501.load(data_dir, batch_size=4, seed=2, image_size=SIZE, source="tfrecords", tfrecord_dir=out)
    assert records.info["source"] == "tfrecords"
    assert records.num_classes == folders.num_classes and records.train_size == folders.train_size
    for split in ("query", "gallery", "gt_bbox"):
        a, b = folders.extras[split], records.extras[split]
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.cams, b.cams)
        np.testing.assert_array_equal(a.filenames, b.filenames)
        np.testing.assert_array_equal(_split_pixels(a), _split_pixels(b))
    folder_epoch, record_epoch = collect(folders.train), collect(records.train)
    np.testing.assert_array_equal(folder_epoch[1], record_epoch[1])
    np.testing.assert_array_equal(folder_epoch[0], record_epoch[0])
    # no manifest (e.g. an interrupted conversion) -> a clear error
    os.remove(out / market1501.MANIFEST)
    with pytest.raises(DataError, match="convert_market1501"):
        market1501.load(data_dir, image_size=SIZE, source="tfrecords", tfrecord_dir=out)


def _convert(*args):
    """tools/convert_market1501.py's main with ``args``, in process; returns its exit code."""
    from absl import flags

    path = os.path.join(ROOT, "tools", "convert_market1501.py")
    before = set(flags.FLAGS)
    spec = importlib.util.spec_from_file_location("convert_market1501_under_test", path)
    tool = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(tool)
        flags.FLAGS(["convert", *args])
        return tool.main(["convert"])
    finally:
        flags.FLAGS.unparse_flags()
        for name in set(flags.FLAGS) - before:  # leave the process's flags as they were
            delattr(flags.FLAGS, name)


def test_convert_tool_and_auto_source(tmp_path):
    data_dir = tmp_path / "Market-1501-v15.09.15"
    helpers_market.write_market1501(data_dir, train_extra_names=["-1_c1s1_000401_03.jpg"])
    assert _convert(f"--data_dir={data_dir}", "--shard_size=5") == 0
    with open(data_dir / "tfrecords" / market1501.MANIFEST) as f:
        manifest = json.load(f)
    assert manifest["splits"]["train"]["num_examples"] == 11  # the junk image is kept on disk
    bundle = market1501.load(str(data_dir), image_size=SIZE)  # source="auto" finds them
    assert bundle.info["source"] == "tfrecords"
    assert bundle.info["dropped"] == {"junk": 1, "distractor": 0} and bundle.train_size == 10


def test_convert_tool_names_an_output_dir_it_cannot_write(market, tmp_path):
    from absl import app

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(app.UsageError, match=f"output_dir={blocker} is a file, not a folder"):
        _convert(f"--data_dir={market[0]}", f"--output_dir={blocker}")
    with pytest.raises(app.UsageError, match=f"output_dir={blocker}/records is not writable"):
        _convert(f"--data_dir={market[0]}", f"--output_dir={blocker}/records")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(app.UsageError, match="is not writable .Permission denied"):
            _convert(f"--data_dir={market[0]}", f"--output_dir={locked}/records")


def test_images_that_are_not_jpeg_are_named(tmp_path):
    """A zero-byte or non-JPEG image would fail inside training (DecodeJpeg) naming no
    file, and be copied into the TFRecords without a word."""
    written = helpers_market.write_market1501(tmp_path)
    empty = tmp_path / "bounding_box_train" / written["train"][3]
    empty.write_bytes(b"")
    png = tmp_path / "bounding_box_test" / written["gallery"][1]
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(DataError, match=rf"1 image\(s\) in {tmp_path}/bounding_box_train .*"
                                        rf"{written['train'][3]} \(empty file\).*original Market-1501"):
        market1501.load(str(tmp_path), image_size=SIZE)
    with pytest.raises(DataError, match=f"{written['train'][3]} .empty file"):
        market1501.write_tfrecords(str(tmp_path), str(tmp_path / "records"))
    assert not (tmp_path / "records" / market1501.MANIFEST).exists()
    empty.write_bytes(png.read_bytes())
    os.remove(png)
    with pytest.raises(DataError, match=f"{written['train'][3]} .not a JPEG"):
        market1501.load(str(tmp_path), image_size=SIZE)
    os.remove(empty)
    assert len(market1501.load(str(tmp_path), image_size=SIZE, batch_size=1).train) == 9


def test_registry_loads_market1501(market):
    from dml_tf import data

    bundle = data.load("market1501", data_dir=market[0], batch_size=2, image_size=SIZE)
    assert bundle.num_classes == 4


def test_two_step_resize_of_the_original(market, tmp_path):
    """Both sources give the original code's pixels: its conversion's resize to 160x64
    (PIL bilinear), then TF1's resize_images to the network input (here 8x4, and 224x224)."""
    data_dir, written = market
    market1501.write_tfrecords(data_dir, str(tmp_path / "records"))
    for source in ("folders", "tfrecords"):
        for size in (SIZE, (224, 224)):
            bundle = market1501.load(data_dir, batch_size=4, image_size=size, source=source,
                                     tfrecord_dir=str(tmp_path / "records"))
            query = bundle.extras["query"]
            expected = np.stack([helpers_market.original_preprocess(
                os.path.join(data_dir, "query", name), size) for name in query.filenames])
            np.testing.assert_allclose(_split_pixels(query), expected, atol=helpers_market.ORIGINAL_ATOL)
    # the records hold the 160x64 images as PNG, exactly the folders' first step
    with open(tmp_path / "records" / market1501.MANIFEST) as f:
        manifest = json.load(f)
    assert manifest["version"] == 2 and manifest["stored_size"] == [160, 64]
    shard = str(tmp_path / "records" / manifest["splits"]["query"]["shards"][0])
    record = tf.io.parse_single_example(next(iter(tf.data.TFRecordDataset(shard))), {
        "image/encoded": tf.io.FixedLenFeature([], tf.string), "image/format": tf.io.FixedLenFeature([], tf.string)})
    assert record["image/format"].numpy() == b"png"
    stored = tf.io.decode_png(record["image/encoded"]).numpy()
    first = tf.io.decode_jpeg(tf.io.read_file(os.path.join(data_dir, "query", written["query"][0])), channels=3)
    np.testing.assert_array_equal(stored, market1501.stored_image(first).numpy())
    assert stored.shape == (160, 64, 3)
