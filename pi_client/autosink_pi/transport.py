"""How the device fetches from the channel: python-tuf's ``FetcherInterface`` over urllib (the
channel over HTTP(S)) or a local folder (a mounted channel, and tests).

python-tuf bounds every download by the length the signed metadata declares (endless data). This
fetcher adds what a flaky link and a hostile server need on top:

- a dropped connection resumes where it stopped (HTTP ``Range``), up to ``retries`` times;
- slow retrieval: after ``grace_s``, a transfer slower than ``min_bytes_per_s`` on average is cut
  (a server dripping a byte at a time never trips a socket timeout);
- a timeout on every socket operation.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

CHUNK = 1 << 16


class Fetcher(FetcherInterface):
    def __init__(
        self, timeout_s: float = 30.0, retries: int = 4, min_bytes_per_s: float = 4096.0, grace_s: float = 10.0
    ):
        self.timeout_s, self.retries = timeout_s, retries
        self.min_bytes_per_s, self.grace_s = min_bytes_per_s, grace_s

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(("http://", "https://")):
            return self._local(Path(unquote(url.removeprefix("file://"))))
        return self._http(url)

    @staticmethod
    def _local(path: Path) -> Iterator[bytes]:
        if not path.is_file():
            raise exceptions.DownloadHTTPError(f"{path} does not exist", 404)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def _http(self, url: str) -> Iterator[bytes]:
        have, failures, started = 0, 0, time.monotonic()
        while True:
            request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
            try:
                response = urllib.request.urlopen(request, timeout=self.timeout_s)
            except urllib.error.HTTPError as e:
                raise exceptions.DownloadHTTPError(f"{url}: HTTP {e.code}", e.code) from None
            except (urllib.error.URLError, OSError) as e:
                failures += 1
                if failures > self.retries:
                    raise exceptions.DownloadError(f"{url}: {e} after {failures} attempts") from None
                time.sleep(min(2.0, 0.1 * 2**failures))
                continue
            with response:
                if have and response.status != 206:
                    raise exceptions.DownloadError(f"{url}: the server ignored the range request on resume")
                try:
                    while chunk := response.read1(CHUNK):
                        have += len(chunk)
                        elapsed = time.monotonic() - started
                        if elapsed > self.grace_s and have / elapsed < self.min_bytes_per_s:
                            raise exceptions.SlowRetrievalError(
                                f"{url}: {have} bytes in {elapsed:.1f} s, under {self.min_bytes_per_s:.0f} B/s"
                            )
                        yield chunk
                except OSError as e:  # a reset, a socket timeout
                    dropped = str(e)
                else:
                    if not response.length:  # everything the server announced arrived
                        return
                    dropped = f"the connection closed with {response.length} bytes to go"
            failures += 1
            if failures > self.retries:
                raise exceptions.DownloadError(f"{url}: {dropped} after {failures} attempts")
            time.sleep(min(2.0, 0.1 * 2**failures))
