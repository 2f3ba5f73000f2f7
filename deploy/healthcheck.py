"""Container health probe: exit 0 when GET /health on this container's MOE_PORT answers 200, else 1.

Stdlib only (the image has no curl). The Dockerfile and docker-compose.yml run it as the HEALTHCHECK;
/health answers 503 while the engine is unhealthy, which urllib raises as an error, so that is exit 1.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("MOE_PORT", "8000")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"unhealthy: {url}: {err}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: status {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
