"""The HTTP control API (``api_key``): dSock's routes on the server's own port, and claims.

The route table (:data:`ROUTES`, :data:`ERRORS`) is public: it is what the API accepts and
answers, as data; :func:`openapi_document` is the OpenAPI 3.1 document generated from it
(what ``GET <api_prefix>/openapi.json`` serves).
"""

from __future__ import annotations

from ._claims import Claim as Claim
from ._openapi import openapi_document as openapi_document
from ._routes import COMMON_ERRORS as COMMON_ERRORS
from ._routes import ERRORS as ERRORS
from ._routes import ROUTES as ROUTES
from ._routes import ApiError as ApiError
from ._routes import Param as Param
from ._routes import Route as Route

__all__ = [
    "COMMON_ERRORS",
    "ERRORS",
    "ROUTES",
    "ApiError",
    "Claim",
    "Param",
    "Route",
    "openapi_document",
]
