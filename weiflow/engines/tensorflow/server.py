"""A parameter server or worker: a ``tf.distribute.Server`` that serves until it is stopped.

Started by a cluster backend with ``TF_CONFIG`` naming the cluster and this task. It never
exits by itself; the backend that started it stops it (see cluster.py).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    config = json.loads(os.environ["TF_CONFIG"])
    task = config["task"]
    import tensorflow as tf

    server = tf.distribute.Server(
        tf.train.ClusterSpec(config["cluster"]),
        job_name=task["type"],
        task_index=int(task["index"]),
        protocol="grpc",
        start=True,
    )
    print(f"{task['type']}:{task['index']} serving at {server.target}", flush=True)
    server.join()


if __name__ == "__main__":
    main()
