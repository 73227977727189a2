"""Times tf.compat.v1.train.Saver: ``python tf_saver.py FOLDER '[[shape], ...]'`` prints
{"save": seconds, "restore": seconds} (save counted with an fsync of the files written);
exits 3 when TensorFlow is missing."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    try:
        import tensorflow as tf
    except ImportError:
        return 3
    folder, shapes = Path(sys.argv[1]), json.loads(sys.argv[2])
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    variables = [tf1.get_variable(f"v{i}", shape, tf.float32,
                                  initializer=tf1.random_uniform_initializer())
                 for i, shape in enumerate(shapes)]
    saver = tf1.train.Saver(variables)
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        start = time.perf_counter()
        prefix = saver.save(sess, str(folder / "tf_model"), write_meta_graph=False)
        for name in os.listdir(folder):
            if name.startswith("tf_model") or name == "checkpoint":
                fd = os.open(folder / name, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        save = time.perf_counter() - start
        start = time.perf_counter()
        saver.restore(sess, prefix)
        restore = time.perf_counter() - start
    print(json.dumps({"save": save, "restore": restore}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
