"""OCPP 2.1 GetLog (N01): the archive built by the station, uploaded to the central
system's remoteLocation, each step said in a LogStatusNotification (Uploading, then
Uploaded or UploadFailure).

HTTP and HTTPS only, by PUT of the archive's bytes (a remoteLocation that ends in "/" gets
the file name appended); an FTP location is refused at the request (Rejected,
UnsupportedProtocol). HTTPS is verified against the station's CA file for the central
system when it has one, else the system's trust store.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

UPLOAD_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 1  # GetLogRequest.retries absent: the station decides
DEFAULT_RETRY_INTERVAL_S = 30.0


def unsupported(remote_location: str) -> str:
    """Why a location cannot be served ("" if it can)."""
    scheme = remote_location.split(":", 1)[0].lower()
    return "" if scheme in ("http", "https") else f"{scheme or 'no'} scheme: HTTP(S) only"


def target_url(remote_location: str, filename: str) -> str:
    return remote_location + filename if remote_location.endswith("/") else remote_location


def timestamp(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def put(url: str, path: Path, ca_file: str | None) -> str:
    """Upload the file; "" when the server took it (2xx), else why not."""
    request = urllib.request.Request(url, data=path.read_bytes(), method="PUT",
                                     headers={"Content-Type": "application/gzip"})
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT_S,
                                    context=context) as answer:
            return "" if 200 <= answer.status < 300 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))
