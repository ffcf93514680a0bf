"""A bare JSON-RPC helper for the benchmark's own chain work (building, mining, reorgs).

Deliberately independent of the indexer's client: what the benchmark does to the chain must
not depend on the code it measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import requests

_HEADERS = {"Content-Type": "application/json"}


class RpcFailed(RuntimeError):
    pass


class Rpc:
    def __init__(self, url: str, timeout: float = 120.0) -> None:
        self.url = url
        self.timeout = timeout
        self.session = requests.Session()

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        answer = self._post(body)
        if answer.get("error"):
            raise RpcFailed(f"{method}: {answer['error']}")
        return answer["result"]

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        if not calls:
            return []
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": list(params)}
            for i, (method, params) in enumerate(calls)
        ]
        answer = self._post(body)
        by_id = {item["id"]: item for item in answer}
        out = []
        for i, (method, _) in enumerate(calls):
            item = by_id[i]
            if item.get("error"):
                raise RpcFailed(f"{method}: {item['error']}")
            out.append(item["result"])
        return out

    def _post(self, body: object) -> Any:
        response = self.session.post(
            self.url, data=orjson.dumps(body), headers=_HEADERS, timeout=self.timeout
        )
        response.raise_for_status()
        return orjson.loads(response.content)

    def close(self) -> None:
        self.session.close()
