"""A client loop for tests that change what a server serves while it is asked: nothing may fail."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

__all__ = ["ScoreLoop"]


class ScoreLoop:
    """``workers`` threads posting one row to ``:score`` of ``model`` in a loop, each request keyed, until
    the ``with`` block ends: the versions that answered (``served``) and every failed request (``failures``)."""

    def __init__(self, url: str, model: str, row: object, *, workers: int = 3) -> None:
        self.url, self.model, self.row = url, model, row
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(workers)]

    def __enter__(self) -> ScoreLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self, worker: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {"instances": [self.row], "key": f"{worker}-{n}"}
                answer = http.post(f"{self.url}/v1/models/{self.model}:score", json=body)
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code} {answer.text}")
                else:
                    self.served[answer.json()["model_version"]] += 1
