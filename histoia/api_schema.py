"""drf-spectacular's AutoSchema, with pagination documented for GET lists only.

(An upload answering with a list of slides is not a paginated listing.)
"""

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    def _get_paginator(self):
        return super()._get_paginator() if self.method == "GET" else None
