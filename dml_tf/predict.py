r"""Classifies images with a trained run, or exports it as one Keras model.

    python -m dml_tf.predict --model_dir=runs/mine_dml photo.jpg more_photos/
    python -m dml_tf.predict --model_dir=runs/mine_dml --members --top_k=3 --output=preds.csv photos/
    python -m dml_tf.predict --model_dir=runs/mine_dml --export=classifier.keras
    python -m dml_tf.predict --model_dir=runs/mine_dml --export=classifier_savedmodel
    python -m dml_tf.predict --model_dir=runs/mine_dml --export=member.tflite --quantize=int8

For every image (files, or folders searched recursively for .jpg, .jpeg, .png, .bmp,
.gif), prints the ``--top_k`` classes, by name, with their probabilities under the
ensemble (the mean of the members' probabilities), and under every member with
``--members``. ``--output`` writes them as CSV (one row per image, source and rank) or
JSON, by its extension, row by row as the images are classified (into ``FILE.partial``,
renamed to FILE at the end). Images are streamed a batch (``--batch_size``) at a time,
read as training reads them (decoded, turned upright by their EXIF orientation, made
RGB, resized to the members' input size) and standardised as in training.

``--export=FILE.keras`` writes one self-contained Keras model of the ensemble (or of
member ``--export_member``) that takes raw images of any size, 0-255
(:mod:`dml_tf.export`): ``keras.models.load_model(FILE).predict(images)`` works without
dml_tf. ``--export=DIR`` (a folder) writes it as a TensorFlow SavedModel with a serving
signature (uint8 images in; probabilities, class index and class name out);
``--export=FILE.tflite`` one member (``--export_member``, default the smallest) as
TensorFlow Lite, float32, or full-integer with ``--quantize=int8`` (:mod:`dml_tf.deploy`).
"""

import csv
import json
import os

from absl import app, flags

from dml_tf import cli_flags

FLAGS = flags.FLAGS


def define_flags():
    cli_flags.define("string", "model_dir", None, "A finished run's folder (results.json, member_K.keras).")
    cli_flags.define("integer", "top_k", 5, "Classes shown per image.")
    cli_flags.define("bool", "members", False, "Also show every member's top classes.")
    cli_flags.define("string", "output", None, "Write the predictions to this .csv or .json file.")
    cli_flags.define("string", "export", None, "Write the run taking raw images: FILE.keras (one Keras "
                     "model), DIR (a TensorFlow SavedModel with a serving signature) or FILE.tflite "
                     "(TensorFlow Lite, one member).")
    cli_flags.define("integer", "export_member", None, "With --export: that member instead of the ensemble "
                     "(.tflite: default the smallest member).")
    cli_flags.define("enum", "quantize", None, ["int8"], "With --export=FILE.tflite: full-integer "
                     "quantisation, calibrated on the run's training images.")
    cli_flags.define("integer", "batch_size", 64, "Images per prediction batch.")


def image_files(paths):
    """The image files named by ``paths`` (files as given; folders searched recursively, in
    sorted order, hidden names skipped as training skips them); ValueError naming a path
    that does not exist or holds no image."""
    from dml_tf.data.folder import FORMATS, walk_images

    files = []
    for path in paths:
        if os.path.isdir(path):
            found = walk_images(path)
            if not found:
                raise ValueError(f"{path} holds no image ({', '.join(FORMATS)}).")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ValueError(f"{path} does not exist.")
    return files


def top_classes(probs, class_names, k):
    """``[{"class", "index", "probability"}]`` of the ``k`` most probable classes."""
    order = probs.argsort()[::-1][:k]
    return [{"class": class_names[i], "index": int(i), "probability": float(probs[i])} for i in order]


def iter_predictions(model_dir, paths, top_k=5, batch_size=64):
    """Per image, in order, as each batch of ``batch_size`` is classified: ``{"image",
    "ensemble": top classes, "members": [top classes per member]}``. The images are
    streamed (read, decoded and resized as training reads them, a batch at a time), never
    all held at once."""
    import numpy as np

    from dml_tf import export, run_dir
    from dml_tf.data import folder

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k}.")
    results = run_dir.read_results(model_dir)
    shape = export.preprocessing(results)[0]
    classes = (results.get("dataset") or {}).get("class_names") or \
        [str(i) for i in range(results["dataset"]["num_classes"])]
    files = image_files(paths)
    model = export.classifier(model_dir, all_outputs=True)
    source = folder.image_files(files, image_size=shape[:2])
    k, done, channels = min(top_k, len(classes)), 0, {}
    for images, batch_channels in source.batches(batch_size):
        outputs = [np.asarray(o) for o in model.predict_on_batch(images)]
        for c in batch_channels.numpy():
            channels[int(c)] = channels.get(int(c), 0) + 1
        for i in range(len(outputs[0])):
            yield {"image": files[done + i],
                   "ensemble": top_classes(outputs[0][i], classes, k),
                   "members": [top_classes(o[i], classes, k) for o in outputs[1:]]}
        done += len(outputs[0])
    folder.say_conversions(channels)


def predict(model_dir, paths, top_k=5, batch_size=64):
    """:func:`iter_predictions` as a list."""
    return list(iter_predictions(model_dir, paths, top_k, batch_size))


