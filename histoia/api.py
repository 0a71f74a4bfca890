"""Pieces shared by the REST API of both apps: pagination, error types, the JSON parser, the
error handler, the CSV renderer."""

import io

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.permissions import SAFE_METHODS
from rest_framework.renderers import BaseRenderer
from rest_framework.throttling import UserRateThrottle


class Conflict(APIException):
    """409: the request is valid but the object's state does not allow it (cancel of a finished run)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the object."
    default_code = "conflict"


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The upload is larger than the server accepts."
    default_code = "too_large"


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, bounded: a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 413, and one
    nested deeper than the decoder can follow (e.g. 2,000 `[`) a 400, both as JSON errors
    instead of the server's own error page or a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read(limit + 1) if limit else stream.read()
        if limit and len(body) > limit:
            raise PayloadTooLarge(f"The JSON body is larger than the {limit} bytes the server accepts.")
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None


class _WriteThrottle(UserRateThrottle):
    """Per user, writes only (submit, cancel, upload...): what costs the workers and the disk.
    Reads (status polls, lists) are left alone; a 429 says how long to wait (Retry-After)."""

    def allow_request(self, request, view):
        return request.method in SAFE_METHODS or super().allow_request(request, view)


class WriteBurstThrottle(_WriteThrottle):
    scope = "write_burst"


class WriteSustainedThrottle(_WriteThrottle):
    scope = "write_sustained"


def exception_handler(exc, context):
    """DRF's handler, and Django's "request body too large" as the API's 413 (JSON), not the
    server's HTML error page."""
    from rest_framework.views import exception_handler as drf_handler   # it reads these settings

    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge("The request body is larger than the server accepts.")
    return drf_handler(exc, context)


class CSVRenderer(BaseRenderer):
    """text/csv. Views return the CSV text themselves; this renders only error bodies as text."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if isinstance(data, (bytes, str)):
            return data.encode() if isinstance(data, str) else data
        if isinstance(data, dict) and "detail" in data:
            return f"{data['detail']}\n".encode()
        return f"{data}\n".encode()


class PNGRenderer(BaseRenderer):
    """image/png. Views return the image themselves; this renders only error bodies as text."""

    media_type = "image/png"
    format = "png"
    charset = None
    render_style = "binary"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, bytes):
            return data
        if isinstance(data, dict) and "detail" in data:
            return f"{data['detail']}\n".encode()
        return b"" if data is None else f"{data}\n".encode()
