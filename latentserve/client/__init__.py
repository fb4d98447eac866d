"""The Python client SDK of latentserve.v1 (latentserve/client/calls.py)."""
from latentserve.client.calls import *  # noqa: F401,F403
from latentserve.client.calls import (CHANNEL_OPTIONS, build_augment_request, build_decode_request,  # noqa: F401
                                      build_edit_request, build_encode_request, build_interpolate_request,
                                      build_sample_request, frame_from_proto, model_info_from_proto, retry_options,
                                      GateInfo, DEFAULT_RETRIES, augment_chunk)
from latentserve.client.calls import __all__  # noqa: F401
