"""Converts the Market-1501 folders to sharded TFRecords (the original's input route).

    python -m tools.convert_market1501 --data_dir=.../Market-1501-v15.09.15 \
        [--output_dir=.../Market-1501-v15.09.15/tfrecords] [--shard_size=2000]

One set of shards per split (train = bounding_box_train, gallery = bounding_box_test,
query, gt_bbox when present); each example holds the image resized to 160x64 as
the original conversion does, as PNG (image/encoded; training resizes it on to the
network's input), the ORIGINAL person id (image/label, -1 junk, 0 distractor),
image/camera and image/filename. Shards are written to temporary files and renamed;
the manifest market1501_tfrecords.json is written last, so an interrupted conversion
is never read. Train with them via dml_tf.data.load("market1501", data_dir=...,
source="tfrecords") (default location data_dir/tfrecords, else tfrecord_dir=...).
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # started as python tools/NAME.py
    sys.exit(f"Run it from the repository root as: python -m tools.{os.path.basename(__file__)[:-3]}")

from absl import app, logging

from dml_tf import cli_flags
from tools import _common

FLAGS = _common.FLAGS

# cli_flags.define skips names another dml_tf module already defined in this process (e.g. --data_dir).
cli_flags.define("string", "data_dir", None, "The unzipped Market-1501-v15.09.15 folder.")
cli_flags.define("string", "output_dir", None, "Where to write the TFRecords; default DATA_DIR/tfrecords.")
cli_flags.define("integer", "shard_size", 2000, "Examples per shard.", lower_bound=1)
cli_flags.define("bool", "skip_unparsable", False, "Leave out .jpg files whose names do not parse instead of failing.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from dml_tf.data.market1501 import write_tfrecords
    from dml_tf.errors import DMLError

    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required: the unzipped Market-1501-v15.09.15 folder.")
    try:
        manifest = write_tfrecords(
            FLAGS.data_dir, FLAGS.output_dir, shard_size=FLAGS.shard_size, skip_unparsable=FLAGS.skip_unparsable
        )
    except DMLError as error:  # bad data, or an --output_dir that cannot be written
        raise app.UsageError(str(error)) from None
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.data_dir, "tfrecords")
    for split, info in manifest["splits"].items():
        logging.info("%s: %d examples in %d shard(s)", split, info["num_examples"], len(info["shards"]))
    print(f"Wrote Market-1501 TFRecords to {os.path.abspath(output_dir)}")
    return 0


if __name__ == "__main__":
    from dml_tf import cli

    cli.run(main)