def _rows(predictions, members):
    for p in predictions:
        sources = [("ensemble", p["ensemble"])]
        if members:
            sources += [(f"member_{k}", top) for k, top in enumerate(p["members"])]
        for source, top in sources:
            for rank, entry in enumerate(top, 1):
                yield {"image": p["image"], "source": source, "rank": rank, "class": entry["class"],
                       "probability": f"{entry['probability']:.6f}"}


class PredictionWriter:
    """Writes predictions to ``path`` (.csv: one row per image, source and rank; .json: a
    list) as they come, into ``path.partial``, flushed after every prediction; ``close()``
    renames it to ``path`` (atomically). A stopped run leaves ``path.partial`` with the
    predictions so far."""

    def __init__(self, path, members):
        if not path.endswith((".csv", ".json")):
            raise ValueError(f"--output must end in .csv or .json; got {path}.")
        self.path, self.members, self.count = path, members, 0
        self.partial = path + ".partial"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(self.partial, "w", newline="")
        if path.endswith(".csv"):
            self.csv = csv.DictWriter(self.file, ["image", "source", "rank", "class", "probability"])
            self.csv.writeheader()
        else:
            self.csv = None
            self.file.write("[")

    def write(self, prediction):
        if self.csv is not None:
            self.csv.writerows(_rows([prediction], self.members))
        else:
            entry = prediction if self.members else {k: v for k, v in prediction.items() if k != "members"}
            self.file.write(("," if self.count else "") + "\n" + json.dumps(entry))
        self.count += 1
        self.file.flush()

    def close(self):
        if self.csv is None:
            self.file.write("\n]\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self.path)


def write_predictions(path, predictions, members):
    """``path`` (.csv or .json) of ``predictions``, through :class:`PredictionWriter`."""
    writer = PredictionWriter(path, members)
    for prediction in predictions:
        writer.write(prediction)
    writer.close()


def format_predictions(predictions, members):
    lines = []
    for p in predictions:
        lines.append(f"{p['image']}: " + ", ".join(f"{e['class']} {e['probability']:.3f}" for e in p["ensemble"]))
        if members:
            lines += [f"  member {k}: " + ", ".join(f"{e['class']} {e['probability']:.3f}" for e in top)
                      for k, top in enumerate(p["members"])]
    return "\n".join(lines)


def export_model(model_dir, path, member=None, quantize=None):
    """Writes the run to ``path``: a .keras file (:func:`dml_tf.export.classifier`), a .tflite
    file (:func:`dml_tf.deploy.tflite`) or a SavedModel folder (:func:`dml_tf.deploy.saved_model`),
    atomically. Returns what was written, in words."""
    from dml_tf import deploy, export
    from dml_tf.io_utils import atomic_output

    if quantize is not None and not path.endswith(".tflite"):
        raise ValueError(f"--quantize needs --export=FILE.tflite; got {path}.")
    if path.endswith(".tflite"):
        chosen, size = deploy.tflite(model_dir, path, member=member, quantize=quantize)
        kind = "full-integer (int8)" if quantize else "float32"
        return (f"member {chosen}{' (the smallest by parameter count)' if member is None else ''}, "
                f"TensorFlow Lite {kind}, {size / 1e6:.2f} MB")
    if path.endswith(".keras"):
        atomic_output(path, export.classifier(model_dir, member=member).save)
        return "Keras model"
    if not deploy.is_saved_model_path(path):
        raise ValueError(f"--export must be FILE.keras, FILE.tflite or a folder (a name without a file "
                         f"extension) for a TensorFlow SavedModel; got {path}.")
    deploy.saved_model(model_dir, path, member=member)
    return "TensorFlow SavedModel (serving signature: uint8 images in; probabilities, class_index, class_name out)"


def main(argv):
    from dml_tf.errors import DMLError

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required: the folder of a finished run.")
    if len(argv) < 2 and not FLAGS.export:
        raise app.UsageError("Name images or folders to classify, or pass --export=FILE.keras, DIR or "
                             "FILE.tflite.")
    for flag in ("export_member", "quantize"):
        if FLAGS[flag].value is not None and not FLAGS.export:
            raise app.UsageError(f"--{flag} needs --export.")
    if FLAGS.output and not FLAGS.output.endswith((".csv", ".json")):
        raise app.UsageError(f"--output must end in .csv or .json; got {FLAGS.output}.")
    try:
        if FLAGS.export:
            what = export_model(FLAGS.model_dir, FLAGS.export, FLAGS.export_member, FLAGS.quantize)
            which = "the ensemble" if FLAGS.export_member is None else f"member {FLAGS.export_member}"
            if FLAGS.export.endswith(".tflite"):
                print(f"Wrote {FLAGS.export}: {what}; images of the members' input size in, class "
                      "probabilities out.")
            else:
                print(f"Wrote {FLAGS.export}: {which}, {what}; raw images (any size, 0-255) in, class "
                      "probabilities out.")
        if len(argv) > 1:
            writer = PredictionWriter(FLAGS.output, FLAGS.members) if FLAGS.output else None
            for prediction in iter_predictions(FLAGS.model_dir, argv[1:], FLAGS.top_k, FLAGS.batch_size):
                print(format_predictions([prediction], FLAGS.members), flush=True)
                if writer is not None:
                    writer.write(prediction)
            if writer is not None:
                writer.close()
                print(f"Wrote {FLAGS.output}")
    except (DMLError, ValueError, OSError) as e:
        raise app.UsageError(str(e)) from None


def run():
    from dml_tf import cli

    define_flags()
    cli.run(main, doc=__doc__)


if __name__ == "__main__":
    run()
